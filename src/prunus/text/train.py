"""Training a causal LM on packed blocks with a token budget, metered honestly.

:func:`train_lm` runs the one training loop (:class:`prunus.train.Trainer`) with the causal-LM
task (:class:`prunus.text.task.CausalLM`): AdamW (no decay on biases, norms and embeddings),
a warmup + cosine (or one-cycle) learning-rate schedule, blocks visited in a seeded random
order each pass. It stops after **exactly** ``tokens`` training tokens, so that two data
selections are compared at the same compute: the step that reaches the budget uses only the
tokens left. A *training token* is a real (non-padding) input token forwarded in a training
step; the loss of a block of ``T`` real tokens has ``T − 1`` targets.

Every run is metered (:class:`LMMeter`): tokens forwarded (training, evaluation, selection
passes, reference models), tokens that carry gradient (targets whose loss enters the objective,
fewer under Rho-1 or zero weights), FLOPs and wall seconds by phase. FLOPs are **theoretical**
(Kaplan et al. 2020): ``6·N`` per training token, ``2·N`` per evaluation or reference token,
with ``N`` the model's non-embedding parameter count (token and position embeddings, and the
head tied to them, are left out, so the head's matmul is not counted).

Perplexity is ``exp`` of the mean token loss over every real target token of an evaluation
set (lower is better).

Callbacks are :class:`prunus.train.events.Callback` objects and see the loop's
:class:`prunus.train.State`; at ``after_forward`` ``state.token_losses``, ``state.target_mask``
and ``state.keep`` are set, and a callback may narrow ``state.keep`` (the bool mask of targets
that carry gradient). Every data method of the loop (Selective Backprop, RS2, InfoBatch…) works
on blocks as examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.errors import PrunusError, choice_error
from prunus.text.lm import token_losses
from prunus.train.events import Callback
from prunus.train.meter import PhaseClock

SCHEDULES = ("cosine", "onecycle", "constant")

__all__ = [
    "SCHEDULES",
    "LMMeter",
    "LMResult",
    "evaluate_lm",
    "lm_loss",
    "non_embedding_parameters",
    "train_lm",
]


# --------------------------------------------------------------------------- meter


@dataclass
class LMMeter(PhaseClock):
    """What an LM run spends: tokens, theoretical FLOPs and wall seconds by phase.

    ``tokens_forwarded``: ``train`` (real input tokens of training steps), ``eval`` (real
    tokens of evaluation sets), ``selection`` (forward passes a data method made to choose)
    and ``reference`` (tokens a reference model forwarded, e.g. Rho-1's). ``tokens_with_grad``:
    training targets whose loss enters the objective. ``flops``: theoretical, per phase as in
    the module docstring.
    """

    n_params: int = 0
    tokens_forwarded: dict[str, int] = field(
        default_factory=lambda: {"train": 0, "eval": 0, "selection": 0, "reference": 0}
    )
    tokens_with_grad: int = 0
    targets: int = 0
    flops: dict[str, float] = field(
        default_factory=lambda: {"train": 0.0, "eval": 0.0, "selection": 0.0, "reference": 0.0}
    )
    flops_theoretical: bool = True

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def examples_backpropagated(self) -> int:
        """The loop's compute cadence counts tokens that carry gradient."""
        return self.tokens_with_grad

    def snapshot(self) -> dict[str, float]:
        """Cumulative counters for an evaluation row (the running phase up to now)."""
        seconds = self.running_seconds()
        row: dict[str, float] = {f"{phase}_seconds": v for phase, v in seconds.items()}
        row.update(total_seconds=sum(seconds.values()), tokens=self.tokens_forwarded["train"],
                   tokens_with_grad=self.tokens_with_grad, flops=self.total_flops)
        return row

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


# --------------------------------------------------------------------------- result


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
    from prunus.config import TrainConfig, validated
    from prunus.text.task import BlockRows, CausalLM
    from prunus.train.trainer import Trainer

    weights_np = _token_weights(token_weights, blocks)
    real = np.asarray(blocks.attention_mask).sum(1).astype(np.int64)
    if real.sum() == 0:
        raise PrunusError("the blocks hold no tokens.")
    rows = BlockRows(blocks)
    budget: dict[str, Any] = {"epochs": int(epochs)} if tokens is None else _rows_for(real, tokens)
    config = validated(TrainConfig, {
        **budget, "batch_size": int(batch_size), "eval_batch_size": int(eval_batch_size or
                                                                         2 * batch_size),
        "optimizer": "adamw", "lr": lr, "weight_decay": weight_decay, "betas": list(betas),
        "schedule": schedule, "warmup": warmup, "grad_clip": grad_clip, "seed": seed,
        "device": str(next(model.parameters()).device), "eval_every": eval_every,
        "eval_at_start": bool(eval_sets) and eval_at_start, "eval_each_epoch": False,
    }, "train")
    meter = meter or LMMeter()
    meter.n_params = non_embedding_parameters(model)
    task = CausalLM(eval_sets, tokens=tokens, token_weights=weights_np)
    losses = _StepLosses()
    cuda = [torch.device(config.device)] if config.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        result = Trainer(model, rows, [*callbacks, losses], config, task=task, meter=meter).fit()
    model.eval()
    history = [{"step": r["step"], "tokens": r["tokens"],
                **{k: r[k] for n in (eval_sets or {}) for k in (n, f"{n}_loss")}}
               for r in result.history] if eval_sets else []
    last = history[-1] if history else {}
    return LMResult(
        model=model,
        perplexity={name: last[name] for name in eval_sets or {}},
        loss={name: last[f"{name}_loss"] for name in eval_sets or {}},
        history=history,
        train_loss=losses.values,
        steps=losses.steps,
        tokens=meter.tokens_forwarded["train"],
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


class _StepLosses(Callback):
    """The objective of every step (``LMResult.train_loss``)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.steps = 0

    def on_after_step(self, state) -> None:
        self.values.append(float(state.loss.detach()))
        self.steps = state.step


def tokens_for_steps(blocks: Any, steps: int, batch_size: int, seed: int = 0) -> int:
    """The token budget that makes :func:`train_lm` take exactly ``steps`` steps: the real
    tokens of the first ``steps`` batches of the loop's seeded order (each pass a fresh
    permutation of the blocks, ``numpy.random.default_rng([seed, pass])``)."""
    real = np.asarray(blocks.attention_mask).sum(1).astype(np.int64)
    if int(steps) != steps or steps < 1:
        raise PrunusError(f"steps must be a positive integer (got {steps!r}).")
    if real.sum() == 0:
        raise PrunusError("the blocks hold no tokens.")
    total, taken, epoch = 0, 0, 0
    while taken < steps:
        order = np.random.default_rng([seed, epoch]).permutation(len(real))
        for start in range(0, len(order), batch_size):
            if taken == steps:
                break
            total += int(real[order[start:start + batch_size]].sum())
            taken += 1
        epoch += 1
    return total


def _rows_for(real: np.ndarray, tokens: int) -> dict[str, int]:
    """A row budget that surely holds ``tokens`` training tokens in any block order (the
    loop stops at exactly ``tokens``): full blocks for the budget plus every shorter block."""
    longest = int(real.max())
    short = int((real < longest).sum())
    return {"examples": min(math.ceil(tokens / longest) + short, 10**12)}


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


