"""The study store: one directory per study, every write atomic (temp file, then rename).

::

    DIR/config.toml        the resolved configuration, with package versions
    DIR/runs/<run>.parquet one file per finished run (written when the run finishes)
    DIR/runs.parquet       all finished runs, one row per run × evaluation (rebuilt after each)
    DIR/scores/<key>.parquet, <key>.json   score tables and what they cost
    DIR/report.html        the report (``prunus report DIR`` rebuilds it)

A study killed at any point resumes (``--resume``) from the runs whose files exist; a run
that was in flight left only a temporary file, which is removed and the run redone.
"""

from __future__ import annotations

import json
import platform
import tomllib
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prunus import files
from prunus.errors import PrunusError, reading
from prunus.files import TEMP_PREFIX, reason
from prunus.study.config import parse_config
from prunus.study.schema import StudyConfig
from prunus.study.toml import to_toml

# One row per run × evaluation. Timing columns (``*_seconds``, ``peak_memory_mb``) are the only
# ones that differ between two executions of the same study.
RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("run_index", pa.int64()),
    ("setting", pa.string()),
    ("dataset", pa.string()),
    ("model", pa.string()),
    ("policy", pa.string()),
    ("data_policy", pa.string()),
    ("data_kind", pa.string()),
    ("keep", pa.float64()),
    ("weight_policy", pa.string()),
    ("sparsity", pa.float64()),
    ("seed", pa.int64()),
    ("baseline", pa.bool_()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("epoch", pa.int64()),
    ("step", pa.int64()),
    ("end_of_epoch", pa.bool_()),
    ("final", pa.bool_()),
    ("accuracy", pa.float64()),
    ("loss", pa.float64()),
    ("train_examples", pa.int64()),
    ("train_seconds", pa.float64()),
    ("eval_seconds", pa.float64()),
    ("scoring_seconds", pa.float64()),
    ("selection_seconds", pa.float64()),
    ("cost_seconds", pa.float64()),
    ("examples_forwarded", pa.int64()),
    ("examples_backpropagated", pa.int64()),
    ("flops", pa.float64()),
    ("scoring_flops", pa.float64()),
    ("flops_theoretical", pa.bool_()),
    ("achieved_sparsity", pa.float64()),
    ("score_table", pa.string()),
    ("score_table_seconds", pa.float64()),
    ("score_shared_by", pa.int64()),
    ("compute_baseline", pa.string()),  # policy of the full-data arm with the same compute
    ("random_baseline", pa.string()),  # policy of the random arm this one is judged against
    ("peak_memory_mb", pa.float64()),
    ("metric", pa.string()),  # what ``accuracy`` holds: accuracy, or ndcg@10 for retrieval
    ("metrics", pa.string()),  # JSON of a retrieval run's other metrics and statistics
])
TIMING_COLUMNS = tuple(
    name for name in RUN_SCHEMA.names if name.endswith("_seconds") or name == "peak_memory_mb"
)


class StudyStore:
    """Paths and atomic reads/writes of one study directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def runs_path(self) -> Path:
        return self.root / "runs.parquet"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def exists(self) -> bool:
        return self.config_path.exists()

    # -- opening --------------------------------------------------------------------------

    def prepare(self, config: StudyConfig, resume: bool) -> None:
        """Create the directory for ``config``, or check that it holds the same study.

        Raises:
            PrunusError: the directory holds a study and ``resume`` is False; it holds a study
                with a different configuration; it cannot be written.
        """
        if self.exists():
            if not resume:
                raise PrunusError(
                    f"--out {str(self.root)!r} already holds a study; pass --resume to continue "
                    "it, or choose another --out."
                )
            stored = self.read_config()
            old, new = stored.comparable(), config.comparable()
            added_seeds = set(new["seeds"]) > set(old["seeds"])
            if added_seeds:  # more seeds extend a study: the runs already done stay valid
                old = {**old, "seeds": new["seeds"]}
            if old != new:
                field = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
                hint = (" (a resume may add seeds, not remove them)" if field == "seeds" else "")
                raise PrunusError(
                    f"--out {str(self.root)!r} holds a study whose setting {field!r} differs "
                    f"from this config{hint}; resume it with its own config or choose another "
                    "--out."
                )
            if added_seeds:
                self.write_config(config)
            self.remove_temporaries()
            return
        if self.root.exists() and not self.root.is_dir():
            raise PrunusError(f"--out {str(self.root)!r} is a file, not a directory.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise PrunusError(
                f"--out {str(self.root)!r} is not a writable directory ({reason(exc)})."
            ) from None
        self.write_config(config)

    # -- config ---------------------------------------------------------------------------

    def write_config(self, config: StudyConfig) -> None:
        """``config.toml``: the resolved settings plus the versions that produced the results."""
        values = json.loads(config.model_dump_json(exclude={"train": {"seed"}}))
        values["versions"] = versions()
        atomic_write_text(self.config_path, to_toml(values))

    def read_config(self) -> StudyConfig:
        if not self.config_path.is_file():
            raise PrunusError(f"{str(self.root)!r} is not a study directory (no config.toml).")
        values = self._read_toml()
        values.pop("versions", None)
        if isinstance(values.get("train"), dict):
            values["train"].pop("seed", None)  # written by older versions of the store
        with reading(self.config_path, "study config", "a study configuration"):
            return parse_config(values, source=str(self.config_path))

    def _read_toml(self) -> dict[str, Any]:
        with reading(self.config_path, "study config", "a TOML file written by prunus study"):
            return tomllib.loads(self.config_path.read_text(encoding="utf-8"))

    def read_versions(self) -> dict[str, str]:
        try:
            stored = self._read_toml().get("versions", {})
        except PrunusError:
            return {}
        return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}

    # -- runs -----------------------------------------------------------------------------

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def write_plan(self, runs: int) -> None:
        """``plan.json``: how many runs the study's grid has, so a report can tell a finished
        study from an interrupted one."""
        atomic_write_text(self.plan_path, json.dumps({"runs": runs}) + "\n")

    def planned_runs(self) -> int | None:
        """The number of runs the grid had when the study last started (None if unknown)."""
        try:
            return int(json.loads(self.plan_path.read_text(encoding="utf-8"))["runs"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def run_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.parquet"

    def finished_run_ids(self) -> set[str]:
        if not self.runs_dir.exists():
            return set()
        return {p.stem for p in self.runs_dir.glob("*.parquet") if not p.name.startswith(".")}

    def write_run(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Write one finished run's rows (atomically: a killed study never leaves half a file)."""
        self.runs_dir.mkdir(exist_ok=True)
        table = rows_to_table(rows)
        atomic_write(self.run_path(run_id), lambda tmp: pq.write_table(table, tmp))

    def read_run(self, run_id: str) -> list[dict[str, Any]]:
        """The rows of one finished run, in evaluation order."""
        return self._read_rows(self.run_path(run_id)).to_pylist()

    def _read_rows(self, path: Path) -> pa.Table:
        """A run file or ``runs.parquet``, checked against :data:`RUN_SCHEMA`."""
        hint = ("delete it and rerun with --resume to redo that run" if path.parent == self.runs_dir
                else "delete it and it is rebuilt from runs/")
        with reading(path, "study runs file", "a Parquet file of study runs", hint=hint):
            own = pq.read_schema(path).names  # older stores lack newer columns: read as null
            lacking = [name for name in ("run_id", "run_index", "status") if name not in own]
            if lacking:
                raise ValueError(f"it has no {lacking[0]!r} column")
            return pq.read_table(path, schema=RUN_SCHEMA)

    def consolidate(self) -> int:
        """Rebuild ``runs.parquet`` from the per-run files; returns the number of rows."""
        files = sorted(p for p in self.runs_dir.glob("*.parquet") if not p.name.startswith(".")) \
            if self.runs_dir.exists() else []
        tables = [self._read_rows(p) for p in files]
        table = pa.concat_tables(tables) if tables else RUN_SCHEMA.empty_table()
        if table.num_rows:
            table = table.sort_by([("run_index", "ascending"), ("step", "ascending"),
                                   ("end_of_epoch", "ascending")])
        atomic_write(self.runs_path, lambda tmp: pq.write_table(table, tmp))
        return table.num_rows

    def read_runs(self) -> pa.Table:
        """All rows; from ``runs.parquet``, or from the per-run files if it is missing."""
        if self.runs_path.exists():
            return self._read_rows(self.runs_path)
        self.consolidate()
        return self._read_rows(self.runs_path)

    # -- scores ---------------------------------------------------------------------------

    def score_path(self, key: str) -> Path:
        return self.scores_dir / f"{key}.parquet"

    def score_meta_path(self, key: str) -> Path:
        return self.scores_dir / f"{key}.json"

    def has_scores(self, key: str) -> bool:
        return self.score_path(key).exists() and self.score_meta_path(key).exists()

    def write_scores(self, key: str, table: Any, meta: dict[str, Any]) -> None:
        """Save a score table (its own ``write``) and what it cost; the table goes first, so
        a table without its cost record counts as missing and is recomputed."""
        self.scores_dir.mkdir(exist_ok=True)
        atomic_write(self.score_path(key), lambda tmp: table.write(tmp))
        atomic_write_text(self.score_meta_path(key), json.dumps(meta, indent=1, default=str))

    def read_score_meta(self, key: str) -> dict[str, Any]:
        return _read_json_object(self.score_meta_path(key))

    def score_metas(self) -> dict[str, dict[str, Any]]:
        if not self.scores_dir.exists():
            return {}
        return {p.stem: _read_json_object(p)
                for p in sorted(self.scores_dir.glob("*.json")) if not p.name.startswith(".")}

    def read_scores(self, key: str):
        from prunus.data import ScoreTable

        return ScoreTable.read(self.score_path(key))

    # -- housekeeping ---------------------------------------------------------------------

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a study that was killed while writing."""
        for folder in (self.root, self.runs_dir, self.scores_dir):
            if folder.exists():
                for path in folder.glob(f"{TEMP_PREFIX}*"):
                    path.unlink(missing_ok=True)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A score cost record (``scores/<key>.json``): a JSON object."""
    with reading(path, "score record", "a JSON object written by prunus study",
                 hint="delete it and rerun with --resume to recompute those scores"):
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise TypeError(f"it holds a JSON {type(value).__name__}")
        return value


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with :data:`RUN_SCHEMA`'s columns) as an Arrow table in schema order."""
    rows = list(rows)
    return pa.table({name: [row.get(name) for row in rows] for name in RUN_SCHEMA.names},
                    schema=RUN_SCHEMA)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """:func:`prunus.files.atomic_write`, fsynced: a resume trusts what is on disk."""
    files.atomic_write(path, write, durable=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def versions() -> dict[str, str]:
    """Versions of prunus, Python and the libraries that decide the numbers."""
    from importlib import metadata

    import prunus

    out = {"prunus": prunus.__version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "scipy", "pyarrow", "duckdb"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[package] = "not installed"
    return out
