"""Label noise with an exact record of which ids were flipped: symmetric or pairwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error

NOISE_KINDS = ("symmetric", "pairs")


def add_label_noise(
    dataset: Dataset,
    rate: float,
    seed: int = 0,
    *,
    kind: str = "symmetric",
    pairs: Mapping[int, int] | Sequence[int] | None = None,
) -> Dataset:
    """Flip exactly ``round(rate * N)`` training labels, chosen uniformly at random.

    ``kind="symmetric"`` (default) moves each chosen label to a uniformly drawn *other* class.
    ``kind="pairs"`` moves it to one fixed confusable class (class-conditional pair noise, as in
    CIFAR-10N-style benchmarks): ``c -> (c + 1) mod C`` by default, or ``pairs[c]`` when a map is
    given (a sequence of C classes or a ``{class: class}`` dict; classes it leaves out are
    mapped to ``(c + 1) mod C``).

    The flipped ids are recorded in ``flipped_ids`` and the original labels in ``clean_y``.
    The test split is never touched. Deterministic given ``seed``.

    Raises:
        PrunusError: if ``rate`` is outside [0, 1), ``kind`` is unknown, or ``pairs`` maps a
            class outside [0, C) or onto itself.
    """
    if not 0.0 <= rate < 1.0:
        raise PrunusError(f"noise must be a rate in [0, 1) (got {rate!r}).")
    if kind not in NOISE_KINDS:
        raise choice_error("noise kind", kind, NOISE_KINDS)
    if pairs is not None and kind != "pairs":
        raise PrunusError(f"pairs is only used with kind='pairs' (got kind={kind!r}).")
    num_classes = dataset.num_classes
    target = _pair_map(pairs, num_classes) if kind == "pairs" else None
    rng = np.random.default_rng(seed)
    n = len(dataset)
    n_flip = round(rate * n)
    rows = np.sort(rng.choice(n, size=n_flip, replace=False))
    y = dataset.y.copy()
    if target is None:
        # A shift in [1, C-1] moves each label to a uniformly chosen *different* class.
        shift = rng.integers(1, num_classes, size=n_flip)
        y[rows] = (y[rows] + shift) % num_classes
        options = dict(dataset.options, noise=rate, noise_seed=seed)
    else:
        y[rows] = target[y[rows]]
        options = dict(dataset.options, noise=rate, noise_seed=seed, noise_kind=kind)
        if pairs is not None:
            options["noise_pairs"] = target.tolist()
    clean = dataset.y if dataset.clean_y is None else dataset.clean_y
    return replace(
        dataset,
        y=y,
        clean_y=clean.copy(),
        flipped_ids=np.sort(dataset.ids[rows]),
        options=options,
        _fingerprint=None,
    )


def _pair_map(pairs: Mapping[int, int] | Sequence[int] | None, num_classes: int) -> np.ndarray:
    """``target[c]``: the class that label ``c`` flips to under pair noise."""
    target = (np.arange(num_classes) + 1) % num_classes
    if pairs is None:
        return target
    items = pairs.items() if isinstance(pairs, Mapping) else enumerate(pairs)
    if not isinstance(pairs, Mapping) and len(pairs) != num_classes:
        raise PrunusError(
            f"pairs must list one target class for each of the {num_classes} classes "
            f"(got {len(pairs)})."
        )
    for source, dest in items:
        if int(source) != source or int(dest) != dest or not (
            0 <= source < num_classes and 0 <= dest < num_classes
        ):
            raise PrunusError(
                f"pairs must map classes in [0, {num_classes - 1}] to classes in "
                f"[0, {num_classes - 1}] (got {source!r} -> {dest!r})."
            )
        if source == dest:
            raise PrunusError(f"pairs must map each class to another class (got {source} -> {dest}).")
        target[int(source)] = int(dest)
    return target
