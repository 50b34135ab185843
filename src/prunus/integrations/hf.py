"""prunus policies in a Hugging Face ``transformers.Trainer``.

- :class:`PrunusCallback` runs prunus **weight** policies (one-shot criteria, GMP, lottery
  ticket, SET, RigL, GraNet, N:M) in any ``Trainer``: ``Trainer(..., callbacks=[
  PrunusCallback(get_sparsifier("gmp", sparsity=0.8))])``.
- :class:`PrunusTrainer` is a thin ``Trainer`` subclass for the **data** policies (RS2,
  InfoBatch, Selective Backprop, RHO-LOSS, loss reweighting) and the **token** policies of
  :mod:`prunus.text.rho1` (Rho-1, its random-token baseline): it samples the training rows
  the policies choose (``_get_train_sampler``), hands them each batch (``training_step``) and
  builds the loss from per-example losses (``compute_loss``). Weight policies can be passed to
  it too::

      trainer = PrunusTrainer(model=model, args=args, train_dataset=train, data_collator=collate,
                              policies=[get_online("selective_backprop", keep=0.5),
                                        get_sparsifier("rigl", sparsity=0.8, include_last=False)])
      trainer.train()

- :func:`keep_rows` applies a static selection to a ``datasets.Dataset`` (or any dataset that
  has ``select``); :func:`selection_sampler` gives it as a sampler.

Per-example losses (:func:`per_example_loss`): a causal LM's loss of a sequence is its mean
next-token loss over real targets (:func:`prunus.text.lm.token_losses`, targets with label
−100 left out); a model with one label per example (sequence classification) uses its
cross-entropy. Under a data policy the objective is the mean over examples (prunus's rule),
not the batch's token mean. Example ids are row positions of ``train_dataset``. Data
policies need one process and ``gradient_accumulation_steps=1``; a step Selective Backprop
skips computes no gradient, so the optimizer leaves the weights as they are (the
``Trainer`` still counts the step and advances its LR schedule). Needs ``prunus[lm]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunus.errors import PrunusError, require
from prunus.integrations._bridge import PolicyRunner, SelectionSampler, rows_of_ids, steps_per_epoch
from prunus.train.events import Callback as PrunusPolicy
from prunus.train.events import Event, EventDispatcher
from prunus.train.trainer import Batch, State

transformers = require("transformers", "lm")

__all__ = ["PrunusCallback", "PrunusTrainer", "keep_rows", "per_example_loss", "selection_sampler"]


class PrunusCallback(transformers.TrainerCallback):
    """prunus weight policies as a ``transformers.TrainerCallback``.

    Events: ``fit_start`` at ``on_train_begin`` (steps = ``state.max_steps``), ``batch_start``
    at ``on_step_begin``, ``after_backward`` at ``on_pre_optimizer_step`` (RigL reads the dense
    gradient there), ``after_step``/``batch_end`` at ``on_step_end``. Step fractions
    (``at=0.5``, GMP's ``start``/``end``) are fractions of the ``Trainer``'s optimizer steps.
    Data policies need :class:`PrunusTrainer` (which adds this callback itself).

    Args:
        *policies: prunus weight callbacks (``prunus.weights.get_sparsifier(...)``).
        seed: the runner's seed (default 0).
        scoring_data: an ``(x, y)`` batch for criteria that score on data (classifiers only).
        runner: an existing :class:`PolicyRunner` (used by :class:`PrunusTrainer`).
    """

    def __init__(
        self,
        *policies: PrunusPolicy,
        seed: int = 0,
        scoring_data: Any = None,
        runner: PolicyRunner | None = None,
    ) -> None:
        if len(policies) == 1 and isinstance(policies[0], (list, tuple)):
            policies = tuple(policies[0])
        self.runner = runner or PolicyRunner(policies, seed=seed, scoring_data=scoring_data)
        self.drives_batches = runner is not None  # PrunusTrainer fires batch_start itself

    @property
    def state(self):
        """The prunus :class:`~prunus.train.trainer.State` the policies act on."""
        return self.runner.state

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        runner = self.runner
        if not self.drives_batches and (runner.chooses_epochs or runner.selects_batches):
            raise PrunusError(
                "prunus data policies need prunus.integrations.hf.PrunusTrainer (they choose "
                "the training rows and read per-example losses); PrunusCallback takes weight "
                "policies."
            )
        if not runner.started:
            loader = kwargs.get("train_dataloader")
            num_examples = _length(getattr(loader, "dataset", None))
            runner.start(
                model, epochs=math.ceil(args.num_train_epochs),
                batch_size=args.per_device_train_batch_size, total_steps=state.max_steps,
                num_examples=num_examples, optimizer=optimizer,
            )
        runner.set_optimizer(optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.drives_batches:
            self.runner.batch_start(None, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.runner.after_backward()

    def on_step_end(self, args, state, control, **kwargs):
        self.runner.after_step(state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.runner.epoch_end()

    def on_train_end(self, args, state, control, **kwargs):
        self.runner.fit_end()


class PrunusTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose training rows, batches and loss follow prunus policies.

    Args:
        *args, **kwargs: the ``Trainer``'s own (``model``, ``args``, ``train_dataset``,
            ``data_collator``...).
        policies: prunus callbacks: online data policies (``get_online(...)``) and weight
            policies (``get_sparsifier(...)``), fired in this order.
        token_policies: per-token policies of :mod:`prunus.text.rho1` (``Rho1(reference,
            keep_fraction=0.6)``, ``RandomTokens``): the loss is averaged over the target
            tokens they keep. Causal LMs only.
        train_data: the training set as a prunus Dataset, row for row (``rho_loss`` only).
        scoring_data: an ``(x, y)`` batch for weight criteria that score on data.

    ``prunus_state`` is the prunus state the policies act on (``meter.examples_backpropagated``,
    ``extra["sparsity"]``), ``token_state`` the one the token policies see.

    Raises:
        PrunusError: ``gradient_accumulation_steps`` > 1 or several processes with data
            policies, token policies combined with a per-example loss policy.
    """

    def __init__(
        self,
        *args: Any,
        policies: Sequence[PrunusPolicy] = (),
        token_policies: Sequence[PrunusPolicy] = (),
        train_data: Any = None,
        scoring_data: Any = None,
        **kwargs: Any,
    ) -> None:
        self.runner = PolicyRunner(
            policies, seed=0, train_data=train_data, scoring_data=scoring_data
        )
        self.token_policies = list(token_policies)
        self.token_state = None
        self._token_fire = EventDispatcher(self.token_policies)
        self._training_batch = False
        super().__init__(*args, **kwargs)
        self.runner.seed = int(self.args.seed)
        self.runner.loss_fn = self._losses_without_grad
        self.prunus_callback = PrunusCallback(runner=self.runner)
        self.add_callback(self.prunus_callback)
        self._check()

    @property
    def prunus_state(self):
        """The prunus :class:`~prunus.train.trainer.State` the policies act on."""
        return self.runner.state

    def _check(self) -> None:
        runner = self.runner
        data = runner.chooses_epochs or runner.selects_batches or self.token_policies
        if data and self.args.gradient_accumulation_steps != 1:
            raise PrunusError(
                "prunus data policies select per optimizer step: use "
                f"gradient_accumulation_steps=1 (got {self.args.gradient_accumulation_steps})."
            )
        if data and self.args.world_size > 1:
            raise PrunusError("prunus data policies run in one process (world_size is "
                              f"{self.args.world_size}).")
        if self.token_policies and runner.selects_batches:
            raise PrunusError(
                "token_policies (Rho-1) and per-example loss policies cannot be combined; "
                "use one or the other."
            )

    # -- rows -----------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        runner = self.runner
        n, batch = len(dataset), self._train_batch_size
        sampler = runner.make_sampler(n, batch)
        if not runner.started:
            # optimizer steps, as the Trainer counts them (weight policies' step fractions)
            per_epoch = math.ceil(steps_per_epoch(n, batch) / self.args.gradient_accumulation_steps)
            epochs = math.ceil(self.args.num_train_epochs)
            total = epochs * per_epoch
            if self.args.max_steps > 0:
                epochs, total = math.ceil(self.args.max_steps / per_epoch), self.args.max_steps
            runner.start(
                self.model, epochs=epochs, batch_size=batch, total_steps=total,
                num_examples=n, device=self.args.device,
            )
        return sampler

    # -- batches and loss ------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs = self._prepare_inputs(inputs)
        kept = self.runner.batch_start(inputs, self.state.global_step)
        if kept is None:  # a policy keeps nothing this step: no forward, no gradient
            return torch.zeros((), device=self.args.device)
        self._training_batch = True
        try:
            return super().training_step(model, kept, num_items_in_batch)
        finally:
            self._training_batch = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        runner = self.runner
        if not self._training_batch or not (runner.selects_batches or self.token_policies):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.token_policies:
            loss = self._token_loss(model, inputs)
        else:
            loss = runner.loss(per_example_loss(model, inputs))
        return (loss, None) if return_outputs else loss

    def _losses_without_grad(self, inputs: Any) -> torch.Tensor:
        return per_example_loss(self.model, inputs)

    def _token_loss(self, model, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss over the target tokens the token policies keep (as train_lm does)."""
        from prunus.text.lm import token_losses

        state = self._token_start(model)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        losses, targets = token_losses(model, ids, mask)
        if "labels" in inputs:
            targets = targets & (inputs["labels"][:, 1:] != -100)
        state.batch = Batch(self.runner.state.batch.ids, ids, mask)
        state.token_losses, state.target_mask, state.keep = losses, targets, targets
        self._token_fire(Event.AFTER_FORWARD, state)
        keep = state.keep & targets
        state.loss = (losses * keep).sum() / keep.sum().clamp_min(1)
        self._token_fire(Event.AFTER_LOSS, state)
        state.meter.tokens_with_grad += int(keep.sum())
        state.meter.targets += int(targets.sum())
        state.step += 1
        return state.loss

    def _token_start(self, model):
        """The token policies' :class:`~prunus.train.trainer.State` (the runner's rows and
        settings, an :class:`~prunus.text.train.LMMeter`), created at the first step."""
        if self.token_state is None:
            from prunus.text.task import CausalLM
            from prunus.text.train import LMMeter

            rows = self.runner.state
            self.token_state = State(
                model=model, train=rows.train, eval=None, config=rows.config,
                device=rows.device, meter=LMMeter(), optimizer=self.optimizer,
                total_steps=max(int(self.state.max_steps), 1), task=CausalLM(),
            )
            self._token_fire(Event.FIT_START, self.token_state)
        return self.token_state


def per_example_loss(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The loss of every example of a ``Trainer`` batch, shape (B,), differentiable.

    A batch whose ``labels`` has one value per example (sequence classification) gets the
    cross-entropy of the model's logits. Otherwise the model is a causal LM and an example's
    loss is its mean next-token loss over the real targets (``attention_mask``, and ``labels``
    ≠ −100 when given): :func:`prunus.text.lm.token_losses`.

    Raises:
        PrunusError: a batch without ``input_ids`` for a causal LM.
    """
    labels = inputs.get("labels")
    if labels is not None and labels.dim() == 1:
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**rest).logits
        return F.cross_entropy(logits.float(), labels, reduction="none")
    from prunus.text.lm import token_losses

    if "input_ids" not in inputs:
        raise PrunusError(
            f"a causal LM batch needs input_ids (got keys: {', '.join(inputs)})."
        )
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    losses, targets = token_losses(model, ids, mask)
    if labels is not None:
        targets = targets & (labels[:, 1:] != -100)
    return (losses * targets).sum(1) / targets.sum(1).clamp_min(1)


def keep_rows(dataset: Any, ids: Sequence[int] | np.ndarray, id_column: str | None = "id") -> Any:
    """The rows of a ``datasets.Dataset`` that a static selection keeps, in dataset order.

    Args:
        dataset: a Hugging Face ``datasets.Dataset`` (anything with ``select(rows)``).
        ids: the kept ids (e.g. from :func:`prunus.data.select`).
        id_column: the column holding each row's prunus id (default ``"id"``); when the
            dataset has no such column (or None), ids are row positions.

    Raises:
        PrunusError: an id that is not in the dataset, or an empty selection.
    """
    column_names = getattr(dataset, "column_names", None) or ()
    dataset_ids = dataset[id_column] if id_column and id_column in column_names else None
    rows = rows_of_ids(ids, dataset_ids)
    if len(rows) == 0:
        raise PrunusError("the selection keeps no example; keep at least one row.")
    if int(rows.max()) >= len(dataset) or int(rows.min()) < 0:
        raise PrunusError(f"selection row {int(rows.max())} is outside the dataset ({len(dataset)} rows).")
    return dataset.select(rows.tolist())


def selection_sampler(
    dataset: Any,
    ids: Sequence[int] | np.ndarray,
    id_column: str | None = "id",
    shuffle: bool = True,
    seed: int = 0,
) -> SelectionSampler:
    """A static selection of ``dataset`` as a sampler over its rows (a fresh seeded order every
    epoch); see :func:`keep_rows` for the arguments."""
    column_names = getattr(dataset, "column_names", None) or ()
    dataset_ids = dataset[id_column] if id_column and id_column in column_names else None
    return SelectionSampler(rows_of_ids(ids, dataset_ids), shuffle=shuffle, seed=seed)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None
