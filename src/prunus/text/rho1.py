"""Rho-1 selective language modeling (Lin et al. 2024, *Not All Tokens Are What You Need*).

Per batch, every real target token ``t`` gets its excess loss
``δ(t) = ℓ_θ(t) − ℓ_ref(t)``, the current model's loss minus a reference model's (trained on
target-quality data); the ``k = ⌊keep_fraction · n⌋`` tokens of largest ``δ`` (``n`` the real
targets of the batch, :func:`prunus.counts.fraction_count`) are kept and the loss is averaged
over them only::

    L = (1/k) Σ_{t kept} ℓ_θ(t)

Ties at the cut-off are broken by position (a stable sort of ``−δ`` over the batch in row-major
order). The paper keeps k ≈ 60–70%.

Cost, honestly: the reference model forwards every training token (``2·N_ref`` FLOPs each,
metered as ``reference``), and the backward pass still runs through every position (a kept
token's loss depends on all earlier ones), so the training FLOPs stay ``6·N`` per token; only
the tokens that carry gradient (``meter.tokens_with_grad``) drop to ``k``.
"""

from __future__ import annotations

import torch
from torch import nn

from prunus.counts import fraction_count
from prunus.errors import PrunusError
from prunus.text.lm import token_losses
from prunus.train.events import Callback

__all__ = ["RandomTokens", "Rho1", "rho1_loss", "rho1_mask"]


def _check_fraction(keep_fraction: float) -> float:
    try:
        value = float(keep_fraction)
    except (TypeError, ValueError):
        raise PrunusError(f"keep_fraction must be a number in (0, 1] (got {keep_fraction!r}).") from None
    if not 0.0 < value <= 1.0:
        raise PrunusError(f"keep_fraction must be in (0, 1] (got {keep_fraction!r}).")
    return value


def rho1_mask(excess: torch.Tensor, mask: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """The bool mask of the top ``⌊keep_fraction · n⌋`` real targets by excess loss.

    Args:
        excess: ``ℓ_θ − ℓ_ref`` per target, any shape.
        mask: True on real targets (same shape); only those compete and can be kept.
        keep_fraction: share of the real targets kept, in (0, 1]; at least one is kept when
            any is real.

    Raises:
        PrunusError: shapes differ, keep_fraction outside (0, 1].
    """
    keep_fraction = _check_fraction(keep_fraction)
    if excess.shape != mask.shape:
        raise PrunusError(
            f"mask must have the shape of excess {tuple(excess.shape)} (got {tuple(mask.shape)})."
        )
    flat_mask = mask.reshape(-1).bool()
    real = torch.nonzero(flat_mask).squeeze(1)
    n = int(real.numel())
    keep = torch.zeros_like(flat_mask)
    if n == 0:
        return keep.view_as(mask)
    k = fraction_count(keep_fraction, n, at_least=1)
    values = excess.detach().reshape(-1)[real].float()
    order = torch.sort(-values, stable=True).indices[:k]
    keep[real[order]] = True
    return keep.view_as(mask)


def rho1_loss(
    losses: torch.Tensor,
    reference_losses: torch.Tensor,
    mask: torch.Tensor,
    keep_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, keep)``: the mean of ``losses`` over the tokens :func:`rho1_mask` keeps for
    excess ``losses − reference_losses``."""
    keep = rho1_mask(losses.detach() - reference_losses, mask, keep_fraction)
    loss = (losses * keep).sum() / keep.sum().clamp_min(1)
    return loss, keep


class Rho1(Callback):
    """A :func:`prunus.text.train.train_lm` callback: after each forward pass, score the batch
    with the reference model (no gradient) and keep the top ``keep_fraction`` of real targets
    by excess loss (``state.keep``); the loop averages the loss over them and meters them as
    the tokens that carry gradient.

    Args:
        reference: the reference LM (put in eval mode; never trained here).
        keep_fraction: share of each batch's real targets kept. Default 0.6.

    ``kept`` / ``seen`` count kept and real targets over the run.
    """

    def __init__(self, reference: nn.Module, keep_fraction: float = 0.6) -> None:
        self.reference = reference
        self.keep_fraction = _check_fraction(keep_fraction)
        self.kept = 0
        self.seen = 0
        self._n_params: int | None = None

    def on_fit_start(self, state) -> None:
        from prunus.text.train import non_embedding_parameters

        self.reference.eval()
        self._n_params = non_embedding_parameters(self.reference)

    def on_after_forward(self, state) -> None:
        meter = state.meter
        input_ids, attention_mask = state.batch.x, state.batch.y
        with meter.timing("scoring"), torch.no_grad():
            reference, _ = token_losses(self.reference, input_ids, attention_mask)
        meter.charge_forward("reference", int(attention_mask.sum()), self._n_params or 0)
        keep = rho1_mask(state.token_losses.detach() - reference, state.target_mask, self.keep_fraction)
        state.keep = state.keep & keep
        self.kept += int(keep.sum())
        self.seen += int(state.target_mask.sum())


class RandomTokens(Callback):
    """Rho-1's random baseline: keep a random ``keep_fraction`` of each batch's real targets
    (the same count Rho-1 keeps, :func:`rho1_mask` on uniform noise), seeded.

    Args:
        keep_fraction: share of each batch's real targets kept. Default 0.6.
        seed: the draw's seed. Default 0.
    """

    def __init__(self, keep_fraction: float = 0.6, seed: int = 0) -> None:
        self.keep_fraction = _check_fraction(keep_fraction)
        self.generator = torch.Generator().manual_seed(int(seed))

    def on_after_forward(self, state) -> None:
        noise = torch.rand(state.target_mask.shape, generator=self.generator)
        keep = rho1_mask(noise.to(state.target_mask.device), state.target_mask, self.keep_fraction)
        state.keep = state.keep & keep
