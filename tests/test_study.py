"""Study config validation, grid expansion with automatic baselines, and the statistics."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from prunus.errors import PrunusError
from prunus.study import parse_config
from prunus.study.config import load_config, to_toml
from prunus.study.grid import expand_grid
from prunus.study.stats import (
    mean_ci,
    paired_difference,
    pareto_frontier,
    summarize,
    time_to_target,
    win_rate,
)


def base(**changes):
    values = {
        "seeds": [0, 1],
        "keep": [0.5],
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp"}],
        "train": {"epochs": 1},
    }
    values.update(changes)
    return values


def error_of(values) -> str:
    with pytest.raises(PrunusError) as info:
        parse_config(values)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- config validation ----------------------------------------------------------------------


def test_bad_keep_fraction_names_the_field():
    policies = [{"score": "el2n"}, {"online": "rs2"}, {"score": "el2n", "select": "ccs",
                                                       "keep": [0.3, 1.5]}]
    message = error_of(base(policies=policies))
    assert message.startswith("policies[2].keep[1]")
    assert "1.5" in message


def test_unknown_key_and_unknown_method_are_named():
    assert error_of(base(policies=[{"score": "el2n", "sel": "ccs"}])) == (
        "policies[0].sel is not a known setting; remove it or check its spelling.")
    message = error_of(base(policies=[{"score": "el2m"}]))
    assert message.startswith("policies[0].score must be one of:") and "el2n" in message
    message = error_of(base(policies=[{"online": "rs2"}, {"weights": "magnitud",
                                                          "sparsity": [0.5]}]))
    assert message.startswith("policies[1].weights must be one of:") and "magnitude" in message
    assert "select" in error_of(base(policies=[{"score": "el2n", "select": "hardst"}]))


def test_settings_are_tried_at_validation():
    message = error_of(base(policies=[{"online": "rs2", "options": {"bogus": 1}}]))
    assert message.startswith("policies[0].options:") and "bogus" in message
    message = error_of(base(policies=[{"score": "el2n", "select": "ccs",
                                       "select_options": {"beta": 2.0}}]))
    assert message.startswith("policies[0].select_options:") and "beta" in message
    message = error_of(base(policies=[{"weights": "magnitude"}]))
    assert message.startswith("policies[0].sparsity")


def test_empty_seeds_and_bad_targets_and_train_seed():
    assert error_of(base(seeds=[])).startswith("seeds")
    assert error_of(base(targets=["full-1%"])).startswith("targets")
    assert "seed" in error_of(base(train={"epochs": 1, "seed": 3}))
    assert error_of(base(datasets=[])).startswith("datasets")
    assert error_of(base(models=[{"name": "nope"}])).startswith("models[0]")
    assert error_of(base(datasets=[{"name": "digits", "options": {"size": 3}}])).startswith(
        "datasets[0]")


def test_reserved_and_duplicate_labels():
    message = error_of(base(policies=[{"online": "rs2", "train": {"lr": 0.01}}]))
    assert message.startswith("policies[0].label: 'RS2' names a baseline")
    message = error_of(base(policies=[{"score": "el2n"}, {"score": "el2n"}]))
    assert message.startswith("policies[1].label")


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [0, 1\n[[datasets]]\nname = 'digits'\n")
    with pytest.raises(PrunusError, match="bad.toml is not valid TOML"):
        load_config(bad)
    with pytest.raises(PrunusError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    from prunus import cli

    config = tmp_path / "study.toml"
    config.write_text(to_toml(base(policies=[{"score": "el2n", "keep": [0.0]}])))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli.main(["study", str(config), "--out", str(out), "--quiet"])
    assert info.value.code == 2
    assert "policies[0].keep[0]" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_is_one_sentence(tmp_path):
    from prunus.study import run_study

    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = parse_config(base())
    with pytest.raises(PrunusError, match="not a writable directory"):
        run_study(config, blocker / "study", progress=False)


def test_toml_writer_round_trips():
    import tomllib

    values = {"name": 'a "quoted" <name>', "seeds": [0, 1], "x": 0.1, "flag": True,
              "train": {"epochs": 2, "nested": {"a": [1, 2]}},
              "policies": [{"score": "el2n", "select_options": {"beta": 0.1}}, {"online": "rs2"}]}
    assert tomllib.loads(to_toml(values)) == values


# -- grid -----------------------------------------------------------------------------------


def test_grid_adds_baselines_pairs_seeds_and_shares_scores():
    config = parse_config(base(
        seeds=[0, 1], keep=[0.3, 0.5], sparsity=[0.8],
        policies=[{"score": "el2n", "select": "hardest"},
                  {"score": "el2n", "select": "ccs", "keep": [0.5]},
                  {"online": "rs2"},  # the same as the automatic RS2 baseline
                  {"weights": "magnitude"}],
    ))
    runs, jobs = expand_grid(config, {"digits": "fp"}, {"digits": 1437})
    labels = Counter(r.policy for r in runs)
    expected = {
        "full data", "random, keep 30%", "random, keep 50%", "RS2, keep 30%", "RS2, keep 50%",
        "EL2N-hardest, keep 30%", "EL2N-hardest, keep 50%", "EL2N-CCS, keep 50%",
        "random pruning, sparsity 80%", "magnitude, sparsity 80%",
    }
    assert set(labels) == expected
    assert all(count == 2 for count in labels.values())  # every arm once per seed
    by_seed = {s: sorted(r.policy for r in runs if r.seed == s) for s in (0, 1)}
    assert by_seed[0] == by_seed[1]
    assert len({r.run_id for r in runs}) == len(runs)
    baselines = {r.policy for r in runs if r.baseline}
    assert baselines == {"full data", "random, keep 30%", "random, keep 50%", "RS2, keep 30%",
                         "RS2, keep 50%", "random pruning, sparsity 80%"}
    # one table (same method and proxy) serves both EL2N policies: 3 arms x 2 seeds
    assert len(jobs) == 1
    users = [r for r in runs if r.score_key]
    assert len(users) == 6 and all(r.score_shared_by == 6 for r in users)
    assert [r.index for r in runs] == list(range(len(runs)))
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # seed by seed
    again, _ = expand_grid(config, {"digits": "fp"}, {"digits": 1437})
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    _, other_jobs = expand_grid(config, {"digits": "another"}, {"digits": 1437})
    assert other_jobs[0].key != jobs[0].key


def test_cross_adds_joint_arms():
    config = parse_config(base(seeds=[0], keep=[0.5], sparsity=[0.5], cross=True,
                               policies=[{"weights": "magnitude"}]))
    runs, _ = expand_grid(config, {"digits": "fp"}, {"digits": 1437})
    names = {r.policy for r in runs}
    assert "random, keep 50% + random pruning, sparsity 50%" in names
    assert "RS2, keep 50% + magnitude, sparsity 50%" in names
    assert len(names) == 1 + 2 + 2 + 2 * 2


# -- statistics -----------------------------------------------------------------------------


def exact_percentile_interval(values, confidence=0.95):
    """Every one of the n^n equally likely resamples, enumerated: the exact bootstrap
    distribution of the mean, and its percentile interval."""
    values = np.asarray(values, dtype=float)
    means = np.array([values[list(idx)].mean()
                      for idx in itertools.product(range(len(values)), repeat=len(values))])
    tail = (1 - confidence) / 2 * 100
    return np.percentile(means, tail), np.percentile(means, 100 - tail)


def test_bootstrap_interval_matches_exact_enumeration():
    values = [0.91, 0.935, 0.902, 0.948, 0.925]
    low, high = exact_percentile_interval(values)
    estimate = mean_ci(values)
    assert estimate.mean == pytest.approx(np.mean(values))
    assert estimate.n == 5
    spread = max(values) - min(values)
    assert estimate.low == pytest.approx(low, abs=0.02 * spread)
    assert estimate.high == pytest.approx(high, abs=0.02 * spread)


def test_interval_fallbacks():
    one = mean_ci([0.9])
    assert one.mean == 0.9 and math.isnan(one.low) and not one.has_interval
    same = mean_ci([0.5, 0.5, 0.5])
    assert (same.low, same.high) == (0.5, 0.5)
    assert mean_ci([]).n == 0
    assert mean_ci([0.2, float("nan"), 0.4]).n == 2


def test_paired_difference_and_win_rate():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.70}
    b = {0: 0.88, 1: 0.82, 2: 0.85, 5: 0.10}  # seed 3 and 5 unpaired
    diff = paired_difference(a, b)
    assert diff.n == 3
    assert diff.mean == pytest.approx((0.02 - 0.02 + 0.0) / 3)
    wins = win_rate(a, b)
    assert (wins.wins, wins.ties, wins.n) == (1, 1, 3)
    assert wins.rate == pytest.approx(0.5)


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
    # duplicates are both on it
    assert pareto_frontier([1.0, 1.0], [0.5, 0.5]).tolist() == [True, True]


def synthetic_rows():
    """Three arms × three seeds with two evaluations each; numbers chosen by hand."""
    rows = []
    finals = {
        ("full", "full data", 1.0): [(0.90, 10.0), (0.92, 11.0), (0.91, 12.0)],
        ("random", "random", 0.5): [(0.85, 5.0), (0.86, 5.5), (0.84, 6.0)],
        ("static", "EL2N-hardest", 0.5): [(0.87, 7.0), (0.85, 7.5), (0.86, 8.0)],
    }
    index = 0
    for seed in range(3):
        for (kind, label, keep), values in finals.items():
            accuracy, cost = values[seed]
            policy = label if kind == "full" else f"{label}, keep {int(keep * 100)}%"
            for epoch, (acc, c) in enumerate([(accuracy - 0.05, cost / 2), (accuracy, cost)], 1):
                rows.append({
                    "run_id": f"r{index}", "run_index": index, "setting": "s", "policy": policy,
                    "data_policy": label, "data_kind": kind, "keep": keep,
                    "weight_policy": "dense", "sparsity": 0.0, "seed": seed,
                    "baseline": kind != "static", "status": "ok", "error": "",
                    "epoch": epoch, "step": epoch, "end_of_epoch": True, "final": epoch == 2,
                    "accuracy": acc, "cost_seconds": c, "flops": 100.0 * c,
                    "scoring_seconds": 1.0 if kind == "static" else 0.0,
                    "flops_theoretical": False,
                    "score_table": "t" if kind == "static" else None,
                    "score_table_seconds": 3.0 if kind == "static" else None,
                    "score_shared_by": 3 if kind == "static" else 0,
                })
            index += 1
    return rows


def test_summary_against_hand_computation():
    arms = {s.policy: s for s in summarize(synthetic_rows(), ["full-2pp", 0.88])}
    el2n = arms["EL2N-hardest, keep 50%"]
    assert el2n.accuracy.mean == pytest.approx(0.86)
    assert el2n.vs_full.mean == pytest.approx(np.mean([0.87 - 0.90, 0.85 - 0.92, 0.86 - 0.91]))
    assert el2n.vs_random.mean == pytest.approx(np.mean([0.02, -0.01, 0.02]))
    assert (el2n.wins_vs_random.wins, el2n.wins_vs_random.n) == (2, 3)
    assert el2n.time_ratio.mean == pytest.approx(np.mean([7 / 10, 7.5 / 11, 8 / 12]))
    # the table cost 3 s shared by 3 runs: alone, each run pays 2 s more
    assert el2n.time_ratio_alone.mean == pytest.approx(np.mean([9 / 10, 9.5 / 11, 10 / 12]))
    full = arms["full data"]
    assert full.vs_full is None and full.is_full
    # full-2pp = mean full accuracy (0.91) - 0.02 = 0.89: full reaches it at its last
    # evaluation in every seed (0.90, 0.92, 0.91), EL2N never does
    target = full.targets[0]
    assert target.accuracy == pytest.approx(0.89)
    assert target.reached == 3 and target.seconds.mean == pytest.approx(11.0)
    assert el2n.targets[0].reached == 0
    absolute = arms["random, keep 50%"].targets[1]
    assert absolute.reached == 0
    assert el2n.targets[1].reached == 0
    assert full.targets[1].seconds.mean == pytest.approx(11.0)
    assert el2n.targets[0].ratio_to_full.n == 0
    # frontier over arm means: random (cheapest) and full (most accurate); EL2N is beaten by
    # neither on both counts, so it is on it too
    assert {a.policy for a in arms.values() if a.on_frontier} == set(arms)


def test_percentage_points_never_show_a_negative_zero():
    from prunus.study.report import pp

    assert pp(-0.0004) == "+0.0pp" and pp(-0.0006) == "\u22120.1pp" and pp(0.012) == "+1.2pp"
