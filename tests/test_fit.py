"""Model/data fit checked by every command, settings errors without internal names, one rule
for default proxy epochs, and studies selecting from a precomputed score table."""

import json

import numpy as np
import pytest
import torch
from helpers import invoke
from torch import nn

from prunus.errors import PrunusError
from prunus.study import parse_config

TINY = {"hidden": [16]}


def wrong_out(input_shape, num_classes):
    """Three outputs whatever the number of classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def wrong_in(input_shape, num_classes):
    """Expects 17 input features (digits has 64)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(17, num_classes))


WRONG_OUT, WRONG_IN = f"{__name__}:wrong_out", f"{__name__}:wrong_in"


@pytest.fixture(scope="module")
def digits():
    from prunus.datasets import load

    return load("digits")


def study(**changes):
    values = {"seeds": [0], "keep": [0.5], "datasets": [{"name": "digits"}],
              "models": [{"name": "mlp", "options": TINY}], "train": {"epochs": 1}}
    values.update(changes)
    return values


def config_error(values) -> str:
    with pytest.raises(PrunusError) as info:
        parse_config(values)
    return str(info.value)


# -- model/data fit -------------------------------------------------------------------------


def test_check_fit_refuses_wrong_outputs_and_inputs_and_leaves_the_model_as_it_was(digits):
    from prunus.models import build_model, check_fit

    with pytest.raises(PrunusError) as info:
        check_fit(wrong_out(digits.input_shape, 10), digits, "--model 'w'")
    assert str(info.value) == (
        "--model 'w' does not fit dataset 'digits': it must output one logit per class, "
        "shape (2, 10) for 2 examples (got shape (2, 3)).")
    with pytest.raises(PrunusError, match=r"^--model 'w' does not fit dataset 'digits': it "
                                          r"fails on inputs of shape \(1, 8, 8\) \(mat1 and mat2"):
        check_fit(wrong_in(digits.input_shape, 10), digits, "--model 'w'")
    net = build_model("cnn", digits.input_shape, 10, seed=0, width=4)  # BatchNorm inside
    before = [b.clone() for b in net.buffers()]
    check_fit(net, digits)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


@pytest.mark.parametrize("model", [WRONG_OUT, WRONG_IN])
@pytest.mark.parametrize("command", ["train", "score", "prune"])
def test_every_command_refuses_a_model_that_does_not_fit(command, model, tmp_path, capsys):
    args = {"train": ["train", "--epochs", "1"],
            "score": ["score", "--epochs", "1", "--full-epochs", "2",
                      "--out", str(tmp_path / "s.parquet")],
            "prune": ["prune", "--sparsity", "0.5", "--epochs", "1"]}[command]
    assert invoke(*args, "--dataset", "digits", "--model", model, "--device", "cpu") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and f"'{model}' does not fit dataset 'digits'" in err
    if command != "score":  # score's library sentence names its argument, model
        assert f"--model '{model}'" in err
    assert ("(got shape (2, 3))" if model == WRONG_OUT else "fails on inputs of shape") in err
    assert not (tmp_path / "s.parquet").exists()


def test_the_study_still_refuses_a_model_that_does_not_fit_before_any_run(tmp_path):
    from prunus.study import run_study

    config = parse_config(study(models=[{"name": WRONG_OUT}]))
    with pytest.raises(PrunusError, match=r"^models\[0\] \('test_fit:wrong_out'\) does not fit "
                                          r"dataset 'digits': .*\(got shape \(2, 3\)\)\.$"):
        run_study(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# -- settings errors ------------------------------------------------------------------------


def test_model_options_error_lists_the_factory_settings(tmp_path):
    from prunus.models import build_model
    from prunus.study import run_study

    with pytest.raises(PrunusError) as info:
        build_model("mlp", (64,), 10, bogus=1)
    assert str(info.value) == "'bogus' is not a setting of model 'mlp'; its settings are: hidden."
    config = parse_config(study(models=[{"name": "cnn1d", "options": {"bogus": 1}}]))
    with pytest.raises(PrunusError) as info:
        run_study(config, tmp_path / "out", progress=False)
    assert str(info.value) == ("models[0]: 'bogus' is not a setting of model 'cnn1d'; its "
                               "settings are: width.")


def test_weight_options_error_lists_no_internal_names():
    from prunus.weights import get_sparsifier

    message = config_error(study(sparsity=[0.5], policies=[
        {"weights": "magnitude", "options": {"bogus": 1}}]))
    allowed = message.split("allowed: ")[1].rstrip(".").split(", ")
    assert message.startswith("policies[0].options: setting 'bogus' is not known")
    assert {"at", "pattern", "allocation", "min_density"} <= set(allowed)
    assert not {"args", "kwargs", "method", "self", "seed", "sparsity"} & set(allowed)
    for name in allowed:  # each listed setting is one the method really takes
        get_sparsifier("magnitude", 0.5, **{name: _value_of(name)})


def test_nm_does_not_offer_the_pattern_it_derives():
    from prunus.weights import get_sparsifier

    with pytest.raises(PrunusError) as info:
        get_sparsifier("nm", 0.5, pattern="2:4")
    allowed = str(info.value).split("allowed: ")[1].rstrip(".").split(", ")
    assert "pattern" not in allowed and "m" in allowed
    assert get_sparsifier("nm", 0.5, m=8).pattern == "4:8"


def _value_of(name):
    import inspect

    from prunus.weights.schedules import OneShot, Sparsifier

    for cls in (OneShot, Sparsifier):
        parameter = inspect.signature(cls.__init__).parameters.get(name)
        if parameter is not None:
            return parameter.default
    raise AssertionError(name)


def test_select_options_error_names_the_policy_and_its_settings():
    message = config_error(study(policies=[{"score": "el2n", "select": "ccs",
                                            "select_options": {"bogus": 1}}]))
    assert message == ("policies[0].select_options: 'bogus' is not a setting of select "
                       "policy 'ccs'; its settings are: beta, bins, column, return_weights.")
    message = config_error(study(policies=[{"score": "el2n", "select_options": {"beta": 0.2}}]))
    assert message == ("policies[0].select_options: 'beta' is not a setting of select policy "
                       "'hardest'; its settings are: column, return_weights.")
    parse_config(study(policies=[{"score": "el2n", "select": "band",
                                  "select_options": {"skip_hardest": 0.1}}]))


# -- default proxy epochs -------------------------------------------------------------------


def test_one_rule_for_default_proxy_epochs_with_room_for_trajectory_scores():
    from prunus.data.scoring import default_proxy_epochs

    assert [default_proxy_epochs("el2n", None, n) for n in (1, 2, 10, 12)] == [1, 1, 2, 3]
    assert default_proxy_epochs("el2n", None, 10, 0.5) == 5
    assert [default_proxy_epochs("forgetting", None, n) for n in (3, 10, 40)] == [3, 5, 8]
    assert default_proxy_epochs("aum", None, 10) == 5
    assert default_proxy_epochs("dynamic_uncertainty", None, 30) == 10
    assert default_proxy_epochs("forgetting", 2, 10) == 2  # given epochs are kept


def test_score_and_study_use_that_rule(digits, capsys):
    from prunus.data import score
    from prunus.study.grid import expand_grid

    table = score(digits, "mlp", "forgetting", full_epochs=6, model_options=TINY, device="cpu")
    assert table.metadata["epochs"] == 5
    config = parse_config(study(train={"epochs": 12}, policies=[
        {"score": "el2n"}, {"score": "aum"}, {"score": "forgetting", "proxy": {"epochs": 2}}]))
    _, jobs = expand_grid(config, {"digits": "f"}, {"digits": len(digits)})
    assert {job.method: job.epochs for job in jobs} == {"el2n": 3, "aum": 5, "forgetting": 2}
    assert invoke("methods", "scores", "--json") == 0
    listing = json.loads(capsys.readouterr().out)["scores"]
    assert "≥ 5 epochs" in listing["forgetting"] and "≥ 5 epochs" in listing["aum"]


# -- a study selecting from a precomputed table ---------------------------------------------


@pytest.fixture(scope="module")
def el2n_table(digits, tmp_path_factory):
    from prunus.data import score

    path = tmp_path_factory.mktemp("table") / "mine.parquet"
    score(digits, "mlp", "el2n", epochs=1, full_epochs=2, model_options=TINY,
          device="cpu").write(path)
    return path


def test_a_study_selects_from_a_given_table_and_charges_its_recorded_cost(
        digits, el2n_table, tmp_path):
    from prunus.data import ScoreTable, select
    from prunus.study import run_study
    from prunus.study.grid import STATIC, expand_grid
    from prunus.study.runs import apply_data_arm
    from prunus.study.store import StudyStore

    config = parse_config(study(policies=[{"scores": str(el2n_table), "select": "hardest"}]))
    assert config.policies[0].display == "mine-hardest"
    result = run_study(config, tmp_path / "out", progress=False)
    assert result.failed == 0
    given = ScoreTable.read(el2n_table)
    recorded = given.metadata["cost"]["seconds"]
    runs, jobs = expand_grid(config, {"digits": digits.fingerprint}, {"digits": len(digits)})
    (job,) = jobs
    store = StudyStore(tmp_path / "out")
    stored = store.read_scores(job.key)
    assert np.array_equal(stored.ids, given.ids) and np.array_equal(stored.scores(), given.scores())
    assert store.read_score_meta(job.key)["seconds"] == recorded
    (spec,) = [r for r in runs if r.data.kind == STATIC]
    subset, _ = apply_data_arm(spec, digits, (stored, recorded, 0.0))
    want = select(given, 0.5, "hardest", seed=spec.seed)
    assert np.array_equal(np.sort(subset.ids), want)
    rows = store.read_runs().to_pylist()
    charged = {r["score_table_seconds"] for r in rows if r["score_table"] == job.key}
    assert charged == {recorded}
    page = result.report.read_text()
    assert "cost charged is the one recorded in each table" in page and "mine.parquet" in page


def test_a_given_table_from_other_data_or_a_bad_config_is_refused(el2n_table, tmp_path):
    from prunus.data import score
    from prunus.datasets import load
    from prunus.study import run_study

    other = tmp_path / "other.parquet"
    score(load("digits", noise=0.3), "mlp", "el2n", epochs=1, full_epochs=2,
          model_options=TINY, device="cpu").write(other)
    config = parse_config(study(policies=[{"scores": str(other)}]))
    with pytest.raises(PrunusError, match=r"^policies\[0\]\.scores \(.*other\.parquet\): the "
                                          r"score table was not computed on dataset 'digits'"):
        run_study(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert "not both" in config_error(study(policies=[{"score": "el2n",
                                                       "scores": str(el2n_table)}]))
    assert config_error(study(policies=[{"scores": str(tmp_path / "none.parquet")}])) \
        .startswith("policies[0].scores")
    assert config_error(study(policies=[{"scores": str(el2n_table), "proxy": {"epochs": 1}}])) \
        .startswith("policies[0].proxy does not apply to a precomputed table")
