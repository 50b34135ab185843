"""One language-model data-selection run end to end: select, train for a token budget, evaluate.

:func:`run_lm_policy` is what a study runs for one (policy, seed). Every arm trains the same
model for **exactly** ``tokens`` training tokens, so arms differ only in which tokens they
train on; a selection policy picks documents of the pool until it holds ``keep`` of the pool's
tokens (the last document whole) and training revisits them as often as the budget needs.

Policies (``LM_POLICIES``); the baselines a study adds itself come first:

* ``full``: the whole pool (the reference, and the same compute as every other arm).
* ``random``: random pool documents up to ``keep`` of its tokens (the random baseline).
* ``target``: the target sample alone (what a user with only in-domain data would do).
* ``random-tokens``: the whole pool, a random ``token_keep`` of each batch's targets carrying
  gradient (the random baseline of Rho-1).
* ``perplexity``: a reference model's mean token loss per document (Marion et al. 2023), keep
  ``band`` = ``low`` | ``middle`` | ``high``.
* ``dsir``: hashed n-gram importance weights, importance resampling (Xie et al. 2023).
* ``color-filter``: ℓ_prior − ℓ_conditional, keep the highest (Brandfonbrener et al. 2024).
* ``embedding-similarity``: cosine to the target sample's pooled hidden states (RDS+).
* ``quality-classifier``: hashed n-gram logistic regression, target vs pool.
* ``rho1``: the whole pool, the top ``token_keep`` of each batch's targets by excess loss over
  a reference model trained on the target sample (Lin et al. 2024).

Auxiliary models: the *reference* (perplexity, embedding similarity, CoLoR-Filter's prior) is
trained for ``reference_tokens`` on a random ``reference_fraction`` of the pool; CoLoR-Filter's
conditional model and Rho-1's reference are trained on the target sample. They depend on
``data_seed``, not on the run's seed, so one process builds each once; every run that uses one
is still **charged its whole cost** (wall seconds and FLOPs of training and scoring), which is
what a user running that arm once pays.

Metric: perplexity on the target domain's held-out documents (``target_test``), lower is
better; perplexity on the general held-out split (``test``) beside it.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from prunus.config import StrictModel, validated
from prunus.counts import fraction_count
from prunus.errors import PrunusError
from prunus.train.events import Callback

LM_POLICIES = ("full", "random", "target", "random-tokens", "perplexity", "dsir",
               "color-filter", "embedding-similarity", "quality-classifier", "rho1")
BASELINES = ("full", "random", "target", "random-tokens")
TOKEN_POLICIES = ("rho1", "random-tokens")  # the whole pool, a share of each batch's targets
TARGET_METRIC = "target perplexity"

PolicyName = Literal["full", "random", "target", "random-tokens", "perplexity", "dsir",
                     "color-filter", "embedding-similarity", "quality-classifier", "rho1"]

_CORPORA: dict[str, Any] = {}
_PREPARED: dict[str, Any] = {}
_AUXILIARY: dict[str, tuple[Any, float, float]] = {}  # key -> (model or table, seconds, flops)


class LMConfig(StrictModel):
    """Settings of one LM data-selection run (every key has a default; see :func:`run_lm_policy`)."""

    policy: PolicyName = "full"
    corpus: Literal["stdlib", "text"] = "stdlib"
    corpus_options: dict[str, Any] = Field(default_factory=dict)
    target: list[str] | str = "email"
    model: str = "gpt_tiny"  # a registry name or a local from_pretrained directory
    tokenizer: str = "bpe"  # trained on the pool and cached, or a local tokenizer directory
    model_options: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int = Field(2048, ge=258)
    context_length: int = Field(128, ge=8)
    keep: float = Field(1.0, gt=0, le=1)
    tokens: int = Field(150_000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    evaluations: int = Field(4, ge=1)
    eval_documents: int | None = Field(None, ge=1)
    reference_fraction: float = Field(0.25, gt=0, le=1)
    reference_tokens: int = Field(100_000, ge=1)
    conditional_tokens: int = Field(30_000, ge=1)
    band: Literal["low", "middle", "high"] = "low"
    token_keep: float = Field(0.6, gt=0, le=1)
    buckets: int = Field(10_000, ge=2)
    aggregate: Literal["max", "mean"] = "mean"
    data_seed: int = Field(0, ge=0)

    @property
    def token_policy(self) -> bool:
        return self.policy in TOKEN_POLICIES


def check_lm_config(config: dict[str, Any]) -> LMConfig:
    """Validate the settings of an LM run (one-sentence :class:`PrunusError`)."""
    from pathlib import Path

    from prunus.errors import choice_error
    from prunus.text.lm import LM_NAMES

    cfg: LMConfig = validated(LMConfig, dict(config), where="lm")  # type: ignore[assignment]
    if cfg.model not in LM_NAMES and not Path(cfg.model).is_dir():
        raise choice_error("lm.model", cfg.model, [*LM_NAMES, "a local model directory"])
    if cfg.tokenizer != "bpe" and not Path(cfg.tokenizer).is_dir():
        raise choice_error("lm.tokenizer", cfg.tokenizer, ["bpe", "a local tokenizer directory"])
    if cfg.keep < 1 and cfg.policy in ("full", "target", *TOKEN_POLICIES):
        raise PrunusError(f"lm.keep does not apply to the {cfg.policy!r} policy (it trains on "
                          f"{'the target sample' if cfg.policy == 'target' else 'the whole pool'}"
                          "); leave keep at 1.")
    return cfg


def run_lm_policy(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Select data under one policy, train a causal LM for ``tokens`` tokens, evaluate.

    Args:
        config: keys of :class:`LMConfig` (unknown keys are an error).
        seed: the run's seed: model initialisation, block order, the random baselines' draws.

    Returns:
        ``target_perplexity`` and ``general_perplexity`` (final), ``history`` (one dict per
        evaluation: ``tokens``, ``train_seconds``, ``flops``, both perplexities), sizes
        (``selected_documents``, ``selected_tokens``, ``pool_tokens``), costs
        (``tokens_trained``, ``tokens_with_grad``, ``train_seconds``, ``eval_seconds``,
        ``scoring_seconds``, ``train_flops``, ``scoring_flops``) and ``steps``.

    Raises:
        PrunusError: a bad setting; a target that matches no module; a context length the
            model cannot hold.
    """
    from prunus.text.lm import build_lm, check_lm_fits
    from prunus.text.rho1 import RandomTokens, Rho1
    from prunus.text.tokenizer import pack_blocks
    from prunus.text.train import LMMeter, train_lm

    cfg = check_lm_config(config)
    data = _prepared(cfg)
    ids, scoring_seconds, scoring_flops, callback_model = _select(cfg, data, seed)
    split = data["target_split"] if cfg.policy == "target" else data["pool"].subset(ids)
    blocks = pack_blocks(split, data["tokenizer"], cfg.context_length)
    model = build_lm(cfg.model, vocab_size=len(data["tokenizer"]),
                     context_length=cfg.context_length, seed=seed, **cfg.model_options)
    check_lm_fits(model, len(data["tokenizer"]), cfg.context_length)
    callbacks: list[Callback] = []
    if cfg.policy == "rho1":
        callbacks.append(Rho1(callback_model, cfg.token_keep))
    elif cfg.policy == "random-tokens":
        callbacks.append(RandomTokens(cfg.token_keep, seed))
    recorder = _Curve()
    steps = math.ceil(cfg.tokens / (cfg.batch_size * cfg.context_length))
    result = train_lm(
        model, blocks, tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
        eval_sets={"target": data["target_test"], "general": data["general_test"]},
        eval_every=max(1, math.ceil(steps / cfg.evaluations)) if cfg.evaluations > 1 else None,
        eval_at_start=False, callbacks=[*callbacks, recorder], meter=LMMeter(),
    )
    meter = result.meter
    reference_seconds = meter.seconds.get("scoring", 0.0)  # Rho-1's reference forwards
    return {
        "policy": cfg.policy,
        "seed": seed,
        "target_perplexity": result.perplexity["target"],
        "general_perplexity": result.perplexity["general"],
        "history": recorder.rows,
        "selected_documents": len(split),
        "selected_tokens": int(blocks.num_tokens),
        "pool_tokens": int(data["pool_tokens"]),
        "tokens_trained": int(result.tokens),
        "tokens_with_grad": int(meter.tokens_with_grad),
        "steps": int(result.steps),
        "train_seconds": float(meter.seconds["train"]),
        "eval_seconds": float(meter.seconds["eval"]),
        "scoring_seconds": float(scoring_seconds + reference_seconds),
        "train_flops": float(meter.flops["train"] + meter.flops["reference"]),
        "scoring_flops": float(scoring_flops),
        "n_params": int(meter.n_params),
    }


class _Curve(Callback):
    """Keeps each evaluation with the cost spent so far (for time to target)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_evaluation(self, state) -> None:
        meter = state.meter
        row = state.last_eval
        self.rows.append({
            "tokens": int(meter.tokens_forwarded["train"]), "step": int(state.step),
            "train_seconds": float(meter.running_seconds()["train"]),
            "flops": float(meter.flops["train"] + meter.flops["reference"]),
            "target_perplexity": float(row["target"]),
            "general_perplexity": float(row["general"]),
        })


# --------------------------------------------------------------------------- data


def _corpus(cfg: LMConfig):
    from prunus.text.corpus import load_stdlib, load_text

    options = {**cfg.corpus_options, "target": cfg.target, "seed": cfg.data_seed}
    key = repr((cfg.corpus, sorted(options.items())))
    if key not in _CORPORA:
        load = load_stdlib if cfg.corpus == "stdlib" else load_text
        try:
            _CORPORA[key] = load(**options)
        except TypeError as exc:
            raise PrunusError(f"lm.corpus_options holds a setting {cfg.corpus!r} does not take "
                              f"({exc}).") from None
    return _CORPORA[key]


def _prepared(cfg: LMConfig) -> dict[str, Any]:
    """Corpus, tokenizer, per-document token counts and evaluation sequences (cached)."""
    from prunus.text.tokenizer import document_sequences, load_tokenizer

    key = repr((cfg.corpus, sorted(cfg.corpus_options.items()), cfg.target, cfg.data_seed,
                cfg.tokenizer, cfg.vocab_size, cfg.context_length, cfg.eval_documents))
    if key in _PREPARED:
        return _PREPARED[key]
    corpus = _corpus(cfg)
    for split in ("train", "target", "target_test", "test"):
        if len(corpus[split]) == 0:
            raise PrunusError(f"lm: the corpus's {split!r} split is empty; choose another "
                              "target or more data.")
    tokenizer = load_tokenizer(cfg.tokenizer, corpus, vocab_size=cfg.vocab_size)
    pool = corpus["train"]
    counts = np.asarray([len(t) + 1 for t in tokenizer(list(pool.texts),
                                                       add_special_tokens=False)["input_ids"]])

    def held_out(split):
        if cfg.eval_documents is not None and len(split) > cfg.eval_documents:
            rows = np.random.default_rng(cfg.data_seed).choice(
                len(split), cfg.eval_documents, replace=False)
            split = split.take(np.sort(rows))
        return document_sequences(split, tokenizer, cfg.context_length, max_windows=None)

    _PREPARED[key] = {
        "corpus": corpus, "tokenizer": tokenizer, "pool": pool, "counts": counts,
        "pool_tokens": int(counts.sum()), "target_split": corpus["target"],
        "target_test": held_out(corpus["target_test"]), "general_test": held_out(corpus["test"]),
    }
    return _PREPARED[key]


def take_tokens(order: np.ndarray, counts: np.ndarray, budget: int) -> np.ndarray:
    """Rows of ``order`` (a ranking of documents) up to and including the one that brings the
    running token count to ``budget``: a whole-document selection of about ``budget`` tokens."""
    total = np.cumsum(counts[order])
    last = int(np.searchsorted(total, budget, side="left"))
    return order[: min(last + 1, len(order))]


def _select(cfg: LMConfig, data: dict[str, Any], seed: int):
    """``(ids, scoring seconds, scoring FLOPs, model for a token callback)`` of one policy."""
    pool, counts = data["pool"], data["counts"]
    budget = fraction_count(cfg.keep, data["pool_tokens"])
    ids = np.asarray(pool.ids)
    if cfg.policy in ("full", "target", "random-tokens"):
        return ids, 0.0, 0.0, None
    if cfg.policy == "random":
        order = np.random.default_rng(seed).permutation(len(ids))
        return ids[take_tokens(order, counts, budget)], 0.0, 0.0, None
    if cfg.policy == "rho1":
        reference, seconds, flops = _target_model(cfg, data)
        return ids, seconds, flops, reference
    scores, seconds, flops = _scores(cfg, data)
    values = _aligned(scores, ids)
    if cfg.policy == "dsir":  # importance resampling: a weighted draw, not a top-k
        from prunus.text.scores import dsir_resample

        order = dsir_resample(values, len(values), seed=cfg.data_seed)
    elif cfg.policy == "perplexity" and cfg.band == "middle":
        order = np.argsort(np.abs(values - np.median(values)), kind="stable")
    elif cfg.policy == "perplexity" and cfg.band == "low":
        order = np.argsort(values, kind="stable")
    else:  # highest first: perplexity band high, CoLoR-Filter, similarity, classifier
        order = np.argsort(-values, kind="stable")
    return ids[take_tokens(order, counts, budget)], seconds, flops, None


def _aligned(table, ids: np.ndarray) -> np.ndarray:
    """The table's main score in the order of ``ids`` (every id must be in the table)."""
    order = np.argsort(table.ids, kind="stable")
    where = order[np.searchsorted(table.ids[order], ids)]
    if not np.array_equal(table.ids[where], ids):
        raise PrunusError("lm: the score table does not cover every pool document.")
    return np.asarray(table.scores(), dtype=np.float64)[where]


# --------------------------------------------------------------------------- auxiliary models


def _timed(key: str, build):
    """Build once per process; every caller gets ``(value, seconds, flops)`` of the first build."""
    if key not in _AUXILIARY:
        start = time.perf_counter()
        value, flops = build()
        _AUXILIARY[key] = (value, time.perf_counter() - start, flops)
    return _AUXILIARY[key]


def _aux_key(cfg: LMConfig, name: str, *fields: str) -> str:
    shared = ("corpus", "corpus_options", "target", "model", "model_options", "tokenizer",
              "vocab_size",
              "context_length", "batch_size", "lr", "data_seed")
    return repr((name, [(f, getattr(cfg, f)) for f in (*shared, *fields)]))


def _train_aux(cfg: LMConfig, split, tokens: int, model=None):
    """An auxiliary LM trained on ``split`` for ``tokens`` tokens (from ``model`` if given)."""
    from prunus.text.lm import build_lm
    from prunus.text.tokenizer import pack_blocks
    from prunus.text.train import train_lm

    tokenizer = _prepared(cfg)["tokenizer"]
    if model is None:
        model = build_lm(cfg.model, vocab_size=len(tokenizer), context_length=cfg.context_length,
                         seed=cfg.data_seed, **cfg.model_options)
    blocks = pack_blocks(split, tokenizer, cfg.context_length)
    result = train_lm(model, blocks, tokens=tokens, batch_size=cfg.batch_size, lr=cfg.lr,
                      seed=cfg.data_seed)
    return result.model, result.meter.total_flops


def _reference(cfg: LMConfig, data: dict[str, Any]):
    """The pool reference: trained on a random ``reference_fraction`` of the pool's documents."""
    def build():
        pool = data["pool"]
        n = fraction_count(cfg.reference_fraction, len(pool), at_least=1)
        rows = np.sort(np.random.default_rng(cfg.data_seed).choice(len(pool), n, replace=False))
        return _train_aux(cfg, pool.take(rows), cfg.reference_tokens)

    return _timed(_aux_key(cfg, "reference", "reference_fraction", "reference_tokens"), build)


def _target_model(cfg: LMConfig, data: dict[str, Any]):
    """Rho-1's reference: trained on the target sample for ``reference_tokens``."""
    return _timed(_aux_key(cfg, "target", "reference_tokens"),
                  lambda: _train_aux(cfg, data["target_split"], cfg.reference_tokens))


def _conditional(cfg: LMConfig, data: dict[str, Any]):
    """CoLoR-Filter's conditional model: the reference fine-tuned on the target sample."""
    prior, seconds, flops = _reference(cfg, data)

    def build():
        model, more = _train_aux(cfg, data["target_split"], cfg.conditional_tokens,
                                 model=copy.deepcopy(prior))
        return model, more

    model, own_seconds, own_flops = _timed(
        _aux_key(cfg, "conditional", "reference_fraction", "reference_tokens",
                 "conditional_tokens"), build)
    return model, seconds + own_seconds, flops + own_flops


def _scores(cfg: LMConfig, data: dict[str, Any]):
    """The policy's score table over the pool, with the whole cost of making it."""
    from prunus.text import scores as text_scores
    from prunus.text.tokenizer import document_sequences

    pool, tokenizer = data["pool"], data["tokenizer"]

    def sequences():
        return document_sequences(pool, tokenizer, cfg.context_length, max_windows=None)

    def scored(name: str, fields: tuple[str, ...], make, models_cost=(0.0, 0.0)):
        table, seconds, flops = _timed(_aux_key(cfg, name, *fields), make)
        return table, seconds + models_cost[0], flops + models_cost[1]

    reference_fields = ("reference_fraction", "reference_tokens")
    if cfg.policy == "perplexity":
        model, s, f = _reference(cfg, data)
        return scored("perplexity", reference_fields, lambda: _with_flops(
            text_scores.perplexity_scores(model, sequences())), (s, f))
    if cfg.policy == "embedding-similarity":
        model, s, f = _reference(cfg, data)
        target = document_sequences(data["target_split"], tokenizer, cfg.context_length,
                                    max_windows=None)
        return scored("similarity", (*reference_fields, "aggregate"), lambda: _with_flops(
            text_scores.embedding_similarity_scores(model, sequences(), target,
                                                    aggregate=cfg.aggregate)), (s, f))
    if cfg.policy == "color-filter":
        prior = _reference(cfg, data)[0]
        conditional, s, f = _conditional(cfg, data)  # its cost includes the prior's
        return scored("color", (*reference_fields, "conditional_tokens"), lambda: _with_flops(
            text_scores.color_filter_scores(prior, conditional, sequences())), (s, f))
    if cfg.policy == "dsir":
        return scored("dsir", ("buckets",), lambda: _with_flops(
            text_scores.dsir_scores(pool, data["target_split"], buckets=cfg.buckets)))
    if cfg.policy == "quality-classifier":
        return scored("quality", (), lambda: _with_flops(
            text_scores.quality_classifier_scores(pool, data["target_split"],
                                                  seed=cfg.data_seed)))
    raise PrunusError(f"lm.policy {cfg.policy!r} has no score table.")  # pragma: no cover


def _with_flops(table) -> tuple[Any, float]:
    from prunus.study.runs import table_flops

    return table, table_flops(table)
