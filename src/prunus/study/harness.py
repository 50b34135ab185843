"""Run a study: validate → grid → score tables → runs → store → report.

:func:`run_study` is what ``prunus study CONFIG`` calls. Score tables are computed first (each
once, cached under ``scores/``); runs that need no scores start alongside, the others as soon
as their table exists. Each finished run is written at once, so a killed study resumes with
``resume=True`` and never redoes or corrupts a finished run.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prunus.errors import PrunusError
from prunus.study.config import load_config
from prunus.study.executors import make_backend
from prunus.study.grid import RunSpec, ScoreJob, expand_grid, matched_run
from prunus.study.runs import (
    ScoreResult,
    check_models_fit,
    execute_run,
    execute_score_job,
    failure_reason,
    load_dataset,
    make_row,
    table_flops,
)
from prunus.study.schema import StudyConfig
from prunus.study.store import StudyStore

if TYPE_CHECKING:
    from prunus.datasets import Dataset


@dataclass
class StudyResult:
    """Where a study's results are, and what it concluded."""

    out: Path
    report: Path
    runs: int
    ran: int
    failed: int
    verdicts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    answers: list[str] = field(default_factory=list)
    failure: str = ""  # the first failed run's reason
    score_tables: int = 0  # score tables computed now
    failed_score_tables: int = 0
    score_failure: str = ""  # the first failed score table's reason

    @property
    def all_failed(self) -> bool:
        """Every run of the study failed: it answers nothing."""
        return self.runs > 0 and self.failed >= self.runs

    @property
    def all_scoring_failed(self) -> bool:
        """Every score table computed now failed: no scored policy was tested."""
        return self.score_tables > 0 and self.failed_score_tables >= self.score_tables

    def failure_sentence(self) -> str:
        """One sentence saying what failed when the study answers nothing, else ``""``."""
        if self.all_failed:
            return (f"all {self.runs} runs of the study failed ({self.failure.rstrip('.')}); "
                    f"see {self.report}.")
        if self.all_scoring_failed:
            tables = "the score table" if self.score_tables == 1 else \
                f"all {self.score_tables} score tables"
            reason = self.score_failure.removeprefix("scoring failed: ").rstrip(".")
            return (f"{tables} failed ({reason}), so no scored policy "
                    f"was tested; see {self.report}.")
        return ""


class StudyInterrupted(KeyboardInterrupt):
    """The study was interrupted (Ctrl-C): finished runs are stored and the report covers
    them; ``prunus study CONFIG --out DIR --resume`` runs the rest."""

    def __init__(self, out: Path, finished: int, runs: int, report: Path | None) -> None:
        super().__init__(f"interrupted with {finished} of {runs} runs finished")
        self.out = out
        self.finished = finished
        self.runs = runs
        self.report = report


def run_study(
    config: StudyConfig | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
) -> StudyResult:
    """Run every run of a study that is not finished yet, then write ``report.html``.

    Args:
        config: a :class:`StudyConfig` or the path of a TOML file.
        out: the study directory (created; must not hold another study unless ``resume``).
        resume: continue the study already in ``out`` (same config), skipping finished runs.
        executor: ``local`` or ``ray`` (default: the config's ``execution.executor``).
        workers: runs at once (default: the config's ``execution.workers``).
        progress: show a Rich progress display (runs, epochs, ETA) on ``console``.
        address, cpus_per_run, gpus_per_run: ``ray`` only: the cluster and each run's resource
            request (default: the config's ``execution.ray_address`` / ``cpus_per_run`` /
            ``gpus_per_run``).

    Raises:
        PrunusError: bad config, unusable ``out``, a missing extra, or a store write failing.
    """
    start = time.perf_counter()
    if not isinstance(config, StudyConfig):
        config = load_config(config)
    execution = config.execution
    executor = executor or execution.executor
    workers = workers or execution.workers
    if executor not in ("local", "ray"):
        raise PrunusError(f"--executor must be one of: local, ray (got {executor!r}).")
    if workers < 1:
        raise PrunusError(f"--workers must be at least 1 (got {workers}).")
    address = address or execution.ray_address
    cpus = execution.cpus_per_run if cpus_per_run is None else cpus_per_run
    gpus = execution.gpus_per_run if gpus_per_run is None else gpus_per_run
    if executor != "ray" and (address or cpus_per_run is not None or gpus_per_run is not None):
        raise PrunusError("--address, --cpus-per-run and --gpus-per-run need --executor ray.")
    if cpus <= 0 or gpus < 0:
        raise PrunusError(f"--cpus-per-run must be above 0 and --gpus-per-run at least 0 "
                          f"(got {cpus:g} and {gpus:g}).")
    if executor == "ray" and address:  # before anything is written: fail within seconds
        from prunus.data.distributed import check_reachable

        check_reachable(address, "--address")

    datasets = {d.display: load_dataset(d.model_dump()) for d in config.datasets}
    check_models_fit(config, datasets)
    runs, jobs = expand_grid(config, {name: ds.fingerprint for name, ds in datasets.items()},
                             {name: len(ds) for name, ds in datasets.items()})
    by_fingerprint = {ds.fingerprint: ds for ds in datasets.values()}
    given = given_tables(config, jobs, by_fingerprint)  # refused before anything is written
    store = StudyStore(out)
    store.prepare(config, resume)
    store.write_plan(len(runs))
    finished = store.finished_run_ids()
    todo = [run for run in runs if run.run_id not in finished]
    needed = {run.score_key for run in todo if run.score_key}
    scores: dict[str, tuple[Any, float, float]] = {}
    for job in jobs:
        if job.key in given and job.key in needed:
            table, meta = given[job.key]
            if not store.has_scores(job.key):
                shared = next(r.score_shared_by for r in runs if r.score_key == job.key)
                store.write_scores(job.key, table, {**meta, "shared_by": shared})
            scores[job.key] = (table, meta["seconds"], meta["flops"])
        elif job.key in needed and store.has_scores(job.key):
            meta = store.read_score_meta(job.key)
            table = store.read_scores(job.key)
            check_cached_scores(table, by_fingerprint[job.fingerprint], store.score_path(job.key))
            scores[job.key] = (table, meta["seconds"], meta["flops"])
    pending_jobs = [job for job in jobs if job.key in needed and job.key not in scores]

    display = StudyProgress(console or Console(stderr=True), enabled=progress)
    backend = make_backend(executor, workers, execution.threads, display.event, address, cpus,
                           gpus)
    display.start(todo, pending_jobs, already=len(runs) - len(todo))
    failed_scores: dict[str, str] = {}
    try:
        schedule(backend, store, todo, pending_jobs, scores, display, failed_scores)
    except KeyboardInterrupt:
        display.stop()
        backend.close(cancel=True)
        raise interrupted(store, len(runs)) from None
    except BaseException:
        display.stop()
        backend.close(cancel=True)
        raise
    display.stop()
    backend.close()

    from prunus.study.report import write_report

    store.consolidate()
    report = write_report(store)
    failed = sum(len(summary.failures) for summary in report.summaries)
    failure = next((reason for summary in report.summaries
                    for reason in summary.failures.values()), "")
    return StudyResult(store.root, report.path, len(runs), len(todo), failed, report.verdicts,
                       time.perf_counter() - start, report.answers, failure=failure,
                       score_tables=len(pending_jobs), failed_score_tables=len(failed_scores),
                       score_failure=next(iter(failed_scores.values()), ""))


def check_cached_scores(table: Any, dataset: Dataset, path: Path | str,
                        what: str = "this cached score table",
                        fix: str = "delete it and rerun with --resume to recompute it") -> None:
    """A reused ``scores/`` table (or a precomputed one a policy names) must be the one
    computed on this dataset: same fingerprint and exactly its training ids (a swapped or
    foreign file is refused, never trained on)."""
    if table.fingerprint != dataset.fingerprint or not np.array_equal(np.sort(table.ids),
                                                                      np.sort(dataset.ids)):
        raise PrunusError(
            f"{path}: {what} was not computed on dataset {dataset.name!r} "
            f"(fingerprint {table.fingerprint}, expected {dataset.fingerprint}); {fix}.")


def given_tables(config: StudyConfig, jobs: list[ScoreJob],
                 datasets: dict[str, Dataset]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The precomputed tables policies name (``scores = FILE``), read and checked against
    their dataset, each with the record a computed table gets (its cost: the seconds and
    FLOPs the table's metadata records).

    Raises:
        PrunusError: naming ``policies[i].scores``: an unreadable file, a table made on another
            dataset, or a table that records no cost.
    """
    from prunus.data import ScoreTable

    fields = {p.scores: f"policies[{i}].scores" for i, p in enumerate(config.policies)
              if p.scores is not None}
    given: dict[str, tuple[Any, dict[str, Any]]] = {}
    for job in jobs:
        if job.table is None:
            continue
        field = fields[job.table]
        try:
            table = ScoreTable.read(job.table)
        except PrunusError as exc:
            raise PrunusError(f"{field}: {exc}") from None
        check_cached_scores(table, datasets[job.fingerprint], f"{field} ({job.table})",
                            "the score table",
                            "score this dataset with prunus score and name that table")
        meta = table.metadata
        seconds = (meta.get("cost") or {}).get("seconds")
        if not isinstance(seconds, (int, float)):
            raise PrunusError(f"{field}: score table {job.table!r} records no cost (metadata "
                              "cost.seconds), so its runs could not be charged for it; make it "
                              "with prunus score.")
        given[job.key] = (table, {
            **job.describe(), "method": meta.get("method"), "model": meta.get("model"),
            "epochs": meta.get("epochs"), "full_epochs": meta.get("full_epochs"),
            "seeds": meta.get("seeds", []), "seconds": float(seconds),
            "flops": table_flops(table),
        })
    return given


def interrupted(store: StudyStore, runs: int) -> StudyInterrupted:
    """After Ctrl-C: the finished runs consolidated and reported (best effort: a second
    Ctrl-C or a failing write leaves the per-run files, which a resume reads)."""
    finished = len(store.finished_run_ids())
    report = None
    try:
        store.consolidate()
        if finished:
            from prunus.study.report import write_report

            report = write_report(store).path
    except (Exception, KeyboardInterrupt):  # noqa: BLE001 - the interrupt is what matters
        report = None
    return StudyInterrupted(store.root, finished, runs, report)


def schedule(backend, store: StudyStore, todo: list[RunSpec], jobs: list[ScoreJob],
             scores: dict[str, tuple[Any, float, float]], display: StudyProgress,
             failed_scores: dict[str, str] | None = None) -> None:
    """Keep up to ``backend.capacity`` tasks in flight, score tables first; store each result
    as it arrives. Score tables that fail are recorded in ``failed_scores`` (key: reason)."""
    waiting_jobs = list(jobs)
    waiting_runs = list(todo)
    failed_scores = {} if failed_scores is None else failed_scores
    in_flight: dict[Future, tuple[str, Any]] = {}

    in_flight_ids: set[str] = set()

    def ready(run: RunSpec) -> bool:
        if run.matches is not None and (run.matches in in_flight_ids or any(
                r.run_id == run.matches for r in waiting_runs)):
            return False  # waits for the run whose measured compute it matches
        return run.score_key is None or run.score_key in scores or run.score_key in failed_scores

    def next_task() -> tuple[str, Any] | None:
        if waiting_jobs:
            return "score", waiting_jobs.pop(0)
        for i, run in enumerate(waiting_runs):
            if ready(run):
                return "run", waiting_runs.pop(i)
        return None

    while True:
        while len(in_flight) < backend.capacity:
            task = next_task()
            if task is None:
                break
            kind, item = task
            if kind == "run" and item.matches is not None:
                item, failure = resolve_match(store, item)
                if failure:
                    finish_run(store, item, failed_run_rows(item, failure), display)
                    continue
                task = kind, item
            if kind == "score":
                future = backend.submit(execute_score_job, item, backend.threads)
            elif item.score_key in failed_scores:
                finish_run(store, item, failed_run_rows(item, failed_scores[item.score_key]),
                           display)
                continue
            else:
                future = backend.submit(execute_run, item, scores.get(item.score_key),
                                        backend.reporter, backend.threads)
            in_flight[future] = task
            if kind == "run":
                in_flight_ids.add(item.run_id)
        if not in_flight:
            if waiting_runs:  # pragma: no cover - every run's table is scheduled above
                raise RuntimeError("runs are waiting for score tables that are not scheduled")
            return
        done, _ = wait(list(in_flight), timeout=0.25, return_when=FIRST_COMPLETED)
        for message in backend.messages():
            display.event(*message)
        for future in done:
            kind, item = in_flight.pop(future)
            in_flight_ids.discard(getattr(item, "run_id", None))
            if kind == "score":
                try:
                    result: ScoreResult = future.result()
                except Exception as exc:  # noqa: BLE001 - recorded on the runs that needed it
                    failed_scores[item.key] = f"scoring failed: {failure_reason(exc)}"
                    display.score_done(item, ok=False)
                    continue
                store.write_scores(item.key, result.table, {
                    **item.describe(), "seconds": result.seconds, "flops": result.flops,
                    "shared_by": next(r.score_shared_by for r in todo if r.score_key == item.key),
                })
                scores[item.key] = (result.table, result.seconds, result.flops)
                display.score_done(item, ok=True)
            else:
                try:
                    rows = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died is a failed run
                    rows = failed_run_rows(item, failure_reason(exc))
                finish_run(store, item, rows, display)


def resolve_match(store: StudyStore, run: RunSpec) -> tuple[RunSpec, str]:
    """A matched run with its budget set from its source run's measured backprop count, or
    the reason it cannot run (its source failed)."""
    rows = store.read_run(run.matches) if store.run_path(run.matches).exists() else []
    final = rows[-1] if rows else None
    if final is None or final["status"] != "ok":
        return run, "the run whose compute it matches failed"
    return matched_run(run, final["examples_backpropagated"]), ""


def finish_run(store: StudyStore, run: RunSpec, rows: list[dict[str, Any]],
               display: StudyProgress) -> None:
    store.write_run(run.run_id, rows)
    store.consolidate()
    display.run_done(run, rows[-1]["status"])


def failed_run_rows(run: RunSpec, reason: str) -> list[dict[str, Any]]:
    row = make_row(run, {"epoch": 0, "step": 0}, "failed", reason, 0, 0.0, (0.0, 0.0))
    row["final"] = True
    return [row]


class StudyProgress:
    """Rich progress: score tables, runs done of total (with ETA), one bar per active run."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.progress: Progress | None = None
        self.runs_task = None
        self.scores_task = None
        self.active: dict[str, Any] = {}
        self.labels: dict[str, str] = {}

    def start(self, todo: list[RunSpec], jobs: list[ScoreJob], already: int) -> None:
        self.labels = {r.run_id: f"{r.policy} · seed {r.seed}" for r in todo}
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        if jobs:
            self.scores_task = self.progress.add_task("[bold]score tables", total=len(jobs),
                                                      note="")
        note = f"({already} done before)" if already else ""
        self.runs_task = self.progress.add_task("[bold]runs", total=len(todo), note=note)

    def event(self, event: str, info: dict[str, Any]) -> None:
        if self.progress is None:
            return
        run_id = info.get("run_id")
        if event == "fit_start":
            label = escape(self.labels.get(run_id, run_id or ""))
            self.active[run_id] = self.progress.add_task(
                f"  {label}", total=info["epochs"], note="epochs")
        elif event == "epoch_end" and run_id in self.active:
            acc = info.get("accuracy")
            note = f"acc {100 * acc:.1f}%" if isinstance(acc, float) and not math.isnan(acc) else ""
            self.progress.update(self.active[run_id], completed=info["epoch"], note=note)

    def run_done(self, run: RunSpec, status: str) -> None:
        if self.progress is None:
            return
        task = self.active.pop(run.run_id, None)
        if task is not None:
            self.progress.remove_task(task)
        if status != "ok":
            self.progress.console.print(f"[red]failed:[/] {escape(self.labels.get(run.run_id, ''))}")
        self.progress.advance(self.runs_task)

    def score_done(self, job: ScoreJob, ok: bool) -> None:
        if self.progress is None or self.scores_task is None:
            return
        if not ok:
            self.progress.console.print(f"[red]scoring failed:[/] {escape(job.key)}")
        self.progress.advance(self.scores_task)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
