"""Loss reweighting: weight each example in a batch by a softmax of its loss."""

from __future__ import annotations

import math

import torch

from prunus.errors import PrunusError
from prunus.train.events import Callback


def loss_weights(losses: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-example weights w = B·softmax(ℓ/τ): mean 1, detached from the graph.

    *Dynamic Loss-Based Sample Reweighting for Improved LLM Pretraining* (2025): weights that
    are a monotone function of the current loss. τ > 0 up-weights high-loss examples, τ < 0
    up-weights low-loss ones (de-prioritising noisy or not-yet-learnable data), and |τ| → ∞
    gives uniform weights (every wᵢ → 1).

    Args:
        losses: per-example losses of one batch, shape (B,).
        temperature: τ, a finite non-zero number (default 1).

    Returns:
        A float tensor of shape (B,) that sums to B.

    Raises:
        PrunusError: ``temperature`` zero, infinite or NaN.
    """
    temperature = float(temperature)
    if temperature == 0 or not math.isfinite(temperature):
        raise PrunusError(f"temperature must be a finite non-zero number (got {temperature!r}).")
    scaled = losses.detach().float() / temperature
    return len(losses) * torch.softmax(scaled, dim=0)


class LossReweighting(Callback):
    """Loss reweighting in the prunus trainer: ``after_loss`` replaces ``state.loss`` by
    mean(wᵢ·ℓᵢ) with wᵢ from :func:`loss_weights` (times any weights the batch already has).
    Every example is kept; only its share of the gradient changes.

    Args:
        temperature: τ, finite and non-zero (default 1).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        loss_weights(torch.zeros(1), temperature)  # validates once, at the edge
        self.temperature = float(temperature)

    def on_after_loss(self, state) -> None:
        losses = state.per_example_loss
        weights = loss_weights(losses, self.temperature)
        if state.batch.weights is not None:
            weights = weights * state.batch.weights
        state.loss = (losses * weights).mean()
