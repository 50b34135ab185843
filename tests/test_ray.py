"""Scoring and studies on a real two-node Ray cluster (a head and one worker node started with
``ray start`` on loopback by this module, and stopped by it): tables bit-identical to the local
path, a killed actor retried, a killed study driver resumed, and the bad-input sentences."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import invoke

import prunus
from prunus.data import score
from prunus.datasets import Dataset
from prunus.errors import MissingExtraError, PrunusError
from prunus.study.toml import to_toml

try:
    import psutil
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="the 'ray' extra is not installed "
                                                   "(pip install 'prunus[ray]')")
MLP = {"model": "mlp", "model_options": {"hidden": [16]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blobs(n: int = 600) -> Dataset:
    """Three Gaussian blobs in 8 dimensions, with a test split."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, size=(3, 8))

    def draw(count, offset):
        y = np.arange(count) % 3
        x = (centers[y] + rng.normal(0, 1.5, size=(count, 8))).astype(np.float32)
        return Dataset("blobs", np.arange(count) * 7 + offset, x, y, 3)

    train = draw(n, 3)
    train.test = draw(150, 100_000)
    return train


def cluster_processes(temp_dir: str) -> list:
    """The processes of the cluster whose files live in ``temp_dir``: those naming it on their
    command line and all their descendants."""
    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(temp_dir in arg for arg in (p.info["cmdline"] or []))]
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node (one CPU each) on 127.0.0.1; yields the address.

    Both nodes run without token authentication (a ``~/.ray/auth_token`` left by another Ray
    would otherwise make the second node's join fail) and with the prunus under test on their
    path. Teardown kills exactly this cluster's processes (by pid), so other Ray clusters on
    the machine are left alone, and removes its temporary directory."""
    if ray is None:
        pytest.skip("the 'ray' extra is not installed (pip install 'prunus[ray]')")
    temp_dir = tempfile.mkdtemp(prefix="prr", dir="/tmp")
    port = free_port()
    source = str(Path(prunus.__file__).resolve().parents[1])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp_dir,
              "--disable-usage-stats"]
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    try:
        for role in (["--head", "--port", str(port), "--include-dashboard", "false"],
                     ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run(
                [ray_cli, "start", *role, "--dashboard-agent-listen-port", str(free_port()),
                 *common], check=False, env=env, capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        processes = cluster_processes(temp_dir)
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not [p for p in processes if p.is_running() and p.status() != "zombie"]


def same_table(a, b) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)
    assert a.metadata["dataset"]["fingerprint"] == b.metadata["dataset"]["fingerprint"]
    assert a.metadata["directions"] == b.metadata["directions"]


@pytest.fixture(scope="class")
def joined(cluster):
    """This process joined to the cluster for a class of tests: its Ray worker processes (torch
    imported once) serve every ``score()`` call of the class."""
    ray.init(address=cluster, log_to_driver=False)
    yield cluster
    ray.shutdown()


@needs_ray
class TestScoringOnTheCluster:
    @pytest.mark.parametrize("method", ["el2n", "grand", "forgetting", "prototypes"])
    def test_scores_are_bit_identical(self, joined, method, monkeypatch, tmp_path):
        from prunus.data import distributed

        monkeypatch.setattr(distributed, "SHARD_ROWS", 128)  # 5 shards of 128 (4 batches each)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the shard files' working dir
        # forgetting: recorded by the training tasks; prototypes: k-means on the driver over
        # the embeddings the actors computed
        data = blobs()
        kwargs = {"method": method, "epochs": 1, "seeds": [0, 1], "score_batch_size": 32, **MLP}
        local = score(data, **kwargs)
        remote = score(data, executor="ray", address=joined, **kwargs)
        same_table(local, remote)
        assert remote.metadata["cost"]["flops"] == local.metadata["cost"]["flops"]
        if method != "forgetting":  # recorded while the proxies trained: no scoring pass
            assert remote.metadata["cost"]["scoring_seconds"] > 0
        assert ray.is_initialized()  # joined by the caller: left joined
        assert not list(tmp_path.glob("prunus-shards-*"))  # the shard files go after the merge

    def test_scores_are_merged_from_checked_shard_files(self, joined, monkeypatch, tmp_path):
        """With ``shard_dir`` the per-shard Parquet files stay: one per shard holding its ids,
        and the merge reads them (an edited value comes back); a missing, truncated or
        misplaced file is one sentence naming it."""
        import functools

        import pyarrow as pa

        from prunus.data import distributed

        monkeypatch.setattr(distributed, "SHARD_ROWS", 128)
        folder = tmp_path / "shards"
        monkeypatch.setattr(distributed, "score_on_ray",
                            functools.partial(distributed.score_on_ray, shard_dir=folder))
        data = blobs()
        kwargs = {"method": "el2n", "epochs": 1, "seeds": [0, 1], "score_batch_size": 32, **MLP}
        same_table(score(data, **kwargs), score(data, executor="ray", address=joined, **kwargs))
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == [f"shard-{i:05d}.parquet" for i in range(5)]
        for i, file in enumerate(files):
            shard = pq.read_table(file)
            np.testing.assert_array_equal(shard["id"].to_numpy(), data.ids[128 * i:128 * (i + 1)])
            assert {"pass0", "pass1", "seconds0", "seconds1"} <= set(shard.column_names)

        shard = pq.read_table(files[2])
        edited = shard["pass1"].to_numpy() + 1
        pq.write_table(shard.set_column(shard.column_names.index("pass1"), "pass1",
                                        pa.array(edited)), files[2])
        passes, _ = distributed.merge_shards(folder, data, 128, 2)
        np.testing.assert_array_equal(passes[1][256:384], edited)
        np.testing.assert_array_equal(passes[0][:128], pq.read_table(files[0])["pass0"].to_numpy())

        def fails(pattern):
            with pytest.raises(PrunusError, match=pattern):
                distributed.merge_shards(folder, data, 128, 2)

        named = re.escape(repr(str(files[3])))
        shutil.copy(files[1], files[3])  # shard 1's ids where shard 3 belongs
        fails(rf"^shard file {named} does not hold the ids of its shard \(rows 384 to 511\)")
        files[3].write_bytes(files[1].read_bytes()[:200])  # truncated
        fails(rf"^shard file {named} is unreadable \(")
        files[3].unlink()
        fails(rf"^shard file {named} is missing, so the Ray scores cannot be merged")

    def test_a_killed_scoring_actor_is_retried(self, joined, monkeypatch):
        """SIGKILL the only scoring actor's process as soon as it exists: Ray restarts it and
        redoes its shards; the table is the uninterrupted one."""
        from prunus.data import distributed

        monkeypatch.setattr(distributed, "SHARD_ROWS", 32)
        data = blobs()
        kwargs = {"method": "el2n", "epochs": 1, "seeds": [0], "score_batch_size": 32, **MLP}
        local = score(data, **kwargs)
        result = {}

        def work():
            try:
                result["table"] = score(data, executor="ray", address=joined, workers=1, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                result["error"] = exc

        worker = threading.Thread(target=work)
        worker.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and worker.is_alive() and time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline"]):
                if "MapWorker" in " ".join(process.info["cmdline"] or []):
                    os.kill(process.pid, signal.SIGKILL)
                    killed = process.pid
                    break
            time.sleep(0.02)
        worker.join(120)
        assert killed is not None, "the scoring actor finished before it could be killed"
        assert "error" not in result, result.get("error")
        same_table(local, result["table"])


def blobs_file(folder: Path) -> Path:
    """:func:`blobs` as an .npz file."""
    data, path = blobs(), folder / "blobs.npz"
    np.savez(path, x=data.x, y=data.y, x_test=data.test.x, y_test=data.test.y)
    return path


def study_values(data: Path) -> dict:
    return {
        "name": "ray-grid",
        "seeds": [0, 1, 2],
        "keep": [0.5],
        "targets": ["full-2pp"],
        "datasets": [{"name": str(data), "label": "blobs"}],
        "models": [{"name": "mlp", "options": {"hidden": [16]}}],
        "train": {"epochs": 3, "batch_size": 32},
        "policies": [{"score": "el2n", "select": "hardest", "proxy": {"epochs": 1, "seeds": 1}},
                     {"online": "rs2"}],
        "execution": {"threads": 1},
    }


@needs_ray
def test_study_on_the_cluster_resumes_after_the_driver_is_killed(cluster, tmp_path):
    """The driver is SIGKILLed once some runs are stored; the resume (same cluster) runs only
    the rest, leaves the stored ones untouched, and the study equals the local executor's."""
    from prunus.study import run_study
    from prunus.study.store import TIMING_COLUMNS

    config = tmp_path / "grid.toml"
    config.write_text(to_toml(study_values(blobs_file(tmp_path))))
    local = run_study(config, tmp_path / "local", progress=False)

    out = tmp_path / "ray"
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from prunus.cli import main; main(sys.argv[1:])",
         "study", str(config), "--out", str(out), "--quiet",
         "--executor", "ray", "--address", cluster],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = out / "runs"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and driver.poll() is None:
        if runs.exists() and len([p for p in runs.glob("*.parquet") if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.02)
    driver.kill()
    driver.wait(10)
    stored = {p: p.stat().st_mtime_ns for p in runs.glob("*.parquet") if not p.name.startswith(".")}
    assert 1 <= len(stored) < local.runs, f"{len(stored)} of {local.runs} runs stored at the kill"

    resumed = run_study(config, out, resume=True, executor="ray", address=cluster, progress=False)
    assert resumed.ran == local.runs - len(stored)
    assert {p: p.stat().st_mtime_ns for p in stored} == stored

    def rows(folder):
        table = pq.read_table(folder / "runs.parquet")
        table = table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names])
        return sorted(str(r) for r in table.to_pylist())

    assert rows(out) == rows(tmp_path / "local")


@needs_ray
def test_a_node_with_another_prunus_is_named(cluster, monkeypatch):
    monkeypatch.setattr(prunus, "__version__", "0.0.0+driver")
    with pytest.raises(PrunusError, match=r"^Ray node \S+ \(id \w+\) runs prunus "
                                          r"\S+, but this driver runs prunus 0\.0\.0\+driver"):
        score(blobs(60), executor="ray", address=cluster, epochs=0, **MLP)
    assert not ray.is_initialized()


@needs_ray
def test_an_unreachable_address_fails_within_seconds(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(PrunusError) as caught:
        score(blobs(60), executor="ray", address=address, epochs=0, **MLP)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert message.startswith(f"address {address!r}: no Ray cluster answers there")
    assert message.count(". ") == 0 and message.endswith(".")

    start = time.monotonic()
    code = invoke("score", "--dataset", "mnist1d", "--out", str(tmp_path / "s.parquet"),
                  "--executor", "ray", "--address", address, "--epochs", "0")
    assert code == 2 and time.monotonic() - start < 15
    assert "no Ray cluster answers there" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()

    config = tmp_path / "grid.toml"
    config.write_text(to_toml(study_values(blobs_file(tmp_path))))
    start = time.monotonic()
    code = invoke("study", str(config), "--out", str(tmp_path / "study"), "--executor", "ray",
                  "--address", address)
    assert code == 2 and time.monotonic() - start < 15
    assert f"--address {address!r}: no Ray cluster answers there" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'prunus\[ray\]'"):
        score(blobs(60), executor="ray", epochs=0, **MLP)


def test_bad_executor_flags():
    with pytest.raises(PrunusError, match=r"^executor must be one of: local, ray \(got 'dask'\)"):
        score(blobs(60), executor="dask", epochs=0, **MLP)
    with pytest.raises(PrunusError, match="address and workers need executor='ray'"):
        score(blobs(60), address="127.0.0.1:1", epochs=0, **MLP)


@needs_ray
def test_study_tasks_request_the_resources_asked_for(cluster):
    """Capacity on a cluster is what its CPUs (and GPUs) hold for each run's request; a request
    no node can meet is one sentence, not a study that waits forever."""
    from prunus.study.executors import make_backend

    backend = make_backend("ray", 1, 0, lambda *a: None, cluster, cpus=1.0)
    assert backend.capacity == 2  # two nodes of one CPU each
    assert backend.executor.options == {"num_cpus": 1.0, "num_gpus": 0.0, "max_retries": 3}
    assert backend.submit(lambda: os.getpid()).result(timeout=60) != os.getpid()  # on a worker
    backend.close()
    assert not ray.is_initialized()
    with pytest.raises(PrunusError, match=r"has 2 CPUs and 0 GPUs, too few for one run "
                                          r"requesting 1 CPUs and 1 GPUs"):
        make_backend("ray", 1, 0, lambda *a: None, cluster, cpus=1.0, gpus=1.0)
    assert not ray.is_initialized()
