"""How the study report writes numbers: metric names, percentages, percentage points (with a
true minus sign), 95% intervals and cost ratios. Fractions (accuracy, retrieval metrics) are
shown in % and pp; other metrics (perplexity) as they are."""

from __future__ import annotations

import math

from prunus.study.stats import Estimate, higher_is_better

MINUS = "\u2212"


def metric_name(metric: str) -> str:
    """``ndcg@10`` -> ``nDCG@10`` (how the report writes a metric)."""
    return {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10"}.get(metric, metric)


def is_fraction(metric: str) -> bool:
    """Accuracy and retrieval metrics are fractions (shown in % and pp); perplexity is not."""
    return higher_is_better(metric)


def unit_scale(metric: str) -> float:
    """What a metric is multiplied by to be shown: 100 for a fraction, else 1."""
    return 100.0 if is_fraction(metric) else 1.0


def pct(value: float | None, metric: str = "accuracy") -> str:
    """A value as shown: ``91.3%`` for a fraction, ``123.4`` otherwise; ``n/a`` if missing."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}%" if is_fraction(metric) else f"{value:.1f}"


def pp(value: float | None, metric: str = "accuracy") -> str:
    """A signed difference: ``+1.2pp`` (``−0.1pp``) for a fraction, ``−3.4`` otherwise."""
    if value is None or math.isnan(value):
        return "n/a"
    shown = f"{unit_scale(metric) * value:+.1f}"
    if shown == "-0.0":
        shown = "+0.0"  # a tiny negative mean rounds to zero: no sign to show
    return f"{shown}{'pp' if is_fraction(metric) else ''}".replace("-", MINUS)


def interval(e: Estimate, pct_bounds: bool = False, metric: str = "accuracy") -> str:
    """``[−0.6, +0.4]`` (a difference) or ``[90.1, 92.3]`` (``pct_bounds``: a mean, clipped
    to [0, 100] for a fraction); ``[CI n/a: 1 seed]`` without an interval."""
    if not e.has_interval:
        return f"[CI n/a: {e.n} seed{'s' * (e.n != 1)}]"
    if not is_fraction(metric):
        spec = ".1f" if pct_bounds else "+.1f"
        return f"[{e.low:{spec}}, {e.high:{spec}}]".replace("-", MINUS)
    if pct_bounds:  # a mean accuracy: a t-interval over few seeds may overshoot [0, 100]
        return f"[{100 * max(e.low, 0.0):.1f}, {100 * min(e.high, 1.0):.1f}]"
    return f"[{100 * e.low:+.1f}, {100 * e.high:+.1f}]".replace("-", MINUS)


def ratio_text(e: Estimate) -> str:
    """A ratio to a reference: ``0.62× [0.58, 0.66]``, ``0.62×`` without an interval."""
    if math.isnan(e.mean):
        return "n/a×"
    if e.has_interval:
        return f"{e.mean:.2f}× [{e.low:.2f}, {e.high:.2f}]"
    return f"{e.mean:.2f}×"

