"""``prunus query DIR "SQL"``: DuckDB over a study's Parquet files.

Views: ``runs`` (one row per run × evaluation, ``runs.parquet``) and, when the study has score
tables, ``scores`` (every table under ``scores/``, columns unioned by name, plus ``table``:
the table's key).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prunus.errors import PrunusError
from prunus.study.store import StudyStore


def query(study: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` against the study in ``study`` and return the result as an Arrow table.

    Raises:
        PrunusError: not a study directory, or the SQL fails (DuckDB's message, first line).
    """
    import duckdb

    store = StudyStore(study)
    if not store.exists():
        raise PrunusError(f"{str(study)!r} is not a study directory (no config.toml).")
    if not store.runs_path.exists():
        store.consolidate()
    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet({quote(store.runs_path)})")
        tables = sorted(p for p in store.scores_dir.glob("*.parquet")
                        if not p.name.startswith(".")) if store.scores_dir.exists() else []
        if tables:
            files = "[" + ", ".join(quote(p) for p in tables) + "]"
            con.execute(
                f"CREATE VIEW scores AS SELECT * EXCLUDE (filename), "
                f"regexp_extract(filename, '([^/\\\\]+)\\.parquet$', 1) AS \"table\" "
                f"FROM read_parquet({files}, union_by_name = true, filename = true)"
            )
        try:
            relation = con.sql(sql)
            # a statement without rows (e.g. CREATE VIEW) gives no relation
            return pa.table({}) if relation is None else arrow_table(relation)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PrunusError(f"the query failed: {first.rstrip('.!')}.") from None


def quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def arrow_table(cursor) -> pa.Table:
    """A DuckDB result as an Arrow table (the method's name changed across DuckDB versions)."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        method = getattr(cursor, name, None)
        if method is not None:
            result = method()
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    raise RuntimeError("this DuckDB version has no Arrow export")  # pragma: no cover
