"""Retrieval metrics (nDCG@10, MRR@10, Recall@k) and evaluation of an embedding model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prunus.errors import PrunusError


def retrieval_metrics(
    ranked_ids: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int] = (1, 10, 100)
) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and Recall@k of ranked results with binary relevance.

    For one query with ranked ids ``d_1, d_2, …`` and relevant set ``R`` (rel_r = 1 if d_r ∈ R):
    ``nDCG@10 = Σ_{r≤10} rel_r / log2(r + 1)  /  Σ_{r ≤ min(10, |R|)} 1 / log2(r + 1)``,
    ``MRR@10 = 1 / (rank of the first relevant)`` if that rank is ≤ 10 else 0,
    ``Recall@k = |R ∩ {d_1..d_k}| / |R|``. Each is averaged over queries.

    Args:
        ranked_ids: ``(queries, depth)`` document ids, best first (depth >= max(ks), 10).
        relevant: per query, the ids that count as relevant (at least one each).
        ks: the cut-offs of Recall@k. Default (1, 10, 100).
    """
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2 or len(ranked_ids) != len(relevant):
        raise PrunusError("ranked_ids must be (queries, depth) with one relevant set per query.")
    depth = ranked_ids.shape[1]
    hits = np.zeros(ranked_ids.shape, dtype=bool)
    sizes = np.zeros(len(relevant))
    for i, rel in enumerate(relevant):
        rel = np.unique(np.asarray(rel))
        if len(rel) == 0:
            raise PrunusError(f"query {i} has no relevant document.")
        sizes[i] = len(rel)
        hits[i] = np.isin(ranked_ids[i], rel)
    discounts = 1.0 / np.log2(np.arange(2, 12))  # ranks 1..10
    top = hits[:, :10]
    dcg = (top * discounts[: top.shape[1]]).sum(1)
    ideal = np.array([discounts[: int(min(10, s))].sum() for s in sizes])
    first = np.where(top.any(1), top.argmax(1) + 1, 0)
    mrr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    out = {"ndcg@10": float(np.mean(dcg / ideal)), "mrr@10": float(np.mean(mrr))}
    for k in ks:
        if k > depth:
            raise PrunusError(f"Recall@{k} needs at least {k} ranked documents (got {depth}).")
        out[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(1) / sizes))
    return out


def evaluate(
    model: Any,
    dataset: Any,
    split: str = "test",
    *,
    query_rows: np.ndarray | None = None,
    corpus_rows: np.ndarray | None = None,
    document_embeddings: np.ndarray | None = None,
    query_embeddings: np.ndarray | None = None,
    ks: Sequence[int] = (1, 10, 100),
    batch_size: int = 64,
    cache: bool = True,
) -> dict[str, Any]:
    """Retrieve for a split's queries over the corpus and score the ranking.

    Every document of a query's positive's duplicate group counts as relevant.

    Args:
        model: embeds the queries (and the documents unless ``document_embeddings`` is given).
        dataset: a :class:`~prunus.datasets.retrieval.RetrievalDataset` (e.g. ``pycode``).
        split: ``"train"``, ``"dev"`` or ``"test"``. Default ``"test"``.
        query_rows: evaluate only these rows of the split (None: all).
        corpus_rows: search only these corpus rows (None: the whole corpus); they must include
            the relevant documents of every evaluated query.
        document_embeddings: unit-length embeddings of ``corpus_rows`` (a frozen document side).
        query_embeddings: unit-length embeddings of the evaluated queries, if already computed.
        ks: Recall cut-offs. Default (1, 10, 100).
        batch_size: texts per forward pass. Default 64.
        cache: cache embeddings by fingerprint (see :func:`prunus.negatives.embed`). Default True.

    Returns:
        the metrics of :func:`retrieval_metrics` plus ``queries`` and ``corpus`` sizes.
    """
    from prunus.negatives.embeddings import embed
    from prunus.negatives.mining import as_tensor, search_topk

    queries = dataset.split(split)
    if query_rows is not None:
        queries = queries.take(query_rows)
    rows = np.arange(len(dataset)) if corpus_rows is None else np.asarray(corpus_rows)
    doc_ids = dataset.corpus_ids[rows]
    relevant = [np.intersect1d(r, doc_ids) for r in dataset.relevant_ids(queries.positive_ids)]
    missing = [i for i, r in enumerate(relevant) if len(r) == 0]
    if missing:
        raise PrunusError(
            f"corpus_rows must include every evaluated query's positive ({len(missing)} missing)."
        )
    q = query_embeddings
    if q is None:
        q = embed(model, queries.queries, "query", batch_size=batch_size, cache=cache)
    if document_embeddings is None:
        texts = [dataset.corpus[r] for r in rows]
        document_embeddings = embed(model, texts, "document", batch_size=batch_size, cache=cache)
    depth = max(max(ks), 10)
    _, top = search_topk(as_tensor(q), as_tensor(document_embeddings), depth)
    ranked = doc_ids[top.numpy()]
    if ranked.shape[1] < depth:
        pad = np.full((len(ranked), depth - ranked.shape[1]), -1, dtype=np.int64)
        ranked = np.concatenate([ranked, pad], 1)
    out: dict[str, Any] = retrieval_metrics(ranked, relevant, ks)
    out.update(queries=len(queries), corpus=len(rows))
    return out
