"""Data side of prunus: score examples, select a subset, or select online while training.

- :func:`score` trains short proxy runs and scores every training example (``SCORE_METHODS``),
  returning a :class:`ScoreTable` (Parquet, keyed by example id).
- :func:`select` keeps an exact budget of ids from a table (``SELECT_POLICIES``).
- :mod:`prunus.data.scores` has the functional forms (one file per score family);
  :mod:`prunus.data.online` selects examples inside the training loop.

Importing this package is light (no numpy, no torch): every part loads on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "score": "prunus.data.scoring",
    "ScoreTable": "prunus.data.table",
    "TieWarning": "prunus.data.select",
    "find_label_issues": "prunus.data.labels",
    "confident_learning": "prunus.data.labels",
    "out_of_fold_probs": "prunus.data.labels",
}


def __getattr__(name: str) -> Any:
    # ``SCORE_METHODS`` / ``SELECT_POLICIES``: the names of the registries ``prunus.registry.SCORES``
    # / ``SELECT`` (built-ins and registered methods), looked up when asked.
    if name in ("SCORE_METHODS", "SELECT_POLICIES"):
        from prunus.registry import SCORES, SELECT

        return (SCORES if name == "SCORE_METHODS" else SELECT).names()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunus.data' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``prunus.data.select`` names the function :func:`select`, not its submodule: the import
    system binds the submodule here when it is first imported, and that binding is ignored."""

    @property
    def select(self):
        from prunus.data.select import select

        return select

    @select.setter
    def select(self, value: Any) -> None:
        pass


sys.modules[__name__].__class__ = _Package

__all__ = [
    "SCORE_METHODS", "SELECT_POLICIES", "ScoreTable", "TieWarning", "confident_learning",
    "find_label_issues", "out_of_fold_probs", "score", "select",
]
