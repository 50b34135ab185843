"""``prunus query DIR "SQL"``: DuckDB over a study's Parquet files.

Views: ``runs`` (one row per run × evaluation, ``runs.parquet``) and, when the study has score
tables, ``scores`` (every table under ``scores/``, columns unioned by name, plus ``table``:
the table's key).

Queries are read-only: only ``SELECT`` (with ``WITH``, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE``,
``SHOW``) and ``EXPLAIN`` statements run, and DuckDB itself is locked down before the user's SQL
runs (no file access beyond the study's own Parquet files, no extensions, no configuration
changes), so ``COPY … TO``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET`` and ``read_csv`` of other
paths are all refused and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prunus.errors import PrunusError
from prunus.study.store import StudyStore

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")

# Applied in this order before the user's SQL runs: the study's files stay readable, nothing
# else on disk or on the network is, no extension loads, and no setting can be changed back.
LOCKDOWN = (
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("temp_directory", ""),  # never spill to disk
    ("python_enable_replacements", False),  # no scans of this process's Python variables
    ("enable_external_access", False),
    ("lock_configuration", True),
)


def query(study: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` (read-only) against the study in ``study`` and return the result as an
    Arrow table.

    Raises:
        PrunusError: not a study directory, a statement other than a query (``COPY``,
            ``ATTACH``, ``INSTALL``, ``SET``, ``CREATE``, …), a file outside the study, or the
            SQL fails (DuckDB's message, first line).
    """
    import duckdb

    store = StudyStore(study)
    if not store.exists():
        raise PrunusError(f"{str(study)!r} is not a study directory (no config.toml).")
    with duckdb.connect() as con:
        readable = register_views(con, store)
        lock_down(con, readable)
        try:
            check_read_only(con, sql)
            relation = con.sql(sql)
            # a statement without rows gives no relation
            return pa.table({}) if relation is None else arrow_table(relation)
        except duckdb.PermissionException as exc:
            raise PrunusError(
                "prunus query reads only the study's views runs and scores, not other files or "
                f"settings ({first_line(exc)}).") from None
        except duckdb.Error as exc:
            raise PrunusError(f"the query failed: {first_line(exc)}.") from None


def register_views(con, store: StudyStore) -> list[Path]:
    """Create the views ``runs`` and ``scores``; returns the files they read."""
    readable: list[Path] = []
    if store.runs_path.exists():
        runs = store.runs_path.resolve()
        con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet({quote(runs)})")
        readable.append(runs)
    else:  # a study still running (or killed): its per-run files, without writing runs.parquet
        con.register("runs", per_run_table(store))
    tables = sorted(p.resolve() for p in store.scores_dir.glob("*.parquet")
                    if not p.name.startswith(".")) if store.scores_dir.exists() else []
    if tables:
        files = "[" + ", ".join(quote(p) for p in tables) + "]"
        con.execute(
            f"CREATE VIEW scores AS SELECT * EXCLUDE (filename), "
            f"regexp_extract(filename, '([^/\\\\]+)\\.parquet$', 1) AS \"table\" "
            f"FROM read_parquet({files}, union_by_name = true, filename = true)"
        )
        readable += tables
    return readable


def per_run_table(store: StudyStore) -> pa.Table:
    """The rows of every finished run, read from ``runs/`` in run and evaluation order."""
    import pyarrow.parquet as pq

    from prunus.study.store import RUN_SCHEMA

    files = sorted(p for p in store.runs_dir.glob("*.parquet") if not p.name.startswith(".")) \
        if store.runs_dir.exists() else []
    table = pa.concat_tables([pq.read_table(p, schema=RUN_SCHEMA) for p in files]) \
        if files else RUN_SCHEMA.empty_table()
    if table.num_rows:
        table = table.sort_by([("run_index", "ascending"), ("step", "ascending"),
                               ("end_of_epoch", "ascending")])
    return table


def lock_down(con, readable: list[Path]) -> None:
    """Allow reading ``readable`` only, then turn off every other external access for good."""
    if readable:
        con.execute(f"SET allowed_paths = [{', '.join(quote(p) for p in readable)}]")
    for name, value in LOCKDOWN:
        shown = quote(value) if isinstance(value, str) else str(value).lower()
        con.execute(f"SET {name} = {shown}")


def check_read_only(con, sql: str) -> None:
    """Refuse any statement that is not a query."""
    statements = con.extract_statements(sql)
    for statement in statements:
        kind = getattr(statement.type, "name", str(statement.type)).upper()
        if kind not in ALLOWED_STATEMENTS:
            words = statement.query.strip().split()
            shown = words[0].upper() if words else kind
            raise PrunusError(
                f"prunus query runs read-only queries (SELECT, WITH, DESCRIBE, SUMMARIZE, "
                f"EXPLAIN), not {shown} statements.")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).rstrip(".!")


def quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def arrow_table(cursor) -> pa.Table:
    """A DuckDB result as an Arrow table (the method's name changed across DuckDB versions)."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        method = getattr(cursor, name, None)
        if method is not None:
            result = method()
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    raise RuntimeError("this DuckDB version has no Arrow export")  # pragma: no cover
