"""Weight scores (higher = more important = kept): one function per criterion.

Every criterion has the signature ``score(model, targets, data=None, **settings) ->
{weight name: score tensor shaped like the weight}``. Criteria that need gradients work on a
copy of the model with its current masks baked in, so the real model's weights, gradients and
batch-norm statistics are untouched; gradients are taken with respect to the *effective*
(masked) weights, i.e. they are dense gradients.

``data`` is a ``(x, y)`` pair of tensors, a list of such pairs, or a
:class:`prunus.datasets.Dataset` (then one seeded batch of ``batch_size`` examples is used).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.errors import PrunusError, choice_error
from prunus.weights.masks import PrunableWeight, plain_copy

Scores = dict[str, torch.Tensor]


def magnitude(model: nn.Module, targets: list[PrunableWeight], data=None, **_) -> Scores:
    """Magnitude pruning (Han et al. 2015; Global MP): score = |θ| of the effective weight."""
    return {t.name: _effective(t).abs() for t in targets}


def random(model: nn.Module, targets: list[PrunableWeight], data=None, seed: int = 0, **_) -> Scores:
    """Random pruning (*The Unreasonable Effectiveness of Random Pruning*, Liu et al. 2022):
    i.i.d. uniform scores from a generator seeded with ``seed`` (default 0)."""
    gen = torch.Generator().manual_seed(int(seed))
    return {t.name: torch.rand(t.shape, generator=gen).to(t.weight.device) for t in targets}


def gradient(model: nn.Module, targets: list[PrunableWeight], data=None, **settings) -> Scores:
    """Gradient magnitude: score = |∂L/∂θ| of the cross-entropy on ``data`` (dense gradient)."""
    grads = _gradients(model, targets, _require_data(data, "gradient", settings), **settings)
    return {name: g.abs() for name, g in grads.items()}


def snip(model: nn.Module, targets: list[PrunableWeight], data=None, **settings) -> Scores:
    """SNIP (Lee et al. 2019, *Single-shot Network Pruning based on Connection Sensitivity*):
    score = |θ ⊙ ∂L/∂θ| on one batch, at initialisation."""
    grads = _gradients(model, targets, _require_data(data, "snip", settings), **settings)
    return {t.name: (_effective(t) * grads[t.name]).abs() for t in targets}


def grasp(model: nn.Module, targets: list[PrunableWeight], data=None, temperature: float = 200.0, **settings) -> Scores:
    """GraSP (Wang et al. 2020, *Picking Winning Tickets Before Training by Preserving Gradient
    Flow*): with g = ∂L/∂θ and the Hessian-gradient product Hg, the paper's removal score is
    S(−θ) = −θ ⊙ Hg and the weights with the *highest* S are removed (their removal reduces
    gradient flow least). Returned score (higher = keep): θ ⊙ Hg = −S(−θ).

    Logits are divided by ``temperature`` (default 200, as in the paper). Hg is computed
    exactly by double back-propagation: Hg = ∂(gᵀ·stopgrad(g))/∂θ.
    """
    batches = _require_data(data, "grasp", settings)
    probe, params = _probe(model, targets)
    probe.train()
    stop = [torch.zeros_like(p) for p in params]
    for x, y in batches:  # g, summed over batches, without graph
        loss = F.cross_entropy(probe(x) / temperature, y)
        for acc, g in zip(stop, torch.autograd.grad(loss, params)):
            acc += g
    hg = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = F.cross_entropy(probe(x) / temperature, y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * s).sum() for g, s in zip(grads, stop))
        for acc, h in zip(hg, torch.autograd.grad(dot, params)):
            acc += h
    return {t.name: (p.detach() * h).to(t.weight.device) for t, p, h in zip(targets, params, hg)}


def synflow(
    model: nn.Module,
    targets: list[PrunableWeight],
    data=None,
    input_shape: tuple[int, ...] | None = None,
    **_,
) -> Scores:
    """SynFlow (Tanaka et al. 2020, *Pruning neural networks without any data by iteratively
    conserving synaptic flow*), one scoring round: with every parameter and buffer replaced by
    its absolute value (eval mode) and an all-ones input, R = 1ᵀ f(1) and the score is
    |θ ⊙ ∂R/∂θ|. Data-free: only the input shape is needed (``input_shape``, or taken from
    ``data``). The iterative schedule (100 rounds toward the target) is in
    :func:`prunus.weights.prune`. Computed in float32, again in float64 if R overflows.
    """
    if input_shape is None:
        if data is None:
            raise PrunusError("synflow needs input_shape (e.g. (1, 40)) when no data is given.")
        input_shape = tuple(_as_batches(data, 1, 0, torch.device("cpu"))[0][0].shape[1:])
    return SynFlowProbe(model, targets, tuple(input_shape)).scores()


class SynFlowProbe:
    """A linearised copy of the model (|θ|, eval mode) reused across SynFlow rounds."""

    def __init__(self, model: nn.Module, targets: list[PrunableWeight], input_shape: tuple[int, ...]) -> None:
        self.targets = targets
        self.input_shape = input_shape
        self.probe, self.params = _probe(model, targets)
        self.probe.eval()
        with torch.no_grad():
            for tensor in list(self.probe.parameters()) + list(self.probe.buffers()):
                if tensor.is_floating_point():
                    tensor.abs_()
        self.base = [p.detach().clone() for p in self.params]

    def scores(self, masks: dict[str, torch.Tensor] | None = None) -> Scores:
        """Scores with the weights of ``targets`` restricted to ``masks`` (kept = True)."""
        with torch.no_grad():
            for t, p, b in zip(self.targets, self.params, self.base):
                mask = None if masks is None else masks.get(t.name)
                p.copy_(b if mask is None else b * mask.to(b.device))
        grads, total = self._round()
        if not torch.isfinite(total):
            self.probe.double()
            self.base = [b.double() for b in self.base]
            grads, total = self._round()
        return {
            t.name: (p.detach() * g).abs().to(dtype=t.weight.dtype, device=t.weight.device)
            for t, p, g in zip(self.targets, self.params, grads)
        }

    def _round(self):
        p0 = self.params[0]
        ones = torch.ones((1, *self.input_shape), dtype=p0.dtype, device=p0.device)
        total = self.probe(ones).sum()
        return torch.autograd.grad(total, self.params), total.detach()


CRITERIA: dict[str, Callable[..., Scores]] = {
    "magnitude": magnitude,
    "random": random,
    "gradient": gradient,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
}


def score(model: nn.Module, targets: list[PrunableWeight], method: str = "magnitude", data=None, **settings) -> Scores:
    """Scores of ``targets`` by the named criterion (see :data:`CRITERIA`).

    Raises:
        PrunusError: unknown method, or a data-driven method without ``data``.
    """
    if method not in CRITERIA:
        raise choice_error("method", method, CRITERIA)
    scores = CRITERIA[method](model, targets, data=data, **settings)
    return {k: torch.nan_to_num(v.float(), nan=-torch.inf) for k, v in scores.items()}


# -- helpers -------------------------------------------------------------------------------


def _effective(target: PrunableWeight) -> torch.Tensor:
    return getattr(target.module, target.attr).detach()


def _probe(model: nn.Module, targets: list[PrunableWeight]) -> tuple[nn.Module, list[torch.Tensor]]:
    """A copy of ``model`` with masks baked in, and its parameters matching ``targets``."""
    probe = plain_copy(model)
    params = dict(probe.named_parameters())
    found = []
    for t in targets:
        p = params[t.name]
        p.requires_grad_(True)
        found.append(p)
    return probe, found


def _gradients(model, targets, batches, **_) -> Scores:
    probe, params = _probe(model, targets)
    probe.train()
    total = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = F.cross_entropy(probe(x), y)
        for acc, g in zip(total, torch.autograd.grad(loss, params)):
            acc += g
    return {t.name: g.to(t.weight.device) for t, g in zip(targets, total)}


def _require_data(data, method: str, settings: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if data is None:
        raise PrunusError(f"method {method!r} needs data (a batch, list of batches or dataset).")
    device = settings.get("device") or torch.device("cpu")
    return _as_batches(data, int(settings.get("batch_size", 128)), int(settings.get("seed", 0)), device)


def _as_batches(data, batch_size: int, seed: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from prunus.datasets.base import Dataset

    if isinstance(data, Dataset):
        rows = np.random.default_rng(seed).permutation(len(data))[:batch_size]
        rows.sort()
        x = torch.from_numpy(data.x[rows]).to(device)
        y = torch.from_numpy(data.y[rows]).to(device)
        return [(x, y)]
    if isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0]):
        return [(data[0].to(device), data[1].to(device))]
    try:
        return [(x.to(device), y.to(device)) for x, y in data]
    except (TypeError, ValueError, AttributeError):
        raise PrunusError(
            "data must be an (x, y) pair of tensors, a list of such pairs, or a prunus Dataset."
        ) from None
