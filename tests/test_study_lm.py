"""Language-model studies: lower-is-better statistics, lm policies in configs, the grid's
baselines at equal tokens, a run's cost accounting, and a whole study end to end in seconds."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import config_error

from prunus.study import run_study
from prunus.study.config import parse_config
from prunus.study.grid import FULL, LANGUAGE, LM, RANDOM, expand_grid
from prunus.study.schema import target_value
from prunus.study.stats import (
    BEATS,
    WORSE,
    Comparison,
    decide,
    higher_is_better,
    mean_ci,
    paired_difference,
    pareto_frontier,
    t_test,
    time_to_target,
    win_rate,
)

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SMALL = "json,csv,shlex,fnmatch,glob,textwrap,string,heapq,bisect,calendar,colorsys,difflib,getopt"
TINY = {
    "corpus_options": {"modules": SMALL, "cache": False}, "target": "email",
    "vocab_size": 300, "context_length": 32, "tokens": 2000, "batch_size": 8,
    "reference_tokens": 1500, "conditional_tokens": 600, "evaluations": 2,
    "eval_documents": 8, "model_options": {"n_embd": 16, "n_head": 2},
}


def study(**changes):
    values = {"name": "lm", "seeds": [0, 1], "keep": [0.25], "targets": ["full+50%"],
              "lm": dict(TINY),
              "policies": [{"lm": "dsir"}, {"lm": "color-filter"},
                           {"lm": "rho1", "options": {"token_keep": 0.5}}]}
    values.update(changes)
    return values


# -- lower is better ------------------------------------------------------------------------


def test_perplexity_is_lower_is_better_and_accuracy_is_not():
    assert higher_is_better("accuracy") and higher_is_better("ndcg@10")
    assert not higher_is_better("target perplexity") and not higher_is_better("loss")


def test_a_lower_perplexity_beats_and_a_higher_one_is_worse():
    better = {s: 100.0 - 5 - 0.1 * s for s in range(6)}
    worse = {s: 100.0 + 5 + 0.1 * s for s in range(6)}
    reference = {s: 100.0 + 0.05 * s for s in range(6)}
    comparisons = []
    for arm in (better, worse):
        difference = paired_difference(arm, reference)
        values = [arm[s] - reference[s] for s in range(6)]
        comparisons.append(Comparison("random", "random", difference, t_test(values), sense=-1))
    decide(comparisons)
    assert [c.verdict for c in comparisons] == [BEATS, WORSE]
    assert comparisons[0].difference.mean < 0  # differences keep their sign


def test_win_rate_time_to_target_and_frontier_follow_the_direction():
    assert win_rate({0: 90.0, 1: 110.0}, {0: 100.0, 1: 100.0}, direction=-1).wins == 1
    cost, perplexity = [10.0, 20.0, 30.0], [300.0, 150.0, 120.0]
    assert time_to_target(cost, perplexity, 150.0, direction=-1) == 20.0
    assert time_to_target(cost, perplexity, 100.0, direction=-1) is None
    # lower perplexity at equal cost dominates once the axis is oriented
    assert pareto_frontier([1.0, 1.0], [-100.0, -120.0]).tolist() == [True, False]


def test_relative_targets_apply_only_where_lower_is_better():
    assert target_value("full+10%", 200.0, direction=-1) == pytest.approx(220.0)
    assert math.isnan(target_value("full+10%", 0.9, direction=1))
    assert math.isnan(target_value("full-1pp", 200.0, direction=-1))
    assert target_value(150.0, 200.0, direction=-1) == 150.0


# -- configs --------------------------------------------------------------------------------


def test_an_lm_only_study_needs_no_datasets_or_models():
    config = parse_config(study())
    assert config.has_lm and not config.datasets and not config.models
    assert config.lm_keeps_of(config.policies[2]) == [1.0]  # Rho-1 selects tokens


@pytest.mark.parametrize("change, words", [
    ({"policies": [{"lm": "dsri"}]}, ["policies[0].lm", "dsir"]),
    ({"policies": [{"lm": "random"}]}, ["policies[0].lm", "color-filter"]),
    ({"policies": [{"lm": "dsir", "options": {"vocab_size": 10}}]},
     ["policies[0].options.vocab_size"]),
    ({"policies": [{"lm": "dsir", "options": {"policy": "rho1"}}]}, ["options.policy"]),
    ({"lm": {**TINY, "keep": 0.5}}, ["lm.keep", "keep list"]),
    ({"policies": [{"lm": "rho1", "keep": [0.5]}]}, ["policies[0].keep", "token_keep"]),
    ({"targets": ["full-1pp"]}, ["targets[0]", "perplexit"]),
    ({"lm": {**TINY, "band": "median"}}, ["lm.band", "middle"]),
    ({"lm": {**TINY, "model": "gpt_huge"}}, ["lm.model", "gpt_tiny", "directory"]),
    ({"lm": {**TINY, "tokenizer": "/no/such/dir"}}, ["lm.tokenizer", "bpe"]),
    ({"policies": [{"lm": "dsir", "sparsity": [0.5]}]}, ["sparsity"]),
])
def test_bad_lm_settings_are_one_sentence_naming_the_field(change, words):
    message = config_error(study(**change))
    assert "\n" not in message
    for word in words:
        assert word in message


def test_grid_adds_full_pool_target_random_and_random_token_baselines():
    runs, jobs = expand_grid(parse_config(study()), {})
    assert not jobs and all(r.task == LANGUAGE for r in runs)
    labels = list(dict.fromkeys(r.policy for r in runs))
    assert labels == ["full pool", "target sample", "random, keep 25%", "DSIR, keep 25%",
                      "CoLoR-Filter, keep 25%", "random tokens, keep 50%", "Rho-1, tokens 50%"]
    by_label = {r.policy: r for r in runs if r.seed == 0}
    assert by_label["full pool"].data.kind == FULL
    assert by_label["random, keep 25%"].data.kind == RANDOM
    assert by_label["DSIR, keep 25%"].data.kind == LM
    assert by_label["DSIR, keep 25%"].random_baseline == "random, keep 25%"
    assert by_label["Rho-1, tokens 50%"].random_baseline == "random tokens, keep 50%"
    assert by_label["random tokens, keep 50%"].train["token_keep"] == 0.5
    assert {r.train["tokens"] for r in runs} == {TINY["tokens"]}  # equal tokens for every arm
    assert len({r.run_id for r in runs}) == len(runs) == 14


def test_every_keep_gets_its_own_random_baseline():
    runs, _ = expand_grid(parse_config(study(keep=[0.1, 0.25], policies=[{"lm": "dsir"}])), {})
    by_label = {r.policy: r for r in runs if r.seed == 0}
    assert {"random, keep 10%", "random, keep 25%"} <= set(by_label)
    assert by_label["random, keep 10%"].train["keep"] == 0.1
    assert by_label["random, keep 25%"].train["keep"] == 0.25
    assert by_label["DSIR, keep 25%"].random_baseline == "random, keep 25%"


# -- one run ----------------------------------------------------------------------------------


def test_take_tokens_stops_at_the_document_that_reaches_the_budget():
    from prunus.text.study import take_tokens

    counts = np.array([5, 3, 4, 10])
    order = np.array([2, 0, 3, 1])
    assert take_tokens(order, counts, 4).tolist() == [2]
    assert take_tokens(order, counts, 5).tolist() == [2, 0]
    assert take_tokens(order, counts, 9).tolist() == [2, 0]
    assert take_tokens(order, counts, 100).tolist() == [2, 0, 3, 1]


def test_random_tokens_keeps_the_same_count_as_rho1():
    from prunus.counts import fraction_count
    from prunus.text.rho1 import RandomTokens

    class State:
        target_mask = torch.ones(3, 7, dtype=torch.bool)
        keep = torch.ones(3, 7, dtype=torch.bool)

    state = State()
    state.target_mask[2, 4:] = False
    RandomTokens(0.6, seed=1).on_after_forward(state)
    assert int(state.keep.sum()) == fraction_count(0.6, 18)
    assert not state.keep[2, 4:].any()


def test_runs_charge_scoring_and_count_tokens():
    from prunus.text.study import run_lm_policy

    full = run_lm_policy({**TINY, "policy": "full"}, seed=0)
    color = run_lm_policy({**TINY, "policy": "color-filter", "keep": 0.25}, seed=0)
    again = run_lm_policy({**TINY, "policy": "color-filter", "keep": 0.25}, seed=1)
    tokens = run_lm_policy({**TINY, "policy": "random-tokens", "token_keep": 0.5}, seed=0)
    assert full["tokens_trained"] == color["tokens_trained"] == TINY["tokens"]
    assert full["scoring_seconds"] == 0 and full["scoring_flops"] == 0
    # the auxiliary models are built once per process but charged to every run in full
    assert color["scoring_seconds"] > 0 and color["scoring_flops"] > 0
    assert again["scoring_seconds"] == color["scoring_seconds"]
    assert color["selected_tokens"] < 0.5 * full["selected_tokens"]
    assert tokens["tokens_with_grad"] < 0.55 * tokens["tokens_trained"]
    assert [h["tokens"] for h in full["history"]][-1] == TINY["tokens"]
    assert full["history"][-1]["target_perplexity"] == full["target_perplexity"]


# -- a study ----------------------------------------------------------------------------------


def test_an_lm_study_end_to_end(tmp_path):
    from prunus.study.sql import query
    from prunus.study.stats import summarize
    from prunus.text.study import run_lm_policy

    values = study(policies=[{"lm": "dsir"}, {"lm": "rho1"}])
    result = run_study(parse_config(values), tmp_path / "out", progress=False)
    assert result.runs == 12 and result.failed == 0
    rows = query(result.out, "SELECT * FROM runs ORDER BY run_index, step").to_pylist()
    finals = [r for r in rows if r["final"]]
    assert {r["metric"] for r in finals} == {"target perplexity"}
    assert all(r["accuracy"] > 1 for r in finals)  # a perplexity, not a fraction
    assert len(rows) == 2 * len(finals)  # one row per evaluation
    dsir_rows = [r for r in finals if r["policy"] == "DSIR, keep 25%"]
    direct = run_lm_policy({**TINY, "policy": "dsir", "keep": 0.25}, seed=dsir_rows[0]["seed"])
    assert dsir_rows[0]["accuracy"] == pytest.approx(direct["target_perplexity"], rel=1e-6)
    assert json.loads(dsir_rows[0]["metrics"])["general perplexity"] == pytest.approx(
        direct["general_perplexity"], rel=1e-6)
    assert dsir_rows[0]["examples_forwarded"] == TINY["tokens"]
    summary = {s.policy: s for s in summarize(rows, values["targets"])}
    dsir = summary["DSIR, keep 25%"]
    assert dsir.comparison("random").rival == "random, keep 25%"
    assert dsir.comparison("random").sense == -1
    assert dsir.accuracy == mean_ci(r["accuracy"] for r in dsir_rows)
    assert summary["Rho-1, tokens 60%"].comparison("random").rival == "random tokens, keep 60%"
    verdicts = "\n".join(result.verdicts)
    assert "full pool: " in verdicts and "test target perplexity" in verdicts
    assert "vs random" in verdicts and "pp" not in verdicts and "%]" not in verdicts
    page = result.report.read_text(encoding="utf-8")
    assert "Language-model metrics" in page and "lower is better" in page
    assert "general perplexity" in page
