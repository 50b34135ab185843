"""Hard-negative mining: retrieve, drop positives, keep a rank range under a margin, pick k."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunus.errors import PrunusError, choice_error
from prunus.files import atomic_write

MARGIN_KINDS = ("absolute", "relative")
SAMPLINGS = ("top", "random")


def mine(
    queries: Sequence[str],
    corpus: Sequence[str],
    positives: Sequence[int | str | Sequence[int | str]],
    model: Any,
    k: int = 3,
    rank_range: tuple[int, int | None] = (0, None),
    margin: float | None = None,
    margin_kind: str = "absolute",
    sampling: str = "top",
    seed: int = 0,
    *,
    batch_size: int = 32,
    cache: bool | str | Path = True,
    query_block: int = 1024,
    corpus_chunk: int = 32768,
) -> MinedNegatives:
    """Mine ``k`` hard negatives per (query, positive) pair with a bi-encoder.

    NV-Retriever (Moreira et al. 2024, "NV-Retriever: Improving text embedding models with
    effective hard-negative mining"): retrieve the most similar documents of each query, drop
    its positives, drop candidates too close to the positive (a margin; relative 0.05 is the
    paper's "TopK-PercPos 95%"), then take the top ``k`` (or ``k`` at random) of those left.
    The selection rule is the one of sentence-transformers' ``mine_hard_negatives`` (so both
    pick the same negatives for the same settings):

    1. Documents are deduplicated by text (positives not in ``corpus`` are added); identical
       query texts are one query whose positives are the union. Scores are cosine similarities.
    2. With ``rank_range=(lo, hi)`` and ``P`` the largest number of positives of any query, the
       ``hi + P`` most similar documents are the candidates (``hi`` defaults to
       ``lo + 10k + P`` with a margin, ``lo + k + P`` without).
    3. Positives are removed. With ``s⁺`` the query's *lowest* positive score, a candidate of
       score ``s`` is kept only if ``s < s⁺ − margin`` (absolute) or ``s < s⁺ − |s⁺|·margin``
       (relative; equals ``s⁺·(1 − margin)`` for the usual ``s⁺ ≥ 0``).
    4. The survivors, best first, are cut to the first ``hi``; the first ``lo`` are skipped.
    5. ``sampling="top"`` takes the next ``k``; ``"random"`` draws ``k`` of them uniformly
       (seeded), listed best first. A query with fewer than ``k`` left yields no rows.

    Top-k retrieval runs in blocks of ``query_block`` queries against chunks of
    ``corpus_chunk`` documents, merging a running top-k, so memory stays at
    ``query_block × corpus_chunk`` scores whatever the corpus size. Embeddings are cached
    by the fingerprint of the model's weights and the texts (see :func:`prunus.negatives.embed`).

    Args:
        queries: query texts.
        corpus: candidate documents.
        positives: per query, its positive document(s): a corpus position (int), a text, or a
            list of those.
        model: a sentence-transformers model (or an object with ``encode``).
        k: negatives per pair, at least 1. Default 3.
        rank_range: ``(lo, hi)`` as above; ``hi`` None for the default. Default ``(0, None)``.
        margin: the margin, >= 0; None keeps every candidate. Default None.
        margin_kind: ``"absolute"`` or ``"relative"``. Default ``"absolute"``.
        sampling: ``"top"`` or ``"random"``. Default ``"top"``.
        seed: seed of ``sampling="random"``. Default 0.
        batch_size: texts per forward pass when embedding. Default 32.
        cache: embedding cache (see :func:`prunus.negatives.embed`). Default True.
        query_block, corpus_chunk: sizes of the blocked top-k search.

    Returns:
        :class:`MinedNegatives`: one row per (query, positive) with ``k`` negatives;
        ``.to_parquet(path)``, ``.to_hf()`` (a Hugging Face ``datasets.Dataset`` of
        ``query, positive, negative_1..k``) and ``.stats``.

    Raises:
        PrunusError: a bad setting (named, with the allowed values) or bad positives.
    """
    from prunus.negatives.embeddings import embed

    check_settings(k, rank_range, margin, margin_kind, sampling)
    docs, unique_queries, positive_rows, query_of_first = prepare_texts(queries, corpus, positives)
    q = embed(model, unique_queries, "query", batch_size=batch_size, cache=cache)
    c = embed(model, docs, "document", batch_size=batch_size, cache=cache)
    chosen = select_negatives(
        q, c, positive_rows, k, rank_range, margin, margin_kind, sampling, seed,
        query_block=query_block, corpus_chunk=corpus_chunk,
    )
    rows_q, rows_p = [], []
    for qi, pos in enumerate(positive_rows):
        if chosen.found[qi]:
            rows_q.extend([qi] * len(pos))
            rows_p.extend(pos.tolist())
    rows_q = np.asarray(rows_q, dtype=np.int64)
    rows_p = np.asarray(rows_p, dtype=np.int64)
    positive_scores = np.einsum("ij,ij->i", q[rows_q], c[rows_p]) if len(rows_q) else np.zeros(0)
    stats = dict(chosen.stats)
    stats.update(queries=len(unique_queries), rows=len(rows_q), corpus=len(docs))
    return MinedNegatives(
        corpus=docs,
        queries=[unique_queries[i] for i in rows_q],
        positive_rows=rows_p,
        negative_rows=chosen.rows[rows_q],
        positive_scores=positive_scores.astype(np.float32),
        negative_scores=chosen.scores[rows_q],
        query_rows=query_of_first[rows_q],
        settings={
            "k": k, "rank_range": list(chosen.rank_range), "margin": margin, "margin_kind": margin_kind,
            "sampling": sampling, "seed": seed,
        },
        stats=stats,
    )


@dataclass
class Selection:
    """What :func:`select_negatives` picked per query: corpus rows (-1 = none) and scores."""

    rows: np.ndarray  # (queries, k) int64
    scores: np.ndarray  # (queries, k) float32, nan where rows is -1
    found: np.ndarray  # (queries,) bool: k negatives were found
    rank_range: tuple[int, int]
    stats: dict[str, Any]


def select_negatives(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    positive_rows: Sequence[np.ndarray],
    k: int = 3,
    rank_range: tuple[int, int | None] = (0, None),
    margin: float | None = None,
    margin_kind: str = "absolute",
    sampling: str = "top",
    seed: int = 0,
    *,
    query_block: int = 1024,
    corpus_chunk: int = 32768,
) -> Selection:
    """Steps 2–5 of :func:`mine` on unit-length embeddings (rows of ``corpus_embeddings``)."""
    check_settings(k, rank_range, margin, margin_kind, sampling)
    q = as_tensor(query_embeddings)
    c = as_tensor(corpus_embeddings)
    n_queries = q.shape[0]
    most_positives = max(len(p) for p in positive_rows)
    lo, hi = rank_range
    if hi is None:
        hi = lo + (10 * k if margin is not None else k) + most_positives
    width = hi + most_positives
    scores, rows = search_topk(q, c, min(width, c.shape[0]), query_block, corpus_chunk)
    if scores.shape[1] < width:  # a corpus smaller than the candidate window
        pad = width - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((n_queries, pad), -torch.inf)], 1)
        rows = torch.cat([rows, rows.new_full((n_queries, pad), -1)], 1)

    positives = torch.full((n_queries, most_positives), -1, dtype=torch.int64)
    for i, pos in enumerate(positive_rows):
        positives[i, : len(pos)] = torch.as_tensor(np.asarray(pos, dtype=np.int64))
    has = positives >= 0
    pos_scores = torch.einsum("qd,qpd->qp", q, c[positives.clamp(min=0)])
    hardest_positive = pos_scores.masked_fill(~has, torch.inf).min(dim=1).values

    is_positive = ((rows[:, :, None] == positives[:, None, :]) & has[:, None, :]).any(-1)
    keep = (rows >= 0) & ~is_positive
    stats: dict[str, Any] = {"candidates": int(keep.sum())}
    if margin is not None:
        if margin_kind == "absolute":
            threshold = hardest_positive - margin
        else:
            threshold = hardest_positive - hardest_positive.abs() * margin
        inside = scores < threshold[:, None]
        stats["skipped_by_margin"] = int((keep & ~inside).sum())
        keep &= inside
    # survivors first, best first (the retrieval order is already by descending score)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    rows = rows.gather(1, order)[:, lo:hi]
    scores = scores.gather(1, order)[:, lo:hi]
    keep = keep.gather(1, order)[:, lo:hi]

    if sampling == "top":
        chosen = torch.arange(k).expand(n_queries, k)
    else:
        rng = np.random.default_rng(seed)
        available = keep.sum(1).numpy()
        picks = np.zeros((n_queries, k), dtype=np.int64)
        for i in range(n_queries):
            if available[i] >= k:  # survivors are the first `available` columns
                picks[i] = np.sort(rng.choice(available[i], size=k, replace=False))
        chosen = torch.as_tensor(picks)
    found = keep.gather(1, chosen).all(1)
    out_rows = rows.gather(1, chosen).masked_fill(~found[:, None], -1)
    out_scores = scores.gather(1, chosen).masked_fill(~found[:, None], float("nan"))
    stats["queries_without_enough_negatives"] = int((~found).sum())
    return Selection(
        out_rows.numpy().astype(np.int64), out_scores.numpy().astype(np.float32),
        found.numpy(), (lo, hi), stats,
    )


def search_topk(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    k: int,
    query_block: int = 1024,
    corpus_chunk: int = 32768,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest dot products of each query over the corpus, best first.

    Works block by block (``query_block`` queries × ``corpus_chunk`` documents) and merges a
    running top-k, so the largest intermediate is ``query_block × max(corpus_chunk, 2k)``
    scores whatever the corpus size. Returns ``(scores, rows)``, both ``(queries, k)``.
    """
    if query_block < 1 or corpus_chunk < 1:
        raise PrunusError("query_block and corpus_chunk must be positive integers.")
    n_corpus = corpus_embeddings.shape[0]
    k = min(k, n_corpus)
    all_scores, all_rows = [], []
    with torch.inference_mode():
        for start in range(0, query_embeddings.shape[0], query_block):
            block = query_embeddings[start : start + query_block]
            best_scores = block.new_empty((block.shape[0], 0))
            best_rows = torch.empty((block.shape[0], 0), dtype=torch.int64)
            for offset in range(0, n_corpus, corpus_chunk):
                chunk_scores = block @ corpus_embeddings[offset : offset + corpus_chunk].T
                top = torch.topk(chunk_scores, min(k, chunk_scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, top.values], 1)
                merged_rows = torch.cat([best_rows, top.indices + offset], 1)
                if merged_scores.shape[1] > k or offset + corpus_chunk >= n_corpus:
                    best = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
                    best_scores = best.values
                    best_rows = merged_rows.gather(1, best.indices)
                else:
                    best_scores, best_rows = merged_scores, merged_rows
            all_scores.append(best_scores)
            all_rows.append(best_rows)
    return torch.cat(all_scores), torch.cat(all_rows)


def as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 torch view of an embedding array (copied only when read-only or strided)."""
    if isinstance(array, torch.Tensor):
        return array.float()
    return torch.from_numpy(np.require(array, dtype=np.float32, requirements=["C", "W"]))


def check_settings(
    k: int, rank_range: Sequence, margin: float | None, margin_kind: str, sampling: str
) -> None:
    """Validate the mining settings once, with one sentence naming the setting."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise PrunusError(f"k (negatives per query) must be an integer >= 1 (got {k!r}).")
    if not isinstance(rank_range, (tuple, list)) or len(rank_range) != 2:
        raise PrunusError(f"rank_range must be a pair (lo, hi) of ranks (got {rank_range!r}).")
    lo, hi = rank_range
    if not isinstance(lo, (int, np.integer)) or lo < 0:
        raise PrunusError(f"rank_range lo must be an integer >= 0 (got {lo!r}).")
    if hi is not None and (not isinstance(hi, (int, np.integer)) or hi <= lo or hi - lo < k):
        raise PrunusError(
            f"rank_range hi must be an integer with hi - lo >= k = {k} (got {tuple(rank_range)})."
        )
    if margin is not None and (not np.isfinite(margin) or margin < 0):
        raise PrunusError(f"margin must be a number >= 0 or None (got {margin!r}).")
    if margin_kind not in MARGIN_KINDS:
        raise choice_error("margin_kind", margin_kind, MARGIN_KINDS)
    if sampling not in SAMPLINGS:
        raise choice_error("sampling", sampling, SAMPLINGS)


def prepare_texts(
    queries: Sequence[str], corpus: Sequence[str], positives: Sequence
) -> tuple[list[str], list[str], list[np.ndarray], np.ndarray]:
    """Deduplicate documents and queries; map positives to document rows.

    Returns ``(documents, unique queries, positive rows per unique query, position in
    ``queries`` of each unique query's first appearance)``.
    """
    queries = list(queries)
    if not queries:
        raise PrunusError("queries must hold at least one query.")
    if len(positives) != len(queries):
        raise PrunusError(
            f"positives must have one entry per query (got {len(positives)} for {len(queries)})."
        )
    docs = list(dict.fromkeys(corpus))
    row_of_text = {text: i for i, text in enumerate(docs)}
    corpus = list(corpus)

    def row_of(item: int | str) -> int:
        if isinstance(item, str):
            if item not in row_of_text:
                row_of_text[item] = len(docs)
                docs.append(item)
            return row_of_text[item]
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= item < len(corpus):
                raise PrunusError(
                    f"positives must be corpus positions in [0, {len(corpus) - 1}] (got {item})."
                )
            return row_of_text[corpus[item]]
        raise PrunusError(f"positives must be corpus positions or texts (got {item!r}).")

    unique: dict[str, int] = {}
    rows: list[list[int]] = []
    first: list[int] = []
    for i, (query, pos) in enumerate(zip(queries, positives)):
        items = [pos] if isinstance(pos, (str, int, np.integer)) else list(pos)
        if not items:
            raise PrunusError(f"every query needs at least one positive (query {i} has none).")
        if query not in unique:
            unique[query] = len(rows)
            rows.append([])
            first.append(i)
        bucket = rows[unique[query]]
        for item in items:
            r = row_of(item)
            if r not in bucket:
                bucket.append(r)
    positive_rows = [np.asarray(r, dtype=np.int64) for r in rows]
    return docs, list(unique), positive_rows, np.asarray(first, dtype=np.int64)


@dataclass
class MinedNegatives:
    """Mined (query, positive, negative_1..k) rows; negatives are rows of ``corpus``.

    ``negative_rows`` is ``(rows, k)``; an entry of -1 means the negative was filtered out
    afterwards (see :func:`prunus.negatives.filter_negatives`), its text is null.
    """

    corpus: list[str]
    queries: list[str]
    positive_rows: np.ndarray
    negative_rows: np.ndarray
    positive_scores: np.ndarray
    negative_scores: np.ndarray
    query_rows: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def k(self) -> int:
        return int(self.negative_rows.shape[1]) if self.negative_rows.ndim == 2 else 0

    def negatives(self, j: int) -> list[str | None]:
        """Texts of the ``j``-th negative (0-based) of every row (None where filtered out)."""
        return [self.corpus[r] if r >= 0 else None for r in self.negative_rows[:, j]]

    def to_table(self):
        """A pyarrow table: query, positive, negative_1..k, then rows and scores."""
        import pyarrow as pa

        columns: dict[str, Any] = {
            "query": self.queries,
            "positive": [self.corpus[r] for r in self.positive_rows],
        }
        for j in range(self.k):
            columns[f"negative_{j + 1}"] = pa.array(self.negatives(j), type=pa.string())
        columns["query_row"] = pa.array(self.query_rows, type=pa.int64())
        columns["positive_row"] = pa.array(self.positive_rows, type=pa.int64())
        columns["negative_rows"] = pa.array(self.negative_rows.tolist(), type=pa.list_(pa.int64()))
        columns["positive_score"] = pa.array(self.positive_scores, type=pa.float32())
        columns["negative_scores"] = pa.array(
            self.negative_scores.tolist(), type=pa.list_(pa.float32())
        )
        meta = {"prunus.negatives": json.dumps({"settings": self.settings, "stats": self.stats})}
        return pa.table(columns).replace_schema_metadata(meta)

    def to_parquet(self, path: str | Path) -> Path:
        """Write the table to ``path`` atomically (a temp file, then rename)."""
        import pyarrow.parquet as pq

        return atomic_write(path, lambda tmp: pq.write_table(self.to_table(), tmp))

    def to_hf(self):
        """A Hugging Face ``datasets.Dataset`` with columns query, positive, negative_1..k."""
        from prunus.negatives.model import require_text

        datasets = require_text("datasets")
        columns = {"query": self.queries, "positive": [self.corpus[r] for r in self.positive_rows]}
        for j in range(self.k):
            columns[f"negative_{j + 1}"] = self.negatives(j)
        return datasets.Dataset.from_dict(columns)
