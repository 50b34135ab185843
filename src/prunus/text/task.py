"""The causal-LM task of the one training loop (:class:`prunus.train.Trainer`).

An *example* is one packed block of ``context_length`` tokens (:class:`BlockRows`, ids = block
index), so every data method that works per example works per sequence unchanged; token-level
methods (Rho-1) narrow ``state.keep``, the mask of the targets that carry gradient, at
``after_forward``. Compute is counted in **tokens**: a *training token* is a real input token
forwarded in a training step; FLOPs are theoretical (``6·N`` per training token, ``2·N`` per
evaluation or reference token, ``N`` the non-embedding parameters; Kaplan et al. 2020).

Per-example loss: the mean token loss of the row's kept targets. Objective:
``Σ w·ℓ over kept targets / #kept targets`` (``w`` the token weights times the row's weight
from a data method, both 1 by default) — exactly ``model(input_ids, labels=…).loss`` without
weights or a keep mask. A token budget ends training after exactly that many training tokens:
the step that reaches it uses only the tokens left (the last of its rows cut, later rows empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.text.lm import token_losses
from prunus.train.tasks import Task


class BlockRows:
    """Packed blocks as the training loop's dataset: ``x`` token ids, ``y`` attention masks."""

    def __init__(self, blocks: Any, name: str = "blocks") -> None:
        self.name = name
        self.x = np.ascontiguousarray(blocks.input_ids, dtype=np.int64)
        self.y = np.ascontiguousarray(blocks.attention_mask, dtype=np.int64)
        self.ids = np.arange(len(self.x), dtype=np.int64)
        self.test = None
        self.num_classes = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)


class CausalLM(Task):
    """Next-token prediction on packed blocks, perplexity on named evaluation sets.

    Args:
        eval_sets: name -> ``DocumentSequences`` or ``PackedBlocks``; each evaluation reports
            ``<name>`` (perplexity) and ``<name>_loss`` for every set.
        tokens: the token budget (None: the loop's epochs or examples decide).
        token_weights: per-target loss multipliers shaped like the blocks' ``input_ids``
            (the weight of each token as a target), or None.
    """

    name = "causal_lm"
    metric = "perplexity"
    higher_is_better = False
    unit = "tokens"

    def __init__(self, eval_sets: Mapping[str, Any] | None = None, *, tokens: int | None = None,
                 token_weights: np.ndarray | None = None) -> None:
        self.eval_sets = dict(eval_sets or {})
        self.tokens = tokens
        self.token_weights = None if token_weights is None else torch.as_tensor(
            np.asarray(token_weights, dtype=np.float32))
        self.n_params = 0

    def tensors(self, dataset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.token_weights is not None:
            self.token_weights = self.token_weights.to(device)
        return torch.from_numpy(dataset.x).to(device), torch.from_numpy(dataset.y).to(device)

    def forward(self, model: nn.Module, state: Any) -> torch.Tensor:
        from prunus.text.train import non_embedding_parameters

        if not self.n_params:
            self.n_params = non_embedding_parameters(state.model)
            state.meter.n_params = self.n_params
        batch = state.batch
        if self.tokens is not None:  # the step that reaches the budget uses what is left
            batch.y = _cut(batch.y, self.tokens - state.meter.tokens_forwarded["train"])
        losses, target = token_losses(model, batch.x, batch.y)
        state.token_losses, state.target_mask, state.keep = losses, target, target
        return losses

    def _kept(self, state: Any, rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight of each target, kept targets)``: ``keep`` narrowed to the real targets,
        times the token weights, times (``rows``) the row weights a data method set."""
        keep = state.keep & state.target_mask
        weights = keep.float()
        if self.token_weights is not None:
            weights = weights * self.token_weights[state.batch.ids][:, 1:]
        if rows and state.batch.weights is not None:
            weights = weights * state.batch.weights[:, None]
        return weights, keep

    def per_example_loss(self, state: Any) -> torch.Tensor:
        """Each row's mean loss over its kept targets (row weights left out, as data methods
        read the loss itself)."""
        weights, keep = self._kept(state, rows=False)
        return (state.token_losses * weights).sum(1) / keep.sum(1).clamp_min(1)

    def objective(self, state: Any) -> torch.Tensor:
        weights, keep = self._kept(state)
        return (state.token_losses * weights).sum() / keep.sum().clamp_min(1)

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: Any) -> torch.Tensor:
        losses, target = token_losses(model, x, y)
        return losses.sum(1) / target.sum(1).clamp_min(1)

    def count(self, state: Any, forwarded: int, backpropagated: int) -> None:
        meter = state.meter
        weights = self._kept(state)[0]
        tokens = int(state.batch.y.sum())
        meter.tokens_forwarded["train"] += tokens
        meter.flops["train"] += 6.0 * self.n_params * tokens
        meter.tokens_with_grad += int((weights != 0).sum())
        meter.targets += int(state.target_mask.sum())
        if self.tokens is not None and meter.tokens_forwarded["train"] >= self.tokens:
            state.stop = True

    def count_forward(self, state: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        state.meter.charge_forward("selection", int(y.sum()), self.n_params)

    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int,
                 device: torch.device, state: Any = None) -> dict[str, float]:
        from prunus.text.train import evaluate_lm

        row: dict[str, float] = {}
        meter = None if state is None else state.meter
        for name, data in self.eval_sets.items():
            ppl, loss, _ = evaluate_lm(model, data, batch_size=batch_size, meter=meter)
            row[name], row[f"{name}_loss"] = ppl, loss
        return row

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Decay on matrices only: not on biases, norms or embeddings (GPT-2's recipe)."""
        embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                     for p in m.parameters()}
        decay, rest, seen = [], [], set()
        for p in model.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and id(p) not in embedding else rest).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": rest, "weight_decay": 0.0}]


def _cut(mask: torch.Tensor, left: int) -> torch.Tensor:
    """``mask`` with only its first ``left`` real tokens (row-major) still real."""
    real = int(mask.sum())
    if real <= left:
        return mask
    flat = mask.reshape(-1)
    running = torch.cumsum(flat, 0)
    return (flat * (running <= max(left, 0))).view_as(mask)
