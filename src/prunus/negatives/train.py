"""Fine-tuning an embedding model with the multiple-negatives ranking loss, on the one Trainer.

:class:`Contrastive` is the contrastive-retrieval task of :class:`prunus.train.Trainer`: a row
is a training query with its positive and its negatives (corpus rows of
:class:`TrainingPairs`), the per-example loss is each query's multiple-negatives ranking loss,
an evaluation reports retrieval metrics (nDCG@10, MRR@10; higher is better) and compute is
counted in **pairs** (one query with its positive and negatives forwarded, or backpropagated).
:func:`fine_tune` runs it, so callbacks, data methods and the compute meter see a contrastive
run as they see any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.errors import PrunusError
from prunus.negatives.filtering import gist_mask
from prunus.negatives.mining import as_tensor
from prunus.negatives.partial import TopLayers
from prunus.train.events import Callback
from prunus.train.meter import ComputeMeter
from prunus.train.tasks import Task
from prunus.train.trainer import Trainer


@dataclass
class TrainingPairs:
    """Training rows: a query, its positive and its negatives (rows of ``corpus``, -1 = none).

    As the Trainer's dataset, row ``i`` has id ``i`` and there is no test split."""

    queries: list[str]
    positive_rows: np.ndarray  # (n,)
    negative_rows: np.ndarray  # (n, k); k may be 0 (in-batch negatives only)
    corpus: list[str]

    test = None  # the Trainer's evaluation is the task's (Contrastive's ``evaluation``)

    def __post_init__(self) -> None:
        self.positive_rows = np.asarray(self.positive_rows, dtype=np.int64)
        negatives = np.asarray(self.negative_rows, dtype=np.int64)
        self.negative_rows = negatives.reshape(len(self.queries), -1)
        if len(self.positive_rows) != len(self.queries):
            raise PrunusError("every training query needs exactly one positive row.")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self.queries), dtype=np.int64)


class Contrastive(Task):
    """Contrastive retrieval: multiple-negatives ranking loss per query, retrieval metrics.

    A batch is query rows ``x`` and their corpus rows ``y = [positive, negative_1, …]`` (-1 =
    no negative). Its candidates ``C`` are the batch's positives followed by every present
    negative of its rows; query ``i``'s loss is the multiple-negatives ranking loss
    (Henderson et al. 2017; InfoNCE, van den Oord et al. 2018)::

        ℓ(i) = −log softmax_j(scale · cos(q_i, c_j))[pos(i)]   over the j ∈ C not dropped

    where a candidate that is the same document as ``i``'s positive is dropped (never its
    negative), and with ``guide`` so is every candidate the GISTEmbed mask (:func:`gist_mask`)
    removes: the frozen guide scores it above ``i``'s positive minus ``guide_margin``. The
    objective is the (data-method weighted) mean of ``ℓ`` over the batch.

    Args:
        model: a sentence-transformers model (the one the Trainer trains).
        pairs: the training rows (:class:`TrainingPairs`).
        train_layers: train only the top this many transformer layers, the frozen bottom's
            outputs cached (:class:`~prunus.negatives.partial.TopLayers`); None: every weight.
        documents: unit-length embeddings of ``pairs.corpus`` from a frozen model: documents
            are looked up, and only the query side is encoded (None: one shared encoder).
        guide: ``(guide embeddings of pairs.queries, of pairs.corpus)``, or None.
        guide_margin, guide_margin_kind: the GISTEmbed margin (absolute or relative).
        scale: inverse temperature. Default 20.
        states: the :class:`TopLayers` cache to share between runs of one pre-trained model.
        evaluation: ``fn(model) -> {"ndcg@10": …, "mrr@10": …, …}`` run in eval mode at each
            of the Trainer's evaluations (e.g. :func:`prunus.negatives.evaluate` on held-out
            queries); None reports nothing.

    Compute is counted in pairs (``examples_forwarded`` / ``examples_backpropagated``); FLOPs
    are not counted. ``masked_per_anchor`` holds, per training step, the dropped candidates
    per query; ``evaluated`` the last evaluation's numbers.
    """

    name = "contrastive"
    metric = "ndcg@10"
    higher_is_better = True
    unit = "pairs"

    def __init__(
        self,
        model: Any,
        pairs: TrainingPairs,
        *,
        train_layers: int | None = 2,
        documents: np.ndarray | None = None,
        guide: tuple[np.ndarray, np.ndarray] | None = None,
        guide_margin: float = 0.0,
        guide_margin_kind: str = "absolute",
        scale: float = 20.0,
        states: dict | None = None,
        evaluation: Callable[[Any], dict[str, float]] | None = None,
    ) -> None:
        self.pairs = pairs
        self.train_layers = train_layers
        self.top = None if train_layers is None else TopLayers(model, train_layers, states)
        self.documents = None if documents is None else as_tensor(documents)
        self.guide = None if guide is None else (as_tensor(guide[0]), as_tensor(guide[1]))
        self.guide_margin = guide_margin
        self.guide_margin_kind = guide_margin_kind
        self.scale = scale
        self.evaluation = evaluation
        self.masked_per_anchor: list[float] = []
        self.evaluated: dict[str, float] = {}
        self._modes: list[tuple[nn.Module, bool]] = []

    def precompute(self) -> None:
        """Cache the frozen bottom's outputs of every text the run encodes (with
        ``train_layers``; otherwise nothing to do)."""
        if self.top is not None:
            texts = list(self.pairs.queries)
            if self.documents is None:
                texts += list(self.pairs.corpus)
            self.top.precompute(texts)

    def encode(self, model: Any, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings with gradients into the trained layers."""
        return self.top.encode(texts) if self.top is not None else encode_for_training(model, texts)

    def tensors(self, dataset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.documents is not None:
            self.documents = self.documents.to(device)
        if self.guide is not None:
            self.guide = (self.guide[0].to(device), self.guide[1].to(device))
        rows = np.concatenate([dataset.positive_rows[:, None], dataset.negative_rows], axis=1)
        return torch.from_numpy(dataset.ids).to(device), torch.from_numpy(rows).to(device)

    def logits(self, model: Any, queries: torch.Tensor, rows: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale · cos(q, C) with dropped candidates at −inf, the drop mask)`` of query rows
        ``queries`` and their corpus rows ``rows`` (positive first)."""
        positives, negatives = rows[:, 0], rows[:, 1:].reshape(-1)
        candidates = torch.cat([positives, negatives[negatives >= 0]])
        anchors = self.encode(model, [self.pairs.queries[i] for i in queries.tolist()])
        if self.documents is None:
            docs = self.encode(model, [self.pairs.corpus[r] for r in candidates.tolist()])
        else:
            docs = self.documents[candidates]
        index = torch.arange(len(queries), device=candidates.device)
        drop = candidates[None, :] == positives[:, None]  # the positive's own copies
        drop[index, index] = False
        if self.guide is not None:
            drop |= gist_mask(self.guide[0][queries], self.guide[1][candidates], index,
                              self.guide_margin, self.guide_margin_kind)
        logits = self.scale * (F.normalize(anchors, dim=-1) @ F.normalize(docs, dim=-1).T)
        return logits.masked_fill(drop.to(logits.device), -torch.inf), drop

    def forward(self, model: nn.Module, state: Any) -> torch.Tensor:
        logits, drop = self.logits(model, state.batch.x, state.batch.y)
        self.masked_per_anchor.append(float(drop.sum()) / len(drop))
        return logits

    def per_example_loss(self, state: Any) -> torch.Tensor:
        return _ranking_losses(state.outputs)

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any) -> torch.Tensor:
        """Each row's loss with the given rows as the batch (their in-batch negatives)."""
        return _ranking_losses(self.logits(model, x, y)[0])

    def count(self, state: Any, forwarded: int, backpropagated: int) -> None:
        state.meter.examples_forwarded += forwarded
        state.meter.examples_backpropagated += backpropagated

    def count_forward(self, state: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        state.meter.examples_forwarded += len(x)

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The trained layers' parameters (:func:`set_trainable`), all with ``weight_decay``."""
        params = set_trainable(model, self.train_layers)
        self._modes = [(m, m.training) for m in model.modules()]
        return [{"params": params, "weight_decay": weight_decay}]

    def train_mode(self, model: nn.Module) -> None:
        """The trained layers in train mode, the frozen ones in eval mode (no dropout)."""
        for module, mode in self._modes:
            module.training = mode

    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int,
                 device: torch.device, state: Any = None) -> dict[str, float]:
        """``evaluation(model)`` in eval mode (each module's mode restored after); nothing
        without an ``evaluation``."""
        if self.evaluation is None:
            return {}
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            self.evaluated = dict(self.evaluation(model))
        finally:
            for module, mode in modes:
                module.training = mode
        return self.evaluated


def _ranking_losses(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row of ``logits`` against its own column (positives first)."""
    target = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="none")


class _InBatchSteps(Callback):
    """Skips a batch of fewer than two rows (in-batch negatives need two) and records the
    objective of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_start(self, state) -> None:
        if state.batch is not None and len(state.batch) < 2:
            state.batch = None

    def on_after_step(self, state) -> None:
        self.losses.append(float(state.loss.detach()))


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
    evaluation: Callable[[Any], dict[str, float]] | None = None,
    callbacks: Sequence[Callback] = (),
    meter: ComputeMeter | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with the multiple-negatives ranking loss (:class:`Contrastive`
    on :class:`prunus.train.Trainer`).

    Each batch's candidates are its positives plus every (non-missing) negative of its rows;
    each anchor is scored against all of them (MNRL with ``scale``). A candidate that is the
    same document as the anchor's positive is never its negative. With ``guide`` the GISTEmbed
    mask (:func:`gist_mask`) also removes the candidates the frozen guide scores above the
    anchor's positive (minus ``guide_margin``). Rows are visited in a seeded order each epoch;
    a last batch of one row is skipped. AdamW, linear warm-up then linear decay to 0.

    Args:
        model: a sentence-transformers model (trained in place, on its device).
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
        evaluation: ``fn(model) -> metrics`` run once, after training (:class:`Contrastive`).
        callbacks: :class:`prunus.train.Callback` objects (data methods, weight methods…).
        meter: a :class:`~prunus.train.ComputeMeter` to add to (default a new one).

    Returns:
        ``{"steps", "examples", "seconds", "eval_seconds", "loss_first", "loss_last",
        "masked_per_anchor", "metrics", "meter"}``: ``examples`` the pairs backpropagated,
        ``seconds`` the training time (caching the frozen bottom's outputs included),
        ``metrics`` the evaluation's numbers (empty without ``evaluation``).
    """
    if batch_size < 2:
        raise PrunusError(f"batch_size must be at least 2 for in-batch negatives (got {batch_size}).")
    if epochs < 1:
        raise PrunusError(f"epochs must be >= 1 (got {epochs}).")
    meter = meter if meter is not None else ComputeMeter()
    task = Contrastive(
        model, pairs, train_layers=train_layers, documents=document_embeddings, guide=guide,
        guide_margin=guide_margin, guide_margin_kind=guide_margin_kind, scale=scale,
        states=states, evaluation=evaluation,
    )
    with meter.timing("train"):
        task.precompute()
    steps = _InBatchSteps()
    device = getattr(model, "device", None) or next(model.parameters()).device
    Trainer(
        model, pairs, [*callbacks, steps], task=task, meter=meter, epochs=epochs,
        batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=weight_decay,
        schedule="linear", warmup=warmup, seed=seed, device=str(device), eval_each_epoch=False,
    ).fit()
    model.eval()
    losses = steps.losses
    return {
        "steps": len(losses),
        "examples": meter.examples_backpropagated,
        "seconds": meter.seconds["train"],
        "eval_seconds": meter.seconds["eval"],
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": losses[-1] if losses else float("nan"),
        "masked_per_anchor": float(np.mean(task.masked_per_anchor)) if losses else 0.0,
        "metrics": dict(task.evaluated),
        "meter": meter,
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
