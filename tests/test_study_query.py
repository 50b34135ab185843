"""``prunus query`` is read-only: queries work, and nothing can write a file, attach a database,
load an extension, change a setting or read a file outside the study."""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import invoke

from prunus.errors import PrunusError
from prunus.study import StudyStore, load_config, query
from prunus.study.toml import to_toml


@pytest.fixture
def study(tmp_path) -> Path:
    """A study directory written by hand: config, two runs (per-run files only) and a score
    table."""
    rng = np.random.default_rng(0)
    data = tmp_path / "blobs.npz"
    np.savez(data, x=rng.normal(size=(30, 4)).astype(np.float32), y=np.arange(30) % 3,
             x_test=rng.normal(size=(9, 4)).astype(np.float32), y_test=np.arange(9) % 3)
    config = tmp_path / "q.toml"
    config.write_text(to_toml({
        "name": "q", "seeds": [0], "keep": [0.5], "sparsity": [], "targets": ["full-1pp"],
        "datasets": [{"name": str(data), "label": "blobs"}],
        "models": [{"name": "mlp"}], "train": {"epochs": 1}, "policies": [],
    }))
    store = StudyStore(tmp_path / "study")
    store.prepare(load_config(config), resume=False)
    for index, (run_id, accuracy) in enumerate([("a", 0.5), ("b", 0.75)]):
        store.write_run(run_id, [{"run_id": run_id, "run_index": index, "step": 1, "epoch": 1,
                                  "end_of_epoch": True, "final": True, "status": "ok",
                                  "policy": f"p{index}", "accuracy": accuracy}])
    store.scores_dir.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": [0, 1, 2], "score": [0.1, 0.2, 0.3]}),
                   store.scores_dir / "k1.parquet")
    return store.root


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_queries_work_and_write_nothing(study):
    before = files(study)
    rows = query(study, "SELECT policy, accuracy FROM runs WHERE final ORDER BY 1").to_pylist()
    assert rows == [{"policy": "p0", "accuracy": 0.5}, {"policy": "p1", "accuracy": 0.75}]
    scores = query(study, 'SELECT "table", sum(score) AS s FROM scores GROUP BY 1').to_pylist()
    assert scores[0]["table"] == "k1" and scores[0]["s"] == pytest.approx(0.6)
    assert query(study, "WITH t AS (SELECT 2 AS x) SELECT x FROM t").to_pylist() == [{"x": 2}]
    assert query(study, "DESCRIBE runs").num_rows > 5
    assert files(study) == before  # no runs.parquet written just to answer a query
    # once consolidated, runs.parquet is what the view reads
    StudyStore(study).consolidate()
    assert query(study, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 2}]


@pytest.mark.parametrize("sql", [
    "COPY runs TO '{out}/copy.csv'",
    "COPY (SELECT 1) TO '{out}/x.csv'",
    "COPY (SELECT 1) TO '{study}/runs.parquet' (FORMAT parquet, USE_TMP_FILE false)",
    "ATTACH '{out}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling = 'json'",
    "EXPORT DATABASE '{out}/export'",
    "CREATE TABLE t AS SELECT 1 AS x",
    "SELECT 1; COPY (SELECT 1) TO '{out}/x.csv'",
])
def test_statements_that_are_not_queries_are_refused(study, tmp_path, sql):
    out = tmp_path / "written"
    out.mkdir()
    before = files(study)
    with pytest.raises(PrunusError, match=r"^prunus query runs read-only queries .*, not \w+ "
                                          r"statements\.$"):
        query(study, sql.format(out=out, study=study))
    assert not list(out.iterdir()) and files(study) == before


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT * FROM read_parquet('{other}')",
    "SELECT * FROM query('SELECT * FROM read_csv(''{secret}'')')",
])
def test_files_outside_the_study_cannot_be_read(study, tmp_path, sql):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(PrunusError, match="reads only the study's views") as caught:
        query(study, sql.format(secret=secret, folder=tmp_path, other=other))
    assert "hunter2" not in str(caught.value)


def test_cli_refuses_a_write_with_exit_2(study, tmp_path, capsys):
    target = tmp_path / "x.csv"
    assert invoke("query", str(study), f"COPY (SELECT 1) TO '{target}'") == 2
    assert not target.exists()
    assert "not COPY statements" in capsys.readouterr().err
    assert invoke("query", str(study), "SELECT count(*) AS n FROM runs", "--json") in (None, 0)
    assert '"n": 2' in capsys.readouterr().out


def test_a_relative_study_path_works(study, monkeypatch):
    monkeypatch.chdir(study.parent)
    StudyStore(study).consolidate()
    assert query(os.path.relpath(study), "SELECT count(*) AS n FROM scores").to_pylist() == [
        {"n": 3}]
