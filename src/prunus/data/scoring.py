"""``score``: train short proxy runs, score every training example, average over seeds."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.data import SCORE_METHODS
from prunus.data.table import HIGHER_IS_HARDER, LOWER_IS_HARDER, ScoreTable
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error
from prunus.train.events import Callback

# progress(completed, total, description): units are examples processed (training + scoring).
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MethodInfo:
    """What a score method measures, how to read it and what it needs."""

    column: str
    direction: str
    needs: str  # "outputs", "gradients", "trajectory" or "embeddings"
    min_epochs: int
    summary: str


METHODS: dict[str, MethodInfo] = {
    "loss": MethodInfo("loss", HIGHER_IS_HARDER, "outputs", 0, "cross-entropy at the proxy checkpoint"),
    "el2n": MethodInfo("el2n", HIGHER_IS_HARDER, "outputs", 0, "‖softmax − one-hot‖₂ early in training"),
    "grand": MethodInfo("grand", HIGHER_IS_HARDER, "gradients", 0, "‖∇θ ℓ‖₂ over all parameters (exact)"),
    "grand_last_layer": MethodInfo(
        "grand_last_layer", HIGHER_IS_HARDER, "gradients", 0,
        "‖∇θ ℓ‖₂ over the last linear layer only (approximation of GraNd)",
    ),
    "uncertainty": MethodInfo("entropy", HIGHER_IS_HARDER, "outputs", 0, "entropy, 1 − max p or top-2 margin"),
    "forgetting": MethodInfo("forgetting", HIGHER_IS_HARDER, "trajectory", 1, "correct→incorrect transitions"),
    "aum": MethodInfo("aum", LOWER_IS_HARDER, "trajectory", 1, "mean margin of the assigned logit"),
    "dynamic_uncertainty": MethodInfo(
        "dynamic_uncertainty", HIGHER_IS_HARDER, "trajectory", 2, "windowed std of p_y over training"
    ),
    "prototypes": MethodInfo("prototypes", HIGHER_IS_HARDER, "embeddings", 0, "distance to nearest k-means centroid"),
    "kcenter": MethodInfo("kcenter", HIGHER_IS_HARDER, "embeddings", 0, "k-center greedy coverage priority"),
}


def score(
    dataset: Dataset,
    model: str | nn.Module = "cnn1d",
    method: str = "el2n",
    *,
    epochs: int | None = None,
    proxy_fraction: float = 0.2,
    full_epochs: int = 10,
    seeds: Sequence[int] = (0,),
    batch_size: int = 128,
    score_batch_size: int | None = None,
    kind: str = "entropy",
    clusters: int | None = None,
    window: int = 10,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    **train_settings: Any,
) -> ScoreTable:
    """Score every training example of ``dataset`` with short proxy runs, averaged over seeds.

    For each seed a fresh ``model`` is trained with :class:`prunus.train.Trainer` on the schedule
    of a ``full_epochs`` run (LR schedule included) and stopped after ``epochs`` epochs (default
    ``round(proxy_fraction · full_epochs)``, at least 1): the early checkpoint the Data Diet paper
    scores at. Then the training split is scored (eval mode); trajectory methods (``forgetting``,
    ``aum``, ``dynamic_uncertainty``) record during the proxy training instead. ``epochs=0``
    scores the untrained model (GraNd at initialisation).

    Args:
        dataset: the dataset whose training split is scored.
        model: a registered model name, ``"package.module:factory"``, or an ``nn.Module`` (copied
            for every seed; its initialisation is then the same for all seeds). Default ``"cnn1d"``.
        method: one of ``SCORE_METHODS``. Default ``"el2n"``.
        epochs: proxy epochs (see above). Default None.
        proxy_fraction: share of the full schedule trained when ``epochs`` is None. Default 0.2.
        full_epochs: length of the schedule the proxy run is a prefix of. Default 10.
        seeds: one proxy run per seed; the table's main column is the mean, and with several
            seeds each seed's scores are kept too (``<column>_seed<k>``). Default ``(0,)``.
        batch_size: training batch size. Default 128.
        score_batch_size: examples per scoring pass (default 256 for gradients, else 1024).
        kind: ``uncertainty`` only: ``"entropy"``, ``"least_confidence"`` or ``"margin"``.
        clusters: ``prototypes`` only: k-means clusters (default: the number of classes).
        window: ``dynamic_uncertainty`` only: presentations per window. Default 10.
        model_options: keyword options of the model factory.
        progress: optional ``progress(completed, total, description)``, units are examples.
        **train_settings: any other :class:`prunus.config.TrainConfig` field (``lr``,
            ``optimizer``, ``schedule``, ``device``...).

    Returns:
        A :class:`ScoreTable` with the scores, the dataset fingerprint and the cost: wall seconds
        (proxy training + scoring passes; proxy evaluation reported apart) and FLOPs (training
        and scoring forward/backward passes, from ``torch.utils.flop_counter``).

    Raises:
        PrunusError: unknown ``method`` or ``kind``, bad ``seeds``/``epochs``/``proxy_fraction``,
            too few epochs for a trajectory method, or bad training settings.
    """
    from prunus.config import TrainConfig, validated

    if method not in METHODS:
        raise choice_error("method", method, SCORE_METHODS)
    info = METHODS[method]
    seeds = _check_seeds(seeds)
    proxy_epochs = _proxy_epochs(epochs, proxy_fraction, full_epochs)
    if proxy_epochs < info.min_epochs:
        raise PrunusError(
            f"epochs must be at least {info.min_epochs} for method {method!r} "
            f"(it records predictions during training; got {proxy_epochs})."
        )
    for name in ("seed", "epochs"):
        if name in train_settings:
            raise PrunusError(f"{name} is set by score() itself; use seeds= and epochs= instead.")
    column = info.column
    if method == "uncertainty":
        from prunus.data.scores.loss import UNCERTAINTY_KINDS

        if kind not in UNCERTAINTY_KINDS:
            raise choice_error("kind", kind, UNCERTAINTY_KINDS)
        column = kind
    direction = LOWER_IS_HARDER if column == "margin" else info.direction
    schedule_epochs = max(full_epochs, proxy_epochs, 1)
    config = validated(
        TrainConfig, {**train_settings, "epochs": schedule_epochs, "batch_size": batch_size}, "train"
    )
    if score_batch_size is None:
        score_batch_size = 256 if info.needs == "gradients" else config.eval_batch_size
    options = {"kind": kind, "clusters": clusters, "window": window}

    n = len(dataset)
    scoring_units = 0 if info.needs == "trajectory" else n
    tracker = _Tracker(progress, len(seeds) * (proxy_epochs * n + scoring_units))
    per_seed: list[np.ndarray] = []
    costs: list[dict[str, float]] = []
    for seed in seeds:
        values, cost = _score_one_seed(
            dataset, model, method, seed, proxy_epochs, config, score_batch_size,
            options, model_options or {}, tracker,
        )
        per_seed.append(values)
        costs.append(cost)

    columns = {column: np.mean(per_seed, axis=0)}
    if len(seeds) > 1:
        columns.update({f"{column}_seed{s}": v for s, v in zip(seeds, per_seed)})
    directions = dict.fromkeys(columns, direction)
    settings = config.model_dump(exclude={"seed", "epochs"})
    settings.update(score_batch_size=score_batch_size)
    if method == "uncertainty":
        settings["kind"] = kind
    if method == "prototypes":
        settings["clusters"] = clusters or dataset.num_classes
    if method == "dynamic_uncertainty":
        settings["window"] = window
    metadata = {
        "method": method,
        "column": column,
        "directions": directions,
        "description": info.summary,
        "approximation": "last linear layer only" if method == "grand_last_layer" else None,
        "model": model if isinstance(model, str) else type(model).__name__,
        "model_options": model_options or {},
        "epochs": proxy_epochs,
        "full_epochs": schedule_epochs,
        "seeds": seeds,
        "settings": settings,
        "dataset": {
            "name": dataset.name,
            "options": dataset.options,
            "size": n,
            "num_classes": dataset.num_classes,
            "flipped": len(dataset.flipped_ids),
            "fingerprint": dataset.fingerprint,
        },
        "prunus_version": _version(),
        "cost": {
            "seconds": sum(c["train_seconds"] + c["scoring_seconds"] for c in costs),
            "train_seconds": sum(c["train_seconds"] for c in costs),
            "scoring_seconds": sum(c["scoring_seconds"] for c in costs),
            "eval_seconds": sum(c["eval_seconds"] for c in costs),
            "flops": sum(c["flops"] for c in costs),
            "per_seed": costs,
        },
    }
    return ScoreTable(dataset.ids.copy(), dataset.y.copy(), columns, metadata)


def _score_one_seed(
    dataset: Dataset,
    model: str | nn.Module,
    method: str,
    seed: int,
    proxy_epochs: int,
    config,
    score_batch_size: int,
    options: dict[str, Any],
    model_options: dict[str, Any],
    tracker: _Tracker,
) -> tuple[np.ndarray, dict[str, float]]:
    from prunus.models import build_model
    from prunus.train import ComputeMeter, Trainer
    from prunus.train.trainer import resolve_device

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = build_model(model, dataset.input_shape, dataset.num_classes, seed=seed, **model_options)
    recorder = _trajectory_recorder(method, options)
    meter = ComputeMeter()
    accuracy = None
    if proxy_epochs > 0:
        callbacks = [c for c in (recorder, _StopAfter(proxy_epochs), _TrainProgress(tracker, seed)) if c]
        trainer = Trainer(net, dataset, callbacks=callbacks, config=config, seed=seed)
        result = trainer.fit()
        meter = result.meter
        accuracy = result.final.get("accuracy")
        net = result.model
    else:
        net = net.to(resolve_device(config.device))
    tracker.describe(f"seed {seed}: scoring")
    start = time.perf_counter()
    values = _static_scores(net, dataset, method, seed, score_batch_size, options, recorder, tracker)
    scoring_seconds = time.perf_counter() - start
    cost = {
        "seed": seed,
        "train_seconds": meter.seconds.get("train", 0.0),
        "eval_seconds": meter.seconds.get("eval", 0.0),
        "scoring_seconds": scoring_seconds,
        "flops": meter.flops + _scoring_flops(net, dataset, method, meter, options),
        "proxy_test_accuracy": accuracy,
    }
    return values, cost


def _static_scores(net, dataset, method, seed, batch_size, options, recorder, tracker) -> np.ndarray:
    from prunus.data.scores import grand, loss, prototypes

    advance = tracker.advance
    if recorder is not None:
        return recorder.scores()
    if method == "loss":
        return loss.loss_scores(net, dataset, batch_size=batch_size, progress=advance)
    if method == "el2n":
        return loss.el2n_scores(net, dataset, batch_size=batch_size, progress=advance)
    if method == "uncertainty":
        return loss.uncertainty_scores(net, dataset, options["kind"], batch_size=batch_size, progress=advance)
    if method in ("grand", "grand_last_layer"):
        return grand.grand_scores(
            net, dataset, last_layer=method == "grand_last_layer", batch_size=batch_size, progress=advance
        )
    points = prototypes.embeddings(net, dataset, batch_size=batch_size, progress=advance)
    if method == "prototypes":
        k = options["clusters"] or dataset.num_classes
        return prototypes.prototype_scores(points, k, seed=seed)
    return prototypes.kcenter_scores(points, seed=seed)


def _scoring_flops(net, dataset, method, meter, options) -> float:
    info = METHODS[method]
    if info.needs == "trajectory":
        return 0.0
    device = next(net.parameters()).device
    sample = torch.from_numpy(dataset.x[:8]).to(device)
    forward, backward = meter.flops_per_example(net, sample)
    n = len(dataset)
    flops = forward * n
    if method == "grand":
        flops += backward * n
    if method == "kcenter":
        flops += 3.0 * n * n * _embedding_width(net, sample)
    return float(flops)


def _embedding_width(net, sample) -> int:
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return heads[-1].in_features if heads else 1


def _trajectory_recorder(method: str, options: dict[str, Any]):
    from prunus.data.scores import trajectory

    if method == "forgetting":
        return trajectory.ForgettingEvents()
    if method == "aum":
        return trajectory.AreaUnderMargin()
    if method == "dynamic_uncertainty":
        return trajectory.DynamicUncertainty(window=options["window"])
    return None


def _check_seeds(seeds: Sequence[int] | int) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        seeds = [int(seeds)]
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise PrunusError(f"seeds must be a list of non-negative integers (got {seeds!r}).") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise PrunusError(f"seeds must be a non-empty list of distinct non-negative integers (got {seeds!r}).")
    return seeds


def _proxy_epochs(epochs: int | None, proxy_fraction: float, full_epochs: int) -> int:
    if int(full_epochs) != full_epochs or full_epochs < 1:
        raise PrunusError(f"full_epochs must be a positive integer (got {full_epochs!r}).")
    if epochs is None:
        if not 0.0 < proxy_fraction <= 1.0:
            raise PrunusError(f"proxy_fraction must be in (0, 1] (got {proxy_fraction!r}).")
        return max(1, round(proxy_fraction * full_epochs))
    if int(epochs) != epochs or epochs < 0:
        raise PrunusError(f"epochs must be a non-negative integer (got {epochs!r}).")
    return int(epochs)


def _version() -> str:
    import prunus

    return prunus.__version__


class _Tracker:
    """Counts examples processed and forwards them to the user's progress callback."""

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress = progress
        self.total = max(total, 1)
        self.done = 0
        self.description = ""

    def describe(self, description: str) -> None:
        self.description = description
        self.advance(0)

    def advance(self, examples: int) -> None:
        self.done += examples
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, self.description)


class _StopAfter(Callback):
    """Stops a run after ``epochs`` epochs while keeping the full run's LR schedule."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, state) -> None:
        if state.epoch + 1 >= self.epochs:
            state.stop = True


class _TrainProgress(Callback):
    def __init__(self, tracker: _Tracker, seed: int) -> None:
        self.tracker = tracker
        self.seed = seed

    def on_epoch_start(self, state) -> None:
        self.tracker.describe(f"seed {self.seed}: proxy epoch {state.epoch + 1}")

    def on_batch_end(self, state) -> None:
        self.tracker.advance(len(state.batch))

