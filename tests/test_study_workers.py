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
from prunus.study.config import to_toml


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


def alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_and_resource_tracker_die_with_a_killed_study(tmp_path):
    config = small_config(tmp_path, seeds=range(12), epochs=3)
    command = [sys.executable, "-m", "prunus.cli", "study", str(config), "--out",
               str(tmp_path / "out"), "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: dict[int, str] = {}
    others: dict[int, str] = {}
    try:
        deadline = time.time() + 120
        started = None
        while time.time() < deadline and process.poll() is None:
            kids = children(process.pid)
            workers = {p: c for p, c in kids.items() if "spawn_main" in c}
            others = {p: c for p, c in kids.items() if "resource_tracker" in c}
            if len(workers) == 2:
                # both workers exist; give them a moment to reach their initializer
                started = started or time.time()
                if time.time() - started > 1.0 or list((tmp_path / "out" / "runs").glob("*")):
                    break
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
