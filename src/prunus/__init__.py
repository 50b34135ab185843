"""prunus: decide what to keep — which training examples and which weights — and prove it
against random subsets, random pruning and full data.

Heavy submodules load on first use: ``prunus.datasets``, ``prunus.models``, ``prunus.train``,
``prunus.data``, ``prunus.weights``, ``prunus.negatives``, ``prunus.study``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"datasets", "models", "train", "data", "weights", "negatives", "study", "config"}
_SHORTCUTS = {
    "load": ("prunus.datasets", "load"),
    "Dataset": ("prunus.datasets", "Dataset"),
    "build_model": ("prunus.models", "build_model"),
    "Trainer": ("prunus.train", "Trainer"),
    "Callback": ("prunus.train", "Callback"),
    "PrunusError": ("prunus.errors", "PrunusError"),
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"prunus.{name}")
    if name in _SHORTCUTS:
        module, attr = _SHORTCUTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'prunus' has no attribute {name!r}")


__all__ = [
    "Callback", "Dataset", "PrunusError", "Trainer", "__version__", "build_model", "config",
    "data", "datasets", "load", "models", "negatives", "study", "train", "weights",
]
