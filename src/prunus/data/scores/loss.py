"""Scores read off the model's outputs in one forward pass: loss, EL2N and uncertainty.

Notation: ``f(x)`` logits, ``p = softmax(f(x))``, ``y`` the one-hot label. Every function puts
the model in eval mode for the pass (batch-norm uses its running statistics, dropout is off, so
an example's score does not depend on the other examples of its batch), restores the mode after,
and returns a float64 array aligned to ``dataset.ids``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.data.scores.common import Progress, batches
from prunus.datasets.base import Dataset
from prunus.errors import choice_error
from prunus.registry import SCORES

UNCERTAINTY_KINDS = ("entropy", "least_confidence", "margin")


@SCORES.register("loss", needs="outputs", summary="cross-entropy at the proxy checkpoint")
def loss_scores(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, progress: Progress | None = None
) -> np.ndarray:
    """Per-example cross-entropy ``ℓ(x, y) = −log p_y`` at the model's current weights.

    The plain baseline score: higher = harder. Default ``batch_size`` 1024.
    """
    return _output_scores(model, dataset, batch_size, progress, per_example_loss)


@SCORES.register("el2n", needs="outputs", summary="‖softmax − one-hot‖₂ early in training")
def el2n_scores(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, progress: Progress | None = None
) -> np.ndarray:
    """EL2N: the error L2 norm ``‖p − y‖₂`` (Paul, Ganguli & Dziugaite 2021, *Deep Learning on a
    Data Diet*).

    Computed early in training (the paper: about 10% into training) and averaged over seeds by
    :func:`prunus.data.score`; pruning the lowest-EL2N half of CIFAR-10 kept test accuracy.
    Higher = harder. Values lie in [0, √2].
    """
    return _output_scores(model, dataset, batch_size, progress, el2n)


@SCORES.register(
    "uncertainty", needs="outputs", column="entropy", column_from="kind", options={"kind": "kind"},
    choices={"kind": UNCERTAINTY_KINDS}, summary="entropy, 1 − max p or top-2 margin",
)
def uncertainty_scores(
    model: nn.Module,
    dataset: Dataset,
    kind: str = "entropy",
    *,
    batch_size: int = 1024,
    progress: Progress | None = None,
) -> np.ndarray:
    """Prediction uncertainty (Coleman et al. 2020, *Selection via Proxy*).

    ``kind``: ``"entropy"`` ``H(p) = −Σ p log p`` (higher = harder), ``"least_confidence"``
    ``1 − max p`` (higher = harder) or ``"margin"`` ``p₍₁₎ − p₍₂₎``, the gap between the two
    largest probabilities (*lower* = harder). Default ``"entropy"``.

    Raises:
        PrunusError: unknown ``kind``.
    """
    if kind not in UNCERTAINTY_KINDS:
        raise choice_error("kind", kind, UNCERTAINTY_KINDS)
    return _output_scores(model, dataset, batch_size, progress, UNCERTAINTY[kind])


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def el2n(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    error = torch.softmax(logits, dim=1)
    error[torch.arange(len(y), device=y.device), y] -= 1.0
    return torch.linalg.vector_norm(error, dim=1)


def entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def least_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.softmax(logits, dim=1).max(dim=1).values


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    top2 = torch.softmax(logits, dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


UNCERTAINTY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "entropy": entropy,
    "least_confidence": least_confidence,
    "margin": margin,
}


def _output_scores(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    progress: Progress | None,
    formula: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> np.ndarray:
    out = np.empty(len(dataset), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows, x, y in batches(model, dataset, batch_size, progress):
                logits = model(x)
                if logits.dtype in (torch.float16, torch.bfloat16):
                    logits = logits.float()
                out[rows] = formula(logits, y).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out
