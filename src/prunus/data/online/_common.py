"""Helpers shared by the online methods: argument checks, id → row lookup, a no-grad loss pass."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.errors import PrunusError


def check_fraction(value: object, field: str) -> float:
    """``value`` as a float in (0, 1], or a one-sentence :class:`PrunusError` naming ``field``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrunusError(f"{field} must be a number in (0, 1] (got {value!r}).") from None
    if not (0.0 < number <= 1.0) or math.isnan(number):
        raise PrunusError(f"{field} must be a number in (0, 1] (got {value!r}).")
    return number


def check_positive_int(value: object, field: str) -> int:
    """``value`` as an int ≥ 1, or a :class:`PrunusError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PrunusError(f"{field} must be an integer ≥ 1 (got {value!r}).")
    return int(value)


def check_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise PrunusError(f"seed must be an integer ≥ 0 (got {value!r}).")
    return int(value)


class RowLookup:
    """Maps stable example ids to row positions of the training arrays (precomputed once)."""

    def __init__(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.identity = bool(np.array_equal(ids, np.arange(len(ids))))
        order = np.argsort(ids, kind="stable")
        self._order = torch.from_numpy(order)
        self._sorted = torch.from_numpy(ids[order])

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows (on the device of ``ids``) of the given ids, which must all exist."""
        if self.identity:
            return ids
        if self._sorted.device != ids.device:
            self._sorted, self._order = self._sorted.to(ids.device), self._order.to(ids.device)
        return self._order[torch.searchsorted(self._sorted, ids)]


def losses_without_grad(state, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example training loss of ``state.model`` on (x, y) without building a graph.

    The model stays in training mode (batch-norm normalises with the batch statistics, as in the
    step that follows) but its running statistics are left untouched, so only the training
    step updates them. The pass is counted in ``state.meter`` as forwarded, not backpropagated.
    ``state.extra["per_example_loss"]``, when set, is ``fn(x, y) -> (B,)`` losses used instead
    of the cross-entropy of ``state.model(x)`` (another training loop's own loss).
    """
    cfg = state.config
    amp = cfg.amp and state.device.type == "cuda"
    # another training loop (prunus.integrations) brings its own per-example loss
    per_example = getattr(state, "extra", {}).get("per_example_loss")
    task = getattr(state, "task", None)
    with torch.no_grad(), batchnorm_stats_frozen(state.model):
        if per_example is not None:
            losses = per_example(x, y).detach().float()
        elif task is not None:  # the training loop's own task (classification, causal LM…)
            with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=amp):
                losses = task.losses(state.model, x, y, state).float()
        else:
            with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = state.model(x)
            losses = F.cross_entropy(
                logits.float(), y, reduction="none", label_smoothing=cfg.label_smoothing
            )
    if task is not None:
        task.count_forward(state, x, y)
    else:
        state.meter.count(state.model, x, forwarded=len(x), backpropagated=0)
    return losses


@contextmanager
def batchnorm_stats_frozen(model: nn.Module):
    """Batch-norm layers keep their running statistics during the ``with`` block."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            tracked = module.num_batches_tracked
            tracked = None if tracked is None else tracked.clone()
            saved.append((module, module.momentum, tracked))
            module.momentum = 0.0  # running = (1 - 0)·running + 0·batch
    try:
        yield
    finally:
        for module, momentum, tracked in saved:
            module.momentum = momentum
            if tracked is not None:
                module.num_batches_tracked.copy_(tracked)
