"""Tasks: what the one training loop needs to know about a kind of model and data.

A :class:`Task` says what a batch is (the tensors of a dataset's rows), how a model's
per-example loss is computed (the loss every data method reads: an example is a row — an image,
a sequence), what the training objective of a batch is, how compute is counted (its *unit*:
examples, or tokens for a language model) and what an evaluation reports (its *metric*, and
whether higher is better). :class:`prunus.train.Trainer` is written against this interface
only, so data methods (RS2, InfoBatch, Selective Backprop, reweighting) and weight methods
(masks, GMP, RigL…) run unchanged on every task.

* :class:`Classification` (the default): logits, cross-entropy, accuracy; examples.
* :class:`prunus.text.task.CausalLM`: per-sequence mean token loss, a token-level keep mask
  (Rho-1), perplexity (lower is better); tokens.
* :class:`prunus.negatives.train.Contrastive`: a row is (query, positive, mined negatives),
  the multiple-negatives ranking loss per query, nDCG@10 / MRR@10 (higher is better); pairs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Task:
    """The interface; :class:`Classification` is the reference implementation."""

    name = "task"
    metric = "accuracy"  # the main key of :meth:`evaluate`'s result
    higher_is_better = True
    unit = "examples"  # what the meter's examples_forwarded / examples_backpropagated count

    def tensors(self, dataset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of every training row on ``device`` (a batch indexes into them)."""
        raise NotImplementedError

    def train_mode(self, model: nn.Module) -> None:
        """Put ``model`` in training mode before an epoch's steps (default: every module)."""
        model.train()

    def forward(self, model: nn.Module, state: Any) -> torch.Tensor:
        """The model's output on ``state.batch`` (kept in ``state.outputs``)."""
        raise NotImplementedError

    def per_example_loss(self, state: Any) -> torch.Tensor:
        """The loss of each row of ``state.batch`` from ``state.outputs`` (shape ``(B,)``)."""
        raise NotImplementedError

    def objective(self, state: Any) -> torch.Tensor:
        """The scalar a step backpropagates: the mean per-example loss, weighted by
        ``batch.weights`` where a data method set them."""
        losses, weights = state.per_example_loss, state.batch.weights
        return losses.mean() if weights is None else (losses * weights).mean()

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any) -> torch.Tensor:
        """Per-example losses of rows ``(x, y)`` (no graph is needed; callers disable it)."""
        raise NotImplementedError

    def count(self, state: Any, forwarded: int, backpropagated: int) -> None:
        """Charge a step's compute to ``state.meter`` (rows of ``state.batch``)."""
        raise NotImplementedError

    def count_forward(self, state: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        """Charge a forward pass without backward over rows ``(x, y)`` (a selection pass)."""
        state.meter.count(state.model, x, forwarded=len(x), backpropagated=0)

    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int,
                 device: torch.device, state: Any = None) -> dict[str, float]:
        """The evaluation row's numbers (``metric`` among them)."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: every trainable parameter with ``weight_decay``."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}]


class Classification(Task):
    """Logits over classes, cross-entropy (optional label smoothing), accuracy; examples."""

    name = "classification"

    def tensors(self, dataset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(dataset.x).to(device), torch.from_numpy(dataset.y).to(device)

    def forward(self, model: nn.Module, state: Any) -> torch.Tensor:
        return model(state.batch.x)

    def per_example_loss(self, state: Any) -> torch.Tensor:
        return F.cross_entropy(state.outputs.float(), state.batch.y, reduction="none",
                               label_smoothing=state.config.label_smoothing)

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any) -> torch.Tensor:
        smoothing = state.config.label_smoothing if state is not None else 0.0
        return F.cross_entropy(model(x).float(), y, reduction="none", label_smoothing=smoothing)

    def count(self, state: Any, forwarded: int, backpropagated: int) -> None:
        state.meter.count(state.model, state.batch.x, forwarded, backpropagated)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int,
                 device: torch.device, state: Any = None) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``dataset`` (model left in eval mode); nothing
        without a dataset."""
        if dataset is None:
            return {}
        was_training = model.training
        model.eval()
        correct, total_loss = 0, 0.0
        for start in range(0, len(dataset), batch_size):
            x = torch.from_numpy(dataset.x[start : start + batch_size]).to(device)
            y = torch.from_numpy(dataset.y[start : start + batch_size]).to(device)
            logits = model(x).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        model.train(was_training)
        n = len(dataset)
        return {"accuracy": correct / n, "loss": total_loss / n}


CLASSIFICATION = Classification()
