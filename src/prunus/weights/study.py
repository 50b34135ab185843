"""One one-shot pruning run end to end: prune a pretrained causal LM, recover it, evaluate.

:func:`run_oneshot_policy` is what a study runs for one (pruning, recovery, seed) — the joint
grid where the two halves of prunus meet: *which weights survive* (:func:`prunus.weights.oneshot`:
wanda, sparsegpt, magnitude, random; uniform or OWL layer sparsities; unstructured or N:M) and
*which data repairs them* (:func:`prunus.weights.recovery.recover` on a recovery set chosen by
``random`` or ``loss_increase``, or no recovery at all).

The "pretrained" model is a registry causal LM (``gpt_tiny``, ``gpt_small``, ``llama_tiny``)
trained for ``pretrain_tokens`` on the corpus's training split and cached on disk by its recipe
(corpus fingerprint, tokenizer, shape, tokens), or a local ``from_pretrained`` directory, used
as it is. Calibration blocks are drawn from the training split with the run's seed; the
recovery candidates are a fixed sample of ``pool_documents`` training documents; quality is the
perplexity on ``test_documents`` of the held-out test split (lower is better).

Cost: each run is charged what a user running that arm once pays — pruning, scoring the
recovery candidates (``loss_increase``: the pruned and the dense model's forward passes) and the
recovery fine-tune. One process prunes and scores once per (pruning, seed) and reuses the result
for the recovery arms of that pruning; every run is still charged its whole cost.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from prunus.config import StrictModel, validated
from prunus.errors import PrunusError

RECOVERIES = ("none", "random", "loss_increase")
QUALITY_METRIC = "perplexity"  # on held-out test documents
_SETUPS: dict[str, dict[str, Any]] = {}
_PRUNED: dict[str, tuple[Any, dict[str, Any]]] = {}
_SCORES: dict[str, tuple[Any, float, int]] = {}


class OneshotConfig(StrictModel):
    """Settings of one one-shot run (every key has a default; see :func:`run_oneshot_policy`)."""

    method: Literal["dense", "wanda", "sparsegpt", "magnitude", "random"] = "wanda"
    sparsity: float = Field(0.5, ge=0, lt=1)
    pattern: str = "unstructured"  # or "N:M" such as "2:4" (sparsity N/M)
    layer_sparsity: Literal["uniform", "owl"] = "uniform"
    recovery: Literal["none", "random", "loss_increase"] = "none"
    params: Literal["norm+bias", "lora", "all"] = "norm+bias"
    budget: int = Field(10_000, ge=1)  # recovery training tokens
    fraction: float = Field(0.2, gt=0, le=1)  # share of the candidates in the recovery set
    lr: float | None = Field(None, gt=0)  # recovery peak LR (default: recover's for params)
    corpus_options: dict[str, Any] = Field(default_factory=dict)
    model: str = "gpt_tiny"  # a registry name (pretrained here and cached) or a local directory
    model_options: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = "bpe"  # trained on the corpus and cached, or a local tokenizer directory
    vocab_size: int = Field(1024, ge=258)
    context_length: int = Field(64, ge=8)
    pretrain_tokens: int = Field(100_000, ge=1)
    pretrain_lr: float = Field(3e-3, gt=0)
    samples: int = Field(32, ge=1)  # calibration blocks
    pool_documents: int = Field(500, ge=1)
    test_documents: int = Field(200, ge=1)
    data_seed: int = Field(0, ge=0)


def check_oneshot_config(config: dict[str, Any]) -> OneshotConfig:
    """Validate the settings of a one-shot run (one-sentence :class:`PrunusError`)."""
    from prunus.errors import choice_error
    from prunus.text.lm import LM_NAMES
    from prunus.weights.nm import parse_pattern

    cfg: OneshotConfig = validated(OneshotConfig, dict(config), where="oneshot")  # type: ignore[assignment]
    if cfg.model not in LM_NAMES and not Path(cfg.model).is_dir():
        raise choice_error("oneshot.model", cfg.model, [*LM_NAMES, "a local model directory"])
    if cfg.tokenizer != "bpe" and not Path(cfg.tokenizer).is_dir():
        raise choice_error("oneshot.tokenizer", cfg.tokenizer,
                           ["bpe", "a local tokenizer directory"])
    try:
        parse_pattern(cfg.pattern)
    except PrunusError as exc:
        raise PrunusError(f"oneshot.{exc}") from None
    if cfg.method != "dense" and cfg.pattern == "unstructured" and cfg.sparsity == 0:
        raise PrunusError("oneshot.sparsity must be in (0, 1) for a pruning method (got 0).")
    return cfg


def run_oneshot_policy(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Prune the pretrained model one-shot, recover it (or not), evaluate held-out perplexity.

    Args:
        config: keys of :class:`OneshotConfig` (unknown keys are an error). ``method = "dense"``
            evaluates the unpruned model (the reference), or recovers it (the same fine-tune
            without pruning: how much of a recovery is just more training).
        seed: the run's seed: calibration blocks, random pruning, the random recovery set and
            the recovery's batch order.

    Returns:
        ``perplexity`` (after recovery), ``pruned_perplexity`` (before), ``dense_perplexity``,
        ``achieved_sparsity`` (of the pruned matrices), ``prune_seconds``, ``scoring_seconds``,
        ``recovery_seconds``, ``eval_seconds``, ``training_tokens``, ``scoring_tokens`` and the
        theoretical ``flops`` of scoring and recovery (2·N per token forwarded, 6·N trained).
    """
    from prunus.text.train import evaluate_lm, non_embedding_parameters
    from prunus.weights.recovery import recover

    cfg = check_oneshot_config(config)
    setup = _setup(cfg)
    out: dict[str, Any] = {"dense_perplexity": setup["dense_perplexity"], "prune_seconds": 0.0,
                           "scoring_seconds": 0.0, "recovery_seconds": 0.0,
                           "training_tokens": 0, "scoring_tokens": 0, "flops": 0.0,
                           "achieved_sparsity": 0.0}
    if cfg.method == "dense":
        pruned, facts = setup["dense"], {"perplexity": setup["dense_perplexity"],
                                         "seconds": 0.0, "sparsity": 0.0}
    else:
        pruned, facts = _pruned(cfg, setup, seed)
    out.update(pruned_perplexity=facts["perplexity"], prune_seconds=facts["seconds"],
               achieved_sparsity=facts["sparsity"], perplexity=facts["perplexity"])
    if cfg.recovery == "none":
        return out
    parameters = non_embedding_parameters(setup["dense"])
    policy: Any = "random"
    if cfg.recovery == "loss_increase":
        policy, seconds, tokens = _loss_increase(cfg, setup, pruned, seed)
        out.update(scoring_seconds=seconds, scoring_tokens=tokens)
        out["flops"] += 2.0 * parameters * tokens * 2  # the pruned and the dense model
    model = copy.deepcopy(pruned)
    start = time.perf_counter()
    result = recover(model, setup["pool"], cfg.budget, cfg.params, policy=policy,
                     fraction=cfg.fraction, seed=seed, lr=cfg.lr, eval_at_start=False)
    out["recovery_seconds"] = time.perf_counter() - start
    out["training_tokens"] = int(result.compute["training_tokens"])
    out["flops"] += 6.0 * parameters * out["training_tokens"]
    start = time.perf_counter()
    out["perplexity"] = evaluate_lm(model, setup["test"])[0]
    out["eval_seconds"] = time.perf_counter() - start
    return out


def _setup(cfg: OneshotConfig) -> dict[str, Any]:
    """Corpus, tokenizer, the dense pretrained model, blocks, candidates and test set (cached)."""
    from prunus.text.corpus import load_stdlib
    from prunus.text.tokenizer import document_sequences, load_tokenizer, pack_blocks
    from prunus.text.train import evaluate_lm

    key = json.dumps([cfg.corpus_options, cfg.model, cfg.model_options, cfg.tokenizer,
                      cfg.vocab_size, cfg.context_length, cfg.pretrain_tokens, cfg.pretrain_lr,
                      cfg.pool_documents, cfg.test_documents, cfg.data_seed], sort_keys=True)
    if key in _SETUPS:
        return _SETUPS[key]
    try:
        corpus = load_stdlib(seed=cfg.data_seed, **cfg.corpus_options)
    except TypeError as exc:
        raise PrunusError(f"oneshot.corpus_options holds a setting stdlib does not take "
                          f"({exc}).") from None
    tokenizer = load_tokenizer(cfg.tokenizer, corpus, vocab_size=cfg.vocab_size)
    blocks = pack_blocks(corpus["train"], tokenizer, cfg.context_length, drop_last=True)
    if len(blocks.input_ids) < cfg.samples:
        raise PrunusError(f"oneshot.samples {cfg.samples} is more than the corpus's "
                          f"{len(blocks.input_ids)} training blocks; lower it.")
    dense = _pretrained(cfg, corpus, tokenizer, blocks)
    rng = np.random.default_rng(cfg.data_seed)
    train, test = corpus["train"], corpus["test"]
    candidates = np.sort(rng.choice(train.ids, size=min(cfg.pool_documents, len(train)),
                                    replace=False))
    held = test.take(np.sort(rng.choice(len(test), size=min(cfg.test_documents, len(test)),
                                        replace=False)))
    setup = {
        "dense": dense, "blocks": blocks,
        "pool": document_sequences(train.subset(candidates), tokenizer, cfg.context_length),
        "test": document_sequences(held, tokenizer, cfg.context_length),
    }
    setup["dense_perplexity"] = evaluate_lm(dense, setup["test"])[0]
    _SETUPS[key] = setup
    return setup


def _pretrained(cfg: OneshotConfig, corpus: Any, tokenizer: Any, blocks: Any):
    """A local model directory as it is, or a registry model trained here once and cached."""
    from prunus.datasets.mnist1d import cache_dir
    from prunus.files import atomic_directory
    from prunus.text.lm import build_lm
    from prunus.text.train import train_lm

    size = {"vocab_size": len(tokenizer), "context_length": cfg.context_length}
    if Path(cfg.model).is_dir():
        return build_lm(cfg.model, **size).eval()
    recipe = json.dumps([corpus["train"].fingerprint, len(tokenizer), cfg.context_length,
                         cfg.model, cfg.model_options, cfg.pretrain_tokens, cfg.pretrain_lr],
                        sort_keys=True)
    path = cache_dir() / "oneshot" / (
        f"{cfg.model}-{hashlib.blake2b(recipe.encode(), digest_size=8).hexdigest()}")
    if (path / "config.json").is_file():
        return build_lm(str(path), **size).eval()
    model = build_lm(cfg.model, seed=0, **size, **cfg.model_options)
    train_lm(model, blocks, tokens=cfg.pretrain_tokens, batch_size=16, lr=cfg.pretrain_lr,
             seed=0, eval_at_start=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_directory(path, lambda tmp: model.save_pretrained(str(tmp)))
    return model.eval()


def _pruned_key(cfg: OneshotConfig, seed: int) -> str:
    return json.dumps([cfg.model_dump(include={
        "method", "sparsity", "pattern", "layer_sparsity", "samples"}), seed], sort_keys=True)


def _pruned(cfg: OneshotConfig, setup: dict[str, Any], seed: int):
    """The dense model pruned under ``cfg`` with this seed's calibration (cached per process)."""
    import torch

    from prunus.text.train import evaluate_lm
    from prunus.weights import oneshot

    key = json.dumps([id(setup), _pruned_key(cfg, seed)])
    if key in _PRUNED:
        return _PRUNED[key]
    blocks = setup["blocks"]
    rows = np.random.default_rng(1000 + seed).choice(len(blocks.input_ids), size=cfg.samples,
                                                     replace=False)
    calibration = torch.as_tensor(blocks.input_ids[np.sort(rows)])
    model = copy.deepcopy(setup["dense"])
    nm = cfg.pattern != "unstructured"
    start = time.perf_counter()
    result = oneshot(model, calibration, None if nm else cfg.sparsity, cfg.method, cfg.pattern,
                     cfg.layer_sparsity, seed=seed)
    seconds = time.perf_counter() - start
    sizes = [int(np.prod(r.shape)) for r in result.layers]
    zeros = sum(r.sparsity * n for r, n in zip(result.layers, sizes))
    total = sum(sizes)
    facts = {"seconds": seconds, "perplexity": evaluate_lm(model, setup["test"])[0],
             "sparsity": zeros / max(total, 1)}
    _PRUNED[key] = (model, facts)
    return model, facts


def _loss_increase(cfg: OneshotConfig, setup: dict[str, Any], pruned: Any, seed: int):
    """The candidates' loss increase (pruned − dense) table, its seconds and tokens forwarded."""
    from prunus.weights.recovery import loss_increase_scores

    key = json.dumps([id(setup), _pruned_key(cfg, seed)])
    if key not in _SCORES:
        start = time.perf_counter()
        table = loss_increase_scores(pruned, setup["dense"], setup["pool"])
        _SCORES[key] = (table, time.perf_counter() - start,
                        int(table.metadata["cost"]["tokens"]))
    return _SCORES[key]
