"""GraNd: the norm of each example's loss gradient (Paul, Ganguli & Dziugaite 2021, *Deep
Learning on a Data Diet*).

``GraNd(x, y) = ‖∇_θ ℓ(x, y)‖₂`` over all trainable parameters θ (``requires_grad=True``),
averaged over seeds by :func:`prunus.data.score` (the paper scores at initialisation or early in
training). The result is always the norm autograd gives for one example at a time,
``‖autograd.grad(ℓ(model(xᵢ), yᵢ), θ)‖₂``, computed by one of two exact paths, or a
:class:`~prunus.errors.PrunusError`; never an approximation.

**Hooks (fast, about one batched forward + backward).** Taken when every trainable parameter is
owned by a layer of exactly one of these types, each parameter by one layer only (no tied
weights), and each parameter reaches the loss only through its own layer's calls (counted in the
autograd graph; ``F.linear(h, layer.weight)`` elsewhere sends the model to the other path).
Hooks record each call's input ``a`` and the gradient ``g`` of the summed loss with respect to
its output (for example ``i`` that is ``∂ℓᵢ/∂outᵢ``); no per-example gradient is built:

- ``nn.Linear`` on ``(B, D)`` inputs: ``‖∇W‖² = ‖g‖²·‖a‖²`` and ``‖∇b‖² = ‖g‖²``.
- ``nn.Linear`` on sequences ``(B, …, D)`` and ``nn.Conv1d/2d/3d`` (inputs unfolded into
  patches ``aₜ``; zero padding, one group): ``∇W = Σₜ gₜ aₜᵀ``, whose squared norm is the Gram
  ("ghost norm") identity ``Σₜ,ₛ (gₜ·gₛ)(aₜ·aₛ)``, or ``‖Σₜ gₜ aₜᵀ‖²`` directly when that is
  cheaper (``T·(D_in + D_out) > D_in·D_out``); ``‖∇b‖² = ‖Σₜ gₜ‖²``. A layer called several
  times in one forward pass sums its calls' tokens.
- ``nn.BatchNorm1d/2d/3d`` (running statistics) and ``nn.LayerNorm``: ``∇γ = Σ g ⊙ x̂`` and
  ``∇β = Σ g`` (sums over positions), ``x̂`` the normalised input.

**``torch.func`` (exact for anything, more memory).** Every other model, e.g. one with an
``nn.Embedding``, a parameter owned by the root module, tied weights or a layer masked by
:mod:`prunus.weights`: ``vmap(grad(ℓ))`` over ``functional_call`` of the whole model, 64
examples at a time. If ``vmap`` cannot run the model (data-dependent control flow, ``.item()``,
an op without a batching rule), a PrunusError says so.

**Masked (parametrized) layers.** :mod:`prunus.weights` keeps a pruned weight as
``weight = original ⊙ mask`` (:mod:`torch.nn.utils.parametrize`); the trainable tensor is
``parametrizations.weight.original``. GraNd reports the gradient of the trainable parameters as
autograd sees them, ``∇_original ℓ = ∇_weight ℓ ⊙ mask``: pruned entries contribute exactly 0,
so a masked model's GraNd is the norm of the update the optimiser would actually apply.

Batch-norm in training mode couples the examples of a batch (each output depends on the batch
mean and variance), so a per-example gradient is not defined there: GraNd puts the model in
**eval mode** (running statistics, no dropout; the mode is restored afterwards) and refuses
batch-norm layers without running statistics.

``last_layer=True`` is the cheap approximation: only the parameters of the last ``nn.Linear``
called (the layer producing the logits) count, ``‖∇W‖² = ‖g‖²·‖h‖²`` with ``g = ∂ℓ/∂logits =
p − y`` (through ``torch.func`` when that layer is masked or tied); its column is labelled
``grand_last_layer`` so it is never mistaken for the full norm.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunus.data.scores.common import Progress, batches
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError
from prunus.registry import SCORES

# Layers whose per-example gradient norms the hooks compute (exact types: a subclass may change
# what its forward does with its parameters).
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_HOOKED = (nn.Linear, *_CONVS, *_NORMS)

# Ghost-norm Gram matrices are built for at most this many (example × token × token) entries at
# once; larger batches are processed in chunks so memory stays O(batch).
_CHUNK_ELEMENTS = 1 << 24


@SCORES.register(
    "grand", needs="gradients", flops=lambda n, forward, backward, width: (forward + backward) * n,
    summary="‖∇θ ℓ‖₂ over all parameters (exact)",
)
@SCORES.register(
    "grand_last_layer", needs="gradients", kwargs={"last_layer": True},
    approximation="last linear layer only",
    summary="‖∇θ ℓ‖₂ over the last linear layer only (approximation of GraNd)",
)
def grand_scores(
    model: nn.Module,
    dataset: Dataset,
    *,
    last_layer: bool = False,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Per-example gradient norms ``‖∇_θ ℓ(x, y)‖₂`` for every example of ``dataset``.

    Args:
        model: the network (scored in eval mode; its mode is restored afterwards).
        dataset: the examples to score; the result is aligned to ``dataset.ids``.
        last_layer: only the final linear layer's parameters (cheap approximation). Default False.
        batch_size: examples per pass. Default 256. Memory is O(batch), plus N floats.
        progress: optional callable receiving the number of examples done after each batch.

    Returns:
        float64 array of norms (higher = larger update = harder / more important).

    Raises:
        PrunusError: the model has no trainable parameters, a batch-norm layer has no running
            statistics, ``last_layer=True`` and no ``nn.Linear`` layer is called, or the model
            needs ``torch.func`` and ``vmap`` cannot run it.
    """
    out = np.empty(len(dataset), dtype=np.float64)
    for rows, x, y in batches(model, dataset, batch_size, progress):
        out[rows] = per_example_grad_norms(model, x, y, last_layer=last_layer).cpu().numpy()
    return out


def per_example_grad_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, last_layer: bool = False
) -> torch.Tensor:
    """``‖∇_θ ℓ(model(xᵢ), yᵢ)‖₂`` for each example of one batch (float64 tensor of length B),
    ``ℓ`` the cross-entropy. The functional form for any training loop; see the module docstring.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise PrunusError("GraNd needs a model with trainable parameters (requires_grad=True).")
    for bn in model.modules():
        if isinstance(bn, _BatchNorm) and bn.running_mean is None:
            raise PrunusError(
                f"GraNd needs every batch-norm layer to keep running statistics "
                f"(track_running_stats=True); {type(bn).__name__}({bn.num_features}) has none, "
                "so its examples are coupled through batch statistics."
            )
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        if last_layer:
            return _last_layer_norms(model, x, y)
        if _hookable(model):
            norms = _hooked_norms(model, x, y, list(model.modules()))
            if norms is not None:
                return norms
        return _vmap_norms(model, x, y)
    finally:
        model.train(was_training)


def _trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _hookable(model: nn.Module) -> bool:
    """Every trainable parameter is owned by one layer, of a type the hooks compute exactly."""
    owners: Counter = Counter()
    for module in model.modules():
        for _, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if p.requires_grad:
                if type(module) not in _HOOKED or not _unfoldable(module):
                    return False
                owners[id(p)] += 1
    return all(n == 1 for n in owners.values())


def _unfoldable(module: nn.Module) -> bool:
    """Convolutions: the patch unfolding covers zero padding, one group, numeric padding."""
    if not isinstance(module, _CONVS):
        return True
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


# -- the hook path ------------------------------------------------------------------------------


@dataclass
class _Call:
    """One forward call of a layer: its input and (after backward) its output gradient."""

    a: torch.Tensor
    grad: torch.Tensor | None = None

    def set_grad(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()


@dataclass
class _Recorder:
    """Forward hooks on ``layers``: each call's input, and a gradient hook on its output."""

    layers: list[nn.Module]
    calls: dict[nn.Module, list[_Call]] = field(default_factory=lambda: defaultdict(list))
    sources: dict[int, torch.Tensor] = field(default_factory=dict)

    def __enter__(self) -> Self:
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if not output.requires_grad:
            return
        a = (*args, *kwargs.values())[0]
        call = _Call(a.detach())
        output.register_hook(call.set_grad)
        self.calls[module].append(call)
        # A layer whose input does not depend on any parameter is reached by backward only
        # through its own parameters: differentiate with respect to those to reach it.
        if not a.requires_grad:
            for p in _trainable(module):
                self.sources[id(p)] = p


def _hooked_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[nn.Module]
) -> torch.Tensor | None:
    """Hook-path norms over the trainable parameters owned by ``layers`` (of hooked types), or
    None when one of them also reaches the loss outside its layer's calls (e.g. tied weights,
    ``F.linear(h, layer.weight)``): the per-layer sums would miss that term."""
    layers = [m for m in layers if any(p.requires_grad for p in m.parameters(recurse=False))]
    owned = {id(p) for m in layers for p in m.parameters(recurse=False) if p.requires_grad}
    recorder = _Recorder(layers)
    with recorder, torch.enable_grad():
        loss = _summed_loss(model(x), y)
        uses = _parameter_uses(loss, owned)
        sources = [p for p in recorder.sources.values() if id(p) in owned]
        if sources:
            torch.autograd.grad(loss, sources, allow_unused=True)
    expected: Counter = Counter()
    for module, calls in recorder.calls.items():
        for p in module.parameters(recurse=False):
            if id(p) in owned:
                expected[id(p)] += sum(c.grad is not None for c in calls)
    if uses != expected:
        return None
    squared = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for module, calls in recorder.calls.items():
            calls = [c for c in calls if c.grad is not None]
            if calls:
                squared += _layer_squared_norms(module, calls).double()
    return squared.sqrt()


def _parameter_uses(loss: torch.Tensor, owned: set[int]) -> Counter:
    """How many autograd-graph edges lead from ``loss`` to each parameter in ``owned`` (one per
    call of its layer when it is used nowhere else)."""
    uses: Counter = Counter()
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)
            if variable is not None:
                if id(variable) in owned:
                    uses[id(variable)] += 1
            elif child is not None:
                stack.append(child)
    return uses


def _summed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction="sum")


def _layer_squared_norms(module: nn.Module, calls: list[_Call]) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return _gram_squared_norms(module, [_linear_tokens(c) for c in calls])
    if isinstance(module, _CONVS):
        return _gram_squared_norms(module, [_conv_tokens(module, c) for c in calls])
    return _norm_squared_norms(module, calls)


def _linear_tokens(call: _Call) -> tuple[torch.Tensor, torch.Tensor]:
    a, g = call.a, call.grad
    return a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])


def _conv_tokens(conv: nn.Module, call: _Call) -> tuple[torch.Tensor, torch.Tensor]:
    """Input patches ``(B, T, C_in·k…)`` and output gradients ``(B, T, C_out)`` of a convolution.

    Patches come from strided views (``Tensor.unfold``), not ``F.unfold``/im2col, which is
    orders of magnitude slower on CPU for these shapes.
    """
    a, g = call.a, call.grad
    spatial = a.dim() - 2
    pad = [p for size in reversed(conv.padding) for p in (size, size)]
    patches = F.pad(a, pad) if any(pad) else a
    for i in range(spatial):
        window = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        patches = patches.unfold(2 + i, window, conv.stride[i])
        if conv.dilation[i] > 1:
            patches = patches[..., :: conv.dilation[i]]
    # (B, C, out₁…outₙ, k₁…kₙ) -> (B, out₁…outₙ, C, k₁…kₙ) -> (B, T, C·k₁…kₙ)
    order = [0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial)]
    # (contiguous: overlapping-window views make batched matmuls fall off their fast path)
    patches = patches.permute(order).reshape(len(a), -1, a.shape[1] * math.prod(conv.kernel_size))
    return patches.contiguous(), g.flatten(2).transpose(1, 2).contiguous()


def _gram_squared_norms(
    module: nn.Module, tokens: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``‖Σₜ gₜaₜᵀ‖² (+ ‖Σₜ gₜ‖²)`` per example, over the tokens of every call of the layer."""
    a, g = torch.cat([t[0] for t in tokens], dim=1), torch.cat([t[1] for t in tokens], dim=1)
    g = g.to(a.dtype)
    batch, steps, d_in = a.shape
    d_out = g.shape[2]
    squared = torch.zeros(batch, dtype=a.dtype, device=a.device)
    if module.weight.requires_grad:
        if steps == 1:
            squared += g.square().sum((1, 2)) * a.square().sum((1, 2))
        else:
            ghost = steps * (d_in + d_out) <= d_in * d_out
            per_example = steps * steps if ghost else d_in * d_out
            chunk = max(1, _CHUNK_ELEMENTS // per_example)
            for start in range(0, batch, chunk):
                ac, gc = a[start : start + chunk], g[start : start + chunk]
                if ghost:
                    gram = (gc @ gc.transpose(1, 2)) * (ac @ ac.transpose(1, 2))
                    squared[start : start + chunk] += gram.sum((1, 2))
                else:
                    squared[start : start + chunk] += (gc.transpose(1, 2) @ ac).square().sum((1, 2))
    if module.bias is not None and module.bias.requires_grad:
        squared += g.sum(1).square().sum(1)
    return squared


def _norm_squared_norms(norm: nn.Module, calls: list[_Call]) -> torch.Tensor:
    """Batch-norm (eval) and layer-norm: ``‖Σ g ⊙ x̂‖² + ‖Σ g‖²`` per example."""
    grad_weight = grad_bias = 0.0
    for call in calls:
        a, g = call.a, call.grad.to(call.a.dtype)
        if isinstance(norm, nn.LayerNorm):
            x_hat = F.layer_norm(a, norm.normalized_shape, eps=norm.eps)
            dims = tuple(range(1, a.dim() - len(norm.normalized_shape)))  # positions
        else:
            x_hat = F.batch_norm(a, norm.running_mean, norm.running_var, eps=norm.eps)
            dims = tuple(range(2, a.dim()))  # spatial positions
        grad_weight = grad_weight + ((g * x_hat).sum(dims) if dims else g * x_hat)
        grad_bias = grad_bias + (g.sum(dims) if dims else g)
    squared = torch.zeros(len(calls[0].a), dtype=calls[0].a.dtype, device=calls[0].a.device)
    if norm.weight is not None and norm.weight.requires_grad:
        squared += grad_weight.flatten(1).square().sum(1)
    if norm.bias is not None and norm.bias.requires_grad:
        squared += grad_bias.flatten(1).square().sum(1)
    return squared


# -- the cheap approximation: last layer only --------------------------------------------------


def _last_layer_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    called: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda module, *_: called.append(module))
        for m in model.modules()
        if isinstance(m, nn.Linear) and _trainable(m)
    ]
    try:
        with torch.no_grad():
            model(x)  # which nn.Linear produces the logits
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise PrunusError(
            "GraNd with last_layer=True needs a model whose output layer is nn.Linear "
            "(none with trainable parameters was called)."
        )
    head = called[-1]
    norms = _hooked_norms(model, x, y, [head]) if _hookable(head) else None
    if norms is None:  # masked, tied or reused elsewhere: torch.func on the head's parameters
        norms = _vmap_norms(model, x, y, _trainable(head))
    return norms


# -- the torch.func path (anything vmap can run) ------------------------------------------------


def _vmap_norms(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    only: list[torch.Tensor] | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """``torch.func.vmap(grad(ℓ))`` over ``functional_call`` of the whole model, ``chunk``
    examples at a time, with respect to every trainable parameter (or those in ``only``)."""
    from torch.func import functional_call, grad, vmap

    wanted = None if only is None else {id(p) for p in only}
    params = {
        n: p.detach()
        for n, p in model.named_parameters()
        if p.requires_grad and (wanted is None or id(p) in wanted)
    }

    def loss_one(p, xi, yi):
        return _summed_loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    try:
        with torch.no_grad():  # (grad ignores it; no graph is built onto the real parameters)
            for start in range(0, len(x), chunk):
                grads = per_example(params, x[start : start + chunk], y[start : start + chunk])
                out.append(sum(g.flatten(1).double().square().sum(1) for g in grads.values()))
    except (RuntimeError, NotImplementedError) as exc:
        raise PrunusError(
            f"GraNd cannot compute exact per-example gradients of {type(model).__name__}: its "
            f"layers are not all ones the hooks support and torch.func.vmap(grad) fails on it "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})."
        ) from exc
    return torch.cat(out).sqrt() if out else torch.zeros(0, dtype=torch.float64, device=x.device)


__all__ = ["grand_scores", "per_example_grad_norms"]
