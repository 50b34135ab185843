"""Training a causal LM on packed blocks with a token budget, metered honestly.

:func:`train_lm` is a plain loop: AdamW, a warmup + cosine (or one-cycle) learning-rate
schedule, blocks visited in a seeded random order each pass. It stops after **exactly**
``tokens`` training tokens, so that two data selections are compared at the same compute:
the last block is cut to the tokens left. A *training token* is a real (non-padding) input
token forwarded in a training step; the loss of a block of ``T`` real tokens has ``T − 1``
targets.

Every run is metered (:class:`LMMeter`): tokens forwarded (training, evaluation, reference
models), tokens that carry gradient (targets whose loss enters the objective, fewer under
Rho-1 or zero weights), FLOPs and wall seconds by phase. FLOPs are **theoretical**
(Kaplan et al. 2020): ``6·N`` per training token, ``2·N`` per evaluation or reference token,
with ``N`` the model's non-embedding parameter count (token and position embeddings, and the
head tied to them, are left out, so the head's matmul is not counted).

Perplexity is ``exp`` of the mean token loss over every real target token of an evaluation
set (lower is better).

Callbacks are :class:`prunus.train.events.Callback` objects; the loop fires ``fit_start``,
``batch_start``, ``after_forward`` (``state.token_losses``, ``state.target_mask`` and
``state.keep`` are set; a callback may replace ``state.keep``, the bool mask of targets that
carry gradient), ``after_loss``, ``after_step``, ``batch_end``, ``evaluation`` and ``fit_end``
with an :class:`LMState`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.errors import PrunusError, choice_error
from prunus.text.lm import token_losses
from prunus.train.events import Callback, Event, EventDispatcher

SCHEDULES = ("cosine", "onecycle", "constant")
PHASES = ("train", "eval", "scoring")

__all__ = [
    "SCHEDULES",
    "LMMeter",
    "LMResult",
    "LMState",
    "evaluate_lm",
    "lm_loss",
    "non_embedding_parameters",
    "train_lm",
]


# --------------------------------------------------------------------------- meter


@dataclass
class LMMeter:
    """What an LM run spends: tokens, theoretical FLOPs and wall seconds by phase.

    ``tokens_forwarded``: ``train`` (real input tokens of training steps), ``eval`` (real
    tokens of evaluation sets) and ``reference`` (tokens a reference model forwarded, e.g.
    Rho-1's). ``tokens_with_grad``: training targets whose loss enters the objective.
    ``flops``: theoretical, per phase as in the module docstring.
    """

    n_params: int = 0
    tokens_forwarded: dict[str, int] = field(
        default_factory=lambda: {"train": 0, "eval": 0, "reference": 0}
    )
    tokens_with_grad: int = 0
    targets: int = 0
    flops: dict[str, float] = field(
        default_factory=lambda: {"train": 0.0, "eval": 0.0, "reference": 0.0}
    )
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    flops_theoretical: bool = True
    _running: list[list] = field(default_factory=list, repr=False)

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @contextmanager
    def timing(self, phase: str):
        """Add the wall time of the block to ``phase``; an inner phase pauses the outer one."""
        now = time.perf_counter()
        if self._running:
            outer = self._running[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self._running.append([phase, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            _, start = self._running.pop()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + end - start
            if self._running:
                self._running[-1][1] = end

    def charge_forward(self, phase: str, tokens: int, n_params: int) -> None:
        """Count ``tokens`` forwarded without gradient by a model of ``n_params``
        non-embedding parameters (``2·N`` FLOPs per token)."""
        self.tokens_forwarded[phase] = self.tokens_forwarded.get(phase, 0) + int(tokens)
        self.flops[phase] = self.flops.get(phase, 0.0) + 2.0 * n_params * int(tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_params": self.n_params,
            "tokens_forwarded": dict(self.tokens_forwarded),
            "tokens_with_grad": self.tokens_with_grad,
            "targets": self.targets,
            "flops": dict(self.flops),
            "total_flops": self.total_flops,
            "flops_theoretical": True,
            "seconds": dict(self.seconds),
            "total_seconds": self.total_seconds,
        }


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside every ``nn.Embedding`` (token and position tables; a head tied to
    the token table is the same tensor and is left out too), each tensor counted once."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# --------------------------------------------------------------------------- state/result


@dataclass
class LMState:
    """The mutable state callbacks see."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    meter: LMMeter
    total_steps: int
    step: int = 0
    tokens: int = 0
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    token_doc_ids: torch.Tensor | None = None
    token_losses: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    evaluation: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LMResult:
    """The trained model, final perplexities, the evaluation history and the meter.

    ``history`` holds one row per evaluation (``step``, ``tokens``, then ``<set>`` perplexity
    and ``<set>_loss`` for each evaluation set); ``train_loss`` the objective of every step.
    """

    model: nn.Module
    perplexity: dict[str, float]
    loss: dict[str, float]
    history: list[dict[str, float]]
    train_loss: list[float]
    steps: int
    tokens: int
    meter: LMMeter
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "perplexity": dict(self.perplexity),
            "steps": self.steps,
            "tokens": self.tokens,
            **self.meter.to_dict(),
            "settings": dict(self.settings),
        }


# --------------------------------------------------------------------------- losses


def lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    keep: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training objective of one batch: ``Σ w·ℓ over kept targets / #kept targets``.

    ``ℓ[b, t] = −log p(x[b, t+1] | x[b, ≤t])`` (:func:`prunus.text.lm.token_losses`); without
    ``keep`` and ``weights`` this is the mean over real targets, exactly what
    ``model(input_ids, labels=...).loss`` reports with padding labelled −100.

    Returns ``(loss, token_losses, target_mask)``.
    """
    losses, mask = token_losses(model, input_ids, attention_mask)
    kept = mask if keep is None else keep & mask
    per_token = losses if weights is None else losses * weights
    loss = (per_token * kept).sum() / kept.sum().clamp_min(1)
    return loss, losses, mask


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 32,
    meter: LMMeter | None = None,
) -> tuple[float, float, int]:
    """``(perplexity, mean token loss, targets)`` of ``model`` on a
    :class:`~prunus.text.tokenizer.DocumentSequences` or
    :class:`~prunus.text.tokenizer.PackedBlocks` (every real target token weighs the same)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, forwarded = 0.0, 0, 0
    try:
        for start in range(0, len(data.input_ids), batch_size):
            ids = torch.as_tensor(data.input_ids[start : start + batch_size], device=device)
            mask = torch.as_tensor(data.attention_mask[start : start + batch_size], device=device)
            losses, real = token_losses(model, ids, mask)
            total += float(losses.double().sum())
            count += int(real.sum())
            forwarded += int(mask.sum())
    finally:
        model.train(was_training)
    if meter is not None:
        meter.charge_forward("eval", forwarded, meter.n_params or non_embedding_parameters(model))
    if count == 0:
        raise PrunusError("the evaluation set has no target tokens.")
    mean = total / count
    if not math.isfinite(mean):
        raise PrunusError("the model gave a non-finite loss on the evaluation set.")
    return math.exp(mean), mean, count


# --------------------------------------------------------------------------- training


def train_lm(
    model: nn.Module,
    blocks: Any,
    *,
    tokens: int | None = None,
    epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    eval_sets: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    token_weights: Any = None,
    schedule: str = "cosine",
    warmup: float = 0.05,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    eval_every: int | None = None,
    eval_at_start: bool = True,
    eval_batch_size: int | None = None,
    meter: LMMeter | None = None,
) -> LMResult:
    """Train ``model`` (in place) on packed blocks with AdamW, deterministically.

    Args:
        model: a causal LM (``prunus.text.build_lm``); trained on its current device.
        blocks: a :class:`~prunus.text.tokenizer.PackedBlocks`.
        tokens: the token budget: stop after exactly this many training tokens, visiting the
            blocks again (in a fresh seeded order) as often as needed. Default None.
        epochs: passes over the blocks when ``tokens`` is None (default 1). Pass one of the
            two.
        batch_size: blocks per step (the last step may hold fewer). Default 16.
        lr: peak learning rate. Default 3e-3.
        seed: seed of the block order and of dropout. Default 0.
        eval_sets: name -> ``DocumentSequences`` or ``PackedBlocks`` evaluated (perplexity)
            at the start (``eval_at_start``), every ``eval_every`` steps and at the end.
        callbacks: :class:`prunus.train.events.Callback` objects (e.g.
            :class:`prunus.text.rho1.Rho1`).
        token_weights: per-target loss multipliers: an array shaped like
            ``blocks.input_ids`` (the weight of each token as a target) or a mapping
            document id -> weight (applied to that document's tokens). The objective is
            ``Σ w·ℓ / #targets`` (weights normalised to mean 1 keep the scale); targets of
            weight 0 carry no gradient.
        schedule: ``"cosine"`` (linear warmup over ``warmup`` of the steps, cosine to 0),
            ``"onecycle"`` (``torch.optim.lr_scheduler.OneCycleLR`` with ``pct_start=warmup``)
            or ``"constant"``. Default ``"cosine"``.
        warmup: share of the steps spent warming up. Default 0.05.
        weight_decay, betas: AdamW's (decay on matrices only, not on biases, norms or
            embeddings). Defaults 0.1, (0.9, 0.95).
        grad_clip: gradient-norm clip (None for none). Default 1.0.
        eval_every: evaluate every this many steps (None: only at the start and the end).
        eval_at_start: evaluate before the first step too. Default True.
        eval_batch_size: rows per evaluation batch (default ``2·batch_size``).
        meter: an :class:`LMMeter` to add to (default a new one).

    Returns:
        An :class:`LMResult`.

    Raises:
        PrunusError: both or neither-valid ``tokens``/``epochs``, a budget below 1, bad
            batch size, learning rate or schedule, token weights of the wrong shape.
    """
    if schedule not in SCHEDULES:
        raise choice_error("schedule", schedule, SCHEDULES)
    if tokens is not None and epochs is not None:
        raise PrunusError("pass either tokens (a token budget) or epochs, not both.")
    if tokens is not None and (int(tokens) != tokens or tokens < 1):
        raise PrunusError(f"tokens must be a positive integer (got {tokens!r}).")
    if epochs is None and tokens is None:
        epochs = 1
    if epochs is not None and (int(epochs) != epochs or epochs < 1):
        raise PrunusError(f"epochs must be a positive integer (got {epochs!r}).")
    if int(batch_size) != batch_size or batch_size < 1:
        raise PrunusError(f"batch_size must be a positive integer (got {batch_size!r}).")
    if not lr > 0:
        raise PrunusError(f"lr must be positive (got {lr!r}).")
    if not 0 <= warmup < 1:
        raise PrunusError(f"warmup must be in [0, 1) (got {warmup!r}).")
    eval_sets = dict(eval_sets or {})
    eval_batch_size = eval_batch_size or 2 * batch_size
    weights_np = _token_weights(token_weights, blocks)
    real = np.asarray(blocks.attention_mask).sum(1).astype(np.int64)
    if real.sum() == 0:
        raise PrunusError("the blocks hold no tokens.")
    plan = _plan(real, batch_size, seed, tokens=tokens, epochs=epochs)
    total_steps = len(plan)

    device = next(model.parameters()).device
    meter = meter or LMMeter()
    meter.n_params = non_embedding_parameters(model)
    optimizer = _adamw(model, lr, weight_decay, betas)
    scheduler = _scheduler(optimizer, schedule, lr, warmup, total_steps)
    state = LMState(model=model, optimizer=optimizer, meter=meter, total_steps=total_steps)
    dispatch = EventDispatcher(callbacks)
    history: list[dict[str, float]] = []
    train_loss: list[float] = []

    def evaluate() -> None:
        with meter.timing("eval"):
            row: dict[str, float] = {"step": state.step, "tokens": state.tokens}
            for name, data in eval_sets.items():
                ppl, loss, _ = evaluate_lm(model, data, batch_size=eval_batch_size, meter=meter)
                row[name], row[f"{name}_loss"] = ppl, loss
            state.evaluation = row
            history.append(row)
        dispatch(Event.EVALUATION, state)

    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        dispatch(Event.FIT_START, state)
        if eval_sets and eval_at_start:
            evaluate()
        model.train()
        for rows, cut in plan:
            with meter.timing("train"):
                ids = blocks.input_ids[rows]
                mask = np.array(blocks.attention_mask[rows])
                if cut is not None:  # the budget ends inside the last block of this step
                    mask[-1, cut:] = 0
                state.input_ids = torch.as_tensor(ids, device=device)
                state.attention_mask = torch.as_tensor(mask, device=device)
                state.token_doc_ids = torch.as_tensor(blocks.token_doc_ids[rows], device=device)
                state.weights = (
                    None
                    if weights_np is None
                    else torch.as_tensor(weights_np[rows][:, 1:], device=device, dtype=torch.float32)
                )
                dispatch(Event.BATCH_START, state)
                losses, target_mask = token_losses(model, state.input_ids, state.attention_mask)
                state.token_losses, state.target_mask = losses, target_mask
                state.keep = target_mask
                dispatch(Event.AFTER_FORWARD, state)
                keep = state.keep & target_mask
                if state.weights is None:
                    state.loss = (losses * keep).sum() / keep.sum().clamp_min(1)
                    grad = keep
                else:  # Σ w·ℓ / #targets: weights are multipliers (mean 1 keeps the scale)
                    state.loss = (losses * state.weights * keep).sum() / keep.sum().clamp_min(1)
                    grad = keep & (state.weights != 0)
                dispatch(Event.AFTER_LOSS, state)
                optimizer.zero_grad(set_to_none=True)
                state.loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                scheduler.step()
                forwarded = int(mask.sum())
                meter.tokens_forwarded["train"] += forwarded
                meter.flops["train"] += 6.0 * meter.n_params * forwarded
                meter.tokens_with_grad += int(grad.sum())
                meter.targets += int(target_mask.sum())
                state.step += 1
                state.tokens += forwarded
                train_loss.append(float(state.loss.detach()))
                dispatch(Event.AFTER_STEP, state)
                dispatch(Event.BATCH_END, state)
            if eval_sets and eval_every and state.step % eval_every == 0 and state.step < total_steps:
                model.eval()
                evaluate()
                model.train()
        model.eval()
        if eval_sets:
            evaluate()
        dispatch(Event.FIT_END, state)
    last = history[-1] if history else {}
    return LMResult(
        model=model,
        perplexity={name: last[name] for name in eval_sets},
        loss={name: last[f"{name}_loss"] for name in eval_sets},
        history=history,
        train_loss=train_loss,
        steps=state.step,
        tokens=state.tokens,
        meter=meter,
        settings={
            "tokens": tokens,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "schedule": schedule,
            "warmup": warmup,
            "weight_decay": weight_decay,
            "betas": list(betas),
            "grad_clip": grad_clip,
            "context_length": int(blocks.input_ids.shape[1]),
            "blocks": len(blocks.input_ids),
        },
    )


def _plan(
    real: np.ndarray, batch_size: int, seed: int, *, tokens: int | None, epochs: int | None
) -> list[tuple[np.ndarray, int | None]]:
    """The steps: (block rows, cut) where ``cut`` (if not None) is how many tokens of the
    step's last block are used. Each pass visits the blocks in a fresh seeded order."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[np.ndarray, int | None]] = []
    left = tokens
    passes = 0
    nonempty = np.flatnonzero(real > 0)
    while True:
        order = nonempty[rng.permutation(len(nonempty))]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if left is not None:
                sizes = np.cumsum(real[rows])
                if sizes[-1] >= left:
                    last = int(np.searchsorted(sizes, left))  # first block reaching the budget
                    rows = rows[: last + 1]
                    before = int(sizes[last - 1]) if last > 0 else 0
                    cut = left - before
                    plan.append((rows, None if cut == real[rows[-1]] else cut))
                    return plan
                left -= int(sizes[-1])
            plan.append((rows, None))
        passes += 1
        if epochs is not None and passes >= epochs:
            return plan


def _token_weights(token_weights: Any, blocks: Any) -> np.ndarray | None:
    if token_weights is None:
        return None
    shape = np.asarray(blocks.input_ids).shape
    if isinstance(token_weights, Mapping):
        doc = np.asarray(blocks.token_doc_ids)
        unique, inverse = np.unique(doc, return_inverse=True)
        values = np.array([float(token_weights.get(int(d), 1.0)) if d >= 0 else 0.0 for d in unique])
        weights = values[inverse].reshape(shape)
    else:
        weights = np.asarray(token_weights, dtype=np.float64)
        if weights.shape != shape:
            raise PrunusError(
                f"token_weights must be shaped like the blocks {shape} (got {weights.shape})."
            )
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise PrunusError("token_weights must be finite and non-negative.")
    return weights.astype(np.float32)


def _adamw(model: nn.Module, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def _scheduler(optimizer, schedule: str, lr: float, warmup: float, total_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(total_steps, 2), pct_start=max(warmup, 1e-3),
            anneal_strategy="cos", cycle_momentum=False,
        )
    warm = math.ceil(warmup * total_steps) if schedule == "cosine" else 0

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
