"""Selective Backprop: backpropagate an example with a probability that grows with its loss."""

from __future__ import annotations

import math

import torch

from prunus.data.online._common import (
    check_fraction,
    check_positive_int,
    check_seed,
    losses_without_grad,
)
from prunus.errors import PrunusError
from prunus.train.events import Callback


def select_by_percentile(
    losses: torch.Tensor,
    history: torch.Tensor,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Selective Backprop's draw: a bool mask of the examples to backpropagate.

    Jiang et al. 2019, *Accelerating Deep Learning by Focusing on the Biggest Losers*. Example
    i is kept with probability p_i = F(ℓ_i)^β, where F(ℓ) is the fraction of the recent losses
    in ``history`` that are ≤ ℓ (its percentile rank). With uniform ranks the expected kept
    fraction is 1/(β + 1): β = 1 keeps about half, β = 0 keeps everything.

    Args:
        losses: per-example losses of the current batch, shape (B,).
        history: recent losses to rank against (include the current batch), shape (R,).
        beta: selectivity β ≥ 0 (default 1).
        generator: a ``torch.Generator`` for the Bernoulli draws (default: the global one).

    Returns:
        A bool tensor of shape (B,) on ``losses``' device.

    Raises:
        PrunusError: ``beta`` negative, or an empty ``history``.
    """
    probability = keep_probabilities(losses, history, beta)
    draws = torch.rand(len(losses), generator=generator, device="cpu").to(losses.device)
    return draws < probability


def keep_probabilities(
    losses: torch.Tensor, history: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """p_i = (fraction of ``history`` ≤ ℓ_i)^β (see :func:`select_by_percentile`)."""
    if not beta >= 0:
        raise PrunusError(f"beta must be a number ≥ 0 (got {beta!r}).")
    if len(history) == 0:
        raise PrunusError("history must hold at least one recent loss (got an empty tensor).")
    ranked = torch.sort(history.detach().float()).values
    at_or_below = torch.searchsorted(ranked, losses.detach().float(), right=True)
    return (at_or_below.float() / len(ranked)) ** beta


class SelectiveBackprop(Callback):
    """Selective Backprop in the prunus trainer (``batch_start``).

    Forwards the batch without gradients (counted in ``state.meter`` as forwarded, timed as
    training), appends the losses to a history of the last ``history_size`` losses, draws the
    examples to keep with :func:`select_by_percentile` and replaces ``state.batch`` by them; the
    trainer then forwards and backpropagates only those. When no example is drawn, the one with
    the highest loss is kept, so every step trains.

    Args:
        keep: expected fraction backpropagated, in (0, 1] (default 0.5); sets β = 1/keep − 1
            unless ``beta`` is given.
        beta: selectivity β ≥ 0 (default None: from ``keep``).
        history_size: number of recent losses ranked against (default 1024).
        start: fraction of the training steps done before selection starts (default 0).
        seed: seeds the draws (default 0).

    Raises:
        PrunusError: any argument outside its range.
    """

    def __init__(
        self,
        keep: float = 0.5,
        beta: float | None = None,
        history_size: int = 1024,
        start: float = 0.0,
        seed: int = 0,
    ) -> None:
        keep = check_fraction(keep, "keep")
        self.beta = 1.0 / keep - 1.0 if beta is None else float(beta)
        if not self.beta >= 0 or math.isinf(self.beta):
            raise PrunusError(f"beta must be a finite number ≥ 0 (got {beta!r}).")
        self.history_size = check_positive_int(history_size, "history_size")
        if not 0.0 <= float(start) < 1.0:
            raise PrunusError(f"start must be a fraction in [0, 1) (got {start!r}).")
        self.start = float(start)
        self.seed = check_seed(seed)

    def on_fit_start(self, state) -> None:
        self.history = torch.empty(0, device=state.device)
        self.generator = torch.Generator().manual_seed(self.seed)

    def on_batch_start(self, state) -> None:
        if state.step < self.start * state.total_steps:
            return
        batch = state.batch
        losses = losses_without_grad(state, batch.x, batch.y)
        self.history = torch.cat([self.history, losses])[-self.history_size :]
        keep = select_by_percentile(losses, self.history, self.beta, self.generator)
        if not keep.any():
            keep[losses.argmax()] = True
        state.batch = batch.select(keep)
