"""Statistics of a study: every arm against full data and against its random baseline, by seed.

- :func:`mean_ci`: mean over seeds with a 95% percentile-bootstrap interval
  (``scipy.stats.bootstrap``, 9,999 resamples, fixed seed). With fewer than two values no
  interval exists: the bounds are NaN and the report says "n/a". Identical values give a
  zero-width interval.
- :func:`paired_difference`: the same, over per-seed differences (seeds both arms finished).
- :func:`win_rate`: share of paired seeds where an arm beats another (ties count half).
- :func:`time_to_target`: the cost (wall seconds or FLOPs, overheads included) at the first
  evaluation whose accuracy reaches a target; None when never reached.
- :func:`pareto_frontier`: the points no other point beats on both accuracy and cost.
- :func:`summarize`: all of it per arm, from the store's rows.

Percentile intervals over 3–5 seeds are approximate (they tend to be too narrow); more seeds
make them trustworthy.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its confidence interval (NaN bounds when ``n`` < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    Fewer than two values: NaN bounds (no interval). All values equal: the interval is that
    value. NaN values are dropped first.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return NO_ESTIMATE
    mean = float(x.mean())
    if len(x) < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    if np.ptp(x) == 0:
        return Estimate(mean, mean, mean, len(x))
    from scipy.stats import bootstrap

    result = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                       method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    interval = result.confidence_interval
    return Estimate(mean, float(interval.low), float(interval.high), len(x))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], seed: int = 0) -> Estimate:
    """Mean of ``a[s] − b[s]`` over the seeds both have, with its bootstrap interval."""
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds], seed=seed)


def paired_ratio(a: Mapping[int, float], b: Mapping[int, float], seed: int = 0) -> Estimate:
    """Mean of ``a[s] / b[s]`` over the seeds both have (``b[s]`` > 0), with its interval."""
    seeds = sorted(s for s in set(a) & set(b) if b[s] and b[s] > 0)
    return mean_ci([a[s] / b[s] for s in seeds], seed=seed)


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


def win_rate(a: Mapping[int, float], b: Mapping[int, float]) -> WinRate:
    """How often ``a`` beats ``b`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    wins = sum(1 for s in seeds if a[s] > b[s])
    ties = sum(1 for s in seeds if a[s] == b[s])
    return WinRate(wins, ties, len(seeds))


def time_to_target(costs: Sequence[float], accuracies: Sequence[float],
                   target: float) -> float | None:
    """The cost at the first evaluation whose accuracy is at least ``target`` (None if none).

    ``costs`` are cumulative (wall seconds or FLOPs with every overhead charged), in the order
    of the evaluations. No interpolation: the run is known to have reached the target only at
    an evaluation.
    """
    for cost, accuracy in zip(costs, accuracies):
        if accuracy is not None and not math.isnan(accuracy) and accuracy >= target:
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
    """Time to one accuracy target: cost when first reached, over the seeds that reached it."""

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
    vs_random: Estimate | None = None
    random_policy: str | None = None
    wins_vs_random: WinRate | None = None
    cost_seconds: Estimate = NO_ESTIMATE
    time_ratio: Estimate = NO_ESTIMATE
    time_ratio_alone: Estimate = NO_ESTIMATE
    flops: Estimate = NO_ESTIMATE
    flops_ratio: Estimate = NO_ESTIMATE
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


def summarize(rows: Sequence[Mapping[str, Any]], targets: Sequence[float | str]) -> list[ArmSummary]:
    """Per-arm statistics from the store's rows (one per run × evaluation), arms in run order.

    The random baseline of an arm is the arm with the random subset at the same keep fraction
    (data policies) and random pruning at the same sparsity (weight policies); full data is the
    dense full-data arm of the same setting.
    """
    from prunus.study.config import target_value

    curves: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    finals: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        curves[row["run_id"]].append(row)
        if row["final"]:
            finals[row["run_id"]] = row
    arms: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for run_id, final in sorted(finals.items(), key=lambda kv: kv[1]["run_index"]):
        arms[arm_key(final)].append(final)

    summaries: dict[tuple, ArmSummary] = {}
    for key, finals_of_arm in arms.items():
        first = finals_of_arm[0]
        ok = [f for f in finals_of_arm if f["status"] == "ok"]
        summary = ArmSummary(
            setting=first["setting"], policy=first["policy"], data_policy=first["data_policy"],
            data_kind=first["data_kind"], keep=first["keep"], weight_policy=first["weight_policy"],
            sparsity=first["sparsity"], baseline=first["baseline"],
            seeds=sorted(f["seed"] for f in ok),
            failures={f["seed"]: f["error"] for f in finals_of_arm if f["status"] != "ok"},
            accuracy=mean_ci(f["accuracy"] for f in ok),
            cost_seconds=mean_ci(f["cost_seconds"] for f in ok),
            flops=mean_ci(f["flops"] for f in ok),
            scoring_seconds=mean_ci(f["scoring_seconds"] for f in ok),
            selection_seconds=mean_ci(f.get("selection_seconds", 0.0) for f in ok),
            uses_scores=first["score_table"] is not None,
            score_shared_by=int(first["score_shared_by"] or 0),
            flops_theoretical=any(f["flops_theoretical"] for f in ok),
            metric=first.get("metric") or "accuracy",
            extra=extra_metrics(ok),
        )
        summaries[key] = summary

    by_seed = {key: {f["seed"]: f for f in finals_of_arm if f["status"] == "ok"}
               for key, finals_of_arm in arms.items()}
    for key, summary in summaries.items():
        mine = by_seed[key]
        full_key = (summary.setting, "full", 1.0, "dense", 0.0)
        full = by_seed.get(full_key, {})
        if summary.metric != "accuracy" and full_key in summaries:
            summary.reference = summaries[full_key].policy
        acc = {s: r["accuracy"] for s, r in mine.items()}
        if key != full_key and full:
            summary.vs_full = paired_difference(acc, {s: r["accuracy"] for s, r in full.items()})
        if full:
            summary.time_ratio = paired_ratio({s: r["cost_seconds"] for s, r in mine.items()},
                                              {s: r["cost_seconds"] for s, r in full.items()})
            summary.time_ratio_alone = paired_ratio(
                {s: cost_alone(r) for s, r in mine.items()},
                {s: r["cost_seconds"] for s, r in full.items()})
            summary.flops_ratio = paired_ratio({s: r["flops"] for s, r in mine.items()},
                                               {s: r["flops"] for s, r in full.items()})
        random_key = random_baseline_key(key)
        if random_key is not None and random_key != key and random_key in by_seed:
            rand = {s: r["accuracy"] for s, r in by_seed[random_key].items()}
            summary.vs_random = paired_difference(acc, rand)
            summary.random_policy = summaries[random_key].policy
            summary.wins_vs_random = win_rate(acc, rand)

    # time to target, relative targets measured from full data's mean final accuracy
    for key, summary in summaries.items():
        full_summary = summaries.get((summary.setting, "full", 1.0, "dense", 0.0))
        full_accuracy = full_summary.accuracy.mean if full_summary else math.nan
        full_runs = by_seed.get((summary.setting, "full", 1.0, "dense", 0.0), {})
        for target in targets:
            value = target_value(target, full_accuracy)
            summary.targets.append(target_result(
                str(target), value, by_seed[key], curves, full_runs))

    # Pareto frontier of arm means within each setting
    for setting in {s.setting for s in summaries.values()}:
        members = [s for s in summaries.values() if s.setting == setting]
        mask = pareto_frontier([m.cost_seconds.mean for m in members],
                               [m.accuracy.mean for m in members])
        for member, on in zip(members, mask):
            member.on_frontier = bool(on)
    return list(summaries.values())


def target_result(label: str, value: float, runs: Mapping[int, Mapping[str, Any]],
                  curves: Mapping[str, list[Mapping[str, Any]]],
                  full_runs: Mapping[int, Mapping[str, Any]]) -> TargetResult:
    seconds, flops = {}, {}
    for seed, final in runs.items():
        curve = curves[final["run_id"]]
        reached = time_to_target([r["cost_seconds"] for r in curve],
                                 [r["accuracy"] for r in curve], value)
        if reached is not None:
            seconds[seed] = reached
            flops[seed] = time_to_target([r["flops"] for r in curve],
                                         [r["accuracy"] for r in curve], value)
    full_seconds = {}
    for seed, final in full_runs.items():
        curve = curves[final["run_id"]]
        reached = time_to_target([r["cost_seconds"] for r in curve],
                                 [r["accuracy"] for r in curve], value)
        if reached is not None:
            full_seconds[seed] = reached
    return TargetResult(
        target=label, accuracy=value,
        seconds=mean_ci(seconds.values()), flops=mean_ci(flops.values()),
        reached=len(seconds), seeds=len(runs),
        ratio_to_full=paired_ratio(seconds, full_seconds),
    )


def extra_metrics(finals: Sequence[Mapping[str, Any]]) -> dict[str, Estimate]:
    """Mean and interval of every number in the finished runs' ``metrics`` JSON (retrieval)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in finals:
        for name, value in json.loads(row.get("metrics") or "{}").items():
            values[name].append(float(value))
    return {name: mean_ci(v) for name, v in values.items()}


def cost_alone(row: Mapping[str, Any]) -> float:
    """A run's cost if its score table had been computed for it alone (no sharing)."""
    shared = row["score_shared_by"] or 0
    if not shared or row["score_table_seconds"] is None:
        return row["cost_seconds"]
    return row["cost_seconds"] + row["score_table_seconds"] * (1 - 1 / shared)


def arm_key(row: Mapping[str, Any]) -> tuple:
    """(setting, data policy, keep, weight policy, sparsity): what seeds are paired within."""
    data = "full" if row["data_kind"] == "full" else row["data_policy"]
    return (row["setting"], data, float(row["keep"]), row["weight_policy"], float(row["sparsity"]))


def random_baseline_key(key: tuple) -> tuple | None:
    """The arm an arm must beat: random subset at its keep, random pruning at its sparsity."""
    setting, data, keep, weights, sparsity = key
    if data == "full" and weights == "dense":
        return None
    random_data = "full" if data == "full" else "random"
    random_weights = "dense" if weights == "dense" else "random pruning"
    return (setting, random_data, keep, random_weights, sparsity)
