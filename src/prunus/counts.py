"""The one rounding rule for "a fraction of n" everywhere in prunus."""

from __future__ import annotations

import math
from fractions import Fraction


def fraction_count(fraction: float, n: int, *, up: bool = False) -> int:
    """⌊fraction·n⌋ (⌈fraction·n⌉ with ``up``), with ``fraction`` taken as the decimal it is
    written as.

    0.29·100 is 29 (binary floating point would make it 28.999…), 0.3·1000 is 300, and with
    ``up`` 0.07·100 is 7 (not 8 from 7.000…01). Keep fractions (examples kept), sparsities
    (weights pruned), minimum densities, skipped/dropped shares of a ranking and per-epoch RS2
    subsets all use this rule, so the same fraction of the same n is the same count in every
    module.
    """
    exact = Fraction(str(float(fraction))) * int(n)
    return math.ceil(exact) if up else math.floor(exact)
