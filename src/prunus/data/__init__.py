"""Data side of prunus: score examples, select a subset, or select online while training.

- :func:`score` trains short proxy runs and scores every training example (``SCORE_METHODS``),
  returning a :class:`ScoreTable` (Parquet, keyed by example id).
- :func:`select` keeps an exact budget of ids from a table (``SELECT_POLICIES``).
- :mod:`prunus.data.scores` has the functional forms (one file per score family);
  :mod:`prunus.data.online` selects examples inside the training loop.

Importing this package is light: torch-based parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from prunus.data.select import SELECT_POLICIES, TieWarning, select

SCORE_METHODS = (
    "loss",
    "el2n",
    "grand",
    "grand_last_layer",
    "uncertainty",
    "forgetting",
    "aum",
    "dynamic_uncertainty",
    "prototypes",
    "kcenter",
    "label_issue",
)

_LAZY = {
    "score": "prunus.data.scoring",
    "ScoreTable": "prunus.data.table",
    "find_label_issues": "prunus.data.labels",
    "confident_learning": "prunus.data.labels",
    "out_of_fold_probs": "prunus.data.labels",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunus.data' has no attribute {name!r}")


__all__ = [
    "SCORE_METHODS", "SELECT_POLICIES", "ScoreTable", "TieWarning", "confident_learning",
    "find_label_issues", "out_of_fold_probs", "score", "select",
]
