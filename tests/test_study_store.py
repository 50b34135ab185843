"""A real (tiny) study end to end: store, resume after SIGKILL (in a process pool), query, report,
HTML escaping, and the report in a headless Chromium."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import invoke

from prunus.errors import MissingExtraError, PrunusError
from prunus.study import StudyStore, load_config, query, run_study
from prunus.study.store import TIMING_COLUMNS, atomic_write
from prunus.study.toml import to_toml

NASTY_NAME = "<script>alert('name')</script>"
NASTY_LABEL = "mag <script>alert('label')</script><img src=x onerror=alert(1)>"


def blobs_file(folder: Path) -> Path:
    """Three Gaussian blobs in 8 dimensions as an .npz (600 train, 150 test examples)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, size=(3, 8))

    def draw(n):
        y = np.arange(n) % 3
        return (centers[y] + rng.normal(0, 1.5, size=(n, 8))).astype(np.float32), y

    x, y = draw(600)
    x_test, y_test = draw(150)
    path = folder / "blobs.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def tiny_config(data: Path, seeds=(0, 1), epochs=2) -> dict:
    """Blobs + a small MLP: full, random, RS2, loss-hardest, random pruning, magnitude, and a
    policy whose loss diverges."""
    return {
        "name": NASTY_NAME,
        "seeds": list(seeds),
        "keep": [0.5],
        "sparsity": [0.5],
        "targets": ["full-2pp", 0.5],
        "datasets": [{"name": str(data), "label": "blobs"}],
        "models": [{"name": "mlp", "options": {"hidden": [32]}}],
        "train": {"epochs": epochs, "batch_size": 64},
        "policies": [
            {"score": "loss", "select": "hardest", "proxy": {"epochs": 1, "seeds": 1}},
            {"weights": "magnitude", "label": NASTY_LABEL},
            {"online": "rs2", "label": "diverging", "train": {"lr": 1e30, "optimizer": "sgd"}},
        ],
        "execution": {"threads": 1},
    }


def write_config(path: Path, values: dict) -> Path:
    path.write_text(to_toml(values))
    return path


def comparable(table):
    """runs.parquet without the columns that measure time (they differ between executions)."""
    return table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names]).to_pylist()


def same_rows(a, b) -> bool:
    def clean(rows):
        return [{k: ("nan" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                for r in rows]

    return clean(comparable(a)) == clean(comparable(b))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study, run once in this process."""
    import torch

    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("study")
    config = write_config(root / "tiny.toml", tiny_config(blobs_file(root)))
    try:
        result = run_study(config, root / "out", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root, config, result


def test_store_layout_and_rows(study):
    root, _, result = study
    out = root / "out"
    assert (out / "config.toml").exists() and (out / "runs.parquet").exists()
    assert (out / "report.html").exists() and len(list((out / "scores").glob("*.parquet"))) == 1
    table = pq.read_table(out / "runs.parquet")
    finals = [r for r in table.to_pylist() if r["final"]]
    # full, its schedule cut to keep 50%'s compute, random, RS2, loss-hardest, diverging,
    # uniform and ERK random pruning, magnitude: 9 arms × 2 seeds
    assert result.runs == len(finals) == 9 * 2 and result.ran == 18
    assert len(list((out / "runs").glob("*.parquet"))) == 18
    ok = [r for r in finals if r["status"] == "ok"]
    assert all(0 < r["accuracy"] <= 1 and r["cost_seconds"] >= r["train_seconds"] > 0 for r in ok)
    # the diverging policy failed in both seeds, with its reason, and nothing else failed
    failed = [r for r in finals if r["status"] == "failed"]
    assert {r["policy"] for r in failed} == {"diverging, keep 50%"} and result.failed == 2
    assert all("loss became" in r["error"] for r in failed)
    # every loss-hardest run is charged the whole table (what running it once costs), and
    # records that 2 runs share it (for the amortised figure)
    scored = [r for r in finals if r["score_table"]]
    assert len(scored) == 2 and all(r["score_shared_by"] == 2 for r in scored)
    assert all(r["scoring_seconds"] == pytest.approx(r["score_table_seconds"]) for r in scored)
    # the short schedule backpropagates what keep 50% does, to the example
    by = {(r["policy"], r["seed"]): r for r in ok}
    for seed in (0, 1):
        short = by[("full data, compute of keep 50%", seed)]
        assert short["examples_backpropagated"] == by[("random, keep 50%", seed)][
            "examples_backpropagated"] == 300 * 2
        assert by[("RS2, keep 50%", seed)]["examples_backpropagated"] == 300 * 2
    assert all(r["scoring_flops"] > 0 for r in scored)
    # keep 50% of 600 examples
    assert {r["train_examples"] for r in ok if r["data_kind"] in ("random", "static")} == {300}
    sparse = [r for r in ok if "sparsity" in r["policy"]]
    assert sparse and all(r["flops_theoretical"] and r["achieved_sparsity"] > 0.4 for r in sparse)
    # config.toml holds the resolved config and the versions, and reads back the same
    store = StudyStore(out)
    assert store.read_config() == load_config(root / "tiny.toml")
    assert store.read_versions()["torch"]


def test_resume_after_sigkill_redoes_nothing(study, tmp_path):
    root, config, _ = study
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "prunus.cli", "study", str(config), "--out", str(out),
               "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(finished_files(out)) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    before = {p.name: p.read_bytes() for p in finished_files(out)}
    assert 3 <= len(before) < 18, "the study must be killed part-way"

    with pytest.raises(PrunusError, match="already holds a study"):
        run_study(config, out, progress=False)
    changed = tiny_config(root / "blobs.npz", epochs=3)  # adding seeds would be allowed
    with pytest.raises(PrunusError, match="differs"):
        run_study(load_config(write_config(tmp_path / "other.toml", changed)), out,
                  resume=True, progress=False)

    # resume in a process pool: the rows must still equal those of the uninterrupted study
    result = run_study(config, out, resume=True, workers=2, progress=False)
    assert result.ran == 18 - len(before)
    for name, data in before.items():  # finished runs untouched
        assert (out / "runs" / name).read_bytes() == data
    assert not [p for p in out.rglob(".tmp-*")]
    reference = pq.read_table(root / "out" / "runs.parquet")
    assert same_rows(pq.read_table(out / "runs.parquet"), reference)


def finished_files(out: Path) -> list[Path]:
    """Per-run files of finished runs (a killed writer may leave a hidden temporary)."""
    folder = out / "runs"
    return [p for p in folder.glob("*.parquet") if not p.name.startswith(".")] \
        if folder.exists() else []


def test_ray_executor(study, tmp_path):
    root, config, _ = study
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match=r"prunus\[ray\]"):
            run_study(config, tmp_path / "ray", executor="ray", progress=False)
        pytest.skip("the 'ray' extra is not installed: checked the error, not a Ray run")
    result = run_study(config, tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert result.ran == 18
    assert same_rows(pq.read_table(tmp_path / "ray" / "runs.parquet"),
                     pq.read_table(root / "out" / "runs.parquet"))


def test_a_failed_score_table_fails_only_its_runs(study, tmp_path):
    root, _, _ = study
    values = tiny_config(root / "blobs.npz", seeds=(0,), epochs=1)
    values["sparsity"] = []
    values["policies"] = [{"score": "loss", "label": "loss from a diverging proxy",
                           "proxy": {"epochs": 1, "seeds": 1,
                                     "train": {"lr": 1e30, "optimizer": "sgd"}}}]
    result = run_study(load_config(write_config(tmp_path / "s.toml", values)), tmp_path / "s",
                       progress=False)
    finals = [r for r in pq.read_table(tmp_path / "s" / "runs.parquet").to_pylist() if r["final"]]
    failed = {r["policy"]: r["error"] for r in finals if r["status"] != "ok"}
    assert result.runs == 5 and list(failed) == ["loss from a diverging proxy, keep 50%"]
    assert failed["loss from a diverging proxy, keep 50%"].startswith("scoring failed: ")
    assert not list((tmp_path / "s").glob("scores/*"))  # no table was stored


def test_atomic_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "runs.parquet"
    target.write_bytes(b"finished")

    def half_then_disk_full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PrunusError, match="no space left"):
        atomic_write(target, half_then_disk_full)
    assert target.read_bytes() == b"finished"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.parquet"]

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["runs.parquet"]


def test_query_runs_and_scores(study, capsys):
    root, _, _ = study
    out = root / "out"
    counts = query(out, "SELECT count(DISTINCT run_id) AS runs, count(*) AS rows FROM runs")
    assert counts.to_pylist() == [{"runs": 18, "rows": pq.read_table(out / "runs.parquet").num_rows}]
    scores = query(out, 'SELECT "table", count(*) AS n, count(DISTINCT id) AS ids FROM scores '
                        'GROUP BY 1').to_pylist()
    assert len(scores) == 1 and scores[0]["n"] == scores[0]["ids"] == 600
    with pytest.raises(PrunusError, match="the query failed"):
        query(out, "SELECT nope FROM runs")
    sql = "SELECT policy, seed FROM runs WHERE final AND NOT baseline ORDER BY 1, 2"
    assert invoke("query", str(out), sql, "--json") in (None, 0)
    assert '"policy": "diverging, keep 50%"' in capsys.readouterr().out


def test_report_escapes_user_strings_and_is_self_contained(study):
    root, _, result = study
    page = (root / "out" / "report.html").read_text()
    assert NASTY_NAME not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page
    assert ("mag &lt;script&gt;alert(&#x27;label&#x27;)&lt;/script&gt;"
            "&lt;img src=x onerror=alert(1)&gt;, sparsity 50%") in page
    assert page.count("<script") == 1  # the sortable-table script, nothing else
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 4
    # verdict lines: one per arm, the failed policy says so
    assert len(result.verdicts) == 9
    diverging = next(v for v in result.verdicts if v.startswith("diverging"))
    assert "failed in all 2 seeds" in diverging
    loss = next(v for v in result.verdicts if v.startswith("loss-hardest"))
    assert "vs full [" in loss and "vs random [" in loss and "vs same compute [" in loss
    assert "score table paid in full" in loss and "amortised over the 2 runs" in loss


def test_every_user_string_on_the_page_is_escaped(study):
    """Setting names, policy names, run ids, failure reasons, score-table fields and versions
    all reach the page escaped: the template's script is the only script."""
    from prunus.study.page import render
    from prunus.study.report import load_rows
    from prunus.study.stats import summarize
    from prunus.study.verdicts import verdict

    root, _, _ = study
    store = StudyStore(root / "out")
    nasty = {k: f"<script>{k}()</script>" for k in ("setting", "policy", "run", "error",
                                                     "table", "method", "version")}
    rows = load_rows(store)
    for r in rows:
        r["setting"] = nasty["setting"]
        r["run_id"] = nasty["run"] + r["run_id"]
        if r["policy"].startswith("loss-hardest"):
            r["policy"] = nasty["policy"]
        if r["status"] != "ok":
            r["error"] = nasty["error"]
    config = store.read_config()
    summaries = summarize(rows, config.targets)
    metas = {nasty["table"]: {**next(iter(store.score_metas().values())),
                              "method": nasty["method"]}}
    page = render(config, rows, summaries, [verdict(s) for s in summaries],
                  [f"use {nasty['policy']}"], metas, {"torch": nasty["version"]})
    assert page.count("<script") == 1 and "<img src=x" not in page
    for value in nasty.values():
        assert value.replace("<", "&lt;").replace(">", "&gt;") in page, value


def test_the_report_template_is_package_data():
    """Every non-Python file of the package is matched by pyproject's package-data, so wheels
    ship the report's template."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]
    package = root / "src" / "prunus"
    files = [p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert any(p.name == "report.html" for p in files)
    for path in files:
        inside = path.relative_to(root / "src")
        owner = ".".join(inside.parent.parts[:2])  # the package the pattern is listed under
        relative = path.relative_to(root / "src" / owner.replace(".", "/")).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in patterns.get(owner, [])), relative


def test_report_command_rebuilds(study, capsys):
    root, _, _ = study
    copy = root / "copy"
    shutil.copytree(root / "out", copy)
    (copy / "report.html").unlink()
    assert invoke("report", str(copy)) in (None, 0)
    assert (copy / "report.html").exists()
    assert "full data:" in capsys.readouterr().out


# -- the report in a real browser -----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="prunus-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             *extra, page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("PRUNUS_REQUIRE_BROWSER") == "1":
            pytest.fail("PRUNUS_REQUIRE_BROWSER=1 but no chromium is installed")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return CHROMIUM


def test_report_opens_in_chromium_without_errors(study, browser, tmp_path):
    root, _, _ = study
    report = root / "out" / "report.html"
    # the detector itself: a page with a script error must be caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><script>notDefinedAnywhere();</script></body></html>")
    assert console_errors(chromium(broken, "--dump-dom").stderr)

    dom = chromium(report, "--dump-dom")
    assert 'data-report-ready="yes"' in dom.stdout, dom.stderr[-2000:]
    assert not console_errors(dom.stderr)

    shot = tmp_path / "shot.png"
    chromium(report, f"--screenshot={shot}", "--window-size=1200,1600")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert 0.02 < not_white < 0.9, f"screenshot looks blank ({not_white:.3f} non-white)"
    assert pixels.std() > 0.05


def test_a_swapped_cached_score_table_is_refused_on_resume(tmp_path):
    from prunus.data import ScoreTable

    values = tiny_config(blobs_file(tmp_path), seeds=(0,), epochs=1)
    values.update(sparsity=[], targets=[])
    values["policies"] = [{"score": "loss", "select": "hardest", "proxy": {"epochs": 1, "seeds": 1}}]
    config = load_config(write_config(tmp_path / "s.toml", values))
    out = tmp_path / "s"
    run_study(config, out, progress=False)
    (path,) = (out / "scores").glob("*.parquet")
    table = ScoreTable.read(path)
    table.metadata["dataset"]["fingerprint"] = "0" * 16  # same ids, made on other data
    table.write(path)
    for run in (out / "runs").glob("*.parquet"):
        run.unlink()
    with pytest.raises(PrunusError, match="not computed on dataset"):
        run_study(config, out, resume=True, progress=False)
