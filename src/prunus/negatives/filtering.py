"""False-negative filtering: static (mined negatives) and in-batch (GISTEmbed guide masking)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.errors import PrunusError, choice_error
from prunus.negatives.mining import MARGIN_KINDS, MinedNegatives


@dataclass
class FilterReport:
    """What :func:`filter_negatives` dropped, and how many of those were known duplicates."""

    checked: int  # negatives looked at
    dropped: int  # negatives removed (guide or duplicate group)
    dropped_by_guide: int
    dropped_by_guide_true_duplicates: int  # guide-dropped ones in the positive's duplicate group
    dropped_by_duplicate_group: int  # in the positive's group, whatever the guide said
    rows_with_fewer_negatives: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def filter_negatives(
    mined: MinedNegatives,
    *,
    guide: Any = None,
    guide_margin: float = 0.0,
    margin_kind: str = "absolute",
    duplicate_groups: np.ndarray | None = None,
    guide_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 32,
    cache: bool = True,
) -> tuple[MinedNegatives, FilterReport]:
    """Drop mined negatives that a guide model or the known duplicate groups mark as positives.

    GISTEmbed (Solatorio 2024) applied once, to the mined set: with ``g`` the guide's cosine
    similarity, a negative ``n`` of the pair ``(q, p)`` is dropped when
    ``g(q, n) > g(q, p) − guide_margin`` (absolute) or ``g(q, n) > g(q, p) − |g(q, p)|·guide_margin``
    (relative); it is also dropped when ``duplicate_groups`` puts it in ``p``'s group.
    Dropped entries become -1 in ``negative_rows`` (null text); rows keep their place.

    Args:
        mined: the output of :func:`prunus.negatives.mine`.
        guide: a sentence-transformers model used as the guide (None: no guide test).
        guide_margin: the margin above, >= 0. Default 0.0.
        margin_kind: ``"absolute"`` or ``"relative"``. Default ``"absolute"``.
        duplicate_groups: one group number per row of ``mined.corpus`` (-1 for none).
        guide_embeddings: ``(query embeddings per row of mined, corpus embeddings)`` instead of
            ``guide`` (unit-length, from a frozen guide).
        batch_size, cache: passed to :func:`prunus.negatives.embed`.

    Returns:
        ``(filtered, report)``; ``report.dropped_by_guide_true_duplicates`` says how many of the
        guide's drops were known duplicates of the positive.

    Raises:
        PrunusError: bad margin or kind, or group labels that do not match the corpus.
    """
    if not np.isfinite(guide_margin) or guide_margin < 0:
        raise PrunusError(f"guide_margin must be a number >= 0 (got {guide_margin!r}).")
    if margin_kind not in MARGIN_KINDS:
        raise choice_error("margin_kind", margin_kind, MARGIN_KINDS)
    q = c = None
    if guide is not None or guide_embeddings is not None:
        if guide_embeddings is None:
            from prunus.negatives.embeddings import embed

            q = embed(guide, mined.queries, "query", batch_size=batch_size, cache=cache)
            c = embed(guide, mined.corpus, "document", batch_size=batch_size, cache=cache)
        else:
            q, c = guide_embeddings
    if duplicate_groups is not None and np.shape(duplicate_groups) != (len(mined.corpus),):
        raise PrunusError(
            f"duplicate_groups must hold one group per corpus document "
            f"({len(mined.corpus)}), got shape {np.shape(duplicate_groups)}."
        )
    by_guide, by_group = flag_false_negatives(
        mined.positive_rows, mined.negative_rows, q, c, guide_margin, margin_kind, duplicate_groups
    )
    rows = mined.negative_rows.copy()
    present = rows >= 0
    drop = by_guide | by_group
    rows[drop] = -1
    scores = mined.negative_scores.copy()
    scores[drop] = np.nan
    report = FilterReport(
        checked=int(present.sum()),
        dropped=int(drop.sum()),
        dropped_by_guide=int(by_guide.sum()),
        dropped_by_guide_true_duplicates=int((by_guide & by_group).sum()),
        dropped_by_duplicate_group=int(by_group.sum()),
        rows_with_fewer_negatives=int(drop.any(1).sum()),
    )
    stats = dict(mined.stats, filter=report.as_dict())
    return replace(mined, negative_rows=rows, negative_scores=scores, stats=stats), report


def flag_false_negatives(
    positive_rows: np.ndarray,
    negative_rows: np.ndarray,
    guide_queries: np.ndarray | None = None,
    guide_corpus: np.ndarray | None = None,
    guide_margin: float = 0.0,
    margin_kind: str = "absolute",
    duplicate_groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The two tests of :func:`filter_negatives` on arrays: ``(by_guide, by_group)``, each a
    ``(rows, k)`` bool array (False where ``negative_rows`` is -1 or a test is not asked for)."""
    negative_rows = np.asarray(negative_rows, dtype=np.int64)
    present = negative_rows >= 0
    safe = negative_rows.clip(min=0)
    by_guide = np.zeros_like(present)
    if guide_queries is not None:
        positive_sim = np.einsum("ij,ij->i", guide_queries, guide_corpus[positive_rows])
        negative_sim = np.einsum("id,ikd->ik", guide_queries, guide_corpus[safe])
        if margin_kind == "absolute":
            threshold = positive_sim - guide_margin
        else:
            threshold = positive_sim - np.abs(positive_sim) * guide_margin
        by_guide = present & (negative_sim > threshold[:, None])
    by_group = np.zeros_like(present)
    if duplicate_groups is not None:
        groups = np.asarray(duplicate_groups, dtype=np.int64)
        own = groups[positive_rows][:, None]
        by_group = present & (own >= 0) & (groups[safe] == own)
    return by_guide, by_group


def gist_mask(
    guide_anchors: torch.Tensor,
    guide_candidates: torch.Tensor,
    positive_index: torch.Tensor,
    margin: float = 0.0,
    margin_kind: str = "absolute",
) -> torch.Tensor:
    """GISTEmbed's in-batch false-negative mask: True where a candidate must not be a negative.

    Solatorio 2024, "GISTEmbed: Guided In-sample Selection of Training Negatives". With ``g``
    the guide's cosine similarity, candidate ``j`` of anchor ``i`` is masked when
    ``g(a_i, c_j) > g(a_i, c_{pos(i)}) − margin`` (absolute) or ``… − |g(a_i, c_{pos(i)})|·margin``
    (relative). The anchor's own positive is never masked.

    Args:
        guide_anchors: ``(B, d)`` guide embeddings of the anchors.
        guide_candidates: ``(C, d)`` guide embeddings of the candidates (positives, negatives).
        positive_index: ``(B,)`` column of each anchor's positive among the candidates.
        margin: >= 0. Default 0.0.
        margin_kind: ``"absolute"`` or ``"relative"``. Default ``"absolute"``.
    """
    if margin_kind not in MARGIN_KINDS:
        raise choice_error("margin_kind", margin_kind, MARGIN_KINDS)
    sim = F.normalize(guide_anchors, dim=-1) @ F.normalize(guide_candidates, dim=-1).T
    rows = torch.arange(sim.shape[0], device=sim.device)
    positive = sim[rows, positive_index]
    if margin_kind == "absolute":
        threshold = positive - margin
    else:
        threshold = positive - positive.abs() * margin
    mask = sim > threshold[:, None]
    mask[rows, positive_index] = False
    return mask


def ranking_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor | None = None,
    scale: float = 20.0,
    drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiple-negatives ranking loss (InfoNCE over cosine similarities).

    ``loss = mean_i CE(scale · cos(a_i, C), pos(i))`` over the candidate set ``C`` (every
    positive and negative of the batch), Henderson et al. 2017 / van den Oord et al. 2018;
    ``drop`` (a ``(B, C)`` bool mask, e.g. from :func:`gist_mask`) removes candidates from an
    anchor's softmax. ``positive_index`` defaults to ``arange(B)`` (positives listed first).
    """
    logits = scale * (F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T)
    if drop is not None:
        logits = logits.masked_fill(drop, -torch.inf)
    if positive_index is None:
        positive_index = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, positive_index)


class GuidedMultipleNegativesRankingLoss(nn.Module):
    """Multiple-negatives ranking loss with GISTEmbed guide masking, as a sentence-transformers loss.

    Takes the usual ``(anchor, positive, negative_1, …)`` columns. Candidates are every
    positive and negative of the batch; the frozen ``guide`` masks those it scores above the
    anchor's positive (:func:`gist_mask`). With ``guide=None`` it is
    ``MultipleNegativesRankingLoss``. Unlike sentence-transformers' ``GISTEmbedLoss`` it adds no
    anchor–anchor or positive–positive terms and uses MNRL's ``scale`` (20 = temperature 0.05), so
    the only difference from MNRL is the mask.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module | None = None,
        scale: float = 20.0,
        margin: float = 0.0,
        margin_kind: str = "absolute",
    ) -> None:
        super().__init__()
        if margin_kind not in MARGIN_KINDS:
            raise choice_error("margin_kind", margin_kind, MARGIN_KINDS)
        self.model = model
        self.guide = guide
        self.scale = scale
        self.margin = margin
        self.margin_kind = margin_kind

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: Any = None):
        features = list(sentence_features)
        embeddings = [self.model(dict(f))["sentence_embedding"] for f in features]
        anchors, candidates = embeddings[0], torch.cat(embeddings[1:])
        drop = None
        if self.guide is not None:
            with torch.no_grad():
                guided = [self.guide(dict(f))["sentence_embedding"] for f in features]
            positive_index = torch.arange(anchors.shape[0], device=anchors.device)
            drop = gist_mask(
                guided[0], torch.cat(guided[1:]), positive_index, self.margin, self.margin_kind
            )
        return ranking_loss(anchors, candidates, scale=self.scale, drop=drop)
