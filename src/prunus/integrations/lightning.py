"""prunus policies in a Lightning ``Trainer``: one callback, a loss mixin, a selection sampler.

Every prunus online data policy (RS2, InfoBatch, Selective Backprop, RHO-LOSS, loss
reweighting) and every weight policy (one-shot criteria, GMP, lottery ticket, SET, RigL,
GraNet, N:M) runs unchanged: :class:`PrunusCallback` fires the prunus events on them from
Lightning's hooks::

    from prunus.data.online import get_online
    from prunus.weights import get_sparsifier
    from prunus.integrations.lightning import PrunusCallback, PrunusModule

    prunus = PrunusCallback(get_online("selective_backprop", keep=0.5),
                            get_sparsifier("rigl", sparsity=0.9))

    class Net(PrunusModule):                 # a LightningModule
        def per_example_loss(self, batch):   # instead of training_step
            x, y = batch
            return F.cross_entropy(self(x), y, reduction="none")
        ...

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return prunus.dataloader(train_set, batch_size=64)   # the policies' sampler

    L.Trainer(max_epochs=5, callbacks=[prunus]).fit(Net(), Data())

What needs what:

- weight policies and ``rs2`` work with any ``LightningModule``;
- ``rs2``, ``infobatch``, ``selective_backprop``, ``rho_loss`` choose rows or need their ids, so
  the training loader must come from :meth:`PrunusCallback.dataloader` (or use
  :meth:`PrunusCallback.sampler`);
- ``infobatch``, ``selective_backprop``, ``rho_loss`` and ``reweight`` need per-example losses:
  the module subclasses :class:`PrunusModule` and defines ``per_example_loss(batch)``; its
  ``training_step`` then forwards only what the policies keep (a step Selective Backprop
  skips returns None, so Lightning takes no optimizer step);
- ``rho_loss`` trains its irreducible-loss model with prunus: ``PrunusCallback(...,
  train_data=dataset)`` with the training set as a prunus Dataset, row for row.

Example ids are row positions of the training dataset; one process, one device,
``accumulate_grad_batches=1`` for the data policies. Static selections:
:func:`selection_loader` / :class:`SelectionDataModule` (the kept rows, reshuffled each epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from prunus.errors import PrunusError, require
from prunus.integrations._bridge import (
    EpochSampler,
    PolicyRunner,
    SelectionSampler,
    batch_len,
    rows_of_ids,
    steps_per_epoch,
)
from prunus.train.events import Callback as PrunusPolicy

require("lightning", "lightning")
import lightning.pytorch as L  # after the extra check

__all__ = [
    "PrunusCallback",
    "PrunusModule",
    "SelectionDataModule",
    "SelectionSampler",
    "selection_loader",
]


class PrunusCallback(L.Callback):
    """prunus policies (online data and weight policies) as one Lightning callback.

    Args:
        *policies: prunus callbacks (``prunus.data.online.get_online(...)``,
            ``prunus.weights.get_sparsifier(...)`` or the classes), fired in this order.
        seed: seeds the epoch order when no data policy chooses it (default 0).
        train_data: the training set as a prunus Dataset, row for row (``rho_loss`` only).
        scoring_data: an ``(x, y)`` batch for the one-shot criteria that score on data
            (gradient, SNIP, GraSP, SynFlow).

    ``runner.state`` is the prunus state the policies see (``state.extra["sparsity"]``,
    ``state.meter.examples_backpropagated``...).

    Raises:
        PrunusError: at fit start, a data policy without the loader or the loss hook it needs,
            or ``accumulate_grad_batches`` > 1 with data policies.
    """

    def __init__(
        self,
        *policies: PrunusPolicy,
        seed: int = 0,
        train_data: Any = None,
        scoring_data: Any = None,
    ) -> None:
        super().__init__()
        if len(policies) == 1 and isinstance(policies[0], (list, tuple)):
            policies = tuple(policies[0])
        self.runner = PolicyRunner(
            policies, seed=seed, train_data=train_data, scoring_data=scoring_data
        )

    @property
    def state(self):
        """The prunus :class:`~prunus.train.trainer.State` the policies act on."""
        return self.runner.state

    # -- the training loader -----------------------------------------------------------------
    def sampler(self, num_examples: int, batch_size: int) -> EpochSampler:
        """The sampler a training ``DataLoader`` of ``batch_size`` must use (the rows each epoch
        visits, as the data policies choose)."""
        return self.runner.make_sampler(num_examples, batch_size)

    def dataloader(self, dataset: Any, batch_size: int, **loader_options: Any) -> DataLoader:
        """A training ``DataLoader`` over ``dataset`` driven by the policies' sampler
        (``loader_options``: ``num_workers``, ``collate_fn``..., not ``shuffle``/``sampler``)."""
        for key in ("shuffle", "sampler", "batch_sampler", "drop_last"):
            if key in loader_options:
                raise PrunusError(f"{key} is set by the prunus sampler; leave it out.")
        sampler = self.sampler(len(dataset), batch_size)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_options)

    # -- Lightning hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.runner.started:
            raise PrunusError("a PrunusCallback drives one fit; build a new one for the next fit.")
        # The training loader does not exist yet: start the policies when it is first sized
        # (the sampler asks) or, at the latest, when training starts.
        self.runner.starter = lambda: self._start(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.runner.ensure_started()
        if trainer.optimizers:
            self.runner.set_optimizer(trainer.optimizers[0])

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        runner = self.runner
        data_policies = runner.chooses_epochs or runner.selects_batches
        if data_policies and runner.sampler is None:
            raise PrunusError(
                "prunus data policies choose the training rows: build the training loader with "
                "PrunusCallback.dataloader(dataset, batch_size) (or its sampler())."
            )
        if runner.selects_batches and not isinstance(pl_module, PrunusModule):
            raise PrunusError(
                "this data policy needs per-example losses: subclass "
                "prunus.integrations.lightning.PrunusModule and define per_example_loss(batch)."
            )
        if data_policies and trainer.accumulate_grad_batches != 1:
            raise PrunusError(
                "prunus data policies select per optimizer step: use accumulate_grad_batches=1 "
                f"(got {trainer.accumulate_grad_batches})."
            )
        sampler = runner.sampler
        if sampler is not None:
            per_epoch = steps_per_epoch(sampler.num_examples, sampler.batch_size)
            epochs = _epochs(trainer, per_epoch)
            total = epochs * per_epoch
            num_examples, batch_size = sampler.num_examples, sampler.batch_size
        else:
            total = int(trainer.estimated_stepping_batches)
            epochs = max(int(trainer.max_epochs or 1), 1)
            num_examples, batch_size = None, 1
        if isinstance(pl_module, PrunusModule):
            pl_module._prunus_runner = runner
            runner.loss_fn = pl_module.per_example_loss
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        runner.start(
            pl_module, epochs=epochs, batch_size=batch_size, total_steps=total,
            num_examples=num_examples, optimizer=optimizer, device=pl_module.device,
        )

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if isinstance(pl_module, PrunusModule):
            return  # PrunusModule.training_step fires batch_start itself
        kept = self.runner.batch_start(batch, trainer.global_step)
        if kept is not batch:  # pragma: no cover - checked at fit start
            raise PrunusError("a data policy changed the batch; subclass PrunusModule.")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.runner.after_backward()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.runner.after_step(trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.runner.epoch_end()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.runner.fit_end()


class PrunusModule(L.LightningModule):
    """A ``LightningModule`` whose loss is per example, so prunus data policies can act on it.

    Define ``per_example_loss(batch) -> (B,) tensor`` instead of ``training_step``. With a
    :class:`PrunusCallback` attached, ``training_step`` gives the batch to the policies
    (Selective Backprop or RHO-LOSS may train on a subset, or on nothing this step), and
    returns the objective they build: the mean loss, times InfoBatch's weights, or the
    reweighted mean. Without the callback it returns the plain mean. The loss is logged as
    ``train_loss``.
    """

    _prunus_runner: PolicyRunner | None = None

    def per_example_loss(self, batch: Any) -> torch.Tensor:
        """The loss of every example of ``batch``, shape (B,), differentiable."""
        raise NotImplementedError("define per_example_loss(batch) in your PrunusModule.")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        runner = self._prunus_runner
        if runner is None:
            loss = self.per_example_loss(batch).mean()
        else:
            batch = runner.batch_start(batch, self.trainer.global_step)
            if batch is None:
                return None  # nothing to train on this step: Lightning skips the update
            loss = runner.loss(self.per_example_loss(batch))
        self.log("train_loss", loss.detach(), prog_bar=False, batch_size=_size(batch))
        return loss


# -- static selections ------------------------------------------------------------------------


def selection_loader(
    dataset: Any,
    ids: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    dataset_ids: Sequence[int] | np.ndarray | None = None,
    shuffle: bool = True,
    seed: int = 0,
    **loader_options: Any,
) -> DataLoader:
    """A training ``DataLoader`` over the kept examples of a static selection.

    Args:
        dataset: the full training dataset (a torch ``Dataset``).
        ids: the kept ids, e.g. from :func:`prunus.data.select`.
        batch_size: rows per batch.
        dataset_ids: the id of each row of ``dataset`` (default None: ids are row positions).
        shuffle: a new seeded order every epoch (default True).
        seed: seeds the orders (default 0).
        **loader_options: other ``DataLoader`` keywords (``num_workers``, ``collate_fn``...).

    Raises:
        PrunusError: an id that is not in the dataset, or an empty selection.
    """
    rows = rows_of_ids(ids, dataset_ids)
    if len(rows) and int(rows.max()) >= len(dataset):
        raise PrunusError(
            f"selection row {int(rows.max())} is past the end of the dataset ({len(dataset)} rows)."
        )
    sampler = SelectionSampler(rows, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_options)


class SelectionDataModule(L.LightningDataModule):
    """A ``LightningDataModule`` training on a static selection of ``train``.

    Args:
        train: the full training dataset (a torch ``Dataset``).
        ids: the kept ids (see :func:`selection_loader` for ``dataset_ids``, ``shuffle``,
            ``seed``).
        batch_size: rows per batch (default 64).
        val: an optional validation dataset (loaded in order).
        **loader_options: other ``DataLoader`` keywords.
    """

    def __init__(
        self,
        train: Any,
        ids: Sequence[int] | np.ndarray,
        batch_size: int = 64,
        *,
        val: Any = None,
        dataset_ids: Sequence[int] | np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        **loader_options: Any,
    ) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, int(batch_size)
        self.loader_options = loader_options
        self.loader = selection_loader(
            train, ids, self.batch_size, dataset_ids=dataset_ids, shuffle=shuffle, seed=seed,
            **loader_options,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        return DataLoader(self.val, batch_size=self.batch_size, **self.loader_options)


def _epochs(trainer: L.Trainer, per_epoch: int) -> int:
    """The epochs a fit will run: ``max_epochs``, or enough for ``max_steps`` when that ends
    training first."""
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    if trainer.max_steps and trainer.max_steps > 0:
        by_steps = math.ceil(trainer.max_steps / max(per_epoch, 1))
        epochs = by_steps if epochs is None else min(epochs, by_steps)
    return max(int(epochs or 1), 1)


def _size(batch: Any) -> int:
    return batch_len(batch)
