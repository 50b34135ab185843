"""Per-example scores, one file per family (each function returns an array aligned to
``dataset.ids``):

- ``loss.py``: :func:`loss_scores`, :func:`el2n_scores`, :func:`uncertainty_scores`
- ``grand.py``: :func:`grand_scores`, :func:`per_example_grad_norms` (exact: per-layer hooks where every parameter is owned by a supported layer, else torch.func; refuses otherwise)
- ``trajectory.py``: :class:`ForgettingEvents`, :class:`AreaUnderMargin`,
  :class:`DynamicUncertainty` (trainer callbacks) and their pure functions
- ``prototypes.py``: :func:`prototype_scores`, :func:`kcenter_scores`, :func:`embeddings`

:func:`prunus.data.score` runs the proxy training and calls these.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "loss_scores": "loss",
    "el2n_scores": "loss",
    "uncertainty_scores": "loss",
    "UNCERTAINTY_KINDS": "loss",
    "grand_scores": "grand",
    "per_example_grad_norms": "grand",
    "ForgettingEvents": "trajectory",
    "AreaUnderMargin": "trajectory",
    "DynamicUncertainty": "trajectory",
    "forgetting_counts": "trajectory",
    "area_under_margin": "trajectory",
    "dynamic_uncertainty": "trajectory",
    "prototype_scores": "prototypes",
    "kcenter_scores": "prototypes",
    "kcenter_greedy": "prototypes",
    "embeddings": "prototypes",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"prunus.data.scores.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'prunus.data.scores' has no attribute {name!r}")


__all__ = list(_EXPORTS)
