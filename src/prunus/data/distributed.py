"""Scoring on a Ray cluster, and the cluster connection that studies share.

:func:`score_on_ray` is ``score(..., executor="ray")``. The proxy models are trained once, one
Ray task per seed, all seeds in parallel; each task returns its trained proxy (moved to the
CPU) to the object store. The training split becomes a ``ray.data`` dataset of id-keyed
shards (one Arrow block per shard: ``id``, ``position``, ``y`` and the flattened ``x``), each
shard a whole number of scoring batches, so that every scoring batch holds exactly the
examples the local path puts in it. A ``map_batches`` over a pool of actors, each holding
every seed's proxy (received by object reference and fetched once at actor start), scores one
shard at a time with the same function as the local path
(:func:`prunus.data.scoring.example_pass`). The driver writes each scored shard atomically as
one Parquet file (``shard-00000.parquet``: ``id``, ``position``, each seed's pass and seconds)
in a working directory, then merges the files in id order, checking that each one exists,
reads back and holds exactly its shard's ids and positions (:func:`merge_shards`); a temporary
working directory is removed afterwards. On
CPU the table is therefore bit-identical to ``executor="local"`` when both use the same torch
thread count (a Ray worker with one CPU runs one thread). A killed actor is restarted and its
shard redone by Ray Data (``max_restarts=-1``, ``max_task_retries=-1``); a killed training task
is retried (``max_retries``).

Tasks and actors request one CPU each, and one GPU each when the training settings name a
``cuda`` device (``device="auto"`` runs on the workers' CPUs).

Trajectory methods record while their proxy trains, so on Ray they are the training tasks'
output. Embedding methods (``prototypes``: k-means over all embeddings at once) get each
shard's embeddings from the actors and cluster them on the driver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, one_line, require
from prunus.files import atomic_write

RAY_EXTRA = "ray"
# examples per shard, rounded down to a whole number of scoring batches
SHARD_ROWS = 16384
# how long an address may take to accept a TCP connection before it counts as unreachable
CONNECT_TIMEOUT_S = 3.0
# how long the per-node version probe may wait for a worker to start
PROBE_TIMEOUT_S = 60.0
TRAIN_RETRIES = 3


def connect(address: str | None, num_cpus: int | None = None, field: str = "address") -> bool:
    """Join the Ray cluster at ``address`` (else ``RAY_ADDRESS``), or start Ray in this
    process when neither names one; True when this call initialised Ray (the caller shuts it
    down after).

    Before joining, the head must accept a TCP connection within :data:`CONNECT_TIMEOUT_S`
    (Ray itself would retry for over a minute), and after joining every node must run the
    driver's prunus version (:func:`check_versions`).

    Raises:
        MissingExtraError: Ray is not installed.
        PrunusError: ``address`` unreachable, refused by Ray, or a node with another prunus.
    """
    ray = require("ray", RAY_EXTRA)
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    if address != "auto":
        check_reachable(address, field)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PrunusError(f"{field} {address!r}: Ray could not join the cluster there "
                          f"({one_line(exc)}).") from None
    try:
        check_versions(ray)
    except BaseException:
        ray.shutdown()
        raise
    return True


def check_reachable(address: str, field: str = "address") -> None:
    """Raise a one-sentence PrunusError unless ``host:port`` (``ray://`` allowed) accepts a TCP
    connection within :data:`CONNECT_TIMEOUT_S` seconds."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PrunusError(f"{field} must look like host:port, e.g. 127.0.0.1:6379 "
                          f"(got {address!r}).")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError)
                  else (exc.strerror or str(exc)).lower())
        raise PrunusError(
            f"{field} {address!r}: no Ray cluster answers there ({reason}); start one with "
            f"'ray start --head' or pass the address it printed."
        ) from None


def check_versions(ray: Any) -> None:
    """Run a probe on every alive node and raise a PrunusError naming the first node whose
    prunus version differs from this process's (or that cannot import prunus)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import prunus

    def probe_version() -> str | None:  # nested: shipped by value, so it runs without prunus
        try:
            import prunus
        except ImportError:
            return None
        return prunus.__version__

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_version)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in nodes]
    try:
        versions = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure means a node we cannot use
        raise PrunusError(f"the Ray cluster's nodes did not answer the prunus version check "
                          f"within {PROBE_TIMEOUT_S:.0f} s ({one_line(exc)}).") from None
    for node, version in zip(nodes, versions):
        if version != prunus.__version__:
            found = "does not have prunus" if version is None else f"runs prunus {version}"
            raise PrunusError(
                f"Ray node {node['NodeManagerAddress']} (id {node['NodeID'][:12]}) {found}, but "
                f"this driver runs prunus {prunus.__version__}; install the same prunus on every "
                f"node."
            )


def score_on_ray(
    dataset: Dataset,
    job: Any,
    seeds: list[int],
    tracker: Any,
    *,
    address: str | None = None,
    workers: int | None = None,
    shard_dir: str | os.PathLike | None = None,
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Each seed's scores (aligned to ``dataset.ids``) and cost, computed on Ray.

    Args:
        dataset: the dataset whose training split is scored.
        job: the :class:`prunus.data.scoring.ScoringJob` of this ``score()`` call.
        seeds: one proxy per seed, trained as parallel Ray tasks.
        tracker: the progress tracker (advanced once the proxies are trained, then per shard).
        address: the cluster (default ``RAY_ADDRESS``, else Ray started in this process).
        workers: scoring actors (default: the cluster's CPUs, at most one per shard).
        shard_dir: where the per-shard Parquet files are written and kept (default: a
            temporary directory, removed once the shards are merged or the run fails).

    Raises:
        PrunusError: a bad ``workers``, or a connection problem (:func:`connect`).
    """
    from prunus.data.scoring import finish_scores, proxy_cost, score_examples

    if workers is not None and workers < 1:
        raise PrunusError(f"workers must be at least 1 (got {workers}).")
    ray = require("ray", RAY_EXTRA)
    started = connect(address)
    try:
        tracker.describe(f"training {len(seeds)} prox{'y' if len(seeds) == 1 else 'ies'} on Ray")
        train = ray.remote(num_cpus=1, num_gpus=gpus_per_task(job), max_retries=TRAIN_RETRIES)(
            _train_proxy_task)
        data_ref = ray.put(dataset)
        proxy_refs = [train.remote(data_ref, job, seed) for seed in seeds]
        proxies = ray.get(proxy_refs)
        tracker.advance(len(seeds) * job.proxy_epochs * len(dataset))
        if job.info.needs == "trajectory":
            per_seed = [score_examples(p, dataset, job, tracker.advance) for p in proxies]
            return per_seed, [proxy_cost(p, dataset, job, 0.0) for p in proxies]
        if shard_dir is None:
            work = Path(tempfile.mkdtemp(prefix="prunus-shards-"))
            try:
                passes, seconds = _map_shards(ray, dataset, job, proxy_refs, len(seeds),
                                              workers, tracker, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            passes, seconds = _map_shards(ray, dataset, job, proxy_refs, len(seeds), workers,
                                          tracker, Path(shard_dir))
        per_seed = [finish_scores(p, job, passed, len(dataset)) for p, passed in zip(proxies, passes)]
        return per_seed, [proxy_cost(p, dataset, job, s) for p, s in zip(proxies, seconds)]
    finally:
        if started:
            ray.shutdown()


def gpus_per_task(job: Any) -> int:
    """GPUs each training task and scoring actor requests: one when the training settings name
    a CUDA device, else none (``device="auto"`` therefore runs on the workers' CPUs)."""
    return 1 if str(job.config.device).startswith("cuda") else 0


def _train_proxy_task(dataset: Dataset, job: Any, seed: int) -> Any:
    """Ray task: one seed's trained proxy, its model moved to the CPU for shipping."""
    from prunus.data.scoring import _Tracker, train_proxy

    proxy = train_proxy(dataset, job, seed, _Tracker(None, 1))
    proxy.net = proxy.net.cpu()
    return proxy


def shard_tables(dataset: Dataset, rows: int) -> list[Any]:
    """The training split as Arrow tables of ``rows`` consecutive examples each (the last may
    be shorter): ``id``, ``position`` (row in ``dataset``), ``y`` and ``x`` flattened to a
    fixed-size list per example."""
    import pyarrow as pa

    width = int(np.prod(dataset.input_shape))
    tables = []
    for start in range(0, len(dataset), rows):
        part = slice(start, min(start + rows, len(dataset)))
        flat = pa.array(dataset.x[part].reshape(-1), type=pa.float32())
        tables.append(pa.table({
            "id": dataset.ids[part],
            "position": np.arange(part.start, part.stop, dtype=np.int64),
            "y": dataset.y[part],
            "x": pa.FixedSizeListArray.from_arrays(flat, width),
        }))
    return tables


def _map_shards(ray: Any, dataset: Dataset, job: Any, proxy_refs: list, seeds: int,
                workers: int | None, tracker: Any, folder: Path) -> tuple[list[np.ndarray], list[float]]:
    """Run :func:`prunus.data.scoring.example_pass` over every shard with the actor pool,
    writing each scored shard to ``folder`` (:func:`write_shard`); each seed's pass (scores or
    embeddings) by position, and the actor seconds it took, merged from those files."""
    rows = job.score_batch_size * max(1, SHARD_ROWS // job.score_batch_size)
    tables = shard_tables(dataset, rows)
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(workers, len(tables))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-execution INFO lines
    shards = ray.data.from_arrow(tables)
    scored = shards.map_batches(
        ShardScorer, batch_size=None, batch_format="pyarrow", num_cpus=1,
        num_gpus=gpus_per_task(job),
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"proxies": proxy_refs, "job": job, "name": dataset.name,
                               "shape": dataset.input_shape, "num_classes": dataset.num_classes},
    )
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        write_shard(folder, dataset, rows, batch, seeds)
        tracker.advance(seeds * len(batch["position"]))
    return merge_shards(folder, dataset, rows, seeds)


def shard_path(folder: Path, index: int) -> Path:
    """The Parquet file of shard ``index`` in ``folder``."""
    return folder / f"shard-{index:05d}.parquet"


def write_shard(folder: Path, dataset: Dataset, rows: int, batch: dict[str, np.ndarray],
                seeds: int) -> Path:
    """Write one scored shard (``id``, ``position``, ``pass{k}`` and ``seconds{k}`` per seed)
    atomically as :func:`shard_path`; a pass with more than one value per example (an
    embedding) is stored as a fixed-size list, its per-example shape in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    positions = batch["position"]
    index = int(positions[0]) // rows
    start, stop = index * rows, min((index + 1) * rows, len(dataset))
    if not np.array_equal(positions, np.arange(start, stop)):  # pragma: no cover - Ray Data
        raise RuntimeError(f"Ray returned rows {int(positions[0])}..{int(positions[-1])}, "
                           f"not one whole shard of {rows}")
    columns: dict[str, Any] = {"id": dataset.ids[start:stop], "position": positions}
    shapes = {}
    for k in range(seeds):
        part = np.ascontiguousarray(batch[f"pass{k}"])
        shapes[f"pass{k}"] = list(part.shape[1:])
        column = pa.array(part.reshape(-1))
        if part.ndim > 1:
            column = pa.FixedSizeListArray.from_arrays(column, int(np.prod(part.shape[1:])))
        columns[f"pass{k}"] = column
        columns[f"seconds{k}"] = batch[f"seconds{k}"]
    table = pa.table(columns).replace_schema_metadata({"prunus.shapes": json.dumps(shapes)})
    return atomic_write(shard_path(folder, index), lambda tmp: pq.write_table(table, tmp))


def read_shard(path: Path, ids: np.ndarray, start: int, seeds: int) -> Any:
    """The table of one shard file, checked: it exists, reads as Parquet, and holds exactly
    the ids ``ids`` at positions ``start, start + 1, …`` and every seed's columns.

    Raises:
        PrunusError: the file is missing, unreadable or holds another shard.
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        raise PrunusError(f"shard file {str(path)!r} is missing, so the Ray scores cannot be "
                          f"merged; score again.")
    wanted = ["id", "position", *(f"{c}{k}" for k in range(seeds) for c in ("pass", "seconds"))]
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read means a damaged file
        raise PrunusError(f"shard file {str(path)!r} is unreadable ({one_line(exc)}); score "
                          f"again.") from None
    lacking = [c for c in wanted if c not in table.column_names]
    if lacking or b"prunus.shapes" not in (table.schema.metadata or {}):
        raise PrunusError(f"shard file {str(path)!r} lacks "
                          f"{', '.join(lacking) or 'its prunus.shapes metadata'}; score again.")
    found_ids = table.column("id").to_numpy()
    positions = table.column("position").to_numpy()
    if not (np.array_equal(found_ids, ids)
            and np.array_equal(positions, np.arange(start, start + len(ids)))):
        raise PrunusError(f"shard file {str(path)!r} does not hold the ids of its shard "
                          f"(rows {start} to {start + len(ids) - 1}); score again.")
    return table


def merge_shards(folder: Path, dataset: Dataset, rows: int,
                 seeds: int) -> tuple[list[np.ndarray], list[float]]:
    """Each seed's pass over the whole split, in id order, and its summed seconds, read from
    the shard files in ``folder`` (:func:`read_shard` checks each one).

    Raises:
        PrunusError: a shard file is missing, unreadable or holds another shard's ids.
    """
    values: list[list[np.ndarray]] = [[] for _ in range(seeds)]
    seconds = np.zeros(seeds)
    for index, start in enumerate(range(0, len(dataset), rows)):
        ids = dataset.ids[start:start + rows]
        table = read_shard(shard_path(folder, index), ids, start, seeds)
        shapes = json.loads(table.schema.metadata[b"prunus.shapes"])
        for k in range(seeds):
            column = table.column(f"pass{k}").combine_chunks()
            if shapes[f"pass{k}"]:
                column = column.flatten()
            part = column.to_numpy(zero_copy_only=False)
            values[k].append(part.reshape(len(ids), *shapes[f"pass{k}"]))
            seconds[k] += float(table.column(f"seconds{k}").to_numpy().sum())
    return [np.concatenate(parts) for parts in values], list(seconds)


class ShardScorer:
    """Ray Data actor: holds every seed's proxy and runs the per-example pass over one shard at
    a time."""

    def __init__(self, proxies: list, job: Any, name: str, shape: tuple[int, ...],
                 num_classes: int) -> None:
        import ray

        from prunus.train.trainer import resolve_device

        device = resolve_device(job.config.device)
        self.proxies = ray.get(list(proxies))
        for proxy in self.proxies:
            proxy.net = proxy.net.to(device)
        self.job, self.name, self.shape, self.num_classes = job, name, tuple(shape), num_classes

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        from prunus.data.scoring import example_pass

        x = batch.column("x").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        shard = Dataset(self.name, batch.column("id").to_numpy(), x.reshape(-1, *self.shape),
                        batch.column("y").to_numpy(), self.num_classes)
        out = {"position": batch.column("position").to_numpy()}
        for k, proxy in enumerate(self.proxies):
            start = time.perf_counter()
            out[f"pass{k}"] = example_pass(proxy, shard, self.job, lambda n: None)
            spent = np.zeros(len(shard))
            spent[0] = time.perf_counter() - start
            out[f"seconds{k}"] = spent
        return out
