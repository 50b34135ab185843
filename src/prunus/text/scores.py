"""Sequence-level scores for language-model data selection, one ScoreTable per method.

Every function returns a :class:`~prunus.data.table.ScoreTable` keyed by document id (labels
all 0: documents have no class), with ``metadata``: ``method``, ``column``, ``directions``
(``higher_is_harder`` / ``lower_is_harder``), ``keep`` (the :func:`prunus.data.select.select`
policy the paper uses: ``"hardest"`` keeps the highest score), ``cost`` (``seconds``,
theoretical ``flops`` where a model runs) and the settings. ``select(table, keep,
policy=..., stratify=False)`` then picks the documents.

| function | score | paper |
|---|---|---|
| :func:`perplexity_scores` | mean token loss under a reference LM | Marion et al. 2023 |
| :func:`dsir_scores` | log p_target(x) − log p_raw(x), hashed 1+2-grams | Xie et al. 2023 |
| :func:`color_filter_scores` | ℓ_prior(x) − ℓ_conditional(x) | Brandfonbrener et al. 2024 |
| :func:`embedding_similarity_scores` | cosine to the target's mean-pooled states | Ivison et al. 2025 |
| :func:`quality_classifier_scores` | P(target | x), hashed n-gram logistic regression | GPT-3, DCLM |
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.data.table import HIGHER_IS_HARDER, ScoreTable
from prunus.errors import PrunusError, choice_error

DSIR_TOKEN_PATTERN = r"(?u)\b\w+\b"

__all__ = [
    "DSIR_TOKEN_PATTERN",
    "color_filter_models",
    "color_filter_scores",
    "document_embeddings",
    "dsir_features",
    "dsir_resample",
    "dsir_scores",
    "embedding_similarity_scores",
    "perplexity_scores",
    "quality_classifier_scores",
]


def _table(
    ids: np.ndarray,
    columns: dict[str, np.ndarray],
    method: str,
    seconds: float,
    *,
    keep: str = "hardest",
    flops: float | None = None,
    split: Any = None,
    **settings: Any,
) -> ScoreTable:
    ids = np.asarray(ids, dtype=np.int64)
    metadata: dict[str, Any] = {
        "method": method,
        "column": next(iter(columns)),
        "directions": dict.fromkeys(columns, HIGHER_IS_HARDER),
        "keep": keep,
        "cost": {"seconds": float(seconds), **({} if flops is None else {"flops": float(flops),
                                                                          "flops_theoretical": True})},
        **settings,
    }
    if split is not None and hasattr(split, "fingerprint"):
        metadata["dataset"] = {"fingerprint": split.fingerprint}
    return ScoreTable(ids, np.zeros(len(ids), dtype=np.int64), columns, metadata)


def _n_params(model: nn.Module) -> int:
    from prunus.text.train import non_embedding_parameters

    return non_embedding_parameters(model)


def _texts(data: Any, name: str) -> tuple[np.ndarray, list[str]]:
    """(ids, texts) of a TextSplit or a list of strings (ids 0..n-1)."""
    if hasattr(data, "texts") and hasattr(data, "ids"):
        return np.asarray(data.ids, dtype=np.int64), list(data.texts)
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return np.arange(len(data), dtype=np.int64), list(data)
    raise PrunusError(f"{name} must be a TextSplit or a list of strings (got {type(data).__name__}).")


# --------------------------------------------------------------------------- perplexity


def perplexity_scores(
    model: nn.Module,
    sequences: Any,
    *,
    batch_size: int = 32,
    split: Any = None,
) -> ScoreTable:
    """Perplexity filter (Marion et al. 2023, *When Less is More: Investigating Data Pruning
    for Pretraining LLMs at Scale*).

    ``score(x) = (1/|x|) Σ_t −log p_ref(x_t | x_<t)``, the reference model's mean token loss
    over every predicted token of the document (all its windows); column ``perplexity`` is
    ``exp(score)``. Higher is harder; the paper keeps a middle band or the lowest
    (``keep="band"``), never blindly the highest.

    Args:
        model: the reference LM.
        sequences: :class:`~prunus.text.tokenizer.DocumentSequences` of the pool.
        batch_size: rows per forward pass. Default 32.
        split: the scored :class:`~prunus.text.corpus.TextSplit` (its fingerprint is
            recorded). Optional.
    """
    from prunus.text.lm import document_losses

    start = time.perf_counter()
    out = document_losses(model, sequences, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return _table(
        out["id"],
        {"loss": out["loss"], "perplexity": np.exp(out["loss"]), "tokens": out["tokens"]},
        "perplexity",
        seconds,
        keep="band",
        flops=2.0 * _n_params(model) * sequences.num_tokens,
        split=split,
        reference=type(model).__name__,
    )


# --------------------------------------------------------------------------- DSIR


def dsir_features(texts: Sequence[str], buckets: int = 10_000):
    """Hashed word 1- and 2-gram counts, a sparse (documents, buckets) matrix.

    Words are ``\\b\\w+\\b`` matches of the lower-cased text; an n-gram is its words joined by
    one space; its bucket is ``|murmurhash3_32(ngram, seed=0)| mod buckets``
    (``sklearn.feature_extraction.text.HashingVectorizer``, no sign flipping, no norm).
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    if int(buckets) != buckets or buckets < 2:
        raise PrunusError(f"buckets must be an integer of at least 2 (got {buckets!r}).")
    vectorizer = HashingVectorizer(
        n_features=int(buckets), ngram_range=(1, 2), lowercase=True,
        token_pattern=DSIR_TOKEN_PATTERN, alternate_sign=False, norm=None,
        dtype=np.float64,
    )
    return vectorizer.transform(list(texts))


def dsir_scores(
    pool: Any,
    target: Any,
    *,
    buckets: int = 10_000,
    raw: Any = None,
) -> ScoreTable:
    """DSIR importance weights (Xie et al. 2023, *Data Selection for Language Models via
    Importance Resampling*).

    With ``c_x[b]`` the hashed 1+2-gram counts of document ``x`` (:func:`dsir_features`,
    ``m = buckets``), fit two bag-of-n-gram distributions with add-one smoothing::

        p_S[b] = (Σ_{x∈S} c_x[b] + 1) / (Σ_{x∈S} Σ_b c_x[b] + m)     for S = target, raw

    and score ``log w(x) = Σ_b c_x[b] · (log p_target[b] − log p_raw[b])``, the log importance
    weight of ``x`` (unnormalised in length, as in the paper). Keep by resampling
    (:func:`dsir_resample`) or the highest (``keep="hardest"``).

    Args:
        pool: the documents to score (TextSplit or list of strings, ids 0..n-1 for a list).
        target: the target sample (TextSplit or list of strings).
        buckets: hash buckets ``m``. Default 10,000.
        raw: the documents ``p_raw`` is fitted on (default: the pool itself).
    """
    start = time.perf_counter()
    ids, texts = _texts(pool, "pool")
    _, target_texts = _texts(target, "target")
    if not target_texts:
        raise PrunusError("the DSIR target sample is empty.")
    features = dsir_features(texts, buckets)
    target_counts = np.asarray(dsir_features(target_texts, buckets).sum(0)).ravel()
    raw_counts = (
        np.asarray(features.sum(0)).ravel()
        if raw is None
        else np.asarray(dsir_features(_texts(raw, "raw")[1], buckets).sum(0)).ravel()
    )
    log_target = np.log(target_counts + 1.0) - np.log(target_counts.sum() + buckets)
    log_raw = np.log(raw_counts + 1.0) - np.log(raw_counts.sum() + buckets)
    weights = np.asarray(features @ (log_target - log_raw)).ravel()
    ngrams = np.asarray(features.sum(1)).ravel()
    return _table(
        ids, {"log_importance": weights, "ngrams": ngrams}, "dsir",
        time.perf_counter() - start, split=pool, buckets=int(buckets),
        raw="pool" if raw is None else "given",
    )


def dsir_resample(weights: Any, k: int, seed: int = 0) -> np.ndarray:
    """Importance resampling without replacement by the Gumbel top-k trick (Xie et al. 2023).

    Draw ``g_i ~ Gumbel(0, 1)`` (``numpy.random.default_rng(seed)``) and keep the ``k``
    largest ``log w_i + g_i``: a sample of ``k`` distinct documents, each draw proportional to
    ``w_i`` among those not yet drawn.

    Args:
        weights: log importance weights (an array), or a DSIR :class:`ScoreTable`.
        k: how many to keep, 1 ≤ k ≤ n.
        seed: the Gumbel noise seed.

    Returns:
        Row positions (for an array) or document ids (for a table), in draw order.
    """
    table = weights if isinstance(weights, ScoreTable) else None
    values = np.asarray(table.scores() if table is not None else weights, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise PrunusError("weights must be a 1-D array of finite log importance weights.")
    if int(k) != k or not 1 <= k <= len(values):
        raise PrunusError(f"k must be an integer in [1, {len(values)}] (got {k!r}).")
    keys = values + np.random.default_rng(seed).gumbel(size=len(values))
    rows = np.argsort(-keys, kind="stable")[: int(k)]
    return table.ids[rows] if table is not None else rows


# --------------------------------------------------------------------------- CoLoR-Filter


def color_filter_scores(
    prior: nn.Module,
    conditional: nn.Module,
    sequences: Any,
    *,
    batch_size: int = 32,
    split: Any = None,
) -> ScoreTable:
    """CoLoR-Filter (Brandfonbrener et al. 2024, *CoLoR-Filter: Conditional Loss Reduction
    Filtering for Targeted Language Model Pre-training*).

    ``score(x) = ℓ_prior(x) − ℓ_conditional(x)`` with ``ℓ_M(x)`` the mean token loss of
    model ``M`` on document ``x`` (:func:`prunus.text.lm.document_losses`): ``prior`` is
    trained on a random sample of the pool, ``conditional`` is ``prior`` fine-tuned on the
    target sample (:func:`color_filter_models`). Keep the highest (``keep="hardest"``): the
    documents whose likelihood the target raised most. Columns ``prior_loss`` and
    ``conditional_loss`` keep the two terms.
    """
    from prunus.text.lm import document_losses

    start = time.perf_counter()
    a = document_losses(prior, sequences, batch_size=batch_size)
    b = document_losses(conditional, sequences, batch_size=batch_size)
    if not np.array_equal(a["id"], b["id"]):  # pragma: no cover - same sequences
        raise PrunusError("the two models scored different documents.")
    flops = 2.0 * (_n_params(prior) + _n_params(conditional)) * sequences.num_tokens
    return _table(
        a["id"],
        {"loss_reduction": a["loss"] - b["loss"], "prior_loss": a["loss"],
         "conditional_loss": b["loss"]},
        "color_filter", time.perf_counter() - start, flops=flops, split=split,
    )


def color_filter_models(
    build: Callable[[], nn.Module],
    prior_blocks: Any,
    target_blocks: Any,
    *,
    prior_tokens: int | None = None,
    conditional_tokens: int | None = None,
    prior_epochs: int | None = None,
    conditional_epochs: int | None = None,
    seed: int = 0,
    **train_options: Any,
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Train CoLoR-Filter's two auxiliary models with :func:`prunus.text.train.train_lm`.

    ``prior = build()`` trained on ``prior_blocks`` (packed blocks of a random pool sample);
    ``conditional`` = a copy of the trained prior fine-tuned on ``target_blocks``. Each stage
    takes a token budget or epochs (default one epoch); ``train_options`` go to both
    (``batch_size``, ``lr``, ...).

    Returns:
        ``(prior, conditional, {"prior": LMResult, "conditional": LMResult})``.
    """
    from prunus.text.train import train_lm

    prior = build()
    first = train_lm(prior, prior_blocks, tokens=prior_tokens, epochs=prior_epochs, seed=seed,
                     **train_options)
    conditional = copy.deepcopy(prior)
    second = train_lm(conditional, target_blocks, tokens=conditional_tokens,
                      epochs=conditional_epochs, seed=seed + 1, **train_options)
    return prior, conditional, {"prior": first, "conditional": second}


# --------------------------------------------------------------------------- RDS+


@torch.no_grad()
def document_embeddings(
    model: nn.Module, sequences: Any, *, batch_size: int = 32, pooling: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, embeddings)``: each document's pooled last hidden state (float64).

    ``mean``: the plain mean of the last hidden states over the document's real tokens (all
    windows). ``weighted``: position-weighted mean (SGPT; RDS+), token ``t`` (1-based, within
    its window) weighs ``t``.
    """
    if pooling not in ("mean", "weighted"):
        raise choice_error("pooling", pooling, ("mean", "weighted"))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    doc_ids = np.asarray(sequences.doc_ids, dtype=np.int64)
    sums, norms = [], []
    try:
        for start in range(0, len(doc_ids), batch_size):
            ids = torch.as_tensor(sequences.input_ids[start : start + batch_size], device=device)
            mask = torch.as_tensor(sequences.attention_mask[start : start + batch_size], device=device)
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            w = mask.double()
            if pooling == "weighted":
                w = w * torch.arange(1, ids.shape[1] + 1, device=device, dtype=torch.float64)
            sums.append((hidden.double() * w[..., None]).sum(1).cpu().numpy())
            norms.append(w.sum(1).cpu().numpy())
    finally:
        model.train(was_training)
    sums_np, norms_np = np.concatenate(sums), np.concatenate(norms)
    unique, first, inverse = np.unique(doc_ids, return_index=True, return_inverse=True)
    total = np.zeros((len(unique), sums_np.shape[1]))
    np.add.at(total, inverse, sums_np)
    weight = np.bincount(inverse, weights=norms_np, minlength=len(unique))
    order = np.argsort(first, kind="stable")
    return unique[order], total[order] / np.maximum(weight[order], 1e-12)[:, None]


def embedding_similarity_scores(
    model: nn.Module,
    sequences: Any,
    target_sequences: Any,
    *,
    aggregate: str = "max",
    pooling: str = "mean",
    batch_size: int = 32,
    split: Any = None,
) -> ScoreTable:
    """Embedding similarity to the target (Ivison et al. 2025, *Large-Scale Data Selection for
    Instruction Tuning*, RDS+).

    ``e(x)`` = the pooled last hidden state of ``x`` (:func:`document_embeddings`);
    ``score(x) = agg_{y ∈ target} cos(e(x), e(y))`` with ``agg`` = ``max`` or ``mean``.
    Keep the highest (``keep="hardest"``).
    """
    if aggregate not in ("max", "mean"):
        raise choice_error("aggregate", aggregate, ("max", "mean"))
    start = time.perf_counter()
    ids, pool = document_embeddings(model, sequences, batch_size=batch_size, pooling=pooling)
    _, target = document_embeddings(model, target_sequences, batch_size=batch_size, pooling=pooling)
    unit = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
    target_unit = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    cosine = unit @ target_unit.T
    score = cosine.max(1) if aggregate == "max" else cosine.mean(1)
    flops = 2.0 * _n_params(model) * (sequences.num_tokens + target_sequences.num_tokens)
    return _table(
        ids, {"similarity": score}, "embedding_similarity", time.perf_counter() - start,
        flops=flops, split=split, aggregate=aggregate, pooling=pooling,
    )


# --------------------------------------------------------------------------- classifier


def quality_classifier_scores(
    pool: Any,
    target: Any,
    *,
    ngram_range: tuple[int, int] = (1, 2),
    n_features: int = 2**18,
    C: float = 1.0,
    seed: int = 0,
) -> ScoreTable:
    """Quality classifier (GPT-3, Brown et al. 2020; DCLM, Li et al. 2024).

    A logistic regression on hashed word n-grams (``HashingVectorizer``, ``ngram_range``,
    l2-normalised counts) separates the target sample (label 1) from the pool (label 0),
    classes balanced; ``score(x) = P(target | x)`` on every pool document. The pool documents
    were also the negatives, so the scores are in-sample, as in GPT-3's filter. Keep the
    highest (``keep="hardest"``).
    """
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    ids, texts = _texts(pool, "pool")
    _, target_texts = _texts(target, "target")
    if not target_texts or not texts:
        raise PrunusError("the classifier needs a non-empty pool and target sample.")
    vectorizer = HashingVectorizer(n_features=n_features, ngram_range=tuple(ngram_range),
                                   token_pattern=DSIR_TOKEN_PATTERN, alternate_sign=False)
    x_pool = vectorizer.transform(texts)
    x_target = vectorizer.transform(target_texts)
    from scipy.sparse import vstack

    x = vstack([x_target, x_pool]).tocsr()
    y = np.r_[np.ones(len(target_texts)), np.zeros(len(texts))]
    classifier = LogisticRegression(C=C, class_weight="balanced", max_iter=1000, random_state=seed)
    classifier.fit(x, y)
    probability = classifier.predict_proba(x_pool)[:, 1]
    return _table(
        ids, {"p_target": probability}, "quality_classifier", time.perf_counter() - start,
        split=pool, ngram_range=list(ngram_range), n_features=int(n_features), C=float(C),
    )
