"""Which weights survive: score → allocate → keep, mirroring the data half.

* score: :mod:`prunus.weights.criteria` (magnitude, random, gradient, SNIP, GraSP, SynFlow)
* allocate: :mod:`prunus.weights.allocation` (global threshold or per-layer uniform/ERK counts,
  minimum density per layer, exact totals by largest-remainder rounding)
* keep: masks (:mod:`prunus.weights.masks`, parametrizations saved with safetensors) applied
  one-shot, gradually or iteratively (:mod:`prunus.weights.schedules`), with drop-and-regrow
  (:mod:`prunus.weights.dst`), in N:M groups (:mod:`prunus.weights.nm`), or as physical
  channel removal (:mod:`prunus.weights.structured`).

Functional use::

    masks = prunus.weights.prune(model, sparsity=0.9, method="magnitude", scope="global")
    prunus.weights.sparsity_report(model)
    prunus.weights.remove(model)          # bake the masks in

In training: ``Trainer(model, data, callbacks=[get_sparsifier("rigl", sparsity=0.9)])``.
"""

from __future__ import annotations

from prunus.lazy import lazy_getattr

# Importing this package is light (the CLI's start-up depends on it): torch-based parts load
# on first use.
_LAZY = {
    "allocation": ("allocate", "erk_densities", "layer_counts"),
    "criteria": ("CRITERIA", "score"),
    "dst": ("SET", "DynamicSparsity", "GraNet", "RigL", "drop_and_regrow"),
    "masks": ("Mask", "apply", "load", "masks_of", "prunable_weights", "remove", "save",
              "sparsity_report", "zero_pruned"),
    "nm": ("nm_mask",),
    "pruning": ("prune",),
    "registry": ("WEIGHT_METHODS", "get_sparsifier"),
    "schedules": ("GradualMagnitude", "LotteryTicket", "OneShot", "Sparsifier", "gmp_sparsity"),
    "structured": ("channel_masks", "prune_channels", "remove_channels"),
}
__getattr__ = lazy_getattr(__name__, {name: module for module, names in _LAZY.items() for name in names})

__all__ = [
    "CRITERIA",
    "SET",
    "WEIGHT_METHODS",
    "DynamicSparsity",
    "GraNet",
    "GradualMagnitude",
    "LotteryTicket",
    "Mask",
    "OneShot",
    "RigL",
    "Sparsifier",
    "allocate",
    "apply",
    "channel_masks",
    "drop_and_regrow",
    "erk_densities",
    "get_sparsifier",
    "gmp_sparsity",
    "layer_counts",
    "load",
    "masks_of",
    "nm_mask",
    "prunable_weights",
    "prune",
    "prune_channels",
    "remove",
    "remove_channels",
    "save",
    "score",
    "sparsity_report",
    "zero_pruned",
]
