"""Fine-tuning an embedding model with the multiple-negatives ranking loss (plain PyTorch)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from prunus.errors import PrunusError
from prunus.negatives.filtering import gist_mask, ranking_loss
from prunus.negatives.mining import as_tensor
from prunus.negatives.partial import TopLayers


@dataclass
class TrainingPairs:
    """Training rows: a query, its positive and its negatives (rows of ``corpus``, -1 = none)."""

    queries: list[str]
    positive_rows: np.ndarray  # (n,)
    negative_rows: np.ndarray  # (n, k); k may be 0 (in-batch negatives only)
    corpus: list[str]

    def __post_init__(self) -> None:
        self.positive_rows = np.asarray(self.positive_rows, dtype=np.int64)
        negatives = np.asarray(self.negative_rows, dtype=np.int64)
        self.negative_rows = negatives.reshape(len(self.queries), -1)
        if len(self.positive_rows) != len(self.queries):
            raise PrunusError("every training query needs exactly one positive row.")

    def __len__(self) -> int:
        return len(self.queries)


def fine_tune(
    model: Any,
    pairs: TrainingPairs,
    *,
    document_embeddings: np.ndarray | None = None,
    guide: tuple[np.ndarray, np.ndarray] | None = None,
    guide_margin: float = 0.0,
    guide_margin_kind: str = "absolute",
    train_layers: int | None = 2,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-4,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    scale: float = 20.0,
    seed: int = 0,
    states: dict | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with the multiple-negatives ranking loss.

    Each batch's candidates are its positives plus every (non-missing) negative of its rows;
    each anchor is scored against all of them (:func:`ranking_loss`, MNRL with ``scale``).
    A candidate that is the same document as the anchor's positive is never its negative. With
    ``guide`` the GISTEmbed mask (:func:`gist_mask`) also removes the candidates the frozen
    guide scores above the anchor's positive (minus ``guide_margin``).

    Args:
        model: a sentence-transformers model (trained in place).
        pairs: the training rows (:class:`TrainingPairs`).
        document_embeddings: unit-length embeddings of ``pairs.corpus`` from a frozen model:
            documents are looked up instead of encoded, and only the query side is trained
            (the document index never needs re-encoding). None trains one shared encoder.
        guide: ``(guide embeddings of pairs.queries, guide embeddings of pairs.corpus)``, or None.
        guide_margin, guide_margin_kind: the GISTEmbed margin (absolute or relative). Default 0.
        train_layers: train only the top this many transformer layers (None: every weight,
            word embeddings included). Default 2.
        epochs: passes over the pairs. Default 1.
        batch_size: rows per step (the in-batch negatives). Default 32.
        lr: AdamW peak learning rate, linear warm-up over ``warmup`` of the steps then linear
            decay to 0. Defaults 1e-4, 0.1.
        weight_decay: AdamW weight decay. Default 0.01.
        scale: inverse temperature of the loss. Default 20.
        seed: seeds the row order and dropout. Default 0.
        states: with ``train_layers``, the frozen bottom's outputs are computed once per text
            and kept here (:class:`~prunus.negatives.partial.TopLayers`); pass the same dict to
            runs that start from the same pre-trained model. Default: a new dict.

    Returns:
        ``{"steps", "examples", "seconds", "loss_first", "loss_last", "masked_per_anchor"}``.
    """
    if batch_size < 2:
        raise PrunusError(f"batch_size must be at least 2 for in-batch negatives (got {batch_size}).")
    if epochs < 1:
        raise PrunusError(f"epochs must be >= 1 (got {epochs}).")
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = set_trainable(model, train_layers)
    encode = partial(encode_for_training, model)
    if train_layers is not None:
        top = TopLayers(model, train_layers, states)
        top.precompute(pairs.queries if document_embeddings is not None else
                       list(pairs.queries) + list(pairs.corpus))
        encode = top.encode
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total = epochs * steps_per_epoch
    warm = max(1, round(warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / (total - warm + 1))
    )
    docs = None if document_embeddings is None else as_tensor(document_embeddings)
    guide_q = guide_c = None
    if guide is not None:
        guide_q, guide_c = as_tensor(guide[0]), as_tensor(guide[1])
    losses, masked = [], []
    for _ in range(epochs):
        order = rng.permutation(len(pairs))
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            if len(batch) < 2:
                continue
            negatives = pairs.negative_rows[batch].ravel()
            candidates = np.concatenate([pairs.positive_rows[batch], negatives[negatives >= 0]])
            anchors = encode([pairs.queries[i] for i in batch])
            if docs is None:
                cand = encode([pairs.corpus[r] for r in candidates])
            else:
                cand = docs[torch.as_tensor(candidates)]
            index = torch.arange(len(batch))
            rows = torch.as_tensor(candidates)
            drop = rows[None, :] == rows[index][:, None]  # the positive's own copies
            drop[index, index] = False
            if guide_q is not None:
                drop |= gist_mask(
                    guide_q[torch.as_tensor(batch)], guide_c[rows], index,
                    guide_margin, guide_margin_kind,
                )
            loss = ranking_loss(anchors, cand, index, scale, drop)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            masked.append(float(drop.sum()) / len(batch))
    model.eval()
    return {
        "steps": len(losses),
        "examples": int(epochs * len(pairs)),
        "seconds": time.perf_counter() - start,
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": losses[-1] if losses else float("nan"),
        "masked_per_anchor": float(np.mean(masked)) if masked else 0.0,
    }


def random_negatives(
    positive_rows: np.ndarray,
    pool: np.ndarray,
    k: int,
    seed: int = 0,
    duplicate_groups: np.ndarray | None = None,
) -> np.ndarray:
    """``k`` negatives per row drawn uniformly (without replacement) from ``pool``, never the
    row's positive nor a document of its duplicate group. Returns ``(rows, k)`` corpus rows."""
    pool = np.asarray(pool, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = duplicate_groups
    out = np.empty((len(positive_rows), k), dtype=np.int64)
    for i, positive in enumerate(np.asarray(positive_rows, dtype=np.int64)):
        excluded = {int(positive)}
        if groups is not None and groups[positive] >= 0:
            excluded |= set(np.flatnonzero(groups == groups[positive]).tolist())
        if k < 1 or len(pool) < k + len(excluded):
            raise PrunusError(
                f"k must be >= 1 and leave k negatives in a pool of {len(pool)} (got {k})."
            )
        # k + |excluded| distinct draws always hold k allowed documents
        draws = rng.choice(pool, size=k + len(excluded), replace=False)
        out[i] = [r for r in draws if int(r) not in excluded][:k]
    return out


def set_trainable(model: Any, train_layers: int | None) -> list[torch.nn.Parameter]:
    """Freeze everything but the top ``train_layers`` transformer layers (None: train all).

    Frozen modules are put in eval mode (no dropout); the trained layers in train mode.
    Returns the trainable parameters.
    """
    if train_layers is None:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    layers = _transformer_layers(model)
    if not 1 <= train_layers <= len(layers):
        raise PrunusError(f"train_layers must be in [1, {len(layers)}] or None (got {train_layers}).")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for layer in layers[len(layers) - train_layers :]:
        layer.train()
        for p in layer.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def encode_for_training(model: Any, texts: Sequence[str]) -> torch.Tensor:
    """Sentence embeddings with gradients (the model's own tokenizer and pooling)."""
    prepare = getattr(model, "preprocess", None) or model.tokenize
    features = prepare(list(texts))
    device = getattr(model, "device", torch.device("cpu"))
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    return model(features)["sentence_embedding"]


def _transformer_layers(model: Any) -> torch.nn.ModuleList:
    for module in model.modules():
        encoder = getattr(module, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return layers
    raise PrunusError("train_layers needs a transformer with encoder layers; use train_layers=None.")
