"""Execute one run (or one score table) of a study; plain functions, so any executor can.

:func:`execute_run` loads the dataset, applies the data arm (random subset, static selection
from a score table, or an online callback) and the weight arm (a sparsifier callback), trains
with the run's seed, and returns one row per evaluation with every cost charged: training,
selection, and the whole cost of the score table it used. A run whose loss diverges (or that
raises) is returned as ``failed`` with the reason; the study goes on.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunus.study import plugins
from prunus.study.grid import (
    DENSE,
    FULL,
    LABELS,
    LANGUAGE,
    ONESHOT,
    ONLINE,
    RANDOM,
    RETRIEVAL,
    SHORT,
    STATIC,
    RunSpec,
    ScoreJob,
    short_schedule,
)
from prunus.train.events import Callback

Reporter = Callable[[str, dict[str, Any]], None]


@dataclass
class ScoreResult:
    """A computed score table and what it cost (wall seconds and FLOPs of the proxy runs)."""

    key: str
    table: Any
    seconds: float
    flops: float


def execute_score_job(job: ScoreJob, threads: int = 0) -> ScoreResult:
    """Compute the score table of ``job``, timing it; its cost is shared by the runs using it."""
    set_threads(threads)
    dataset = load_dataset(job.dataset)
    start = time.perf_counter()
    table = plugins.compute_scores(
        dataset, model=job.model, method=job.method, epochs=job.epochs, seeds=list(job.seeds),
        full_epochs=job.full_epochs, model_options=job.model_options or None,
        **job.options, **job.train,
    )
    seconds = time.perf_counter() - start
    return ScoreResult(job.key, table, seconds, table_flops(table))


def execute_run(
    spec: RunSpec,
    scores: tuple[Any, float, float] | None = None,
    reporter: Reporter | Any | None = None,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Train one run of a study and return its rows (one per evaluation).

    Args:
        spec: the run (dataset, model, data and weight arms, seed, training settings).
        scores: ``(score table, its wall seconds, its FLOPs)`` for a static data arm.
        reporter: called as ``reporter(event, info)`` at fit start and after each epoch's
            evaluation (a queue with ``put`` works too); in a pool worker, None means the
            worker's queue to the parent.
        threads: torch threads for this run (0 leaves torch's setting alone).
    """
    set_threads(threads)
    report = as_reporter(reporter)
    if spec.task == RETRIEVAL:
        return execute_negatives_run(spec, report)
    if spec.task == LANGUAGE:
        return execute_lm_run(spec, report)
    if spec.task == ONESHOT:
        return execute_oneshot_run(spec, report)
    dataset = load_dataset(spec.dataset)
    recorder = Recorder(spec, report)
    charge = 0.0, 0.0  # the whole score table: what a user running this arm once pays
    if scores is not None:
        _, seconds, flops = scores
        charge = seconds, flops
    selection_seconds = 0.0
    status, error = "ok", ""
    train_examples = len(dataset)
    try:
        start = time.perf_counter()
        train_data, callbacks = apply_data_arm(spec, dataset, scores)
        selection_seconds = time.perf_counter() - start
        train_examples = len(train_data)
        if spec.weights.kind != DENSE:
            callbacks.append(plugins.sparsifier(spec.weights.method, spec.weights.sparsity,
                                                spec.seed, **json.loads(spec.weights.options)))
        run_trainer(spec, train_data, [*callbacks, recorder])
    except Exception as exc:  # noqa: BLE001 - a diverging or broken run is a result
        status, error = "failed", failure_reason(exc)
    rows = [
        make_row(spec, entry, status, error, train_examples, selection_seconds, charge)
        for entry in recorder.history
    ]
    if not rows:
        rows = [make_row(spec, {"epoch": 0, "step": 0, "end_of_epoch": False}, status, error,
                         train_examples, selection_seconds, charge)]
    rows[-1]["final"] = True
    if spec.data.kind == LABELS and status == "ok":  # what the flags left (keep is not set)
        for row in rows:
            row["keep"] = train_examples / len(dataset)
    report("run_end", {"run_id": spec.run_id, "status": status})
    return rows


RETRIEVAL_METRIC = "ndcg@10"


def run_own_task(spec: RunSpec, report: Reporter,
                 runner: Callable[[dict[str, Any], int], dict[str, Any]]):
    """``(status, error, result)`` of a task that runs whole in one call (retrieval, LM,
    one-shot): ``runner(spec.train, spec.seed)``, its failure kept as a result."""
    report("fit_start", {"run_id": spec.run_id, "epochs": 1})
    try:
        return "ok", "", runner(spec.train, spec.seed)
    except Exception as exc:  # noqa: BLE001 - a broken run is a result
        return "failed", failure_reason(exc), {}


def execute_negatives_run(spec: RunSpec, report: Reporter) -> list[dict[str, Any]]:
    """Fine-tune and evaluate one negatives policy (``prunus.negatives.run_policy``): one row.

    The row's ``accuracy`` holds nDCG@10 (its ``metric``); ``metrics`` holds the rest as JSON.
    Cost is fine-tuning plus mining and filtering (``selection_seconds``). Embedding the mining
    pool and the evaluation corpus with the pre-trained model is common to every arm and
    cached across runs, so it is not charged (charging it would bill whichever arm ran first).
    """
    status, error, result = run_own_task(spec, report, plugins.run_negatives)
    pairs = int(result.get("train_pairs", 0))
    trained = pairs * int(spec.train["epochs"])
    entry = {
        "epoch": 1 if status == "ok" else 0, "step": int(result.get("steps", 0)),
        "end_of_epoch": True, "accuracy": result.get(RETRIEVAL_METRIC, float("nan")),
        "loss": result.get("loss_last", float("nan")),
        "train_seconds": result.get("train_seconds", 0.0),
        "eval_seconds": result.get("eval_seconds", 0.0),
        "selection_seconds": result.get("mine_seconds", 0.0),
        "examples_forwarded": trained,
        "examples_backpropagated": trained if spec.data.method != "pretrained" else 0,
    }
    row = make_row(spec, entry, status, error, pairs, 0.0, (0.0, 0.0))
    row.update(final=True, metric=RETRIEVAL_METRIC,
               metrics=json.dumps({k: v for k, v in result.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and not k.endswith("seconds")}, sort_keys=True))
    report("epoch_end", {"run_id": spec.run_id, "epoch": 1, "accuracy": row["accuracy"]})
    report("run_end", {"run_id": spec.run_id, "status": status})
    return [row]


def execute_lm_run(spec: RunSpec, report: Reporter) -> list[dict[str, Any]]:
    """Select, train and evaluate one LM arm (``prunus.text.study.run_lm_policy``).

    One row per evaluation: ``accuracy`` holds the target-domain perplexity (its ``metric``,
    lower is better), ``examples_*`` count tokens, and the whole cost of the arm's scoring
    (auxiliary models trained and their forward passes) is charged to every run.
    """
    from prunus.text.study import TARGET_METRIC

    status, error, result = run_own_task(spec, report, plugins.run_lm)
    trained = max(int(result.get("tokens_trained", 0)), 1)
    grad_share = result.get("tokens_with_grad", 0) / trained
    scoring = (result.get("scoring_seconds", 0.0), result.get("scoring_flops", 0.0))
    history = result.get("history") or [{}]
    rows = []
    for point in history:
        tokens = int(point.get("tokens", 0))
        entry = {
            "epoch": 1 if status == "ok" else 0, "step": int(point.get("step", 0)),
            "end_of_epoch": point is history[-1],
            "accuracy": point.get("target_perplexity", float("nan")),
            "train_seconds": point.get("train_seconds", 0.0),
            "examples_forwarded": tokens,
            "examples_backpropagated": round(tokens * grad_share),
            "flops": point.get("flops", 0.0),
        }
        row = make_row(spec, entry, status, error, int(result.get("selected_documents", 0)),
                       0.0, scoring)
        row.update(metric=TARGET_METRIC, metrics=json.dumps({
            "general perplexity": point.get("general_perplexity", float("nan")),
            "selected tokens": result.get("selected_tokens", 0),
            "tokens with gradient": round(tokens * grad_share),
        }, sort_keys=True))
        rows.append(row)
    rows[-1]["final"] = True
    if status == "ok":
        rows[-1]["eval_seconds"] = result.get("eval_seconds", 0.0)
    report("epoch_end", {"run_id": spec.run_id, "epoch": 1, "accuracy": rows[-1]["accuracy"]})
    report("run_end", {"run_id": spec.run_id, "status": status})
    return rows


def execute_oneshot_run(spec: RunSpec, report: Reporter) -> list[dict[str, Any]]:
    """Prune, recover and evaluate one one-shot arm (``prunus.weights.study``): one row.

    ``accuracy`` holds the held-out perplexity after recovery (its ``metric``, lower is
    better); ``metrics`` the perplexity before recovery and the dense model's. Cost: pruning
    (``selection_seconds``), scoring the recovery candidates (``scoring_seconds``) and the
    recovery fine-tune (``train_seconds``), each charged in full; ``examples_*`` count tokens.
    """
    from prunus.weights.study import QUALITY_METRIC

    status, error, result = run_own_task(spec, report, plugins.run_oneshot)
    trained = int(result.get("training_tokens", 0))
    entry = {
        "epoch": 1 if status == "ok" else 0, "end_of_epoch": True,
        "accuracy": result.get("perplexity", float("nan")),
        "train_seconds": result.get("recovery_seconds", 0.0),
        "eval_seconds": result.get("eval_seconds", 0.0),
        "examples_forwarded": trained + int(result.get("scoring_tokens", 0)),
        "examples_backpropagated": trained, "flops": result.get("flops", 0.0),
        "achieved_sparsity": result.get("achieved_sparsity", 0.0),
        "density": 1.0 - result.get("achieved_sparsity", 0.0),
    }
    row = make_row(spec, entry, status, error, 0, result.get("prune_seconds", 0.0),
                   (result.get("scoring_seconds", 0.0), 0.0))
    row.update(final=True, metric=QUALITY_METRIC, metrics=json.dumps({
        "perplexity before recovery": result.get("pruned_perplexity", float("nan")),
        "dense perplexity": result.get("dense_perplexity", float("nan")),
    }, sort_keys=True))
    report("epoch_end", {"run_id": spec.run_id, "epoch": 1, "accuracy": row["accuracy"]})
    report("run_end", {"run_id": spec.run_id, "status": status})
    return [row]


def apply_data_arm(spec: RunSpec, dataset, scores) -> tuple[Any, list]:
    """The training data and callbacks a run's data arm asks for."""
    data = spec.data
    if data.kind in (FULL, SHORT):  # a short schedule is the run's ``examples`` budget
        return dataset, []
    if data.kind == ONLINE:
        return dataset, [plugins.online_callback(data.method, data.keep, spec.seed,
                                                 **json.loads(data.options))]
    if data.kind == LABELS:
        return label_arm_data(data.select, dataset, scores[0], spec.seed, data.stratify), []
    weights = None
    if data.kind == RANDOM or data.select == "random":
        ids, weights = plugins.select_ids(id_table(dataset), data.keep, "random", data.stratify,
                                          spec.seed)
    elif data.kind == STATIC:
        table = scores[0]
        ids, weights = plugins.select_ids(table, data.keep, data.select, data.stratify,
                                          spec.seed, **json.loads(data.select_options))
    else:  # pragma: no cover - grid builds only the kinds above
        raise ValueError(f"unknown data arm {data.kind!r}")
    subset = dataset.subset(np.sort(ids)) if weights is None else dataset.subset(ids)
    return subset, ([] if weights is None else [ExampleWeights(ids, weights, spec.seed)])


def label_arm_data(select: str, dataset, table, seed: int, stratify: bool = True):
    """The training data of a label-issue arm, from a table with ``is_issue`` and
    ``suggested_label`` columns (``label_issue``'s):

    - ``remove_issues``: the examples not flagged;
    - ``random``: as many examples removed as are flagged, chosen at random (seeded by the
      run's seed); with ``stratify`` as many from each given class as are flagged in it;
    - ``relabel_issues``: every example, the flagged ones with their suggested label
      (``flipped_ids`` then lists the ids whose label still differs from the clean one,
      where the clean labels are known).

    Raises:
        PrunusError: the table lacks ``is_issue`` / ``suggested_label`` or was computed on
            another dataset; ``select`` is not one of the three.
    """
    from dataclasses import replace

    from prunus.errors import PrunusError, choice_error

    for name in ("is_issue", "suggested_label"):
        if name not in table.columns:
            raise PrunusError(f"a label-issue arm needs a score table with an {name!r} column "
                              f"(score = 'label_issue'); this one has {list(table.columns)}.")
    flagged = table.aligned(dataset, "is_issue") > 0.5
    if select == "relabel_issues":
        y = np.where(flagged, table.aligned(dataset, "suggested_label"), dataset.y).astype(np.int64)
        flipped = dataset.flipped_ids if dataset.clean_y is None else dataset.ids[y != dataset.clean_y]
        return replace(dataset, y=y, flipped_ids=flipped, _fingerprint=None)
    if select == "remove_issues":
        removed = flagged
    elif select == "random":
        rng = np.random.default_rng(seed)
        groups = dataset.y if stratify else np.zeros(len(dataset), dtype=np.int64)
        removed = np.zeros(len(dataset), dtype=bool)
        for group in np.unique(groups):
            rows = np.flatnonzero(groups == group)
            removed[rng.choice(rows, int(flagged[rows].sum()), replace=False)] = True
    else:
        raise choice_error("label-issue select", select, ("remove_issues", "random",
                                                          "relabel_issues"))
    return dataset.subset(dataset.ids[~removed])


def run_trainer(spec: RunSpec, train_data, callbacks: list) -> None:
    from prunus.config import TrainConfig
    from prunus.models import build_model
    from prunus.train import Trainer

    model = build_model(spec.model["name"], train_data.input_shape, train_data.num_classes,
                        seed=spec.seed, **spec.model["options"])
    config = TrainConfig(**short_schedule(spec, len(train_data)), seed=spec.seed)
    Trainer(model, train_data, callbacks=callbacks, config=config).fit()


class Recorder(Callback):
    """Trainer callback: adds sparsity to each evaluation row and reports progress."""

    def __init__(self, spec: RunSpec, report: Reporter) -> None:
        self.spec = spec
        self.report = report
        self.history: list[dict[str, Any]] = []

    def on_fit_start(self, state) -> None:
        self.history = state.history
        self.report("fit_start", {"run_id": self.spec.run_id, "epochs": state.config.epochs})

    def on_evaluation(self, state) -> None:
        row = state.last_eval
        row["achieved_sparsity"] = float(state.extra.get("sparsity", 0.0))
        row["density"] = float(state.meter.density)

    def on_epoch_end(self, state) -> None:
        self.report("epoch_end", {"run_id": self.spec.run_id, "epoch": state.epoch + 1,
                                  "accuracy": state.last_eval.get("accuracy")})


class ExampleWeights(Callback):
    """Trainer callback for selections that come with per-example loss weights."""

    def __init__(self, ids: np.ndarray, weights: np.ndarray, seed: int) -> None:
        order = np.argsort(ids)
        self.ids, self.weights, self.seed = ids[order], np.asarray(weights)[order], seed

    def on_epoch_start(self, state) -> None:
        rows = state.train.positions(self.ids)
        perm = np.random.default_rng([self.seed, state.epoch]).permutation(len(rows))
        state.epoch_ids = state.train.ids[rows[perm]]
        state.epoch_weights = self.weights[perm]


def make_row(spec: RunSpec, entry: dict[str, Any], status: str, error: str,
             train_examples: int, selection_seconds: float,
             charge: tuple[float, float]) -> dict[str, Any]:
    """One store row from a trainer history entry plus the run's fixed facts and charges
    (``charge``: the wall seconds and FLOPs of the whole score table the run used)."""
    nan = float("nan")
    scoring_seconds = charge[0] + entry.get("scoring_seconds", 0.0)
    selection = selection_seconds + entry.get("selection_seconds", 0.0)
    train_seconds = entry.get("train_seconds", 0.0)
    return {
        "run_id": spec.run_id,
        "run_index": spec.index,
        "setting": spec.setting,
        "dataset": spec.dataset.get("label") or spec.dataset["name"],
        "model": spec.model.get("label") or spec.model["name"],
        "policy": spec.policy,
        "data_policy": spec.data.label,
        "data_kind": spec.data.kind,
        "keep": spec.data.keep,
        "weight_policy": spec.weights.label,
        "sparsity": spec.weights.sparsity,
        "seed": spec.seed,
        "baseline": spec.baseline,
        "status": status,
        "error": error,
        "epoch": int(entry.get("epoch", 0)),
        "step": int(entry.get("step", 0)),
        "end_of_epoch": bool(entry.get("end_of_epoch", False)),
        "final": False,
        "accuracy": float(entry.get("accuracy", nan)),
        "loss": float(entry.get("loss", nan)),
        "train_examples": int(train_examples),
        "train_seconds": train_seconds,
        "eval_seconds": entry.get("eval_seconds", 0.0),
        "scoring_seconds": scoring_seconds,
        "selection_seconds": selection,
        "cost_seconds": train_seconds + scoring_seconds + selection,
        "examples_forwarded": int(entry.get("examples_forwarded", 0)),
        "examples_backpropagated": int(entry.get("examples_backpropagated", 0)),
        "flops": float(entry.get("flops", 0.0)) + charge[1],
        "scoring_flops": charge[1],
        "flops_theoretical": entry.get("density", 1.0) < 1.0 or spec.weights.kind != DENSE,
        "achieved_sparsity": float(entry.get("achieved_sparsity", 0.0)),
        "score_table": spec.score_key,
        "score_table_seconds": None if spec.score_key is None else charge[0],
        "score_shared_by": spec.score_shared_by,
        "compute_baseline": spec.compute_baseline,
        "random_baseline": spec.random_baseline,
        "peak_memory_mb": float(entry.get("peak_memory_mb", nan)),
        "metric": "accuracy",
        "metrics": None,
    }


def failure_reason(exc: BaseException) -> str:
    """One line: the user-facing sentence for prunus errors, type and place for others."""
    from prunus.errors import PrunusError

    if isinstance(exc, PrunusError):
        return str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{place}"


def table_flops(table: Any) -> float:
    """FLOPs a score table records having spent (0 where it records none)."""
    for source in (table, getattr(table, "meta", None), getattr(table, "metadata", None)):
        if source is None:
            continue
        for name in ("flops", "cost_flops", "scoring_flops"):
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if isinstance(value, (int, float)):
                return float(value)
        cost = source.get("cost") if isinstance(source, dict) else getattr(source, "cost", None)
        if isinstance(cost, dict) and isinstance(cost.get("flops"), (int, float)):
            return float(cost["flops"])
    return 0.0


_DATASETS: dict[str, Any] = {}


def load_dataset(entry: dict[str, Any]):
    """Load (once per process) the dataset a run or score job names."""
    from prunus.datasets import load

    key = json.dumps(entry, sort_keys=True, default=str)
    if key not in _DATASETS:
        _DATASETS[key] = load(entry["name"], noise=entry.get("noise", 0.0),
                              noise_seed=entry.get("noise_seed", 0),
                              noise_kind=entry.get("noise_kind", "symmetric"),
                              **entry.get("options", {}))
    return _DATASETS[key]


def check_models_fit(config, datasets: dict[str, Any]) -> None:
    """Build every configured model (and proxy model) for every classification dataset and
    check it fits (:func:`prunus.models.check_fit`), so that a model that does not fit its data
    is refused before any run starts, naming the config field.

    Raises:
        PrunusError: an option the model does not take, a forward pass that fails on the data's
            input shape, or an output that is not one logit per class.
    """
    from prunus.errors import PrunusError
    from prunus.models import build_model, check_fit

    entries = [(f"models[{i}]", m.name, m.options) for i, m in enumerate(config.models)]
    entries += [(f"policies[{i}].proxy.model", p.proxy.model, p.proxy.model_options)
                for i, p in enumerate(config.policies)
                if p.kind == "static" and p.proxy.model is not None]
    for data in datasets.values():
        if not hasattr(data, "num_classes") or not hasattr(data, "x"):
            continue  # retrieval and language data check their own models
        for field, name, options in entries:
            try:
                model = build_model(name, data.input_shape, data.num_classes, seed=0, **options)
            except PrunusError as exc:
                raise PrunusError(f"{field}: {str(exc).rstrip('.')}.") from None
            check_fit(model, data, f"{field} ({name!r})")


def id_table(dataset):
    """A score table with one constant column, for ``select(policy='random')``."""
    from prunus.data import ScoreTable

    return ScoreTable(dataset.ids, dataset.y, {"constant": np.zeros(len(dataset))},
                      metadata={"dataset": {"name": dataset.name,
                                            "fingerprint": dataset.fingerprint}})


def set_threads(threads: int) -> None:
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


WORKER_CHANNEL = None  # a pool worker's queue to the parent process (set at worker start-up)


def as_reporter(reporter: Reporter | Any | None) -> Reporter:
    if reporter is None:
        reporter = WORKER_CHANNEL
    if reporter is None:
        return lambda event, info: None
    if hasattr(reporter, "put"):
        return lambda event, info: reporter.put((event, info))
    return reporter
