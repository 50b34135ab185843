"""Statistics of a study: every arm against full data, the same compute and random, by seed.

Intervals are Student-t intervals over seeds, which have their stated coverage at the seed
counts studies use (3–10) when per-seed results are roughly normal; a percentile bootstrap over
3–5 seeds does not (with 3 seeds it is nearly [min, max] and excludes a true zero in about a
quarter of studies). ``tests/test_study_stats.py`` checks the coverage by simulation.

- :func:`mean_ci`: mean with a t-interval. Fewer than two values: NaN bounds (no interval).
- :func:`paired_difference`: the same over per-seed differences (seeds both arms finished).
- :func:`paired_ratio`: geometric mean of per-seed ratios, t-interval on their logarithms.
- :func:`t_test`: two-sided paired t-test p-value; :func:`noninferiority_p`: one-sided p of
  "worse by at least the margin".
- :func:`holm`: Holm's step-down correction for the comparisons of one setting.
- :func:`decide`: the verdict word of one comparison — ``beats`` / ``worse`` only when the
  Holm-corrected test rejects **and** at least :data:`MIN_SEEDS` paired seeds exist, else
  ``inconclusive`` (with the seeds that would resolve the observed difference at its spread).
- :func:`time_to_target`, :func:`pareto_frontier`, :func:`recommend`, :func:`summarize`.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
MIN_SEEDS = 5  # paired seeds a verdict needs before it may say "beats" or "worse"
MAX_SEEDS_SUGGESTED = 1000
LOWER_IS_BETTER = ("perplexity", "loss")  # metric names ending so: lower values are better


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (accuracy, nDCG) or worse (perplexity)."""
    return not metric.endswith(LOWER_IS_BETTER)


def sense(metric: str) -> int:
    """+1 where higher is better, −1 where lower is: ``sense · (a − b) > 0`` means a is better."""
    return 1 if higher_is_better(metric) else -1


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds, its confidence interval (NaN bounds when ``n`` < 2) and the
    standard deviation of the values it was computed from."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def finite(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``values`` with a Student-t confidence interval.

    mean ± t_{(1+c)/2, n−1} · s/√n. Fewer than two values: NaN bounds. All values equal: a
    zero-width interval. NaN and None values are dropped first.
    """
    x = finite(values)
    if len(x) == 0:
        return NO_ESTIMATE
    mean = float(x.mean())
    if len(x) < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = t_quantile(confidence, len(x) - 1) * sd / math.sqrt(len(x))
    return Estimate(mean, mean - half, mean + half, len(x), sd)


@functools.lru_cache(maxsize=256)
def t_quantile(confidence: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, df))


@functools.lru_cache(maxsize=4)
def _resolving_factors(confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Seed counts MIN_SEEDS … MAX and t_{(1+c)/2, n−1}/√n for each."""
    from scipy.stats import t

    n = np.arange(MIN_SEEDS, MAX_SEEDS_SUGGESTED + 1)
    return n, t.ppf((1 + confidence) / 2, n - 1) / np.sqrt(n)


def paired_values(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """``a[s] − b[s]`` over the seeds both have (finite on both sides), by seed."""
    seeds = sorted(set(a) & set(b))
    return [a[s] - b[s] for s in seeds
            if a[s] is not None and b[s] is not None and math.isfinite(a[s] - b[s])]


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``a[s] − b[s]`` over the seeds both have, with its paired t-interval."""
    return mean_ci(paired_values(a, b), confidence)


def paired_ratio(a: Mapping[int, float], b: Mapping[int, float],
                 confidence: float = CONFIDENCE) -> Estimate:
    """Geometric mean of ``a[s] / b[s]`` over the seeds both have (both > 0), with the
    t-interval of the mean log ratio mapped back (so 0.5× and 2× are equally far from 1×)."""
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None and a[s] > 0 and b[s] > 0)
    logs = mean_ci([math.log(a[s] / b[s]) for s in seeds], confidence)
    if logs.n == 0:
        return NO_ESTIMATE
    low = math.exp(logs.low) if logs.has_interval else math.nan
    high = math.exp(logs.high) if logs.has_interval else math.nan
    return Estimate(math.exp(logs.mean), low, high, logs.n, logs.sd)


def t_test(values: Sequence[float]) -> float:
    """Two-sided one-sample t-test p-value of mean 0 (NaN with fewer than two values).

    Values all equal: p = 1 if they are 0, else 0 (a difference with no spread at all).
    """
    x = finite(values)
    if len(x) < 2:
        return math.nan
    sd = x.std(ddof=1)
    if sd == 0:
        return 1.0 if x.mean() == 0 else 0.0
    from scipy.special import stdtr

    statistic = x.mean() / (sd / math.sqrt(len(x)))
    return float(2 * stdtr(len(x) - 1, -abs(statistic)))


def noninferiority_p(difference: Estimate, margin: float) -> float:
    """One-sided paired t-test p-value of H0 "mean difference ≤ −margin" (worse by at least
    ``margin``), from a difference's mean, sd and n.

    Rejected at 0.025 exactly when the two-sided 95% interval's lower bound is above −margin.
    NaN with fewer than two seeds.
    """
    if difference.n < 2 or math.isnan(difference.sd):
        return math.nan
    shifted = difference.mean + margin
    if difference.sd == 0:
        return 0.0 if shifted > 0 else 1.0
    from scipy.special import stdtr

    return float(stdtr(difference.n - 1, -shifted / (difference.sd / math.sqrt(difference.n))))


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down test: which hypotheses are rejected at family-wise level ``alpha``.

    Sorted ascending, p₍ᵢ₎ is rejected while p₍ᵢ₎ ≤ α/(m − i) (i from 0); NaN p-values are
    never rejected and do not count in m.
    """
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    rejected = [False] * len(pvalues)
    for rank, (p, i) in enumerate(order):
        if p > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def seeds_needed(estimate: Estimate, confidence: float = CONFIDENCE) -> int | None:
    """Smallest seed count (≥ :data:`MIN_SEEDS`) whose t-interval would exclude zero if the
    observed mean difference and spread held; None without a difference or a spread to use.

    Capped at :data:`MAX_SEEDS_SUGGESTED` (a bigger answer means "no practical number").
    """
    if estimate.n < 2 or estimate.mean == 0 or math.isnan(estimate.sd):
        return None
    if estimate.sd == 0:
        return MIN_SEEDS
    n, factor = _resolving_factors(confidence)
    resolved = factor * estimate.sd < abs(estimate.mean)
    return int(n[resolved.argmax()]) if resolved.any() else MAX_SEEDS_SUGGESTED


BEATS, WORSE, INCONCLUSIVE = "beats", "worse", "inconclusive"


@dataclass
class Comparison:
    """One arm against one rival, paired by seed: the difference, its test and the verdict."""

    kind: str  # "full", "compute" (full data, same compute) or "random"
    rival: str  # the rival arm's policy label
    difference: Estimate
    p: float
    verdict: str = INCONCLUSIVE
    needed: int | None = None  # seeds that would resolve the difference (when inconclusive)
    family: int = 0  # comparisons corrected together (Holm) in this setting
    sense: int = 1  # −1 where the metric is lower-is-better (a negative difference is better)


def decide(comparisons: Sequence[Comparison]) -> None:
    """Set the verdict of each comparison of one setting (Holm over all of them)."""
    rejected = holm([c.p for c in comparisons])
    for comparison, reject in zip(comparisons, rejected):
        comparison.family = len(comparisons)
        d = comparison.difference
        if reject and d.n >= MIN_SEEDS:
            comparison.verdict = BEATS if d.mean * comparison.sense > 0 else WORSE
            comparison.needed = None
        else:
            comparison.verdict = INCONCLUSIVE
            comparison.needed = seeds_needed(d)


@dataclass(frozen=True)
class WinRate:
    """Paired seeds where an arm beat (``wins``) or tied (``ties``) another, of ``n``."""

    wins: int
    ties: int
    n: int

    @property
    def rate(self) -> float:
        """Share of seeds won, ties counting half (NaN without paired seeds)."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else math.nan


def win_rate(a: Mapping[int, float], b: Mapping[int, float], direction: int = 1) -> WinRate:
    """How often ``a`` beats ``b`` over the seeds both have (``direction`` −1: lower wins)."""
    seeds = sorted(set(a) & set(b))
    wins = sum(1 for s in seeds if direction * (a[s] - b[s]) > 0)
    ties = sum(1 for s in seeds if a[s] == b[s])
    return WinRate(wins, ties, len(seeds))


def time_to_target(costs: Sequence[float], accuracies: Sequence[float],
                   target: float, direction: int = 1) -> float | None:
    """The cost at the first evaluation whose accuracy is at least ``target`` (None if none).

    ``costs`` are cumulative (wall seconds or FLOPs with every overhead charged), in the order
    of the evaluations. No interpolation: the run is known to have reached the target only at
    an evaluation. ``direction`` −1: a lower-is-better metric, reached at or below ``target``.
    """
    for cost, accuracy in zip(costs, accuracies):
        if accuracy is not None and not math.isnan(accuracy) and \
                direction * (accuracy - target) >= 0:
            return float(cost)
    return None


def pareto_frontier(costs: Sequence[float], accuracies: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points on the accuracy-vs-cost frontier.

    A point is on it when no other point has lower-or-equal cost and higher-or-equal accuracy
    with at least one of them strict. Duplicated points are all on it. NaN points never are.
    """
    cost = np.asarray(costs, dtype=float)
    acc = np.asarray(accuracies, dtype=float)
    valid = ~(np.isnan(cost) | np.isnan(acc))
    on = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = (cost[others] <= cost[i]) & (acc[others] >= acc[i]) & (
            (cost[others] < cost[i]) | (acc[others] > acc[i]))
        on[i] = not dominated.any()
    return on


# -- per-arm summaries ----------------------------------------------------------------------


@dataclass
class TargetResult:
    """Time to one accuracy target over the seeds that reached it.

    Seeds that never reached it are *censored*: they ran their whole budget without getting
    there, so their time is only known to exceed their total cost. ``seconds`` and ``flops``
    are over the reached seeds only; ``reached`` of ``seeds`` says how many that is.
    """

    target: str
    accuracy: float
    seconds: Estimate
    flops: Estimate
    reached: int
    seeds: int
    ratio_to_full: Estimate  # per seed, this arm's seconds / full data's, both reached


@dataclass
class ArmSummary:
    """Everything the report says about one arm (data policy × weight policy) of a setting."""

    setting: str
    policy: str
    data_policy: str
    data_kind: str
    keep: float
    weight_policy: str
    sparsity: float
    baseline: bool
    seeds: list[int]
    failures: dict[int, str]
    accuracy: Estimate
    vs_full: Estimate | None = None
    vs_compute: Estimate | None = None
    vs_random: Estimate | None = None
    compute_policy: str | None = None
    random_policy: str | None = None
    wins_vs_random: WinRate | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    cost_seconds: Estimate = NO_ESTIMATE  # headline: score tables paid in full
    cost_amortised: Estimate = NO_ESTIMATE  # score tables shared among the runs using them
    time_ratio: Estimate = NO_ESTIMATE  # headline cost / full data's, per seed
    time_ratio_amortised: Estimate = NO_ESTIMATE
    flops: Estimate = NO_ESTIMATE
    flops_ratio: Estimate = NO_ESTIMATE
    forwarded: Estimate = NO_ESTIMATE  # examples forwarded / full data's, per seed
    backpropagated: Estimate = NO_ESTIMATE  # examples backpropagated / full data's
    scoring_seconds: Estimate = NO_ESTIMATE
    selection_seconds: Estimate = NO_ESTIMATE
    uses_scores: bool = False
    score_shared_by: int = 0
    flops_theoretical: bool = False
    targets: list[TargetResult] = field(default_factory=list)
    on_frontier: bool = False
    metric: str = "accuracy"  # what ``accuracy`` holds (ndcg@10 for a retrieval setting)
    reference: str = "full"  # how verdicts name the setting's reference arm
    extra: dict[str, Estimate] = field(default_factory=dict)  # retrieval: other metrics

    @property
    def is_full(self) -> bool:
        return self.data_kind == "full" and self.weight_policy == "dense"

    def comparison(self, kind: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.kind == kind), None)


def summarize(rows: Sequence[Mapping[str, Any]], targets: Sequence[float | str]) -> list[ArmSummary]:
    """Per-arm statistics from the store's rows (one per run × evaluation), arms in run order.

    Each row names its arm's rivals: ``random_baseline`` (a random subset with the same
    examples, or random pruning at the same sparsity and schedule) and ``compute_baseline``
    (full data trained for the same examples backpropagated); full data is the dense full-data
    arm of the same setting. Seeds pair runs; costs and examples are per-seed ratios to full data.
    """
    from prunus.study.schema import target_value

    curves: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    finals: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        curves[row["run_id"]].append(row)
        if row["final"]:
            finals[row["run_id"]] = row
    arms: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for final in sorted(finals.values(), key=lambda f: f["run_index"]):
        arms[(final["setting"], final["policy"])].append(final)

    summaries = {key: arm_summary(finals_of_arm) for key, finals_of_arm in arms.items()}
    by_seed = {key: {f["seed"]: f for f in finals_of_arm if f["status"] == "ok"}
               for key, finals_of_arm in arms.items()}
    full_keys = {s.setting: key for key, s in summaries.items() if s.is_full}

    for key, summary in summaries.items():
        mine = by_seed[key]
        full_key = full_keys.get(summary.setting)
        full = by_seed.get(full_key, {})
        first = arms[key][0]
        direction = sense(summary.metric)
        if summary.metric != "accuracy" and full_key is not None:
            summary.reference = summaries[full_key].policy
        acc = column(mine, "accuracy")
        if full:
            if key != full_key:
                summary.vs_full = paired_difference(acc, column(full, "accuracy"))
                summary.comparisons.append(Comparison(
                    "full", summaries[full_key].policy, summary.vs_full,
                    t_test(paired_values(acc, column(full, "accuracy"))), sense=direction))
            summary.time_ratio = paired_ratio(column(mine, "cost_seconds"),
                                              column(full, "cost_seconds"))
            summary.time_ratio_amortised = paired_ratio(
                {s: amortised_cost(r) for s, r in mine.items()}, column(full, "cost_seconds"))
            summary.flops_ratio = paired_ratio(column(mine, "flops"), column(full, "flops"))
            summary.forwarded = paired_ratio(column(mine, "examples_forwarded"),
                                             column(full, "examples_forwarded"))
            summary.backpropagated = paired_ratio(column(mine, "examples_backpropagated"),
                                                  column(full, "examples_backpropagated"))
        for kind, rival_field in (("compute", "compute_baseline"), ("random", "random_baseline")):
            rival_key = (summary.setting, first.get(rival_field))
            if rival_key[1] is None or rival_key == key or rival_key not in by_seed:
                continue
            rival = column(by_seed[rival_key], "accuracy")
            difference = paired_difference(acc, rival)
            summary.comparisons.append(Comparison(
                kind, summaries[rival_key].policy, difference, t_test(paired_values(acc, rival)),
                sense=direction))
            if kind == "compute":
                summary.vs_compute, summary.compute_policy = difference, rival_key[1]
            else:
                summary.vs_random, summary.random_policy = difference, rival_key[1]
                summary.wins_vs_random = win_rate(acc, rival, direction)

    for setting in {s.setting for s in summaries.values()}:
        members = [s for s in summaries.values() if s.setting == setting]
        decide([c for s in members for c in s.comparisons])
        full_summary = summaries.get(full_keys.get(setting))
        full_accuracy = full_summary.accuracy.mean if full_summary else math.nan
        full_runs = by_seed.get(full_keys.get(setting), {})
        direction = sense(members[0].metric)
        for member in members:
            for target in targets:
                value = target_value(target, full_accuracy, direction)
                member.targets.append(target_result(
                    str(target), value, by_seed[(setting, member.policy)], curves, full_runs,
                    direction))
        mask = pareto_frontier([m.cost_seconds.mean for m in members],
                               [direction * m.accuracy.mean for m in members])
        for member, on in zip(members, mask):
            member.on_frontier = bool(on)
    return list(summaries.values())


def arm_summary(finals: Sequence[Mapping[str, Any]]) -> ArmSummary:
    """The per-arm numbers that need no other arm."""
    first = finals[0]
    ok = [f for f in finals if f["status"] == "ok"]
    return ArmSummary(
        setting=first["setting"], policy=first["policy"], data_policy=first["data_policy"],
        data_kind=first["data_kind"], keep=first["keep"], weight_policy=first["weight_policy"],
        sparsity=first["sparsity"], baseline=first["baseline"],
        seeds=sorted(f["seed"] for f in ok),
        failures={f["seed"]: f["error"] for f in finals if f["status"] != "ok"},
        accuracy=mean_ci(f["accuracy"] for f in ok),
        cost_seconds=mean_ci(f["cost_seconds"] for f in ok),
        cost_amortised=mean_ci(amortised_cost(f) for f in ok),
        flops=mean_ci(f["flops"] for f in ok),
        scoring_seconds=mean_ci(f["scoring_seconds"] for f in ok),
        selection_seconds=mean_ci(f.get("selection_seconds", 0.0) for f in ok),
        uses_scores=first["score_table"] is not None,
        score_shared_by=int(first["score_shared_by"] or 0),
        flops_theoretical=any(f["flops_theoretical"] for f in ok),
        metric=first.get("metric") or "accuracy",
        extra=extra_metrics(ok),
    )


def oriented(e: Estimate, direction: int) -> Estimate:
    """``e`` with its sign flipped where lower is better, so that positive always means better."""
    if direction == 1:
        return e
    return Estimate(-e.mean, -e.high, -e.low, e.n, e.sd)


def column(runs: Mapping[int, Mapping[str, Any]], name: str) -> dict[int, float]:
    return {seed: row[name] for seed, row in runs.items()}


def target_result(label: str, value: float, runs: Mapping[int, Mapping[str, Any]],
                  curves: Mapping[str, list[Mapping[str, Any]]],
                  full_runs: Mapping[int, Mapping[str, Any]], direction: int = 1) -> TargetResult:
    seconds = reached_costs(runs, curves, value, "cost_seconds", direction)
    flops = reached_costs(runs, curves, value, "flops", direction)
    full_seconds = reached_costs(full_runs, curves, value, "cost_seconds", direction)
    return TargetResult(
        target=label, accuracy=value,
        seconds=mean_ci(seconds.values()), flops=mean_ci(flops.values()),
        reached=len(seconds), seeds=len(runs),
        ratio_to_full=paired_ratio(seconds, full_seconds),
    )


def reached_costs(runs: Mapping[int, Mapping[str, Any]],
                  curves: Mapping[str, list[Mapping[str, Any]]], value: float,
                  cost: str, direction: int = 1) -> dict[int, float]:
    """Seed -> cost at the first evaluation reaching ``value`` (seeds that never do: absent)."""
    out = {}
    for seed, final in runs.items():
        curve = curves[final["run_id"]]
        reached = time_to_target([r[cost] for r in curve], [r["accuracy"] for r in curve], value,
                                 direction)
        if reached is not None:
            out[seed] = reached
    return out


def extra_metrics(finals: Sequence[Mapping[str, Any]]) -> dict[str, Estimate]:
    """Mean and interval of every number in the finished runs' ``metrics`` JSON (retrieval)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in finals:
        for name, value in json.loads(row.get("metrics") or "{}").items():
            values[name].append(float(value))
    return {name: mean_ci(v) for name, v in values.items()}


def amortised_cost(row: Mapping[str, Any]) -> float:
    """A run's cost with its score table's cost shared equally by every run that uses it.

    ``cost_seconds`` charges the whole table (what a user running the arm once pays); this is
    the secondary figure for a study that reuses one table across seeds, keeps and policies.
    """
    shared = row["score_shared_by"] or 0
    if not shared or row["score_table_seconds"] is None:
        return row["cost_seconds"]
    return row["cost_seconds"] - row["score_table_seconds"] * (1 - 1 / shared)


# -- the answer ------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """The cheapest arm not worse than full data by more than ``margin`` (None when none is)."""

    setting: str
    margin: float
    best: ArmSummary | None
    runner_up: ArmSummary | None
    full: ArmSummary | None
    tested: int  # arms tested for non-inferiority (Holm-corrected together)
    too_few_seeds: list[ArmSummary] = field(default_factory=list)


def recommend(summaries: Sequence[ArmSummary], setting: str, margin: float) -> Recommendation:
    """Non-inferiority at ``margin`` (accuracy fraction, e.g. 0.01 for 1pp) against full data.

    An arm qualifies when the one-sided paired t-test of "worse than full by ≥ margin" is
    rejected at 2.5% after Holm's correction over every arm tested (the two-sided 95% interval's
    lower bound above −margin, corrected), it has ≥ :data:`MIN_SEEDS` paired seeds, and its
    headline cost (score tables paid in full) is below full data's. The cheapest qualifying arm
    by headline cost ratio wins; the next cheapest is the runner-up.
    """
    members = [s for s in summaries if s.setting == setting]
    full = next((s for s in members if s.is_full), None)
    candidates = [s for s in members if not s.is_full and s.vs_full is not None
                  and s.vs_full.n >= 2]
    pvalues = [noninferiority_p(oriented(s.vs_full, sense(s.metric)), margin)
               for s in candidates]
    passed = holm(pvalues, alpha=ALPHA / 2)
    qualified = [s for s, ok in zip(candidates, passed)
                 if ok and s.vs_full.n >= MIN_SEEDS and s.time_ratio.mean < 1]
    qualified.sort(key=lambda s: s.time_ratio.mean)
    few = [s for s in candidates if s.vs_full.n < MIN_SEEDS]
    return Recommendation(setting, margin, qualified[0] if qualified else None,
                          qualified[1] if len(qualified) > 1 else None, full, len(candidates),
                          few)
