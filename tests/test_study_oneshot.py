"""One-shot studies: the joint grid of prunings × recovery data with random baselines on both
axes, bad settings in one sentence, and a whole study end to end in seconds."""

import json

import pytest
from helpers import config_error

from prunus.study import run_study
from prunus.study.config import parse_config
from prunus.study.grid import DENSE, FULL, ONESHOT, expand_grid

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TINY = {
    "corpus_options": {"modules": "json,csv,shlex,fnmatch,glob,textwrap,string", "cache": False},
    "model_options": {"n_embd": 16, "n_head": 2}, "vocab_size": 300, "context_length": 32,
    "pretrain_tokens": 3000, "samples": 4, "budget": 256, "fraction": 0.5,
    "pool_documents": 16, "test_documents": 8, "recoveries": ["loss_increase"],
}


def study(**changes):
    values = {"name": "oneshot", "seeds": [0, 1], "sparsity": [0.5], "targets": ["full+50%"],
              "oneshot": dict(TINY), "policies": [{"oneshot": "wanda"}]}
    values.update(changes)
    return values


def test_grid_crosses_prunings_with_recoveries_and_adds_both_random_axes():
    runs, jobs = expand_grid(parse_config(study()), {})
    assert not jobs and all(r.task == ONESHOT for r in runs)
    labels = list(dict.fromkeys(r.policy for r in runs))
    assert labels == [
        "dense", "dense + random recovery",
        "random pruning, sparsity 50%", "Wanda, sparsity 50%",
        "random pruning, sparsity 50% + random recovery", "Wanda, sparsity 50% + random recovery",
        "random pruning, sparsity 50% + loss_increase recovery",
        "Wanda, sparsity 50% + loss_increase recovery",
    ]
    by_label = {r.policy: r for r in runs if r.seed == 0}
    dense = by_label["dense"]
    assert dense.data.kind == FULL and dense.weights.kind == DENSE and dense.baseline
    chosen = by_label["Wanda, sparsity 50% + loss_increase recovery"]
    assert not chosen.baseline and chosen.train["method"] == "wanda"
    assert chosen.train["recovery"] == "loss_increase" and chosen.train["sparsity"] == 0.5
    # weight axis: random pruning with the same recovery; data axis: random recovery data
    assert chosen.random_baseline == "random pruning, sparsity 50% + loss_increase recovery"
    assert chosen.compute_baseline == "Wanda, sparsity 50% + random recovery"
    assert by_label["Wanda, sparsity 50% + random recovery"].compute_baseline == \
        "Wanda, sparsity 50%"
    assert by_label["Wanda, sparsity 50%"].compute_baseline is None
    assert by_label["random pruning, sparsity 50%"].train["method"] == "random"
    assert by_label["random pruning, sparsity 50%"].baseline
    assert len({r.run_id for r in runs}) == len(runs) == 16


def test_an_nm_pattern_is_one_arm_and_owl_gets_random_pruning_at_owl_sparsities():
    values = study(policies=[{"oneshot": "sparsegpt", "options": {"pattern": "2:4"}},
                             {"oneshot": "wanda", "options": {"layer_sparsity": "owl"},
                              "label": "OWL+Wanda"}])
    values["oneshot"]["recoveries"] = []
    runs, _ = expand_grid(parse_config(values), {})
    by_label = {r.policy: r for r in runs if r.seed == 0}
    nm = by_label["sparsegpt, 2:4"]
    assert nm.weights.sparsity == 0.5 and nm.random_baseline == "random pruning, 2:4"
    assert by_label["random pruning, 2:4"].train["pattern"] == "2:4"
    owl = by_label["OWL+Wanda, sparsity 50%"]
    assert owl.random_baseline == "random pruning (OWL), sparsity 50%"
    assert by_label["random pruning (OWL), sparsity 50%"].train["layer_sparsity"] == "owl"


@pytest.mark.parametrize("change, words", [
    ({"policies": [{"oneshot": "pruner"}]}, ["policies[0].oneshot", "wanda", "sparsegpt"]),
    ({"policies": [{"oneshot": "wanda", "options": {"recovery": "random"}}]},
     ["policies[0].options.recovery", "remove it"]),
    ({"policies": [{"oneshot": "wanda", "keep": [0.5]}]}, ["keep does not apply"]),
    ({"policies": [{"oneshot": "wanda", "options": {"pattern": "4:2"}}]}, ["pattern", "N < M"]),
    ({"policies": [{"oneshot": "wanda", "options": {"pattern": "2:4"}, "sparsity": [0.6]}]},
     ["sparsity does not apply to an N:M pattern"]),
    ({"sparsity": []}, ["policies[0].sparsity must list"]),
    ({"oneshot": {**TINY, "recoveries": ["best"]}}, ["oneshot.recoveries", "loss_increase"]),
    ({"oneshot": {**TINY, "model": "gpt_huge"}}, ["oneshot.model", "gpt_tiny"]),
    ({"targets": ["full-1pp"]}, ["perplexity", "lower is better"]),
])
def test_bad_oneshot_settings_are_one_sentence_naming_the_field(change, words):
    message = config_error(study(**change))
    assert all(w in message for w in words), message
    assert message.count(". ") == 0 or message.endswith(".")


def test_a_oneshot_study_end_to_end(tmp_path, monkeypatch):
    from prunus.study.sql import query
    from prunus.study.stats import summarize
    from prunus.weights.study import run_oneshot_policy

    monkeypatch.setenv("PRUNUS_CACHE_DIR", str(tmp_path / "cache"))
    values = study()
    result = run_study(parse_config(values), tmp_path / "out", progress=False)
    assert result.runs == 16 and result.failed == 0
    rows = query(result.out, "SELECT * FROM runs ORDER BY run_index").to_pylist()
    assert all(r["final"] and r["metric"] == "perplexity" and r["accuracy"] > 1 for r in rows)
    by = {(r["policy"], r["seed"]): r for r in rows}
    dense = by[("dense", 0)]
    pruned = by[("Wanda, sparsity 50%", 0)]
    recovered = by[("Wanda, sparsity 50% + random recovery", 0)]
    chosen = by[("Wanda, sparsity 50% + loss_increase recovery", 0)]
    # no recovery: the perplexity after is the one before; the dense one is every row's
    assert pruned["accuracy"] == json.loads(pruned["metrics"])["perplexity before recovery"]
    assert json.loads(chosen["metrics"])["dense perplexity"] == pytest.approx(dense["accuracy"])
    assert json.loads(recovered["metrics"])["perplexity before recovery"] == pruned["accuracy"]
    assert pruned["achieved_sparsity"] == pytest.approx(0.5)
    assert by[("random pruning, sparsity 50%", 0)]["achieved_sparsity"] == pytest.approx(0.5)
    # cost: pruning for every pruned arm, scoring only where the data is chosen by score
    assert pruned["selection_seconds"] > 0 and pruned["examples_backpropagated"] == 0
    assert recovered["scoring_seconds"] == 0 and chosen["scoring_seconds"] > 0
    assert recovered["examples_backpropagated"] == chosen["examples_backpropagated"] == 256
    assert dense["cost_seconds"] == 0
    # the study's row is the run itself, recomputed directly
    settings = parse_config(values).oneshot_of("wanda", {}, 0.5, "random")
    direct = run_oneshot_policy(settings, seed=0)
    assert recovered["accuracy"] == pytest.approx(direct["perplexity"], rel=1e-6)
    summary = {s.policy: s for s in summarize(rows, values["targets"])}
    arm = summary["Wanda, sparsity 50% + loss_increase recovery"]
    assert {c.kind: c.rival for c in arm.comparisons} == {
        "full": "dense", "compute": "Wanda, sparsity 50% + random recovery",
        "random": "random pruning, sparsity 50% + loss_increase recovery"}
    assert all(c.sense == -1 for c in arm.comparisons)
    verdicts = "\n".join(result.verdicts)
    assert "vs random pruning, sparsity 50% + loss_increase recovery" in verdicts
    assert "s per run (pruning" in verdicts and "cost n/a" not in verdicts
    assert result.report.read_text(encoding="utf-8").count("Wanda, sparsity 50%") > 0
    resumed = run_study(parse_config(values), tmp_path / "out", resume=True, progress=False)
    assert resumed.ran == 0 and resumed.runs == 16


def test_a_study_naming_no_targets_gets_a_perplexity_target():
    values = study()
    del values["targets"]
    assert parse_config(values).targets == ["full+10%"]
    lm = {"name": "lm", "lm": {}, "policies": [{"lm": "dsir"}]}
    assert parse_config(lm).targets == ["full+10%"]
