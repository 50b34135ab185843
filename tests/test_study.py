"""Study config validation, grid expansion with automatic baselines, and the statistics."""

import math
from collections import Counter

import pytest

from prunus.errors import PrunusError
from prunus.study import parse_config
from prunus.study.config import load_config
from prunus.study.grid import expand_grid
from prunus.study.toml import to_toml


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


def test_score_policy_settings_and_proxy_length_are_checked():
    message = error_of(base(policies=[{"score": "el2n", "options": {"bogus": 1}}]))
    assert message.startswith("policies[0].options does not apply to a score policy")
    assert "proxy.options" in message and "bogus" in message
    message = error_of(base(train={"epochs": 2}, policies=[{"score": "el2n",
                                                             "proxy": {"epochs": 5}}]))
    assert message.startswith("policies[0].proxy.epochs must be at most the training epochs (2)")
    ok = base(train={"epochs": 2}, policies=[{"score": "el2n", "proxy": {"epochs": 5},
                                               "train": {"epochs": 6}}])
    assert parse_config(ok).policies[0].proxy.epochs == 5


def test_numbers_written_as_strings_are_refused():
    assert error_of(base(keep=["0.5"])) == (
        "keep[0] must be a number written without quotes (got '0.5').")
    assert error_of(base(train={"epochs": "3"})).startswith("train.epochs must be an integer")


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
    uniform = "random pruning (uniform, at init), sparsity 80%"
    erk = "random pruning (ERK, at 50% of training), sparsity 80%"  # magnitude prunes at 50%
    expected = {
        "full data", "full data, compute of keep 30%", "full data, compute of keep 50%",
        "random, keep 30%", "random, keep 50%", "RS2, keep 30%", "RS2, keep 50%",
        "EL2N-hardest, keep 30%", "EL2N-hardest, keep 50%", "EL2N-CCS, keep 50%",
        uniform, erk, "magnitude, sparsity 80%",
    }
    assert set(labels) == expected
    assert all(count == 2 for count in labels.values())  # every arm once per seed
    by_seed = {s: sorted(r.policy for r in runs if r.seed == s) for s in (0, 1)}
    assert by_seed[0] == by_seed[1]
    assert len({r.run_id for r in runs}) == len(runs)
    baselines = {r.policy for r in runs if r.baseline}
    assert baselines == expected - {"EL2N-hardest, keep 30%", "EL2N-hardest, keep 50%",
                                    "EL2N-CCS, keep 50%", "magnitude, sparsity 80%"}
    # every arm names the arms it is judged against
    rivals = {r.policy: (r.compute_baseline, r.random_baseline) for r in runs}
    assert rivals["EL2N-CCS, keep 50%"] == ("full data, compute of keep 50%", "random, keep 50%")
    assert rivals["RS2, keep 30%"] == ("full data, compute of keep 30%", "random, keep 30%")
    assert rivals["random, keep 30%"] == ("full data, compute of keep 30%", None)
    assert rivals["magnitude, sparsity 80%"] == (None, erk)
    assert rivals["full data"] == (None, None)
    # one compute cadence for every run: 1/20 of the full-data run's examples
    assert {r.train["eval_every_examples"] for r in runs} == {math.ceil(1437 * 1 / 20)}
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
    uniform = "random pruning (uniform, at init), sparsity 50%"
    erk = "random pruning (ERK, at 50% of training), sparsity 50%"
    assert f"random, keep 50% + {uniform}" in names
    joint = next(r for r in runs if r.policy == "RS2, keep 50% + magnitude, sparsity 50%")
    assert joint.random_baseline == f"random, keep 50% + {erk}"
    assert joint.compute_baseline == "full data, compute of keep 50%"
    # full, its short schedule, 2 data arms, 3 weight arms, 2 × 3 joint arms
    assert len(names) == 1 + 1 + 2 + 3 + 2 * 3


def test_online_arms_get_matched_baselines_that_wait_for_them():
    from prunus.study.grid import matched_run

    config = parse_config(base(seeds=[0, 1], keep=[0.3], train={"epochs": 4},
                               policies=[{"online": "infobatch"}]))
    runs, _ = expand_grid(config, {"digits": "fp"}, {"digits": 1000})
    by = {(r.policy, r.seed): r for r in runs}
    source = by[("InfoBatch, keep 30%", 1)]
    assert source.compute_baseline == "full data, compute of InfoBatch, keep 30%"
    assert source.random_baseline == "random, backprops of InfoBatch, keep 30%"
    compute = by[("full data, compute of InfoBatch, keep 30%", 1)]
    rand = by[("random, backprops of InfoBatch, keep 30%", 1)]
    assert compute.matches == rand.matches == source.run_id  # same seed's run
    assert compute.index > source.index
    # made concrete from the measured count: both backpropagate exactly what InfoBatch did
    epochs = config.train.epochs
    assert matched_run(compute, 1234).train["examples"] == 1234
    concrete = matched_run(rand, 1234)
    assert concrete.train["examples"] == 1234
    from prunus.counts import fraction_count

    assert fraction_count(concrete.data.keep, 1000) == math.ceil(1234 / epochs)


def test_percentage_points_never_show_a_negative_zero():
    from prunus.study.formatting import pp

    assert pp(-0.0004) == "+0.0pp" and pp(-0.0006) == "\u22120.1pp" and pp(0.012) == "+1.2pp"


def test_a_model_that_does_not_fit_its_data_is_refused_before_any_run(tmp_path):
    from prunus.study import run_study

    config = parse_config(base(models=[{"name": "mlp"}, {"name": "cnn1d", "label": "c"}]))
    with pytest.raises(PrunusError, match=r"^models\[1\]: cnn1d needs inputs of shape"):
        run_study(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    config = parse_config(base(models=[{"name": "mlp", "options": {"colour": 1}}]))
    with pytest.raises(PrunusError, match=r"^models\[0\]: 'colour' is not a setting of model 'mlp'"):
        run_study(config, tmp_path / "out", progress=False)


def test_dataset_noise_kind_is_checked_and_reaches_the_loader():
    import numpy as np

    from prunus.study.runs import load_dataset

    config = parse_config(base(datasets=[{"name": "digits", "noise": 0.2, "noise_kind": "pairs"}]))
    data = load_dataset(config.datasets[0].model_dump())
    flipped = np.isin(data.ids, data.flipped_ids)
    assert np.array_equal(data.y[flipped], (data.clean_y[flipped] + 1) % data.num_classes)
    assert error_of(base(datasets=[{"name": "digits", "noise_kind": "odd"}])).startswith(
        "datasets[0].noise_kind must be one of")
