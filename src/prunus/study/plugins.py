"""What the data and weight families offer, looked up when asked (never cached).

Each family registers its methods by name in one :class:`prunus.registry.Registry`; the study
harness reads those registries at validation time and calls the families' entry points at run
time, so adding a method to a family needs no change here. Methods from third-party packages
(entry points ``prunus.<family>``) or from modules named in ``$PRUNUS_PLUGINS`` are found in
every process, ``--workers`` processes included, on the first lookup there (see
:mod:`prunus.registry`). A family that is not installed (or not written yet) reports
``None``: its policies are then unavailable and its baselines are not added.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from typing import Any

import numpy as np


def score_methods() -> Collection[str] | None:
    """Static score methods (the registry ``prunus.registry.SCORES``: the built-ins
    ``prunus.data.SCORE_METHODS`` and any registered method), or None if scoring is absent."""
    data = _module("prunus.data")
    if data is None or not hasattr(data, "score"):
        return None
    from prunus.registry import SCORES

    return SCORES.names()


def select_policies() -> Collection[str] | None:
    """Selection policies (``prunus.data.SELECT_POLICIES``), or None if selection is absent."""
    data = _module("prunus.data")
    if data is None or not hasattr(data, "select"):
        return None
    return tuple(getattr(data, "SELECT_POLICIES", ()))


def online_methods() -> Collection[str] | None:
    """Online selection methods (the registry ``prunus.registry.ONLINE``), or None if absent."""
    online = _module("prunus.data.online")
    if online is None or not hasattr(online, "get_online"):
        return None
    from prunus.registry import ONLINE

    return ONLINE.names()


def weight_methods() -> Collection[str] | None:
    """Weight sparsity methods (the registry ``prunus.registry.WEIGHTS``), or None if absent."""
    weights = _module("prunus.weights")
    if weights is None or not hasattr(weights, "get_sparsifier"):
        return None
    from prunus.registry import WEIGHTS

    return WEIGHTS.names()


def negative_policies() -> Collection[str] | None:
    """Negatives policies (``prunus.negatives.NEGATIVE_POLICIES``), or None if absent."""
    negatives = _module("prunus.negatives")
    if negatives is None or not hasattr(negatives, "run_policy"):
        return None
    return tuple(getattr(negatives, "NEGATIVE_POLICIES", ()))


def check_negatives_settings(config: dict[str, Any]) -> None:
    """Validate a negatives run's settings without running it (``PrunusError`` if bad)."""
    from prunus.negatives.policy import check_config

    check_config(config)


def run_negatives(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``prunus.negatives.run_policy(...)``: fine-tune and evaluate one negatives policy."""
    from prunus.negatives import run_policy

    return run_policy(config, seed=seed)


def run_lm(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``prunus.text.study.run_lm_policy(...)``: select, train and evaluate one LM arm."""
    from prunus.text.study import run_lm_policy

    return run_lm_policy(config, seed=seed)


def compute_scores(dataset, *, model: str, method: str, epochs: int, seeds: list[int],
                   **settings: Any):
    """``prunus.data.score(...)``: a score table from short proxy runs."""
    from prunus.data import score

    return score(dataset, model=model, method=method, epochs=epochs, seeds=seeds, **settings)


def select_ids(table, fraction: float, policy: str, stratify: bool, seed: int,
               **options: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``prunus.data.select(...)`` as (ids, optional per-example loss weights)."""
    from prunus.data import select

    result = select(table, fraction, policy=policy, stratify=stratify, seed=seed, **options)
    if isinstance(result, tuple):
        ids, weights = result
        return np.asarray(ids, dtype=np.int64), None if weights is None else np.asarray(weights)
    return np.asarray(result, dtype=np.int64), None


def online_callback(name: str, keep: float, seed: int, **settings: Any):
    """``prunus.data.online.get_online(...)``: a trainer callback choosing data online."""
    from prunus.data.online import get_online

    return get_online(name, keep=keep, seed=seed, **settings)


def sparsifier(method: str, sparsity: float, seed: int, **settings: Any):
    """``prunus.weights.get_sparsifier(...)``: a trainer callback applying a mask schedule."""
    from prunus.weights import get_sparsifier

    return get_sparsifier(method, sparsity=sparsity, seed=seed, **settings)


def try_select(policy: str, fraction: float, stratify: bool, options: dict[str, Any]) -> None:
    """Run a selection on a tiny made-up table, to check its settings before any run."""
    from prunus.data import ScoreTable

    n = 40
    table = ScoreTable(np.arange(n), np.arange(n) % 2, {"score": np.linspace(0.0, 1.0, n)})
    select_ids(table, fraction, policy, stratify, 0, **options)


def unknown_score_option(options: dict[str, Any]) -> str | None:
    """The first key of ``options`` that ``prunus.data.score`` does not take, else None."""
    import inspect

    from prunus.data import score

    reserved = {"dataset", "model", "method", "epochs", "seeds", "progress", "full_epochs",
                "proxy_fraction", "model_options", "batch_size", "train_settings"}
    params = inspect.signature(score).parameters
    return next((k for k in options if k in reserved or k not in params), None)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None
        raise
