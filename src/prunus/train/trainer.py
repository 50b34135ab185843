"""The prunus training loop: plain PyTorch, events for callbacks, a compute meter.

One loop for every task (:mod:`prunus.train.tasks`): the task says what a batch is, its
per-example loss and objective, how compute is counted and what an evaluation reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.config import TrainConfig, validated
from prunus.counts import fraction_count
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError
from prunus.train.events import Callback, Event, EventDispatcher
from prunus.train.meter import ComputeMeter
from prunus.train.tasks import CLASSIFICATION, Task


@dataclass
class Batch:
    """One mini-batch: example ids, inputs, targets (labels; a causal LM's attention mask)
    and optional per-example loss weights."""

    ids: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: torch.Tensor) -> Batch:
        """The examples where ``keep`` (bool mask or index tensor) selects."""
        weights = None if self.weights is None else self.weights[keep]
        return Batch(self.ids[keep], self.x[keep], self.y[keep], weights)


@dataclass
class State:
    """Everything a callback may read or change while a model trains."""

    model: nn.Module
    train: Dataset
    eval: Dataset | None
    config: TrainConfig
    device: torch.device
    meter: ComputeMeter
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    epoch_ids: np.ndarray | None = None
    epoch_weights: np.ndarray | None = None
    batch: Batch | None = None
    outputs: torch.Tensor | None = None
    per_example_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    backpropagated: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    task: Task = CLASSIFICATION
    # token-level tasks (causal LM): per-target losses, which targets are real, and which carry
    # gradient (a callback at after_forward may narrow ``keep``, e.g. Rho-1)
    token_losses: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions in the training arrays of the given ids."""
        if self.extra.get("ids_are_positions"):
            return np.asarray(ids, dtype=np.int64)
        return self.train.positions(ids)


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns: per-evaluation rows and the final numbers."""

    history: list[dict[str, Any]]
    meter: ComputeMeter
    model: nn.Module

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class Trainer:
    """Train a model on a :class:`Dataset`, evaluating on its test split each epoch.

    Args:
        model: any ``nn.Module`` the task can run (a classifier mapping ``x`` to logits by
            default).
        dataset: training data (its ``test`` split is evaluated unless ``eval_dataset`` is given).
        callbacks: objects with ``on_<event>(state)`` methods (see :mod:`prunus.train.events`).
        config: a :class:`TrainConfig`, or its fields as keywords (``epochs=10``, ``lr=3e-3``…).
        task: what a batch, its loss and an evaluation are (:mod:`prunus.train.tasks`;
            default classification).

    Raises:
        PrunusError: bad settings, or a loss that becomes NaN/infinite.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        callbacks: Sequence[Callback] = (),
        config: TrainConfig | None = None,
        eval_dataset: Dataset | None = None,
        task: Task | None = None,
        meter: ComputeMeter | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = validated(TrainConfig, settings, "train")
        elif settings:
            config = validated(TrainConfig, {**config.model_dump(), **settings}, "train")
        self.config = config
        self.model = model
        self.dataset = dataset
        self.eval_dataset = eval_dataset if eval_dataset is not None else dataset.test
        self.callbacks = list(callbacks)
        self.task = task or CLASSIFICATION
        self.meter = meter

    def fit(self) -> TrainResult:
        """Run the whole schedule; returns the history of evaluations and the meter."""
        cfg = self.config
        n = len(self.dataset)
        if cfg.examples is not None:
            cfg = cfg.model_copy(update={"epochs": math.ceil(cfg.examples / n)})
        last_epoch_size = n if cfg.examples is None else cfg.examples - (cfg.epochs - 1) * n
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        model = self.model.to(device)
        state = State(
            model=model,
            train=self.dataset,
            eval=self.eval_dataset,
            config=cfg,
            device=device,
            meter=self.meter if self.meter is not None else ComputeMeter(),
            task=self.task,
        )
        state.extra["ids_are_positions"] = bool(
            np.array_equal(self.dataset.ids, np.arange(len(self.dataset)))
        )
        x_all, y_all = self.task.tensors(self.dataset, device)
        ids_all = torch.from_numpy(self.dataset.ids).to(device)
        fire = EventDispatcher(self.callbacks)
        forward = torch.compile(model) if cfg.compile else model
        amp = cfg.amp and device.type == "cuda"

        state.total_steps = ((cfg.epochs - 1) * math.ceil(n / cfg.batch_size)
                             + math.ceil(last_epoch_size / cfg.batch_size))
        state.extra["next_eval"] = cfg.eval_every_examples
        state.optimizer = build_optimizer(model, cfg, self.task)
        fire(Event.FIT_START, state)
        # The schedule reads state.total_steps live, so a callback that learns its epoch sizes
        # as it goes (e.g. InfoBatch) may revise it at epoch_start.
        state.scheduler = build_scheduler(state.optimizer, cfg, lambda: max(state.total_steps, 1))
        if cfg.eval_at_start:
            self._evaluate(state, fire, end_of_epoch=False)

        for epoch in range(cfg.epochs):
            state.epoch = epoch
            state.epoch_ids, state.epoch_weights = None, None
            fire(Event.EPOCH_START, state)
            with state.meter.timing("train"):
                if state.epoch_ids is None:
                    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.dataset))
                    state.epoch_ids = self.dataset.ids[order]
                    rows = torch.from_numpy(order).to(device)
                else:
                    rows = torch.from_numpy(state.positions(state.epoch_ids)).to(device)
                if epoch == cfg.epochs - 1 and cfg.examples is not None:
                    rows = rows[:last_epoch_size]
                weights_all = (
                    None
                    if state.epoch_weights is None
                    else torch.as_tensor(state.epoch_weights, dtype=torch.float32, device=device)
                )
                self.task.train_mode(model)
                for start in range(0, len(rows), cfg.batch_size):
                    idx = rows[start : start + cfg.batch_size]
                    weights = None if weights_all is None else weights_all[start : start + cfg.batch_size]
                    state.batch = Batch(ids_all[idx], x_all[idx], y_all[idx], weights)
                    state.backpropagated = None
                    self._step(state, forward, fire, amp)
                    if state.stop:
                        break
            each_epoch = cfg.eval_each_epoch and not cfg.eval_every_examples
            if each_epoch or epoch == cfg.epochs - 1 or state.stop:
                self._evaluate(state, fire, end_of_epoch=True)
            fire(Event.EPOCH_END, state)
            if state.stop:
                break
        fire(Event.FIT_END, state)
        return TrainResult(state.history, state.meter, model)

    def _step(self, state: State, forward: nn.Module, fire: EventDispatcher, amp: bool) -> None:
        cfg = self.config
        fire(Event.BATCH_START, state)
        batch = state.batch
        if batch is None or len(batch) == 0:
            return
        task = self.task
        with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=amp):
            state.outputs = task.forward(forward, state)
            fire(Event.AFTER_FORWARD, state)
            state.per_example_loss = task.per_example_loss(state)
        state.loss = task.objective(state)
        fire(Event.AFTER_LOSS, state)
        if not torch.isfinite(state.loss):
            raise PrunusError(
                f"the training loss became {state.loss.item()} at epoch {state.epoch + 1}, "
                f"step {state.step + 1}; lower lr (now {cfg.lr}) or check the data for outliers."
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.loss.backward()
        fire(Event.AFTER_BACKWARD, state)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.optimizer.step()
        if state.step < state.total_steps:
            state.scheduler.step()
        state.step += 1
        fire(Event.AFTER_STEP, state)
        backpropagated = len(batch) if state.backpropagated is None else state.backpropagated
        task.count(state, len(batch), backpropagated)
        fire(Event.BATCH_END, state)
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            self._evaluate(state, fire, end_of_epoch=False)
        elif cfg.eval_every_examples and state.meter.examples_backpropagated >= state.extra["next_eval"]:
            while state.extra["next_eval"] <= state.meter.examples_backpropagated:
                state.extra["next_eval"] += cfg.eval_every_examples
            self._evaluate(state, fire, end_of_epoch=False)

    @torch.no_grad()
    def _evaluate(self, state: State, fire: EventDispatcher, end_of_epoch: bool) -> None:
        if end_of_epoch and state.history and state.history[-1]["step"] == state.step:
            state.history[-1]["end_of_epoch"] = True  # evaluated at this very step already
            return
        row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "end_of_epoch": end_of_epoch}
        with state.meter.timing("eval"):
            row.update(self.task.evaluate(state.model, self.eval_dataset,
                                          self.config.eval_batch_size, state.device, state))
        row["lr"] = state.optimizer.param_groups[0]["lr"]
        row.update(state.meter.snapshot())
        state.last_eval = row
        state.history.append(row)
        fire(Event.EVALUATION, state)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset`` (model left in eval mode)."""
    return CLASSIFICATION.evaluate(model, dataset, batch_size, torch.device(device))


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PrunusError(f"device must be 'auto', 'cpu' or 'cuda[:N]' (got {name!r}).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunusError("device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return device


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    task: Task | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW over the trainable parameters, in the task's
    parameter groups (a causal LM exempts biases, norms and embeddings from weight decay)."""
    groups = (task or CLASSIFICATION).parameter_groups(model, cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base LR at ``step`` of ``total`` for the configured schedule.

    constant: 1 after warmup. cosine: linear warmup, then cosine to 0. step: ×gamma every
    ``step_size`` of training. onecycle: linear warmup from 1/25, then cosine to ~0. linear:
    linear warmup, then linear decay to 0 (sentence-transformers' ``WarmupLinear``).
    """
    warm = fraction_count(cfg.warmup, total)
    if cfg.schedule == "onecycle":
        warm = max(warm, 1)
        if step < warm:
            return 1 / 25 + (1 - 1 / 25) * step / warm
        progress = (step - warm) / max(total - warm, 1)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(total - warm, 1)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    period = fraction_count(cfg.step_size, total, at_least=1)
    return cfg.gamma ** (step // period)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int | Callable[[], int]
):
    """A ``LambdaLR`` following :func:`lr_factor` over ``total_steps`` steps (an int, or a
    function returning the current total when the schedule length may change during training)."""
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total(), cfg)
    )
