"""What the data and weight families offer, looked up when asked (never cached).

Each family registers its methods by name in one :class:`prunus.registry.Registry`; the study
harness reads those registries at validation time and calls the families' entry points at run
time, so adding a method to a family needs no change here. Methods from third-party packages
(entry points ``prunus.<family>``) or from modules named in ``$PRUNUS_PLUGINS`` are found in
every process, ``--workers`` processes included, on the first lookup there (see
:mod:`prunus.registry`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunus.registry import NEGATIVES, ONLINE, SCORES, SELECT, WEIGHTS


def score_methods() -> tuple[str, ...]:
    """Static score methods (the registry ``prunus.registry.SCORES``)."""
    return SCORES.names()


def select_policies() -> tuple[str, ...]:
    """Selection policies (the registry ``prunus.registry.SELECT``)."""
    return SELECT.names()


def online_methods() -> tuple[str, ...]:
    """Online selection methods (the registry ``prunus.registry.ONLINE``)."""
    return ONLINE.names()


def weight_methods() -> tuple[str, ...]:
    """Weight sparsity methods (the registry ``prunus.registry.WEIGHTS``)."""
    return WEIGHTS.names()


def negative_policies() -> tuple[str, ...]:
    """Negatives policies (the registry ``prunus.registry.NEGATIVES``)."""
    return NEGATIVES.names()


def check_negatives_settings(config: dict[str, Any]) -> None:
    """Validate a negatives run's settings without running it (``PrunusError`` if bad)."""
    from prunus.negatives.policy import check_config

    check_config(config)


def run_negatives(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The registered runner of ``config["policy"]``: fine-tune and evaluate one negatives policy."""
    return NEGATIVES.get(config.get("policy", "in-batch"))(config, seed=seed)


def run_lm(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``prunus.text.study.run_lm_policy(...)``: select, train and evaluate one LM arm."""
    from prunus.text.study import run_lm_policy

    return run_lm_policy(config, seed=seed)


def run_oneshot(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``prunus.weights.study.run_oneshot_policy(...)``: prune, recover, evaluate one arm."""
    from prunus.weights.study import run_oneshot_policy

    return run_oneshot_policy(config, seed=seed)


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
