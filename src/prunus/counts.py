"""The one rounding rule for "a fraction of n", and the one way to split an integer total in
proportion to weights, everywhere in prunus."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

from prunus.errors import PrunusError


def fraction_count(fraction: float, n: int, *, up: bool = False, at_least: int = 0) -> int:
    """⌊fraction·n⌋ (⌈fraction·n⌉ with ``up``), with ``fraction`` taken as the decimal it is
    written as, and never less than ``at_least``.

    0.29·100 is 29 (binary floating point would make it 28.999…), 0.3·1000 is 300, and with
    ``up`` 0.07·100 is 7 (not 8 from 7.000…01). Keep fractions (examples kept), sparsities
    (weights pruned), minimum densities, skipped/dropped shares of a ranking, per-epoch RS2
    subsets, label-noise flips, held-out splits and per-batch selections all use this rule, so
    the same fraction of the same n is the same count in every module. ``at_least=1`` is for
    counts that must not be empty (a held-out split, the examples of a batch trained on).
    """
    exact = Fraction(str(float(fraction))) * int(n)
    return max(int(at_least), math.ceil(exact) if up else math.floor(exact))


def proportional_shares(
    total: numbers.Rational, weights: Sequence[float], lower: Sequence[int] | None = None,
    upper: Sequence[int] | None = None,
) -> list[Fraction]:
    """Exact real shares ``q_i = clip(ε·w_i, lower_i, upper_i)`` with ``Σ q_i = total``.

    ``ε`` (the water level) is found exactly: ``Σ clip(ε·w_i, lo_i, hi_i)`` is piecewise linear
    in ε with breakpoints ``lo_i/w_i`` and ``hi_i/w_i``, so a sweep over the sorted breakpoints
    finds the segment holding ``total`` and solves that linear piece in :class:`Fraction`
    arithmetic — no bisection, no tolerance. Float weights are read as the decimals they are
    written as. Defaults: ``lower`` all 0, ``upper`` unbounded.

    Raises:
        PrunusError: a weight is not positive, a bound pair is reversed, or ``total`` is outside
            ``[Σ lower, Σ upper]``.
    """
    w = [_exact(v) for v in weights]
    lo = [Fraction(0)] * len(w) if lower is None else [Fraction(int(v)) for v in lower]
    hi = None if upper is None else [Fraction(int(v)) for v in upper]
    total = Fraction(total)
    if any(v <= 0 for v in w):
        raise PrunusError("proportional shares need positive weights.")
    if hi is not None and any(a > b for a, b in zip(lo, hi)):
        raise PrunusError("a lower bound exceeds its upper bound.")
    if total < sum(lo) or (hi is not None and total > sum(hi)):
        raise PrunusError(f"the total {total} is outside the bounds' range "
                          f"[{sum(lo)}, {'∞' if hi is None else sum(hi)}].")
    events = sorted([(lo[i] / w[i], 0, i) for i in range(len(w))]
                    + ([] if hi is None else [(hi[i] / w[i], 1, i) for i in range(len(w))]))
    level, value, slope = Fraction(0), sum(lo), Fraction(0)
    for at, saturates, i in events:
        reached = value + slope * (at - level)
        if reached >= total:
            break
        level, value = at, reached
        slope += -w[i] if saturates else w[i]
    if slope:
        level += (total - value) / slope
    return [max(lo[i], level * w[i]) if hi is None else min(max(lo[i], level * w[i]), hi[i])
            for i in range(len(w))]


def apportion(
    total: int, weights: Sequence[float], lower: Sequence[int] | None = None,
    upper: Sequence[int] | None = None,
) -> list[int]:
    """Integers ``c_i`` in ``[lower_i, upper_i]`` summing to ``total`` exactly, in proportion to
    ``weights`` where the bounds allow — Hamilton's largest-remainder method.

    Each item gets ``⌊q_i⌋`` of its exact share ``q_i`` (:func:`proportional_shares`), and the
    ``total − Σ⌊q_i⌋`` units left go one each to the items with the largest remainders
    ``q_i − ⌊q_i⌋``. Ties: the larger share first, then the lower index. No item is off its
    share by a unit or more. Used for per-class quotas of a selection, per-class test splits
    and per-layer weight budgets.

    Example: 2 over weights (1, 3) has shares 0.5 and 1.5 (equal remainders): (0, 2).

    Raises:
        PrunusError: as :func:`proportional_shares`.
    """
    shares = proportional_shares(total, weights, lower, upper)
    counts = [math.floor(q) for q in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), -shares[i], i))
    for i in order[: int(total) - sum(counts)]:
        counts[i] += 1
    return counts


def _exact(value: float) -> Fraction:
    if isinstance(value, numbers.Rational):
        return Fraction(value)
    return Fraction(str(float(value)))
