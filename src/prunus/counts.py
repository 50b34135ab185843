"""The one rounding rule for "a fraction of n" everywhere in prunus."""

from __future__ import annotations

from fractions import Fraction


def fraction_count(fraction: float, n: int) -> int:
    """⌊fraction·n⌋, with ``fraction`` taken as the decimal it is written as.

    0.29·100 is 29 (binary floating point would make it 28.999…), 0.3·1000 is 300. Keep
    fractions (examples kept), sparsities (weights pruned) and per-epoch RS2 subsets all use
    this rule, so the same fraction of the same n is the same count in every module.
    """
    return int(Fraction(str(float(fraction))) * int(n))
