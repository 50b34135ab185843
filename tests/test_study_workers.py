"""A study's process pool dies with the study; a study whose runs all fail exits non-zero; an
interrupted study says how to resume and its report says it is incomplete."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from prunus.study import run_study
from prunus.study.toml import to_toml


def blobs_file(folder: Path, n: int = 300) -> Path:
    """Three Gaussian blobs in 8 dimensions as an .npz."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, size=(3, 8))

    def draw(count):
        y = np.arange(count) % 3
        return (centers[y] + rng.normal(0, 1.5, size=(count, 8))).astype(np.float32), y

    x, y = draw(n)
    x_test, y_test = draw(n // 4)
    path = folder / "blobs.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def small_config(folder: Path, seeds=(0,), lr: float | None = None, epochs: int = 1) -> Path:
    """Blobs + a small MLP: full, its same-compute schedule and random keep 50%, over seeds."""
    train = {"epochs": epochs, "batch_size": 64}
    if lr is not None:
        train.update(lr=lr, optimizer="sgd")
    values = {
        "name": "small",
        "seeds": list(seeds),
        "keep": [0.5],
        "sparsity": [],
        "targets": ["full-2pp"],
        "datasets": [{"name": str(blobs_file(folder)), "label": "blobs"}],
        "models": [{"name": "mlp", "options": {"hidden": [16]}}],
        "train": train,
        "policies": [],
        "execution": {"threads": 1},
    }
    path = folder / "small.toml"
    path.write_text(to_toml(values))
    return path


# -- workers die with the study -------------------------------------------------------------


def children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` (Linux /proc): pid -> command line."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is None or stat[1] == "Z" or stat[2] != pid:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[int(entry)] = cmdline
    return out


def read_stat(pid: int) -> tuple[int, str, int] | None:
    """(pid, state, parent pid) of a process, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return pid, rest[0], int(rest[1])


def ignores_sigint(pid: int) -> bool:
    """Whether a process ignores SIGINT: a pool worker does once its initializer has run."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((line.split()[1] for line in status.splitlines()
                 if line.startswith("SigIgn:")), "0")
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_and_resource_tracker_die_with_a_killed_study(tmp_path):
    config = small_config(tmp_path, seeds=range(60), epochs=5)  # still running at SIGINT
    command = [sys.executable, "-m", "prunus.cli", "study", str(config), "--out",
               str(tmp_path / "out"), "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: dict[int, str] = {}
    others: dict[int, str] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            kids = children(process.pid)
            workers = {p: c for p, c in kids.items() if "spawn_main" in c}
            others = {p: c for p, c in kids.items() if "resource_tracker" in c}
            if len(workers) == 2 and all(ignores_sigint(p) for p in workers):
                break  # both workers have run their initializer
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert len(workers) == 2, f"no pool workers appeared: {children(process.pid)}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        watched = {**workers, **others}
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p) for p in watched):
            time.sleep(0.05)
        left = {p: c for p, c in watched.items() if alive(p)}
        assert not left, f"still alive 10 s after the study was killed: {left}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for pid in {**workers, **others}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_watchdog_ends_an_orphaned_worker():
    """The portable watchdog alone (no PR_SET_PDEATHSIG): a grandchild whose parent exits
    ends within a second."""
    from prunus.study.executors import watch_parent

    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:  # the worker's parent: starts the worker, then exits
        try:
            worker = os.fork()
            if worker == 0:
                try:
                    threading.Thread(target=watch_parent, args=(os.getppid(), 0.05),
                                     daemon=True).start()
                    os.write(write, f"{os.getpid()}\n".encode())
                    time.sleep(30)
                finally:
                    os._exit(0)
            time.sleep(0.3)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        orphan = int(pipe.readline())
    os.waitpid(middle, 0)
    deadline = time.time() + 10
    while time.time() < deadline and pid_alive(orphan):
        time.sleep(0.02)
    try:
        assert not pid_alive(orphan), "the orphaned worker outlived its parent by 10 s"
    finally:
        if pid_alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    if sys.platform.startswith("linux"):
        return alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- a study that answers nothing, and an interrupted study ---------------------------------


def final_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for r in pq.read_table(out / "runs.parquet").to_pylist() if r["final"]]


def test_a_study_whose_runs_all_fail_exits_1_with_one_sentence(tmp_path, capsys):
    config = small_config(tmp_path, lr=1e30)
    out = tmp_path / "out"
    assert invoke("study", str(config), "--out", str(out), "--quiet") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: all 4 runs of the study failed (the training loss "
                                "became nan") and errors[0].endswith("report.html.")
    # the store and the report still hold every run and its reason
    assert (out / "report.html").exists()
    assert {r["status"] for r in final_rows(out)} == {"failed"}


def test_a_study_whose_score_tables_all_fail_exits_1(tmp_path, capsys):
    config = small_config(tmp_path)
    text = config.read_text().replace("policies = []", "")
    config.write_text(text + '\n[[policies]]\nscore = "loss"\nlabel = "diverging proxy"\n'
                      '[policies.proxy]\nepochs = 1\nseeds = 1\n'
                      '[policies.proxy.train]\nlr = 1e30\noptimizer = "sgd"\n')
    out = tmp_path / "out"
    assert invoke("study", str(config), "--out", str(out), "--quiet") == 1
    err = capsys.readouterr().err
    assert "error: the score table failed (the training loss became nan" in err
    assert "so no scored policy was tested" in err
    statuses = {r["policy"]: r["status"] for r in final_rows(out)}
    assert statuses.pop("diverging proxy, keep 50%") == "failed"
    assert set(statuses.values()) == {"ok"}  # the baselines ran


def test_an_all_failed_report_shows_no_nan(tmp_path):
    import re

    config = small_config(tmp_path, lr=1e30)
    run_study(config, tmp_path / "out", progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    page = page.replace("loss became nan", "")  # the failure reason itself
    assert not re.search(r"\bnan\b", page, flags=re.IGNORECASE)
    assert "data:image/png" not in page  # no figure without a single finished run


def interrupt_after(monkeypatch, finished: int) -> None:
    """Ctrl-C while the study runs: the run after ``finished`` runs is interrupted."""
    from prunus.study import harness

    real = harness.execute_run
    calls = []

    def execute_run(*args):
        calls.append(1)
        if len(calls) > finished:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(harness, "execute_run", execute_run)


def test_an_interrupted_study_says_how_to_resume(tmp_path, capsys, monkeypatch):
    config = small_config(tmp_path)
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 2)
    assert invoke("study", str(config), "--out", str(out), "--quiet") == 130
    err = capsys.readouterr().err
    assert "interrupted: 2 of 4 runs finished and are stored" in err
    assert f"Resume with: prunus study {config} --out {out} --resume" in err
    assert (out / "report.html").exists() and len(final_rows(out)) == 2
    monkeypatch.undo()
    assert invoke("study", str(config), "--out", str(out), "--resume", "--quiet") == 0
    assert "2 of 4 runs ran now" in capsys.readouterr().out
    assert {r["status"] for r in final_rows(out)} == {"ok"} and len(final_rows(out)) == 4


def test_an_interrupted_study_raises_keyboard_interrupt(tmp_path, monkeypatch):
    from prunus.study.harness import StudyInterrupted

    config = small_config(tmp_path)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt) as caught:
        run_study(config, tmp_path / "out", progress=False)
    stop = caught.value
    assert isinstance(stop, StudyInterrupted)
    assert (stop.finished, stop.runs) == (1, 4) and stop.report == tmp_path / "out" / "report.html"


def test_an_interrupted_studys_report_says_it_is_incomplete(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, tmp_path / "out", progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "incomplete" in page and "2 of 4 runs" in page


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_pool_study_cleanly(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does): the workers ignore it, the study
    stops them, stores no in-flight run as failed, and exits 130 saying how to resume."""
    config = small_config(tmp_path, seeds=range(60), epochs=5)  # still running at SIGINT
    out = tmp_path / "out"
    command = [sys.executable, "-m", "prunus.cli", "study", str(config), "--out", str(out),
               "--workers", "2", "--quiet"]
    # A shell without job control starts background jobs with SIGINT ignored, and a child
    # inherits "ignored": handle it here for the moment of the spawn, so the child starts
    # with the default disposition, as under an interactive terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    kids: dict[int, str] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            kids = children(process.pid) or kids
            workers = [p for p, c in kids.items() if "spawn_main" in c]
            if len(workers) == 2 and all(ignores_sigint(p) for p in workers):
                break  # runs are in flight in both workers
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
        err = err.decode()
        assert process.returncode == 130, err[-2000:]
        assert "runs finished and are stored" in err and "--resume" in err
        assert "Traceback" not in err, err[-2000:]
        import pyarrow.parquet as pq

        stored = [pq.read_table(f).to_pylist()[-1] for f in (out / "runs").glob("*.parquet")]
        assert all(r["status"] == "ok" for r in stored), stored
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p) for p in kids):
            time.sleep(0.05)
        assert not [p for p in kids if alive(p)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_resume_may_add_seeds_but_not_remove_them(tmp_path):
    from prunus.errors import PrunusError

    out = tmp_path / "out"
    first = run_study(small_config(tmp_path, seeds=(0,)), out, progress=False)
    more = run_study(small_config(tmp_path, seeds=(0, 1)), out, resume=True, progress=False)
    assert more.runs == 2 * first.runs and more.ran == first.runs  # only the new seed ran
    assert sorted({r["seed"] for r in final_rows(out)}) == [0, 1]
    with pytest.raises(PrunusError, match="a resume may add seeds, not remove them"):
        run_study(small_config(tmp_path, seeds=(1,)), out, resume=True, progress=False)
