"""GraNd: the norm of each example's loss gradient (Paul, Ganguli & Dziugaite 2021, *Deep
Learning on a Data Diet*).

``GraNd(x, y) = ‖∇_θ ℓ(x, y)‖₂`` over all trainable parameters θ, averaged over seeds by
:func:`prunus.data.score` (the paper scores at initialisation or early in training).

The norms are exact but cost about one batched forward + backward: no per-example gradient of
the whole model is ever built. Hooks record each layer's input ``a`` and the gradient ``g`` of
the summed loss with respect to its output (which, for example ``i``, is ``∂ℓᵢ/∂outᵢ``), and each
layer adds its share of ``‖∇_θ ℓᵢ‖²``:

- ``nn.Linear`` on ``(B, D)`` inputs: ``‖∇W‖² = ‖g‖²·‖a‖²`` and ``‖∇b‖² = ‖g‖²``.
- ``nn.Linear`` on sequences ``(B, …, D)`` and ``nn.Conv1d/2d/3d`` (inputs unfolded into
  patches ``aₜ``): ``∇W = Σₜ gₜ aₜᵀ``, whose squared norm is the Gram ("ghost norm") identity
  ``Σₜ,ₛ (gₜ·gₛ)(aₜ·aₛ)``, or ``‖Σₜ gₜ aₜᵀ‖²`` computed directly for that one layer when that is
  cheaper (``T·(D_in + D_out) > D_in·D_out``); ``‖∇b‖² = ‖Σₜ gₜ‖²``. A layer called several times
  in one forward pass sums its calls' tokens, so weight sharing across calls is exact.
- batch-norm layers: ``∇γ = Σ g·x̂`` and ``∇β = Σ g`` (sums over spatial positions), with ``x̂``
  normalised by the running statistics.
- any other layer with its own parameters: ``torch.func`` per-sample gradients (``vmap`` over
  ``vjp``) of that layer alone.

Batch-norm in training mode couples the examples of a batch (each one's output depends on the
batch mean and variance), so a per-example gradient is not defined there. GraNd is therefore
computed with the model in **eval mode**: batch-norm normalises with its running statistics,
dropout is off, examples are independent, and the norms are exactly those of
``autograd.grad(ℓ(model(xᵢ), yᵢ), θ)`` for one example at a time. Models whose parameters are
shared between layers (tied weights) are scored with ``torch.func.vmap(grad)`` over the whole
model instead (same result, more memory), and so are models with a parameterised layer that
returns several tensors (e.g. ``nn.MultiheadAttention``) or a parameter used outside its own
layer's forward (e.g. an output projection ``F.linear(h, embedding.weight)``); a walk over the
autograd graph detects these, so the result is exact or the slower path is taken, never a wrong
norm.

``last_layer=True`` is the cheap approximation: only the parameters of the final ``nn.Linear``
(the layer producing the logits) count, ``‖∇W‖² = ‖g‖²·‖h‖²`` with ``g = ∂ℓ/∂logits = p − y``;
its column is labelled ``grand_last_layer`` so it is never mistaken for the full norm.
"""

from __future__ import annotations

import math
from collections import defaultdict
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

# Ghost-norm Gram matrices are built for at most this many (example × token × token) entries at
# once; larger batches are processed in chunks so memory stays O(batch).
_CHUNK_ELEMENTS = 1 << 24


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
            statistics, or ``last_layer=True`` and the model has no ``nn.Linear`` layer.
    """
    out = np.empty(len(dataset), dtype=np.float64)
    for rows, x, y in batches(model, dataset, batch_size, progress):
        out[rows] = per_example_grad_norms(model, x, y, last_layer=last_layer).cpu().numpy()
    return out


def per_example_grad_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, last_layer: bool = False
) -> torch.Tensor:
    """``‖∇_θ ℓ(model(xᵢ), yᵢ)‖₂`` for each example of one batch (float64 tensor of length B).

    The functional form for use in any training loop; see the module docstring for the method.
    """
    was_training = model.training
    model.eval()
    try:
        if last_layer:
            return _last_layer_norms(model, x, y)
        if _has_shared_parameters(model):
            return _vmap_norms(model, x, y)
        return _hooked_norms(model, x, y)
    finally:
        model.train(was_training)


# -- the hook-based exact computation -------------------------------------------------------


@dataclass
class _Call:
    """One forward call of a layer: its inputs and (after backward) its output gradient."""

    args: tuple
    kwargs: dict
    node: object = None  # the autograd node that produced the output
    stops: frozenset = frozenset()  # autograd nodes of the inputs
    grad: torch.Tensor | None = None

    def set_grad(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()


@dataclass
class _Recorder:
    """Forward hooks on every module that owns trainable parameters."""

    model: nn.Module
    only: type | tuple[type, ...] | None = None
    calls: dict[nn.Module, list[_Call]] = field(default_factory=lambda: defaultdict(list))
    order: list[nn.Module] = field(default_factory=list)
    sources: dict[int, torch.Tensor] = field(default_factory=dict)
    unsupported: nn.Module | None = None

    def __enter__(self) -> Self:
        self.handles = []
        for module in self.model.modules():
            if self.only is not None and not isinstance(module, self.only):
                continue
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        if not isinstance(output, torch.Tensor):
            self.unsupported = module  # several outputs: left to whole-model torch.func
            return
        if not output.requires_grad:
            return
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        call = _Call(
            tuple(_detach(a) for a in args),
            {k: _detach(v) for k, v in kwargs.items()},
            node=output.grad_fn,
            stops=frozenset(id(a.grad_fn) for a in inputs if a.grad_fn is not None),
        )
        output.register_hook(call.set_grad)
        self.calls[module].append(call)
        self.order.append(module)
        # A layer whose input does not depend on any parameter is reached by backward only
        # through its own parameters: differentiate with respect to those to reach it.
        if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())):
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    self.sources[id(p)] = p


def _used_outside_their_layer(model: nn.Module, recorder: _Recorder, loss: torch.Tensor) -> bool:
    """True when some parameter reaches the loss other than through its own layer's recorded
    calls (e.g. ``F.linear(h, embedding.weight)`` for tied input/output embeddings): the
    per-layer sums would then miss a term, so the caller switches to whole-model per-sample
    gradients. Compares, in the autograd graph, the uses of each parameter overall with its
    uses inside the subgraphs of its layer's calls."""
    total = _parameter_uses(loss.grad_fn, frozenset())
    inside: dict[int, int] = defaultdict(int)
    for calls in recorder.calls.values():
        for call in calls:
            for key, count in _parameter_uses(call.node, call.stops).items():
                inside[key] += count
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad and total.get(id(p), 0) > inside.get(id(p), 0):
                return True
    return False


def _parameter_uses(root, stops: frozenset) -> dict[int, int]:
    """How many graph edges lead to each leaf tensor's accumulator below ``root`` (not crossing
    the nodes in ``stops``)."""
    uses: dict[int, int] = defaultdict(int)
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or id(node) in stops:
            continue
        seen.add(id(node))
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                uses[id(variable)] += 1
            else:
                stack.append(child)
    return uses


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _hooked_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    recorder = _Recorder(model)
    with recorder, torch.enable_grad():
        loss = _summed_loss(model(x), y)
        outside = recorder.unsupported is not None or _used_outside_their_layer(model, recorder, loss)
        # A call holds its output's autograd node, and that node holds the call's gradient hook:
        # a reference cycle that would keep every batch's graph alive until the garbage
        # collector runs. Dropping the node once it has been inspected keeps memory O(batch).
        for calls in recorder.calls.values():
            for call in calls:
                call.node, call.stops = None, frozenset()
        if outside:
            return _vmap_norms(model, x, y)
        if not recorder.sources:
            raise PrunusError("GraNd needs a model with trainable parameters (requires_grad=True).")
        torch.autograd.grad(loss, list(recorder.sources.values()), allow_unused=True)
    squared = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for module, calls in recorder.calls.items():
            squared += _layer_squared_norms(module, calls, len(x)).double()
    return squared.sqrt()


def _summed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction="sum")


def _layer_squared_norms(module: nn.Module, calls: list[_Call], batch: int) -> torch.Tensor:
    calls = [c for c in calls if c.grad is not None]
    if not calls:
        return torch.zeros(batch, device=_param(module).device)
    if isinstance(module, nn.Linear):
        tokens = [_linear_tokens(c) for c in calls]
        return _gram_squared_norms(module, tokens)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and _unfoldable(module):
        tokens = [_conv_tokens(module, c) for c in calls]
        return _gram_squared_norms(module, tokens)
    if isinstance(module, _BatchNorm):
        return _batchnorm_squared_norms(module, calls)
    return _fallback_squared_norms(module, calls)


def _linear_tokens(call: _Call) -> tuple[torch.Tensor, torch.Tensor]:
    a, g = call.args[0], call.grad
    return a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])


def _unfoldable(conv: nn.Module) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _conv_tokens(conv: nn.Module, call: _Call) -> tuple[torch.Tensor, torch.Tensor]:
    """Input patches ``(B, T, C_in·k…)`` and output gradients ``(B, T, C_out)`` of a convolution.

    Patches come from strided views (``Tensor.unfold``), not ``F.unfold``/im2col, which is
    orders of magnitude slower on CPU for these shapes.
    """
    a, g = call.args[0], call.grad
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
    if len(tokens) == 1:
        a, g = tokens[0]
    else:
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
    bias = getattr(module, "bias", None)
    if bias is not None and bias.requires_grad:
        squared += g.sum(1).square().sum(1)
    return squared


def _batchnorm_squared_norms(bn: _BatchNorm, calls: list[_Call]) -> torch.Tensor:
    if bn.running_mean is None or bn.running_var is None:
        raise PrunusError(
            f"GraNd needs every batch-norm layer to keep running statistics "
            f"(track_running_stats=True); {type(bn).__name__}({bn.num_features}) has none, so its "
            "examples are coupled through batch statistics."
        )
    grad_weight, grad_bias = 0.0, 0.0
    for call in calls:
        x, g = call.args[0], call.grad.to(call.args[0].dtype)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
        dims = tuple(range(2, x.dim()))
        grad_weight = grad_weight + ((g * x_hat).sum(dims) if dims else g * x_hat)
        grad_bias = grad_bias + (g.sum(dims) if dims else g)
    squared = torch.zeros(len(calls[0].args[0]), dtype=calls[0].args[0].dtype, device=bn.running_mean.device)
    if bn.weight is not None and bn.weight.requires_grad:
        squared += grad_weight.square().sum(1)
    if bn.bias is not None and bn.bias.requires_grad:
        squared += grad_bias.square().sum(1)
    return squared


def _fallback_squared_norms(module: nn.Module, calls: list[_Call]) -> torch.Tensor:
    """Per-sample gradients of this layer's own parameters with ``torch.func`` (vmap over vjp)."""
    from torch.func import functional_call, vjp, vmap

    params = {n: p.detach() for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    total = None
    for call in calls:
        batch = len(call.grad)
        in_dims = tuple(
            0 if isinstance(a, torch.Tensor) and a.dim() > 0 and len(a) == batch else None
            for a in call.args
        )

        def one_example(args, grad, kwargs=call.kwargs, dims=in_dims):
            args = tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(args, dims))

            def forward(p):
                return functional_call(module, p, args, kwargs)

            _, pullback = vjp(forward, params)
            return pullback(grad.unsqueeze(0))[0]

        grads = vmap(one_example, in_dims=(in_dims, 0))(call.args, call.grad)
        flat = torch.cat([g.reshape(batch, -1) for g in grads.values()], dim=1)
        total = flat if total is None else total + flat
    return total.square().sum(1)


def _param(module: nn.Module) -> torch.Tensor:
    return next(module.parameters(recurse=False))


# -- the cheap approximation: last layer only --------------------------------------------------


def _last_layer_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    recorder = _Recorder(model, only=nn.Linear)
    with recorder, torch.enable_grad():
        loss = _summed_loss(model(x), y)
        if not recorder.order:
            raise PrunusError(
                "GraNd with last_layer=True needs a model whose output layer is nn.Linear "
                "(none with trainable parameters was called)."
            )
        head = recorder.order[-1]
        calls = [recorder.calls[head][-1]]
        params = [p for p in head.parameters(recurse=False) if p.requires_grad]
        torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        return _gram_squared_norms(head, [_linear_tokens(c) for c in calls]).double().sqrt()


# -- whole-model per-sample gradients (tied parameters) --------------------------------------


def _has_shared_parameters(model: nn.Module) -> bool:
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                return True
            seen.add(id(p))
    return False


def _vmap_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``torch.func.vmap(grad(ℓ))`` over the whole model, ``chunk`` examples at a time."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_one(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return _summed_loss(logits, yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for start in range(0, len(x), chunk):
        grads = per_example(params, x[start : start + chunk], y[start : start + chunk])
        out.append(sum(g.flatten(1).double().square().sum(1) for g in grads.values()))
    return torch.cat(out).sqrt() if out else torch.zeros(0, dtype=torch.float64)


__all__ = ["grand_scores", "per_example_grad_norms"]
