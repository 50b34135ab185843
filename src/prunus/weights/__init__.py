"""Which weights survive: score → allocate → keep, mirroring the data half.

* score: :mod:`prunus.weights.criteria` (magnitude, random, gradient, SNIP, GraSP, SynFlow)
* allocate: :mod:`prunus.weights.allocation` (global threshold or per-layer uniform/ERK counts,
  minimum density per layer, exact totals by largest-remainder rounding)
* keep: masks (:mod:`prunus.weights.masks`, parametrizations saved with safetensors) applied
  one-shot, gradually or iteratively (:mod:`prunus.weights.schedules`), with drop-and-regrow
  (:mod:`prunus.weights.dst`), in N:M groups (:mod:`prunus.weights.nm`), or as physical
  channel removal (:mod:`prunus.weights.structured`).
* pretrained transformers: :func:`oneshot` (:mod:`prunus.weights.pretrained`) prunes block by
  block from calibration data (Wanda, SparseGPT, magnitude, random; N:M; OWL), with
  calibration batches from :mod:`prunus.weights.calibration`.

Functional use::

    masks = prunus.weights.prune(model, sparsity=0.9, method="magnitude", scope="global")
    prunus.weights.sparsity_report(model)
    prunus.weights.remove(model)          # bake the masks in

    calibration = prunus.weights.stdlib_calibration(tokenizer, samples=128)
    result = prunus.weights.oneshot(llm, calibration, sparsity=0.5, method="sparsegpt")

In training: ``Trainer(model, data, callbacks=[get_sparsifier("rigl", sparsity=0.9)])``.
"""

from __future__ import annotations

from prunus.lazy import lazy_getattr

# Importing this package is light (the CLI's start-up depends on it): torch-based parts load
# on first use.
_LAZY = {
    "allocation": ("allocate", "erk_densities", "layer_counts"),
    "calibration": ("encoder_calibration", "pycode_calibration", "stdlib_calibration",
                    "text_calibration"),
    "criteria": ("CRITERIA", "score"),
    "dst": ("SET", "DynamicSparsity", "GraNet", "RigL", "drop_and_regrow"),
    "masks": ("Mask", "apply", "load", "masks_of", "prunable_weights", "remove", "save",
              "sparsity_report", "zero_pruned"),
    "nm": ("nm_mask",),
    "pretrained": ("LayerResult", "OneShotResult", "oneshot", "sparsegpt_prune", "wanda_scores"),
    "pruning": ("prune",),
    "recovery": ("recover",),
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
    "LayerResult",
    "LotteryTicket",
    "Mask",
    "OneShot",
    "OneShotResult",
    "RigL",
    "Sparsifier",
    "allocate",
    "apply",
    "channel_masks",
    "drop_and_regrow",
    "encoder_calibration",
    "erk_densities",
    "get_sparsifier",
    "gmp_sparsity",
    "layer_counts",
    "load",
    "masks_of",
    "nm_mask",
    "oneshot",
    "prunable_weights",
    "prune",
    "prune_channels",
    "pycode_calibration",
    "recover",
    "remove",
    "remove_channels",
    "save",
    "score",
    "sparsegpt_prune",
    "sparsity_report",
    "stdlib_calibration",
    "text_calibration",
    "wanda_scores",
    "zero_pruned",
]
