"""Static selection: keep a fixed budget of training examples chosen from a score table.

Every policy keeps exactly ``k = ⌊keep · N⌋`` examples, with the one rounding rule of
:func:`prunus.counts.fraction_count` (the share taken as the decimal it is written as, so that
0.29 · 100 keeps 29 and not 28 because of binary floating point); the shares skipped by ``band``
and dropped by ``ccs`` use the same rule.

With ``stratify=True`` (the default) each class keeps its share of the budget: class ``c`` with
``n_c`` examples gets ``⌊k · n_c / N⌋`` (exact integer arithmetic), and the examples still missing
to reach ``k`` go one each to the classes with the largest remainders ``k · n_c / N − ⌊k · n_c / N⌋``
(ties: the larger class first, then the lower class index). The policy then runs inside each
class with that quota.

Ties between equal scores are broken at random: each example gets a pseudo-random key from
``(seed, id)`` (so the same table, keep, policy and seed always give the same ids, in any row
order), and among equal scores the key decides. Breaking ties by id would turn "the hardest 50%"
of a score that is 0 for most examples into "the first ids of the file". When more than
``TIE_WARNING_SHARE`` (10%) of the kept set is decided by ties (kept examples whose score equals
a boundary score that also has examples left out), :func:`select` warns with a
:class:`TieWarning`: that part of the selection is random, not chosen by the score.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from prunus.counts import apportion, fraction_count
from prunus.errors import PrunusError
from prunus.registry import SELECT

if TYPE_CHECKING:  # pragma: no cover
    from prunus.data.table import ScoreTable
    from prunus.datasets.base import Dataset

TIE_WARNING_SHARE = 0.10

__all__ = [
    "TIE_WARNING_SHARE", "TieWarning", "ccs_bin_counts", "class_quotas",
    "keep_count", "select", "tie_keys",
]


class TieWarning(UserWarning):
    """Much of a selection was decided by breaking score ties at random, not by the score."""


def select(
    table: ScoreTable,
    keep: float,
    policy: str = "hardest",
    *,
    stratify: bool = True,
    seed: int = 0,
    column: str | None = None,
    dataset: Dataset | None = None,
    skip_hardest: float | None = None,
    beta: float = 0.1,
    bins: int = 50,
    return_weights: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Keep ``⌊keep · N⌋`` example ids from a score table.

    Policies (hardness = the score oriented so that higher is harder, see
    :meth:`ScoreTable.hardness`):

    - ``hardest``: the highest hardness (Data Diet, forgetting: keep what is hard to learn).
    - ``easiest``: the lowest hardness (Sorscher et al. 2022: keep easy examples when data is scarce).
    - ``band``: a contiguous band of the hardness ranking: skip the ``skip_hardest`` fraction of
      hardest examples (default: centre the band, ``(1 − keep) / 2``), keep the next ``k``.
    - ``ccs``: Coverage-centric Coreset Selection (Zheng et al. 2023): drop the hardest ``beta``
      fraction (likely mislabeled; fewer when the budget would not fit in what remains), split the
      rest into ``bins`` equal-width hardness bins and fill the budget bin by bin, smallest bin
      first, each taking ``min(its size, ⌊budget left / bins left⌋)`` at random, so that what a
      small bin cannot use goes to the larger ones.
    - ``random``: a uniform random subset (the baseline every policy has to beat).

    Args:
        table: a :class:`~prunus.data.table.ScoreTable` (from :func:`prunus.data.score`).
        keep: share of the examples to keep, in (0, 1].
        policy: a name of the registry ``prunus.registry.SELECT`` (``SELECT_POLICIES``: the
            policies above and any registered one). Default ``"hardest"``.
        stratify: keep each class's share of the budget. Default True.
        seed: seed of the random draws (``ccs``, ``random``) and of the random tie-breaking
            between equal scores (every policy). Default 0.
        column: score column to use (default: the table's main score).
        dataset: when given, the table's dataset fingerprint must match it.
        skip_hardest: ``band`` only: fraction of the hardest examples skipped before the band.
        beta: ``ccs`` only: fraction of the hardest examples dropped first. Default 0.1.
        bins: ``ccs`` only: number of hardness bins. Default 50.
        return_weights: also return per-example loss weights aligned to the ids: for ``ccs`` the
            inverse of each example's chance of being drawn from its bin (``bin size / drawn``),
            normalised to mean 1; for the other policies all ones.

    Returns:
        The kept ids, sorted ascending (and their weights when ``return_weights``).

    Raises:
        PrunusError: ``keep`` outside (0, 1] or keeping no example, unknown ``policy`` or
            ``column``, bad ``beta``/``bins``/``skip_hardest``, or a fingerprint mismatch.

    Warns:
        TieWarning: more than ``TIE_WARNING_SHARE`` of the kept examples were chosen among
            examples tied at a boundary score (``hardest``, ``easiest``, ``band``).
    """
    method = SELECT.entry(policy)
    n = len(table)
    budget = keep_count(keep, n)
    if not 0.0 <= beta < 1.0:
        raise PrunusError(f"beta must be in [0, 1) (got {beta!r}).")
    if int(bins) != bins or bins < 1:
        raise PrunusError(f"bins must be a positive integer (got {bins!r}).")
    if skip_hardest is not None and not 0 <= Fraction(str(float(skip_hardest))) <= 1 - Fraction(str(float(keep))):
        raise PrunusError(
            f"skip_hardest must be in [0, 1 − keep] = [0, {1 - keep:.4g}] (got {skip_hardest!r})."
        )
    if dataset is not None:
        table.check(dataset)
    hardness = table.hardness(column)
    if not np.isfinite(hardness).all():
        raise PrunusError(f"score table column {column or table.column!r} contains NaN or infinite scores.")
    rng = np.random.default_rng(seed)

    groups = (
        [np.flatnonzero(table.labels == c) for c in np.unique(table.labels)]
        if stratify
        else [np.arange(n)]
    )
    quotas = class_quotas(np.array([len(g) for g in groups]), budget)
    keys = tie_keys(table.ids, seed)
    settings = {"skip_hardest": skip_hardest, "beta": beta, "bins": int(bins)}
    options = {key: settings[key] for key in method.options() if key in settings}
    rows, weights, tied = [], [], 0
    for group, quota in zip(groups, quotas):
        if quota == 0:
            continue
        ranking = np.lexsort((keys[group], -hardness[group]))  # hardest first; ties: random key
        picked, w, t = method.obj(hardness[group], ranking, int(quota), rng, **options)
        rows.append(group[picked])
        weights.append(w)
        tied += t
    if tied > TIE_WARNING_SHARE * budget:
        warnings.warn(
            f"{tied} of the {budget} examples kept by {policy!r} ({tied / budget:.0%}) were drawn at "
            f"random (seed {seed}) among examples whose score {column or table.column!r} ties at the "
            "cut-off, so the score does not decide them; compare seeds to see how much this "
            "matters, or use a score with fewer ties.",
            TieWarning,
            stacklevel=2,
        )
    rows = np.concatenate(rows)
    weights = np.concatenate(weights)
    order = np.argsort(table.ids[rows], kind="stable")
    ids = table.ids[rows][order]
    if not return_weights:
        return ids
    weights = weights[order]
    return ids, weights / weights.mean()


def keep_count(keep: float, n: int) -> int:
    """``⌊keep · n⌋`` for a share in (0, 1] (raises a PrunusError naming ``keep``)."""
    try:
        keep = float(keep)
    except (TypeError, ValueError):
        raise PrunusError(f"keep must be a number in (0, 1] (got {keep!r}).") from None
    if not 0.0 < keep <= 1.0:
        raise PrunusError(f"keep must be in (0, 1] (got {keep!r}).")
    count = fraction_count(keep, n)
    if count < 1:
        raise PrunusError(
            f"keep {keep!r} of {n} examples keeps none; keep must be at least {1 / n:.3g}."
        )
    return count


def class_quotas(class_sizes: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` over classes in proportion to ``class_sizes`` with
    :func:`prunus.counts.apportion` (largest remainders; ties: the larger class, then the lower
    index); the quotas sum to ``budget`` exactly and never exceed a class's size."""
    sizes = [int(n) for n in np.asarray(class_sizes, dtype=np.int64)]
    return np.asarray(apportion(int(budget), sizes, upper=sizes), dtype=np.int64)


def ccs_bin_counts(bin_sizes: np.ndarray, budget: int) -> np.ndarray:
    """How many examples CCS draws from each bin: smallest bin first, each takes
    ``min(size, ⌊budget left / bins left⌋)``; the counts sum to ``min(budget, total)``."""
    sizes = np.asarray(bin_sizes, dtype=np.int64)
    counts = np.zeros_like(sizes)
    left = min(int(budget), int(sizes.sum()))
    order = np.argsort(sizes, kind="stable")
    for position, b in enumerate(order):
        take = min(int(sizes[b]), left // (len(order) - position))
        counts[b] = take
        left -= take
    return counts


def tie_keys(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pseudo-random uint64 keys from ``(seed, id)`` (SplitMix64): the tie-break order of
    equal scores, the same for an id whatever the row order of the table."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(mult)
        return z ^ (z >> np.uint64(31))


# Each policy picks ``quota`` positions of one group (a class, or the whole table) from its
# hardness and its ranking (hardest first, ties in random key order) and returns them with their
# loss weights and how many were decided by a tie at a boundary. Add one with
# ``@SELECT.register(name)``; its keyword-only options are the ``select`` settings it reads.
Picked = tuple[np.ndarray, np.ndarray, int]


@SELECT.register("hardest")
def _hardest(hardness: np.ndarray, ranking: np.ndarray, quota: int, rng: np.random.Generator) -> Picked:
    """The highest hardness (Data Diet, forgetting: keep what is hard to learn)."""
    return ranking[:quota], np.ones(quota), _tied(hardness, ranking, 0, quota)


@SELECT.register("easiest")
def _easiest(hardness: np.ndarray, ranking: np.ndarray, quota: int, rng: np.random.Generator) -> Picked:
    """The lowest hardness (Sorscher et al. 2022: keep easy examples when data is scarce)."""
    n = len(hardness)
    return ranking[n - quota :], np.ones(quota), _tied(hardness, ranking, n - quota, n)


@SELECT.register("band")
def _band(hardness: np.ndarray, ranking: np.ndarray, quota: int, rng: np.random.Generator, *,
          skip_hardest: float | None = None) -> Picked:
    """A contiguous hardness band after skipping ``skip_hardest`` (default: centred)."""
    n = len(hardness)
    skip = (n - quota) // 2 if skip_hardest is None else fraction_count(skip_hardest, n)
    start = min(skip, n - quota)
    return ranking[start : start + quota], np.ones(quota), _tied(hardness, ranking, start, start + quota)


@SELECT.register("ccs")
def _ccs_policy(hardness: np.ndarray, ranking: np.ndarray, quota: int, rng: np.random.Generator, *,
                beta: float = 0.1, bins: int = 50) -> Picked:
    """Coverage-centric Coreset Selection (Zheng et al. 2023): drop the hardest beta, fill by bins."""
    picked, weights = _ccs(hardness, ranking, quota, rng, beta, bins)
    return picked, weights, 0


@SELECT.register("random")
def _random(hardness: np.ndarray, ranking: np.ndarray, quota: int, rng: np.random.Generator) -> Picked:
    """A uniform random subset (the baseline every policy has to beat)."""
    return rng.choice(len(hardness), size=quota, replace=False), np.ones(quota), 0


def _tied(hardness: np.ndarray, ranking: np.ndarray, start: int, stop: int) -> int:
    """Kept examples (``ranking[start:stop]``) decided by a tie: those whose score equals a
    boundary score that also occurs outside the kept slice."""
    ordered = hardness[ranking]
    kept, tied = ordered[start:stop], 0
    boundaries = set()
    if start > 0 and ordered[start - 1] == ordered[start]:
        boundaries.add(ordered[start])
    if stop < len(ordered) and ordered[stop] == ordered[stop - 1]:
        boundaries.add(ordered[stop - 1])
    for value in boundaries:
        tied += int((kept == value).sum())
    return tied


def _ccs(
    hardness: np.ndarray,
    ranking: np.ndarray,
    quota: int,
    rng: np.random.Generator,
    beta: float,
    bins: int,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(hardness)
    dropped = min(fraction_count(beta, n), n - quota)
    pool = ranking[dropped:]
    values = hardness[pool]
    low, high = values.min(), values.max()
    if high > low:
        edges = np.linspace(low, high, bins + 1)
        which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    else:
        which = np.zeros(len(pool), dtype=np.int64)
    members = [pool[which == b] for b in range(bins)]
    counts = ccs_bin_counts(np.array([len(m) for m in members]), quota)
    picked, weights = [], []
    for member, count in zip(members, counts):
        if count == 0:
            continue
        picked.append(rng.choice(np.sort(member), size=count, replace=False))
        weights.append(np.full(count, len(member) / count))
    return np.concatenate(picked), np.concatenate(weights)


def __getattr__(name: str):
    if name == "SELECT_POLICIES":  # the registry's names, looked up when asked
        return SELECT.names()
    raise AttributeError(f"module 'prunus.data.select' has no attribute {name!r}")
