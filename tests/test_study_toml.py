"""Study configs written as TOML read back identical; the one pydantic error formatter."""

import json
import math
import tomllib
from pathlib import Path

import pytest

from prunus.config import TrainConfig, validated
from prunus.errors import PrunusError
from prunus.study import StudyStore, parse_config
from prunus.study.config import load_config
from prunus.study.toml import to_toml

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def test_the_examples_are_found():
    assert {p.name for p in EXAMPLES} >= {"quickstart.toml", "sparsity.toml", "negatives.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_reads_back_identical_after_writing(path, tmp_path):
    config = load_config(path)
    values = json.loads(config.model_dump_json(exclude={"train": {"seed"}}))  # set per run
    text = to_toml(values)
    again = parse_config(tomllib.loads(text), source=path.name)
    assert again == config
    assert again.comparable() == config.comparable()
    store = StudyStore(tmp_path)  # the study directory's config.toml, versions and all
    store.write_config(config)
    assert store.read_config() == config
    assert set(store.read_versions()) >= {"prunus", "torch"}


def test_writer_keeps_what_toml_can_hold_and_drops_none_at_any_depth():
    values = {
        "name": 'a "quoted" <name>\nwith a newline, ünïcode and \\ backslash',
        "odd key": 1, "": "empty key", "seeds": [0, 1], "x": 0.1, "big": 1e300, "inf": math.inf,
        "flag": False, "empty_list": [], "empty_table": {}, "none": None,
        "train": {"epochs": 2, "grad_clip": None, "nested": {"a": [1, 2], "b": None}},
        "policies": [{"score": "el2n", "select_options": {"beta": 0.1}, "label": None},
                     {"online": "rs2", "options": {}}],
        "mixed": [[1, 2], ["a"]],
    }
    expected = json.loads(json.dumps(values, allow_nan=True))
    del expected["none"], expected["train"]["grad_clip"], expected["train"]["nested"]["b"]
    del expected["policies"][0]["label"]
    assert tomllib.loads(to_toml(values)) == expected


@pytest.mark.parametrize("value", [[1, None], object(), {"a": {1, 2}}])
def test_values_toml_cannot_hold_are_one_sentence(value):
    with pytest.raises(PrunusError, match=r"^cannot write this value to TOML: .*\.$") as info:
        to_toml({"x": value})
    assert "\n" not in str(info.value)


def test_settings_validated_anywhere_are_named_as_in_a_study():
    with pytest.raises(PrunusError) as info:
        validated(TrainConfig, {"betas": [0.9, 2.0]}, "train")
    assert str(info.value) == "train.betas[1]: Input should be less than 1 (got 2.0)."
    with pytest.raises(PrunusError) as info:
        validated(TrainConfig, {"optimizer": "lion"}, "train")
    assert str(info.value) == "train.optimizer must be one of 'sgd', 'adam' or 'adamw' (got 'lion')."
    study = {"seeds": [0], "datasets": [{"name": "digits"}], "models": [{"name": "mlp"}]}
    with pytest.raises(PrunusError) as info:
        parse_config({**study, "train": {"betas": [0.9, 2.0]}})
    assert str(info.value) == "train.betas[1]: Input should be less than 1 (got 2.0)."


def test_policy_training_overrides_refuse_numbers_written_as_strings():
    study = {"seeds": [0], "datasets": [{"name": "digits"}], "models": [{"name": "mlp"}]}
    for where, policy in [("policies[0]", {"online": "rs2", "train": {"lr": "0.01"}}),
                          ("policies[0].proxy.train",
                           {"score": "el2n", "proxy": {"train": {"lr": "0.01"}}})]:
        with pytest.raises(PrunusError) as info:
            parse_config({**study, "policies": [policy]})
        assert str(info.value) == (
            f"{where} setting lr must be a number written without quotes (got '0.01').")


STUDY = {"seeds": [0], "datasets": [{"name": "digits"}], "models": [{"name": "mlp"}],
         "train": {"epochs": 1}}
BAD = [  # (change to a valid study, the sentence's exact start)
    ({"keep": [1.5]}, "keep[0]: Input should be less than or equal to 1 (got 1.5)."),
    ({"keep": ["0.5"]}, "keep[0] must be a number written without quotes (got '0.5')."),
    ({"seeds": [1, 1]}, "seeds must not repeat a seed."),
    ({"weird": 1}, "weird is not a known setting; remove it or check its spelling."),
    ({"cross": "yes"}, "cross must be true or false written without quotes (got 'yes')."),
    ({"datasets": [{}]}, "datasets[0].name is required but missing from config."),
    ({"datasets": [{"name": "digits", "noise_kind": "x"}]},
     "datasets[0].noise_kind must be one of 'symmetric', 'pairs' or 'instance' (got 'x')."),
    ({"execution": {"workers": 0}},
     "execution.workers: Input should be greater than or equal to 1 (got 0)."),
    ({"policies": [{"score": "el2n", "online": "rs2"}]},
     "policies[0] needs exactly one of score, scores, online, weights, negatives, lm or oneshot."),
    ({"policies": [{"score": "el2n", "train": {"lr": -1}}]},
     "policies[0] setting lr: Input should be greater than 0 (got -1)."),
    ({"policies": [{"score": "el2n", "proxy": {"seeds": []}}]},
     "policies[0].proxy.seeds must name at least one seed."),
    ({"policies": [{"score": "el2m"}]}, "policies[0].score must be one of: "),
    ({"policies": [{"score": "el2n"}, {"score": "el2n"}]},
     "policies[1].label: 'EL2N-hardest' is already the name of policies[0]"),
    ({"policies": [{"negatives": "mined-margin", "options": {"margn": 1}}]},
     "policies[0].options.margn is not a known setting; remove it or check its spelling."),
    ({"targets": [1.5]}, "targets[0] must be an accuracy in (0, 1] or 'full-<N>pp'"),
]


@pytest.mark.parametrize("change, start", BAD, ids=[s.split()[0] for _, s in BAD])
def test_every_bad_setting_is_one_sentence_naming_the_field(change, start):
    with pytest.raises(PrunusError) as info:
        parse_config({**STUDY, **change})
    message = str(info.value)
    assert message.startswith(start)
    assert message.endswith(".") and "\n" not in message and "Value error" not in message
