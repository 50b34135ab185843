"""Masks: which weights are prunable, how a mask is attached, baked in, reported and saved.

A mask is a boolean tensor shaped like the weight it covers (``True`` = kept). It is attached
with :mod:`torch.nn.utils.parametrize`, so ``module.weight`` *is* ``original * mask`` every time
it is read: the forward pass, the gradient (``∂L/∂original = ∂L/∂weight ⊙ mask``) and
``state_dict`` consumers all see the masked weight, and nothing else in PyTorch needs to know.

Optimizer steps cannot resurrect a pruned weight: the effective weight is masked by
construction. On top of that, whenever a mask changes, :func:`zero_pruned` sets the underlying
``original`` values, their ``.grad`` and every optimizer state tensor shaped like them
(SGD momentum buffers, Adam's ``exp_avg``/``exp_avg_sq``) to exactly zero at pruned positions.
With a zero gradient there, SGD (with or without momentum, Nesterov, L2 decay), Adam and AdamW
(decoupled decay multiplies 0) keep those values at exactly zero, so a regrown weight starts
at 0 and ``remove`` bakes in exactly the masked weights.

Files are safetensors (no pickle): the effective weights under their plain ``state_dict`` names
and each mask as a ``uint8`` tensor named ``<name>_mask`` (the names ``torch.nn.utils.prune``
uses), with a small JSON metadata header.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunus.errors import PrunusError, one_line, reading
from prunus.files import atomic_write

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Mask(nn.Module):
    """Parametrization ``weight -> weight * mask`` (the mask is a bool buffer, ``True`` = kept).

    When ``capture`` is set, the next forward keeps its output and asks autograd to retain its
    gradient, so that ``last.grad`` is the *dense* gradient ``∂L/∂weight`` (RigL, GraNet).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.capture = False
        self.last: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["last"] = None  # a captured graph tensor is never copied or pickled
        return state

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight * self.mask
        if self.capture and out.requires_grad:
            out.retain_grad()
            self.last = out
        return out


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight: ``name`` is its ``state_dict`` name (e.g. ``"1.weight"``)."""

    name: str
    module: nn.Module
    attr: str = "weight"

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    @property
    def numel(self) -> int:
        return self.weight.numel()

    @property
    def weight(self) -> torch.Tensor:
        """The underlying values (``original`` when masked), not the masked view."""
        if parametrize.is_parametrized(self.module, self.attr):
            return getattr(self.module.parametrizations, self.attr).original
        return getattr(self.module, self.attr)

    @property
    def mask_module(self) -> Mask | None:
        if not parametrize.is_parametrized(self.module, self.attr):
            return None
        for p in getattr(self.module.parametrizations, self.attr):
            if isinstance(p, Mask):
                return p
        return None


def prunable_weights(
    model: nn.Module,
    layers: list[str] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> list[PrunableWeight]:
    """The weights a sparsity method may prune, in module order.

    Default: the ``weight`` of every ``Linear`` and ``ConvNd`` (never biases or norms).

    Args:
        model: any ``nn.Module``.
        layers: module names to restrict to (``None``: all linear/conv layers).
        include_first: keep the first linear/conv layer in the prunable set (default True).
        include_last: keep the last one (usually the classifier) in the set (default True).

    Raises:
        PrunusError: an unknown layer name, or no prunable layer at all.
    """
    found = [
        PrunableWeight(f"{name}.weight" if name else "weight", module)
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
    ]
    if layers is not None:
        by_module = {t.name.removesuffix(".weight"): t for t in found}
        unknown = [name for name in layers if name not in by_module]
        if unknown:
            raise PrunusError(
                f"layers must name linear/conv modules of the model, one of: "
                f"{', '.join(by_module)} (got {unknown[0]!r})."
            )
        found = [by_module[name] for name in layers]
    else:
        first, last = (found[0], found[-1]) if found else (None, None)
        found = [
            t
            for t in found
            if (include_first or t is not first) and (include_last or t is not last)
        ]
    if not found:
        raise PrunusError("the model has no prunable layer (linear or convolution weights).")
    return found


def check_sparsity(sparsity: float, field: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise PrunusError(f"{field} must be a number in [0, 1) (got {sparsity!r}).") from None
    if not 0.0 <= value < 1.0:
        raise PrunusError(f"{field} must be in [0, 1) (got {sparsity!r}).")
    return value


def apply(
    model: nn.Module, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
) -> nn.Module:
    """Attach (or update) masks: ``masks`` maps weight names (``"1.weight"``) to bool tensors.

    Pruned positions of the underlying weight, its gradient and ``optimizer``'s state are set
    to zero (see the module docstring). Returns ``model``.

    Raises:
        PrunusError: a name that is not a weight of the model, or a mask of the wrong shape.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        if module is None or not hasattr(module, attr):
            raise PrunusError(f"mask {name!r} does not name a weight of the model.")
        target = PrunableWeight(name, module, attr)
        if tuple(mask.shape) != tuple(target.shape):
            raise PrunusError(
                f"mask {name!r} must have shape {tuple(target.shape)} (got {tuple(mask.shape)})."
            )
        mask = mask.to(device=target.weight.device, dtype=torch.bool)
        existing = target.mask_module
        if existing is None:
            parametrize.register_parametrization(module, attr, Mask(mask))
        else:
            existing.mask.copy_(mask)
    zero_pruned(model, optimizer)
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``model``: weight name -> bool tensor (a copy)."""
    masks = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, Mask):
                    masks[f"{module_name}.{attr}" if module_name else attr] = p.mask.clone()
    return masks


def layer_densities(model: nn.Module) -> dict[str, float]:
    """Kept fraction of each masked weight, keyed by the name of the module that owns it
    (``"features.0"``); what the compute meter scales that module's FLOPs by."""
    out: dict[str, float] = {}
    for name, mask in masks_of(model).items():
        module_name = name.rpartition(".")[0]
        out[module_name] = out.get(module_name, 1.0) * (float(mask.sum()) / max(mask.numel(), 1))
    return out


def masked_targets(model: nn.Module) -> list[PrunableWeight]:
    """Targets that currently carry a mask, in module order."""
    modules = dict(model.named_modules())
    out = []
    for name in masks_of(model):
        module_name, _, attr = name.rpartition(".")
        out.append(PrunableWeight(name, modules[module_name], attr))
    return out


@torch.no_grad()
def zero_pruned(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Set pruned positions of every masked weight, its grad and its optimizer state to 0."""
    for target in masked_targets(model):
        keep = target.mask_module.mask
        original = target.weight
        original.masked_fill_(~keep, 0.0)
        if original.grad is not None:
            original.grad.masked_fill_(~keep, 0.0)
        if optimizer is not None:
            for value in optimizer.state.get(original, {}).values():
                if torch.is_tensor(value) and value.shape == original.shape:
                    value.masked_fill_(~keep, 0.0)


def remove(model: nn.Module) -> nn.Module:
    """Bake masks in: each masked weight becomes a plain parameter holding ``original * mask``.

    The parameter object is kept, so an optimizer built earlier still points at it.
    """
    for target in masked_targets(model):
        parametrize.remove_parametrizations(target.module, target.attr, leave_parametrized=True)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization baked in (plain parameters).

    ``copy.deepcopy`` of a parametrized module shares its generated class with the original,
    so ``remove_parametrizations`` on the copy would strip the original's properties too; this
    function restores each copied module's own class instead and leaves ``model`` untouched.
    """
    probe = copy.deepcopy(model)
    for module in probe.modules():
        if not parametrize.is_parametrized(module):
            continue
        with torch.no_grad():
            values = {attr: getattr(module, attr).detach().clone() for attr in module.parametrizations}
        originals = {attr: plist.original for attr, plist in module.parametrizations.items()}
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for attr, value in values.items():
            if isinstance(originals[attr], nn.Parameter):
                module.register_parameter(attr, nn.Parameter(value, requires_grad=originals[attr].requires_grad))
            else:
                module.register_buffer(attr, value)
    return probe


def sparsity_report(model: nn.Module, targets: list[PrunableWeight] | None = None) -> list[dict]:
    """Per-layer and total sparsity of the effective weights.

    Returns rows ``{"layer", "shape", "params", "pruned", "zeros", "sparsity", "masked"}`` for
    each target (default: every masked weight, or every linear/conv weight when none is
    masked), and a last row with ``layer == "total"``. ``pruned`` counts masked-out weights (the
    exact contract), ``zeros`` exact zeros of the effective weight (≥ ``pruned``: e.g. a weight
    regrown at 0 that has not moved yet), and ``sparsity`` is ``pruned/params`` for masked
    layers and ``zeros/params`` for unmasked ones (e.g. after :func:`remove`).
    """
    if targets is None:
        targets = masked_targets(model) or prunable_weights(model)
    rows = []
    with torch.no_grad():
        for target in targets:
            effective = getattr(target.module, target.attr)
            mask = target.mask_module
            zeros = int((effective == 0).sum())
            pruned = int((~mask.mask).sum()) if mask is not None else 0
            n = effective.numel()
            removed = pruned if mask is not None else zeros
            rows.append(
                {
                    "layer": target.name,
                    "shape": tuple(effective.shape),
                    "params": n,
                    "pruned": pruned,
                    "zeros": zeros,
                    "sparsity": removed / n if n else 0.0,
                    "masked": mask is not None,
                }
            )
    total = sum(r["params"] for r in rows)
    removed = sum(r["pruned"] if r["masked"] else r["zeros"] for r in rows)
    rows.append(
        {
            "layer": "total",
            "shape": (),
            "params": total,
            "pruned": sum(r["pruned"] for r in rows),
            "zeros": sum(r["zeros"] for r in rows),
            "sparsity": removed / total if total else 0.0,
            "masked": any(r["masked"] for r in rows),
        }
    )
    return rows


def save(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the effective weights and masks of ``model`` to a safetensors file, atomically.

    Keys: the plain ``state_dict`` names (``"1.weight"``; masked weights stored masked) and
    ``"<name>_mask"`` (uint8, 1 = kept) for each mask. ``metadata`` (str values) is stored too.
    """
    from safetensors.torch import save_file

    masks = masks_of(model)
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in plain_state(model).items()}
    for name, mask in masks.items():
        tensors[f"{name}_mask"] = mask.to(torch.uint8).cpu().contiguous()
    info = {"format": "prunus.weights/1", "masks": json.dumps(sorted(masks))}
    info.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=info))


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights and masks written by :func:`save` into ``model`` (same architecture).

    Existing masks on ``model`` are replaced. Returns ``model``; names and shapes are
    checked before anything is changed, so a mismatching file leaves ``model`` as it was.

    Raises:
        PrunusError: missing file, not a safetensors file, or names/shapes that do not match.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PrunusError(f"path must be an existing safetensors file (got {str(path)!r}).")
    with reading(path, "weights file", "a readable safetensors file"):
        tensors = load_file(str(path))
    current = plain_state(model)
    names = set(current)
    masks = {k[: -len("_mask")]: v for k, v in tensors.items() if k.endswith("_mask") and k[: -len("_mask")] in names}
    state = {k: v for k, v in tensors.items() if k in names}
    missing = sorted(names - set(state))
    unexpected = sorted(set(tensors) - set(state) - {f"{k}_mask" for k in masks})
    if missing or unexpected:
        raise PrunusError(
            f"file {str(path)!r} does not match the model (another architecture?): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    for name, value in [*state.items(), *masks.items()]:
        if tuple(value.shape) != tuple(current[name].shape):
            raise PrunusError(
                f"file {str(path)!r} does not match the model's shapes: {name!r} has shape "
                f"{tuple(value.shape)}, the model's is {tuple(current[name].shape)}."
            )
    remove(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PrunusError(
            f"file {str(path)!r} does not match the model ({one_line(exc)})."
        ) from None
    apply(model, {name: mask.bool() for name, mask in masks.items()})
    return model


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with parametrized tensors under their plain names and effective values."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in f".{key}":
            continue
        state[key] = value
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                state[f"{name}.{attr}" if name else attr] = getattr(module, attr).detach()
    return state
