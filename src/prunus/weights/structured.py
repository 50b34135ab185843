"""Structured pruning: remove whole output channels/neurons and physically shrink the model.

The only sparsity pattern that makes a model faster on a CPU without special kernels
(Li et al. 2017, *Pruning Filters for Efficient ConvNets*; Torch-Pruning/DepGraph, Fang et al.
2023, for arbitrary graphs). A *channel group* is a producer layer (Conv/Linear) whose output
channels flow through per-channel modules (batch norm, activations, pooling, dropout,
flatten) into exactly one consumer layer. Removing channel c deletes row c of the producer
(and its bias), entry c of the batch norm, and the inputs fed by c in the consumer (after a
``Flatten``, the block of ``spatial`` features that channel c became).

Supported here, without extra packages: ``nn.Sequential`` chains (nested ones too) such as
prunus's ``mlp``, ``cnn1d`` and ``cnn``, and residual blocks exposing ``conv1``/``bn1``/``conv2``
(the inner channels of prunus's ``resnet_tiny``). The classifier's outputs are never removed.
Other models go through the optional ``torch-pruning`` package (``pip install
'prunus[structured]'``), see :func:`prune_channels`.

Two steps keep it checkable: :func:`channel_masks` zeroes the chosen channels with
parametrizations (the *masked* model: same shapes, same function as the small one), and
:func:`remove_channels` builds the physically smaller copy. :func:`prune_channels` does both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from prunus.errors import PrunusError, choice_error, require
from prunus.weights.masks import plain_copy

CHANNEL_CRITERIA = ("l1", "l2", "taylor", "random")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)


def prune_channels(
    model: nn.Module,
    sparsity: float = 0.5,
    criterion: str = "l1",
    data=None,
    seed: int = 0,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` with ``⌊sparsity·C⌋`` output channels removed
    from every channel group (C channels each), chosen by ``criterion``.

    Args:
        model: the network (left unchanged).
        sparsity: fraction of channels removed per group, in [0, 1) (default 0.5).
        criterion: ``"l1"`` (default, Σ|w| of the producer's row; Li et al. 2017), ``"l2"``,
            ``"taylor"`` (|Σ a·∂L/∂a| over a batch of ``data``, Molchanov et al. 2017) or
            ``"random"``.
        data: a batch / list of batches / Dataset, for ``"taylor"``.
        seed: for ``"random"`` and the data batch.
        example_input: needed only for the ``torch-pruning`` path (unsupported architectures).

    Raises:
        PrunusError: sparsity outside [0, 1), unknown criterion, or an architecture that is
        neither supported here nor prunable with ``torch-pruning``.
    """
    if not channel_groups(model):
        return _torch_pruning(model, sparsity, criterion, example_input)
    small = plain_copy(model)
    channel_masks(small, sparsity, criterion, data, seed)
    return remove_channels(small)


@dataclass(frozen=True)
class ChannelGroup:
    """Producer (layer name), optional batch norm, consumer, and features per channel there."""

    producer: str
    norm: str | None
    consumer: str
    spatial: int = 1


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The removable channel groups of ``model`` (empty when its structure is not understood)."""
    groups: list[ChannelGroup] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            groups += _sequential_groups(name, module)
        elif all(hasattr(module, a) for a in ("conv1", "bn1", "conv2")):
            prefix = f"{name}." if name else ""
            if _channels_out(module.conv1) == _channels_in(module.conv2):
                groups.append(ChannelGroup(f"{prefix}conv1", f"{prefix}bn1", f"{prefix}conv2"))
    seen, unique = set(), []
    for g in groups:
        if g.producer not in seen:
            seen.add(g.producer)
            unique.append(g)
    return unique


class ChannelMask(nn.Module):
    """Parametrization zeroing whole output channels: ``X * keep`` along dimension 0."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep.view(-1, *([1] * (x.dim() - 1)))


def channel_scores(
    model: nn.Module, groups: list[ChannelGroup], criterion: str = "l1", data=None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One score per output channel of each group's producer (higher = keep)."""
    if criterion not in CHANNEL_CRITERIA:
        raise choice_error("criterion", criterion, CHANNEL_CRITERIA)
    modules = dict(model.named_modules())
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.producer: torch.rand(_channels_out(modules[g.producer]), generator=gen) for g in groups}
    if criterion in ("l1", "l2"):
        out = {}
        for g in groups:
            w = modules[g.producer].weight.detach().reshape(_channels_out(modules[g.producer]), -1)
            out[g.producer] = w.abs().sum(1) if criterion == "l1" else w.norm(dim=1)
        return out
    return _taylor(model, groups, data, seed)


def channel_masks(
    model: nn.Module, sparsity: float = 0.5, criterion: str = "l1", data=None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Zero ``⌊sparsity·C⌋`` output channels of every group in place (the masked model).

    The producer's weight rows and bias, and the batch norm's weight and bias, get a
    :class:`ChannelMask`, so the channel outputs exactly 0 (train or eval mode) and the
    consumer sees zeros — the function of the smaller model. Returns producer -> keep vector.
    """
    from prunus.counts import fraction_count

    if not 0.0 <= float(sparsity) < 1.0:
        raise PrunusError(f"sparsity must be a fraction of channels in [0, 1) (got {sparsity!r}).")
    groups = channel_groups(model)
    if not groups:
        raise PrunusError(
            "structured pruning needs an nn.Sequential chain or residual blocks with "
            "conv1/bn1/conv2; use prune_channels with example_input for other models."
        )
    scores = channel_scores(model, groups, criterion, data, seed)
    modules = dict(model.named_modules())
    keeps = {}
    for g in groups:
        s = scores[g.producer]
        removed = min(fraction_count(sparsity, len(s)), len(s) - 1)
        order = torch.sort(s.float(), descending=True, stable=True).indices
        keep = torch.zeros(len(s), dtype=torch.bool)
        keep[order[: len(s) - removed]] = True
        keeps[g.producer] = keep
        layers = [modules[g.producer]] + ([modules[g.norm]] if g.norm else [])
        for layer in layers:
            for attr in ("weight", "bias"):
                if getattr(layer, attr, None) is not None:
                    parametrize.register_parametrization(layer, attr, ChannelMask(keep.to(layer.weight.device)))
    return keeps


def remove_channels(model: nn.Module) -> nn.Module:
    """A physically smaller copy of a model masked by :func:`channel_masks`."""
    keeps: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ChannelMask):
                    keeps[name] = p.keep.nonzero().flatten().cpu()
    small = plain_copy(model)
    modules = dict(small.named_modules())
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for g in channel_groups(small):
        if g.producer not in keeps:
            continue
        idx = keeps[g.producer]
        out_keep[g.producer] = idx
        if g.norm:
            out_keep[g.norm] = idx
        feats = (idx[:, None] * g.spatial + torch.arange(g.spatial)[None, :]).flatten()
        in_keep[g.consumer] = feats
    for name in set(out_keep) | set(in_keep):
        new = _shrunk(modules[name], out_keep.get(name), in_keep.get(name))
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else small, child, new)
    return small


def shrink_report(before: nn.Module, after: nn.Module) -> list[dict]:
    """Rows ``{"layer", "before", "after", "params_before", "params_after"}`` (weight shapes and
    parameter counts) for every Linear/Conv layer of ``before`` found under the same name in
    the smaller ``after`` (from :func:`prune_channels`), and a last row ``layer == "total"``
    counting every parameter of both models."""
    small = dict(after.named_modules())
    rows = []
    for name, layer in before.named_modules():
        if isinstance(layer, _LAYERS) and isinstance(small.get(name), _LAYERS):
            rows.append({
                "layer": name, "before": list(layer.weight.shape),
                "after": list(small[name].weight.shape),
                "params_before": sum(p.numel() for p in layer.parameters()),
                "params_after": sum(p.numel() for p in small[name].parameters()),
            })
    rows.append({
        "layer": "total", "before": None, "after": None,
        "params_before": sum(p.numel() for p in before.parameters()),
        "params_after": sum(p.numel() for p in after.parameters()),
    })
    return rows


# -- helpers -------------------------------------------------------------------------------


def _channels_out(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _channels_in(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _sequential_groups(prefix: str, seq: nn.Sequential) -> list[ChannelGroup]:
    flat: list[tuple[str, nn.Module]] = []

    def walk(name: str, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                walk(f"{name}.{child_name}" if name else child_name, child)
        else:
            flat.append((name, module))

    walk(prefix, seq)
    groups = []
    for i, (name, layer) in enumerate(flat):
        if not isinstance(layer, _LAYERS) or getattr(layer, "groups", 1) != 1:
            continue
        norm, flattened = None, False
        for other_name, other in flat[i + 1 :]:
            if isinstance(other, _NORMS) and norm is None and not flattened:
                if other.num_features != _channels_out(layer):
                    break
                norm = other_name
            elif isinstance(other, nn.Flatten):
                flattened = True
            elif isinstance(other, _PASS):
                continue
            elif isinstance(other, _LAYERS):
                if getattr(other, "groups", 1) != 1:
                    break
                n_in, n_out = _channels_in(other), _channels_out(layer)
                if flattened and isinstance(other, nn.Linear) and n_in % n_out == 0:
                    groups.append(ChannelGroup(name, norm, other_name, n_in // n_out))
                elif not flattened and n_in == n_out and (
                    isinstance(other, nn.Linear) == isinstance(layer, nn.Linear)
                ):
                    groups.append(ChannelGroup(name, norm, other_name, 1))
                break
            else:
                break
    return groups


def _shrunk(module: nn.Module, out_idx, in_idx) -> nn.Module:
    with torch.no_grad():
        if isinstance(module, _NORMS):
            new = type(module)(
                len(out_idx), eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats,
            )
            for attr in ("weight", "bias", "running_mean", "running_var"):
                src = getattr(module, attr, None)
                if src is not None:
                    getattr(new, attr).copy_(src[out_idx.to(src.device)])
            if module.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(module.num_batches_tracked)
            return new.to(module.weight.device if module.affine else "cpu")
        weight = module.weight
        device = weight.device
        if out_idx is not None:
            weight = weight[out_idx.to(device)]
        if in_idx is not None:
            weight = weight[:, in_idx.to(device)]
        bias = module.bias
        if bias is not None and out_idx is not None:
            bias = bias[out_idx.to(device)]
        if isinstance(module, nn.Linear):
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            new = type(module)(
                weight.shape[1], weight.shape[0], module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, groups=1,
                bias=bias is not None, padding_mode=module.padding_mode,
            )
        new = new.to(device=device, dtype=weight.dtype)
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
        return new


def _taylor(model: nn.Module, groups: list[ChannelGroup], data, seed: int) -> dict[str, torch.Tensor]:
    from prunus.weights.criteria import _as_batches

    if data is None:
        raise PrunusError("criterion 'taylor' needs data (a batch, list of batches or dataset).")
    probe = plain_copy(model).train()
    device = next(probe.parameters()).device
    modules = dict(probe.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {g.producer: [] for g in groups}
    hooks = []
    for g in groups:
        watched = modules[g.norm or g.producer]

        def hook(_module, _inputs, output, key=g.producer):
            output.retain_grad()
            outputs[key].append(output)

        hooks.append(watched.register_forward_hook(hook))
    totals = {g.producer: 0.0 for g in groups}
    try:
        for x, y in _as_batches(data, 128, seed, device):
            for outs in outputs.values():
                outs.clear()
            F.cross_entropy(probe(x), y).backward()
            for key, outs in outputs.items():
                for a in outs:
                    dims = [d for d in range(a.dim()) if d != 1]
                    totals[key] = totals[key] + (a * a.grad).sum(dim=dims).abs().detach().cpu()
    finally:
        for h in hooks:
            h.remove()
    return totals


def _torch_pruning(model: nn.Module, sparsity: float, criterion: str, example_input) -> nn.Module:
    """Arbitrary architectures through the optional ``torch-pruning`` package (DepGraph)."""
    tp = require("torch_pruning", "structured")
    if example_input is None:
        raise PrunusError(
            "example_input is required to prune this architecture's channels with torch-pruning."
        )
    if criterion not in ("l1", "l2", "random"):
        raise choice_error("criterion (torch-pruning path)", criterion, ("l1", "l2", "random"))
    if not 0.0 <= float(sparsity) < 1.0:
        raise PrunusError(f"sparsity must be a fraction of channels in [0, 1) (got {sparsity!r}).")
    small = plain_copy(model)
    importance = tp.importance.RandomImportance() if criterion == "random" else tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)
    last = [m for m in small.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(
        small, example_input, importance=importance, pruning_ratio=float(sparsity), ignored_layers=last
    )
    pruner.step()
    return small
