"""Study statistics: interval coverage and verdict error rates by simulation, Holm, the
seeds a difference needs, non-inferiority, and per-arm summaries against hand computation."""

import math

import numpy as np
import pytest

from prunus.study.stats import (
    BEATS,
    INCONCLUSIVE,
    MIN_SEEDS,
    WORSE,
    Comparison,
    Estimate,
    decide,
    holm,
    mean_ci,
    noninferiority_p,
    paired_difference,
    paired_ratio,
    paired_values,
    pareto_frontier,
    recommend,
    seeds_needed,
    summarize,
    t_test,
    time_to_target,
    win_rate,
)

DRAWS = 4000
# Monte-Carlo slack: 4 standard errors of a 5% rate over DRAWS studies
SLACK = 4 * math.sqrt(0.05 * 0.95 / DRAWS)


def null_study(rng, seeds):
    """Two identical arms: per-seed accuracy = shared seed effect + independent run noise."""
    seed_effect = rng.normal(0.85, 0.02, seeds)
    a = seed_effect + rng.normal(0, 0.01, seeds)
    b = seed_effect + rng.normal(0, 0.01, seeds)
    return dict(enumerate(a)), dict(enumerate(b))


def verdict_of(a, b):
    comparison = Comparison("random", "b", paired_difference(a, b), t_test(paired_values(a, b)))
    decide([comparison])
    return comparison


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_null_simulation_false_differs_rate_is_at_most_5_percent(seeds):
    rng = np.random.default_rng(seeds)
    excludes_zero = differs = 0
    for _ in range(DRAWS):
        a, b = null_study(rng, seeds)
        comparison = verdict_of(a, b)
        d = comparison.difference
        excludes_zero += d.low > 0 or d.high < 0
        differs += comparison.verdict != INCONCLUSIVE
    # the raw interval has its stated 95% coverage at this seed count...
    assert abs(excludes_zero / DRAWS - 0.05) <= SLACK
    # ...and a verdict never claims a difference more often than 5%, none below 5 seeds
    assert differs / DRAWS <= 0.05 + SLACK
    if seeds < MIN_SEEDS:
        assert differs == 0


def test_holm_keeps_the_family_wise_error_at_5_percent():
    rng = np.random.default_rng(7)
    any_false = 0
    for _ in range(DRAWS // 2):
        comparisons = []
        for arm in range(6):  # six null arms against one baseline, 10 seeds
            a, b = null_study(rng, 10)
            comparisons.append(Comparison("random", str(arm), paired_difference(a, b),
                                          t_test(paired_values(a, b))))
        decide(comparisons)
        any_false += any(c.verdict != INCONCLUSIVE for c in comparisons)
        assert all(c.family == 6 for c in comparisons)
    assert any_false / (DRAWS // 2) <= 0.05 + 2 * SLACK


def test_power_with_a_known_true_difference():
    # the arm is better by one standard deviation of the per-seed difference: a paired t-test
    # with 10 seeds detects that about 80% of the time (noncentral t); with 5, about 40%
    rng = np.random.default_rng(11)
    for seeds, low, high in [(10, 0.72, 0.88), (5, 0.30, 0.50)]:
        beats = 0
        for _ in range(DRAWS // 4):
            shared = rng.normal(0.85, 0.02, seeds)
            a = dict(enumerate(shared + 0.01 + rng.normal(0, 0.01 / math.sqrt(2), seeds)))
            b = dict(enumerate(shared + rng.normal(0, 0.01 / math.sqrt(2), seeds)))
            comparison = verdict_of(a, b)
            beats += comparison.verdict == BEATS
            assert comparison.verdict != WORSE or seeds < 10
        assert low <= beats / (DRAWS // 4) <= high


def test_t_interval_by_hand():
    values = [0.91, 0.935, 0.902, 0.948, 0.925]
    e = mean_ci(values)
    sd = np.std(values, ddof=1)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4)
    assert e.mean == pytest.approx(np.mean(values))
    assert (e.low, e.high) == pytest.approx((e.mean - half, e.mean + half))
    assert e.sd == pytest.approx(sd) and e.n == 5


def test_interval_fallbacks():
    one = mean_ci([0.9])
    assert one.mean == 0.9 and math.isnan(one.low) and not one.has_interval
    same = mean_ci([0.5, 0.5, 0.5])
    assert (same.low, same.high) == (0.5, 0.5)
    assert mean_ci([]).n == 0
    assert mean_ci([0.2, float("nan"), 0.4]).n == 2


def test_paired_difference_ratio_and_win_rate():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.70}
    b = {0: 0.88, 1: 0.82, 2: 0.85, 5: 0.10}  # seeds 3 and 5 unpaired
    diff = paired_difference(a, b)
    assert diff.n == 3
    assert diff.mean == pytest.approx((0.02 - 0.02 + 0.0) / 3)
    wins = win_rate(a, b)
    assert (wins.wins, wins.ties, wins.n) == (1, 1, 3)
    assert wins.rate == pytest.approx(0.5)
    ratio = paired_ratio({0: 1.0, 1: 4.0}, {0: 2.0, 1: 2.0})  # 0.5× and 2×: geometric mean 1
    assert ratio.mean == pytest.approx(1.0)
    assert ratio.low * ratio.high == pytest.approx(1.0)  # symmetric on the log scale


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1: the first passes
    # (0.01 ≤ 0.0125), the second fails (0.02 > 0.0167) and stops the procedure
    assert holm([0.04, 0.01, 0.03, 0.02]) == [False, True, False, False]
    assert holm([0.001, 0.01, 0.04]) == [True, True, True]
    assert holm([float("nan"), 0.01]) == [False, True]


def test_seeds_needed_resolves_the_observed_difference():
    e = mean_ci([0.01, 0.03, -0.005])  # mean 0.0117, spread 0.0175
    n = seeds_needed(e)
    from scipy.stats import t

    assert t.ppf(0.975, n - 1) * e.sd / math.sqrt(n) < e.mean
    assert t.ppf(0.975, n - 2) * e.sd / math.sqrt(n - 1) >= e.mean or n == MIN_SEEDS
    assert seeds_needed(Estimate(0.0, -1, 1, 3, 0.1)) is None
    assert seeds_needed(Estimate(0.02, 0.02, 0.02, 3, 0.0)) == MIN_SEEDS


def test_noninferiority_matches_the_interval_bound():
    for values in ([-0.004, 0.002, -0.001, 0.003, -0.002], [-0.02, 0.0, -0.01, 0.005, -0.015]):
        e = mean_ci(values)
        p = noninferiority_p(e, 0.01)
        assert (p < 0.025) == (e.low > -0.01)


def test_time_to_target_on_a_hand_made_curve():
    cost = [10.0, 20.0, 30.0, 40.0]
    accuracy = [0.50, 0.79, 0.81, 0.80]
    assert time_to_target(cost, accuracy, 0.80) == 30.0
    assert time_to_target(cost, accuracy, 0.50) == 10.0
    assert time_to_target(cost, accuracy, 0.82) is None
    assert time_to_target(cost, [float("nan"), 0.9, 0.9, 0.9], 0.85) == 20.0


def test_pareto_frontier_on_hand_made_points():
    cost = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, float("nan")]
    accuracy = [0.70, 0.80, 0.75, 0.80, 0.90, 0.85, 0.99]
    assert pareto_frontier(cost, accuracy).tolist() == [True, True, False, False, True, False,
                                                        False]
    assert pareto_frontier([1.0, 1.0], [0.5, 0.5]).tolist() == [True, True]


ARMS = {  # policy: (kind, keep, compute rival, random rival, per-seed (accuracy, cost))
    "full data": ("full", 1.0, None, None,
                  [(0.90, 10.0), (0.92, 11.0), (0.91, 12.0), (0.905, 10.5), (0.915, 11.5)]),
    "full data, compute of keep 50%": ("short", 0.5, None, None,
                                       [(0.895, 5.0), (0.915, 5.5), (0.905, 6.0), (0.90, 5.2),
                                        (0.91, 5.8)]),
    "random, keep 50%": ("random", 0.5, "full data, compute of keep 50%", None,
                         [(0.85, 5.0), (0.86, 5.5), (0.84, 6.0), (0.85, 5.2), (0.855, 5.8)]),
    "EL2N-hardest, keep 50%": ("static", 0.5, "full data, compute of keep 50%",
                               "random, keep 50%",
                               [(0.87, 9.0), (0.875, 9.5), (0.86, 10.0), (0.865, 9.2),
                                (0.87, 9.8)]),
}


def synthetic_rows(seeds=5):
    """Four arms × ``seeds`` seeds, two evaluations each; numbers chosen by hand. EL2N's cost
    includes its whole score table (3 s, used by the 5 EL2N runs)."""
    rows, index = [], 0
    for seed in range(seeds):
        for policy, (kind, keep, compute, rand, values) in ARMS.items():
            accuracy, cost = values[seed]
            static = kind == "static"
            examples = 1000 if kind == "full" else 500
            for epoch, (acc, c) in enumerate([(accuracy - 0.05, cost / 2), (accuracy, cost)], 1):
                rows.append({
                    "run_id": f"r{index}", "run_index": index, "setting": "s", "policy": policy,
                    "data_policy": policy.split(",")[0], "data_kind": kind, "keep": keep,
                    "weight_policy": "dense", "sparsity": 0.0, "seed": seed,
                    "baseline": not static, "status": "ok", "error": "",
                    "epoch": epoch, "step": epoch, "end_of_epoch": epoch == 2,
                    "final": epoch == 2, "accuracy": acc, "cost_seconds": c,
                    "flops": 100.0 * c, "scoring_seconds": 3.0 if static else 0.0,
                    "examples_forwarded": examples * epoch // 2,
                    "examples_backpropagated": examples * epoch // 2,
                    "flops_theoretical": False, "score_table": "t" if static else None,
                    "score_table_seconds": 3.0 if static else None,
                    "score_shared_by": seeds if static else 0,
                    "compute_baseline": compute, "random_baseline": rand,
                })
            index += 1
    return rows


def test_summary_against_hand_computation():
    arms = {s.policy: s for s in summarize(synthetic_rows(), ["full-2pp", 0.88])}
    el2n, full = arms["EL2N-hardest, keep 50%"], arms["full data"]
    acc = {p: np.array([v[0] for v in ARMS[p][4]]) for p in ARMS}
    cost = {p: np.array([v[1] for v in ARMS[p][4]]) for p in ARMS}
    assert el2n.accuracy.mean == pytest.approx(acc["EL2N-hardest, keep 50%"].mean())
    assert el2n.vs_full.mean == pytest.approx((acc["EL2N-hardest, keep 50%"] - acc["full data"]).mean())
    assert el2n.vs_random.mean == pytest.approx(
        (acc["EL2N-hardest, keep 50%"] - acc["random, keep 50%"]).mean())
    assert el2n.compute_policy == "full data, compute of keep 50%"
    assert el2n.vs_compute.mean == pytest.approx(
        (acc["EL2N-hardest, keep 50%"] - acc["full data, compute of keep 50%"]).mean())
    assert el2n.backpropagated.mean == pytest.approx(0.5)
    # headline cost: the whole table is in each run's cost; geometric mean of per-seed ratios
    ratios = cost["EL2N-hardest, keep 50%"] / cost["full data"]
    assert el2n.time_ratio.mean == pytest.approx(np.exp(np.log(ratios).mean()))
    # amortised: the 3 s table shared by 5 runs, so each pays 0.6 s instead of 3 s
    amortised = (cost["EL2N-hardest, keep 50%"] - 2.4) / cost["full data"]
    assert el2n.time_ratio_amortised.mean == pytest.approx(np.exp(np.log(amortised).mean()))
    # verdicts: worse than full and than same compute (−4.3pp, tight), beats random by +1.7pp
    assert el2n.comparison("full").verdict == WORSE
    assert el2n.comparison("compute").verdict == WORSE
    assert el2n.comparison("random").verdict == BEATS
    family = sum(len(s.comparisons) for s in arms.values())
    assert all(c.family == family for s in arms.values() for c in s.comparisons)
    assert full.vs_full is None and full.is_full
    # full-2pp = mean full accuracy (0.91) - 0.02 = 0.89: full reaches it at its last
    # evaluation in every seed, EL2N never does
    target = full.targets[0]
    assert target.accuracy == pytest.approx(0.89)
    assert target.reached == 5 and target.seconds.mean == pytest.approx(cost["full data"].mean())
    assert el2n.targets[0].reached == 0 and el2n.targets[0].ratio_to_full.n == 0


def test_recommendation_is_the_cheapest_non_inferior_arm():
    arms = summarize(synthetic_rows(), ["full-1pp"])
    r = recommend(arms, "s", 0.01)
    # the short schedule is within 1pp of full (−0.2pp, tight) at half the cost; random and
    # EL2N lose 4–6 points
    assert r.best.policy == "full data, compute of keep 50%"
    assert r.runner_up is None and r.tested == 3
    assert recommend(arms, "s", 0.001).best is None  # not shown within 0.1pp
    few = recommend(summarize(synthetic_rows(seeds=3), ["full-1pp"]), "s", 0.01)
    assert few.best is None and len(few.too_few_seeds) == 3
