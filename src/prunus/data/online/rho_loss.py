"""RHO-LOSS: train on the examples whose loss is high but could still go down."""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.counts import fraction_count
from prunus.data.online._common import (
    RowLookup,
    check_fraction,
    check_positive_int,
    check_seed,
    losses_without_grad,
)
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError
from prunus.train.events import Callback
from prunus.train.meter import ComputeMeter


def rho_select(losses: torch.Tensor, irreducible: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` examples with the largest reducible loss ℓ − ℓ_irreducible.

    Mindermann et al. 2022, *Prioritized Training on Points that are Learnable, Worth
    Learning, and Not Yet Learnt*. ℓ is the current model's loss on each example, ℓ_irreducible
    the loss of a model trained on a holdout split; a high difference marks an example the
    model can still learn (unlike noisy or already-learnt ones).

    Args:
        losses: current training losses of the batch, shape (B,).
        irreducible: irreducible losses of the same examples, shape (B,).
        k: how many to keep (clipped to B).

    Returns:
        A long tensor of ``min(k, B)`` indices into the batch, largest reducible loss first.

    Raises:
        PrunusError: shapes differ or ``k`` < 1.
    """
    if losses.shape != irreducible.shape:
        raise PrunusError(
            f"irreducible must have the shape of losses {tuple(losses.shape)} "
            f"(got {tuple(irreducible.shape)})."
        )
    k = min(check_positive_int(k, "k"), len(losses))
    return torch.topk(losses - irreducible, k).indices


@torch.no_grad()
def irreducible_losses(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Per-example cross-entropy of ``model`` (in eval mode) on ``dataset``, aligned to its rows."""
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        x = torch.from_numpy(dataset.x[start : start + batch_size]).to(device)
        y = torch.from_numpy(dataset.y[start : start + batch_size]).to(device)
        out.append(F.cross_entropy(model(x).float(), y, reduction="none").cpu())
    return torch.cat(out).numpy()


class RhoLoss(Callback):
    """RHO-LOSS in the prunus trainer.

    At ``fit_start`` a copy of the model at its initial weights (or ``irreducible_model``) is
    trained on a holdout split — a seeded ``holdout_fraction`` of the training set that is then
    left out of training, or the given ``holdout`` dataset — and its loss on every training
    example is stored. All of this (wall time, FLOPs, examples) is charged to the run's
    ``scoring`` phase. At ``batch_start`` the batch is forwarded without gradients (counted,
    timed as training) and replaced by the ⌊keep·B⌋ (at least 1) examples with the largest
    reducible loss (:func:`rho_select`). Use a larger ``batch_size`` to select from a larger pool, as the paper
    does (it keeps 10%).

    Args:
        keep: fraction of each batch backpropagated, in (0, 1] (default 0.1).
        holdout_fraction: share of the training set held out for the irreducible-loss model
            (default 0.1); ignored when ``holdout`` is given.
        holdout: a separate dataset to train the irreducible-loss model on (default None).
        irreducible_model: the model to train on the holdout (default: a copy of the model).
        irreducible_epochs: its epochs (default: the run's epochs).
        seed: seeds the holdout split (default 0).

    Raises:
        PrunusError: any argument outside its range.
    """

    def __init__(
        self,
        keep: float = 0.1,
        holdout_fraction: float = 0.1,
        holdout: Dataset | None = None,
        irreducible_model: nn.Module | None = None,
        irreducible_epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.keep = check_fraction(keep, "keep")
        self.holdout_fraction = float(holdout_fraction)
        if holdout is None and not 0.0 < self.holdout_fraction < 1.0:
            raise PrunusError(
                f"holdout_fraction must be a number in (0, 1) (got {holdout_fraction!r})."
            )
        self.holdout = holdout
        self.irreducible_model = irreducible_model
        self.irreducible_epochs = (
            None if irreducible_epochs is None
            else check_positive_int(irreducible_epochs, "irreducible_epochs")
        )
        self.seed = check_seed(seed)
        self.train_rows: np.ndarray | None = None

    def on_fit_start(self, state) -> None:
        start = time.perf_counter()
        train = state.train
        if self.holdout is None:
            n_holdout = fraction_count(self.holdout_fraction, len(train), at_least=1)
            if n_holdout >= len(train):
                raise PrunusError(
                    f"holdout_fraction {self.holdout_fraction} leaves no training data "
                    f"({len(train)} examples)."
                )
            order = np.random.default_rng([self.seed, 1]).permutation(len(train))
            self.holdout_rows = np.sort(order[:n_holdout])
            self.train_rows = np.sort(order[n_holdout:])
            holdout = train.subset(train.ids[self.holdout_rows])
        else:
            self.train_rows = None
            holdout = self.holdout
        holdout = dataclasses.replace(holdout, test=None, _fingerprint=None)
        model = self.irreducible_model
        if model is None:
            model = copy.deepcopy(state.model)
        meter = self._train_irreducible(state, model, holdout)
        irreducible = torch.from_numpy(
            irreducible_losses(model, train, state.config.eval_batch_size, state.device)
        )
        meter.count(model, torch.from_numpy(train.x[:8]), forwarded=len(train), backpropagated=0)
        self.irreducible = irreducible.to(state.device)
        self._rows = RowLookup(train.ids)
        state.meter.charge("scoring", time.perf_counter() - start, meter.flops)
        state.meter.examples_forwarded += meter.examples_forwarded
        state.meter.examples_backpropagated += meter.examples_backpropagated
        state.extra["rho_loss_holdout_examples"] = len(holdout)
        if self.train_rows is not None:
            steps = -(-len(self.train_rows) // state.config.batch_size)
            state.total_steps = state.config.epochs * steps

    def on_epoch_start(self, state) -> None:
        if self.train_rows is None:
            return
        with state.meter.timing("selection"):
            rng = np.random.default_rng([state.config.seed, state.epoch])
            order = rng.permutation(len(self.train_rows))
            state.epoch_ids = state.train.ids[self.train_rows[order]]

    def on_batch_start(self, state) -> None:
        batch = state.batch
        losses = losses_without_grad(state, batch.x, batch.y)
        k = fraction_count(self.keep, len(batch), at_least=1)
        state.batch = batch.select(rho_select(losses, self.irreducible[self._rows(batch.ids)], k))

    def _train_irreducible(self, state, model: nn.Module, holdout: Dataset) -> ComputeMeter:
        """Train ``model`` on ``holdout`` with the run's settings; returns that run's meter."""
        from prunus.train.trainer import Trainer

        cfg = state.config
        settings = {"eval_every": None, "seed": cfg.seed}
        if self.irreducible_epochs is not None:
            settings["epochs"] = self.irreducible_epochs
        rng = torch.get_rng_state()
        try:
            result = Trainer(model, holdout, config=cfg, **settings).fit()
        finally:
            torch.set_rng_state(rng)
        return result.meter
