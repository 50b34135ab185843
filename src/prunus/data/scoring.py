"""``score``: train short proxy runs, score every training example, average over seeds."""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.counts import fraction_count
from prunus.data.table import HIGHER_IS_HARDER, LOWER_IS_HARDER, ScoreTable
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error
from prunus.registry import SCORES
from prunus.train.events import Callback

# progress(completed, total, description): units are examples processed (training + scoring).
ProgressCallback = Callable[[int, int, str], None]


# Score methods are registered where they are defined (``prunus.data.scores.*``, or any module
# with ``@prunus.registry.SCORES.register``); this table is that registry. A method's spec
# (its registration defaults; see ``SPEC_DEFAULTS``):
#   needs         how it is computed, which decides how it is called:
#                 "outputs" / "gradients": fn(model, dataset, batch_size=, progress=, ...)
#                 "embeddings": fn(points, ...) on the penultimate-layer embeddings
#                 "trajectory": a trainer callback class, fn(...), read with ``.scores()``
#                 "proxies": the method trains its own proxy models (label_issue: K folds), so
#                   score() trains none: fn(model, dataset, *, seeds, epochs, progress,
#                   model_options, **train settings) -> ScoreTable, whose columns (the main
#                   one included) and metadata["cost"] become the table's
#   column        the table column (default: the method's name)
#   column_from   a score() option whose value names the column instead (uncertainty: kind)
#   direction     HIGHER_IS_HARDER (default) or LOWER_IS_HARDER
#   min_epochs    proxy epochs the method needs (default 0; 1 for trajectory methods)
#   default_epochs  the fewest proxy epochs the default (epochs not given) trains, capped at
#                 the full run's epochs (trajectory scores need several epochs to say anything)
#   options       {function keyword: score() option} passed on (and recorded in settings)
#   choices       {score() option: allowed values}, checked before any training
#   approximation a note stored in the table metadata (default None)
#   flops         flops(n, forward, backward, width) of the scoring pass (default forward · n)
#   kwargs        fixed keyword arguments of the function (grand_last_layer: last_layer=True)
METHODS = SCORES
SPEC_DEFAULTS: dict[str, Any] = {
    "needs": "outputs",
    "column": None,
    "column_from": None,
    "direction": HIGHER_IS_HARDER,
    "min_epochs": None,
    "default_epochs": 0,
    "options": {},
    "choices": {},
    "approximation": None,
    "flops": None,
    "kwargs": {},
}
NEEDS = ("outputs", "gradients", "embeddings", "trajectory", "proxies")
# a column that reads the other way round whatever the method (uncertainty's top-2 margin)
COLUMN_DIRECTIONS = {"margin": LOWER_IS_HARDER}
PROXY_FRACTION = 0.2  # share of the full schedule a proxy run trains by default


@dataclass(frozen=True)
class MethodInfo:
    """A score method's spec, read from its registration (see the table above)."""

    name: str
    fn: Callable[..., Any]
    column: str
    direction: str
    needs: str
    min_epochs: int
    default_epochs: int
    summary: str
    column_from: str | None
    options: dict[str, str]
    choices: dict[str, tuple]
    approximation: str | None
    flops: Callable[..., float] | None
    kwargs: dict[str, Any]


def method_info(method: str) -> MethodInfo:
    """The spec of a registered score method (``PrunusError`` listing the names if unknown)."""
    entry = SCORES.entry(method)
    unknown = sorted(set(entry.defaults) - set(SPEC_DEFAULTS))
    if unknown:
        raise PrunusError(
            f"score method {method!r} is registered with unknown spec key {unknown[0]!r}; "
            f"the keys are: {', '.join(SPEC_DEFAULTS)}."
        )
    spec = {**SPEC_DEFAULTS, **entry.defaults}
    if spec["needs"] not in NEEDS:
        raise choice_error(f"needs of score method {method!r}", spec["needs"], NEEDS)
    if spec["min_epochs"] is None:
        spec["min_epochs"] = 1 if spec["needs"] in ("trajectory", "proxies") else 0
    return MethodInfo(
        name=method, fn=entry.obj, column=spec["column"] or method, direction=spec["direction"],
        needs=spec["needs"], min_epochs=int(spec["min_epochs"]),
        default_epochs=int(spec["default_epochs"]), summary=entry.summary,
        column_from=spec["column_from"], options=dict(spec["options"]),
        choices={k: tuple(v) for k, v in spec["choices"].items()},
        approximation=spec["approximation"], flops=spec["flops"], kwargs=dict(spec["kwargs"]),
    )


def score(
    dataset: Dataset,
    model: str | nn.Module = "cnn1d",
    method: str = "el2n",
    *,
    epochs: int | None = None,
    proxy_fraction: float = PROXY_FRACTION,
    full_epochs: int = 10,
    seeds: Sequence[int] = (0,),
    batch_size: int = 128,
    score_batch_size: int | None = None,
    kind: str = "entropy",
    clusters: int | None = None,
    window: int = 10,
    folds: int = 5,
    method_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    **train_settings: Any,
) -> ScoreTable:
    """Score every training example of ``dataset`` with short proxy runs, averaged over seeds.

    For each seed a fresh ``model`` is trained with :class:`prunus.train.Trainer` on the schedule
    of a ``full_epochs`` run (LR schedule included) and stopped after ``epochs`` epochs (default
    :func:`default_proxy_epochs`: ``⌈proxy_fraction · full_epochs⌉``, at least 1, and for trajectory
    methods at least their registered ``default_epochs``): the early checkpoint the Data Diet
    paper scores at. Then the training split is scored (eval mode); trajectory methods (``forgetting``,
    ``aum``, ``dynamic_uncertainty``) record during the proxy training instead. ``epochs=0``
    scores the untrained model (GraNd at initialisation). ``label_issue`` trains its own
    proxies instead: ``folds`` models per seed, each for ``epochs`` epochs on its own schedule
    (:func:`prunus.data.labels.label_issue_scores`).

    Args:
        dataset: the dataset whose training split is scored.
        model: a registered model name, ``"package.module:factory"``, or an ``nn.Module`` (copied
            for every seed; its initialisation is then the same for all seeds). Default ``"cnn1d"``.
        method: a registered score method (``prunus.registry.SCORES``: the built-ins are
            ``SCORE_METHODS``; add one with ``@SCORES.register``). Default ``"el2n"``.
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
        folds: ``label_issue`` only: K of its K-fold proxy training. Default 5.
        method_options: further keyword arguments of the method's function (for methods
            registered with their own settings).
        model_options: keyword options of the model factory.
        progress: optional ``progress(completed, total, description)``, units are examples.
        executor: ``"local"`` (this process) or ``"ray"``: proxies trained as Ray tasks (one per
            seed, in parallel), then the dataset scored as a ``ray.data`` map over shards by
            actors holding the proxies (:mod:`prunus.data.distributed`); on CPU the same
            table bit for bit as a local run with one torch thread (a Ray worker's). Default
            ``"local"``.
        address: ``executor="ray"`` only: the cluster to join (``host:port``; default the
            ``RAY_ADDRESS`` environment variable, else a Ray instance started in this process).
        workers: ``executor="ray"`` only: scoring actors (default: the cluster's CPUs).
        **train_settings: any other :class:`prunus.config.TrainConfig` field (``lr``,
            ``optimizer``, ``schedule``, ``device``...).

    Returns:
        A :class:`ScoreTable` with the scores, the dataset fingerprint and the cost: wall seconds
        (proxy training + scoring passes; proxy evaluation reported apart) and FLOPs (training
        and scoring forward/backward passes, from ``torch.utils.flop_counter``).

    Raises:
        PrunusError: unknown ``method``, ``kind`` or ``executor``, bad
            ``seeds``/``epochs``/``proxy_fraction``, too few epochs for a trajectory method, bad
            training settings, or (Ray) an unreachable ``address`` or a worker whose prunus
            version differs.
        MissingExtraError: ``executor="ray"`` without Ray installed.
    """
    from prunus.config import TrainConfig, validated

    info = method_info(method)
    if executor not in ("local", "ray"):
        raise choice_error("executor", executor, ("local", "ray"))
    if executor == "local" and (address is not None or workers is not None):
        raise PrunusError("address and workers need executor='ray'.")
    seeds = _check_seeds(seeds)
    proxy_epochs = default_proxy_epochs(method, epochs, full_epochs, proxy_fraction)
    if proxy_epochs < info.min_epochs:
        raise PrunusError(
            f"epochs must be at least {info.min_epochs} for method {method!r} "
            f"(it records predictions during training; got {proxy_epochs})."
        )
    for name in ("seed", "epochs"):
        if name in train_settings:
            raise PrunusError(f"{name} is set by score() itself; use seeds= and epochs= instead.")
    given = {"kind": kind, "clusters": clusters or dataset.num_classes, "window": window,
             "folds": folds}
    for option, allowed in info.choices.items():
        if given.get(option) not in allowed:
            raise choice_error(option, given.get(option), allowed)
    column = str(given[info.column_from]) if info.column_from else info.column
    direction = COLUMN_DIRECTIONS.get(column, info.direction)
    # a method training its own proxies runs each on a schedule of its own length
    schedule_epochs = proxy_epochs if info.needs == "proxies" else max(full_epochs, proxy_epochs, 1)
    config = validated(
        TrainConfig, {**train_settings, "epochs": schedule_epochs, "batch_size": batch_size}, "train"
    )
    if score_batch_size is None:
        score_batch_size = 256 if info.needs == "gradients" else config.eval_batch_size
    used = {option: given[option] for option in info.options.values()}
    options = {
        **info.kwargs,
        **{keyword: given[option] for keyword, option in info.options.items()},
        **(method_options or {}),
    }

    _check_model_fits(dataset, model, seeds[0], model_options or {})
    n = len(dataset)
    details: dict[str, Any] = {}
    if info.needs == "proxies":
        if executor == "ray":
            raise PrunusError(f"score method {method!r} trains its own proxies and runs only "
                              f"with executor='local'.")
        columns, directions, cost, details = _own_proxies(
            dataset, model, info, seeds, proxy_epochs, config, options, model_options, progress)
    else:
        scoring_units = 0 if info.needs == "trajectory" else n
        tracker = _Tracker(progress, len(seeds) * (proxy_epochs * n + scoring_units))
        job = ScoringJob(model, info, proxy_epochs, config, score_batch_size, options,
                         model_options or {})
        if executor == "ray":
            from prunus.data.distributed import score_on_ray

            per_seed, costs = score_on_ray(dataset, job, seeds, tracker, address=address,
                                           workers=workers)
        else:
            per_seed, costs = [], []
            for seed in seeds:
                proxy = train_proxy(dataset, job, seed, tracker)
                values, seed_cost = score_with_proxy(proxy, dataset, job, tracker)
                per_seed.append(values)
                costs.append(seed_cost)
        columns = {column: np.mean(per_seed, axis=0)}
        if len(seeds) > 1:
            columns.update({f"{column}_seed{s}": v for s, v in zip(seeds, per_seed)})
        directions = dict.fromkeys(columns, direction)
        cost = {
            "seconds": sum(c["train_seconds"] + c["scoring_seconds"] for c in costs),
            "train_seconds": sum(c["train_seconds"] for c in costs),
            "scoring_seconds": sum(c["scoring_seconds"] for c in costs),
            "eval_seconds": sum(c["eval_seconds"] for c in costs),
            "flops": sum(c["flops"] for c in costs),
            "per_seed": costs,
        }
    settings = config.model_dump(exclude={"seed", "epochs"})
    settings.update(score_batch_size=score_batch_size, **used)
    if method_options:
        settings["method_options"] = dict(method_options)
    metadata = {
        "method": method,
        "column": column,
        "directions": directions,
        "description": info.summary,
        "approximation": info.approximation,
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
        "cost": cost,
        **details,
    }
    if info.needs == "proxies":  # a label method's flags are measured against the true flips
        metadata["dataset"]["flipped_ids"] = dataset.flipped_ids.tolist()
    return ScoreTable(dataset.ids.copy(), dataset.y.copy(), columns, metadata)


# what a "proxies" method's own table says about its findings, kept in score()'s metadata
_DETAIL_KEYS = ("num_issues", "thresholds", "issues_per_class", "threshold")


def _own_proxies(dataset, model, info: MethodInfo, seeds, epochs, config, options, model_options,
                 progress):
    """Columns, directions, cost and details of a method that trains its own proxies."""
    settings = config.model_dump(exclude={"seed", "epochs"})
    table = info.fn(model, dataset, seeds=seeds, epochs=epochs, progress=progress,
                    model_options=model_options or None, **settings, **options)
    if info.column not in table.columns or len(table) != len(dataset):
        raise PrunusError(
            f"score method {info.name!r} must return a score table of the {len(dataset)} "
            f"examples with a column {info.column!r} (got columns {list(table.columns)})."
        )
    names = [info.column, *(k for k in table.columns if k != info.column)]
    columns = {k: table.aligned(dataset, k) for k in names}  # fingerprint checked
    directions = {k: table.direction(k) for k in columns}
    spent = table.metadata.get("cost", {})
    seconds, train_seconds = float(spent.get("seconds", 0.0)), float(spent.get("train_seconds", 0.0))
    cost = {"seconds": seconds, "train_seconds": train_seconds,
            "scoring_seconds": seconds - train_seconds, "eval_seconds": 0.0,
            "flops": float(spent.get("flops", 0.0))}
    details = {k: table.metadata[k] for k in _DETAIL_KEYS if k in table.metadata}
    return columns, directions, cost, details


@dataclass(frozen=True)
class ScoringJob:
    """What every seed of one ``score()`` call shares: the proxy model and how it is trained
    and scored (picklable, so that Ray tasks and actors can receive it)."""

    model: str | nn.Module
    info: MethodInfo
    proxy_epochs: int
    config: Any  # TrainConfig
    score_batch_size: int
    options: dict[str, Any]
    model_options: dict[str, Any]


@dataclass
class Proxy:
    """A trained proxy: the model (on the training device), its seed, what training cost, and
    the trajectory recorder of trajectory methods (None otherwise)."""

    net: nn.Module
    seed: int
    meter: Any  # ComputeMeter
    accuracy: float | None
    recorder: Any = None


def train_proxy(dataset: Dataset, job: ScoringJob, seed: int, tracker: _Tracker) -> Proxy:
    """Build ``job.model`` for ``seed`` and train it for ``job.proxy_epochs`` epochs (on the
    schedule of the full run); trajectory methods record while it trains."""
    from prunus.models import build_model
    from prunus.train import ComputeMeter, Trainer
    from prunus.train.trainer import resolve_device

    info = job.info
    if isinstance(job.model, nn.Module):
        net = copy.deepcopy(job.model)
    else:
        net = build_model(job.model, dataset.input_shape, dataset.num_classes, seed=seed,
                          **job.model_options)
    recorder = _call(info.fn, job.options, seed) if info.needs == "trajectory" else None
    meter = ComputeMeter()
    accuracy = None
    if job.proxy_epochs > 0:
        callbacks = [c for c in (recorder, _StopAfter(job.proxy_epochs), _TrainProgress(tracker, seed)) if c]
        trainer = Trainer(net, dataset, callbacks=callbacks, config=job.config, seed=seed)
        result = trainer.fit()
        meter = result.meter
        accuracy = result.final.get("accuracy")
        net = result.model
    else:
        net = net.to(resolve_device(job.config.device))
    return Proxy(net, seed, meter, accuracy, recorder)


def score_with_proxy(
    proxy: Proxy, dataset: Dataset, job: ScoringJob, tracker: _Tracker
) -> tuple[np.ndarray, dict[str, float]]:
    """One seed's scores of every example, and what the seed cost (:func:`proxy_cost`)."""
    tracker.describe(f"seed {proxy.seed}: scoring")
    start = time.perf_counter()
    values = score_examples(proxy, dataset, job, tracker.advance)
    return values, proxy_cost(proxy, dataset, job, time.perf_counter() - start)


def proxy_cost(proxy: Proxy, dataset: Dataset, job: ScoringJob, scoring_seconds: float) -> dict[str, Any]:
    """A seed's cost entry: proxy training seconds and FLOPs (from its meter), the seconds the
    scoring pass took, and the FLOPs of that pass."""
    meter = proxy.meter
    return {
        "seed": proxy.seed,
        "train_seconds": meter.seconds.get("train", 0.0),
        "eval_seconds": meter.seconds.get("eval", 0.0),
        "scoring_seconds": scoring_seconds,
        "flops": meter.flops + _scoring_flops(proxy.net, dataset, job.info, meter),
        "proxy_test_accuracy": proxy.accuracy,
    }


def score_examples(proxy: Proxy, dataset: Dataset, job: ScoringJob, advance: Callable[[int], None]) -> np.ndarray:
    """The scores of ``dataset``'s examples under a trained proxy (float64, aligned to ids)."""
    if proxy.recorder is not None:
        return np.asarray(proxy.recorder.scores(), dtype=np.float64)
    return finish_scores(proxy, job, example_pass(proxy, dataset, job, advance), len(dataset))


def example_pass(proxy: Proxy, dataset: Dataset, job: ScoringJob, advance: Callable[[int], None]) -> np.ndarray:
    """The per-example pass over ``dataset`` (any shard of it gives the same rows): the scores,
    or for embedding methods the (N, d) penultimate-layer embeddings."""
    info, batch_size = job.info, job.score_batch_size
    if info.needs == "embeddings":
        from prunus.data.scores.prototypes import embeddings

        return embeddings(proxy.net, dataset, batch_size=batch_size, progress=advance)
    kwargs = {**job.options, "batch_size": batch_size, "progress": advance}
    return _call(info.fn, kwargs, proxy.seed, proxy.net, dataset)


def finish_scores(proxy: Proxy, job: ScoringJob, passed: np.ndarray, n: int) -> np.ndarray:
    """The scores from the whole dataset's :func:`example_pass`: the method run on the
    embeddings (embedding methods) or the pass itself, checked to be one float per example."""
    info = job.info
    values = _call(info.fn, job.options, proxy.seed, passed) if info.needs == "embeddings" else passed
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise PrunusError(
            f"score method {info.name!r} must return one score per example, shape ({n},) "
            f"(got {values.shape})."
        )
    return values


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], seed: int, *args: Any) -> Any:
    """``fn(*args, **kwargs)``, with ``seed=`` too when ``fn`` takes a ``seed`` keyword."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        parameters = {}
    if "seed" in parameters and "seed" not in kwargs:
        kwargs = {**kwargs, "seed": seed}
    return fn(*args, **kwargs)


def _scoring_flops(net, dataset, info: MethodInfo, meter) -> float:
    if info.needs == "trajectory":
        return 0.0
    device = next(net.parameters()).device
    sample = torch.from_numpy(dataset.x[:8]).to(device)
    forward, backward = meter.flops_per_example(net, sample)
    n = len(dataset)
    if info.flops is None:
        return float(forward * n)
    return float(info.flops(n, forward, backward, _embedding_width(net, sample)))


def _embedding_width(net, sample) -> int:
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return heads[-1].in_features if heads else 1


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


def default_proxy_epochs(method: str, epochs: int | None, full_epochs: int,
                         proxy_fraction: float = PROXY_FRACTION) -> int:
    """The proxy epochs of score method ``method`` (the one rule, for ``score`` and studies).

    ``epochs`` when given; else ``⌈proxy_fraction · full_epochs⌉`` (at least 1, rounded by
    :func:`prunus.counts.fraction_count`), raised to the method's registered
    ``default_epochs`` but never past ``full_epochs``: forgetting and AUM count events and
    margins over training, and two epochs of a ten-epoch run leave most examples tied.

    Raises:
        PrunusError: ``full_epochs`` not a positive integer, ``proxy_fraction`` outside (0, 1],
            or ``epochs`` not a non-negative integer.
    """
    if int(full_epochs) != full_epochs or full_epochs < 1:
        raise PrunusError(f"full_epochs must be a positive integer (got {full_epochs!r}).")
    if epochs is not None:
        if int(epochs) != epochs or epochs < 0:
            raise PrunusError(f"epochs must be a non-negative integer (got {epochs!r}).")
        return int(epochs)
    if not 0.0 < proxy_fraction <= 1.0:
        raise PrunusError(f"proxy_fraction must be in (0, 1] (got {proxy_fraction!r}).")
    fraction = fraction_count(proxy_fraction, int(full_epochs), up=True, at_least=1)
    return max(fraction, min(method_info(method).default_epochs, int(full_epochs)))


def _check_model_fits(dataset: Dataset, model: str | nn.Module, seed: int,
                      model_options: dict[str, Any]) -> None:
    """The proxy model must fit ``dataset`` (:func:`prunus.models.check_fit`) before training."""
    from prunus.models import build_model, check_fit

    if isinstance(model, nn.Module):
        check_fit(model, dataset, f"model {type(model).__name__!r}")
        return
    net = build_model(model, dataset.input_shape, dataset.num_classes, seed=seed, **model_options)
    check_fit(net, dataset, f"model {model!r}")


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

