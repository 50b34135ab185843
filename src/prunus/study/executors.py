"""Where study tasks run: in this process, in a local process pool, or on Ray.

Every backend is a ``concurrent.futures.Executor`` plus how many tasks to keep in flight and
how workers report progress. The harness keeps at most ``capacity`` tasks in flight and writes
each result as it arrives, so a killed study loses only the runs that were in flight.
"""

from __future__ import annotations

import os
import queue as queue_module
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from prunus.errors import PrunusError, require


@dataclass
class Backend:
    """An executor, its capacity, and the progress channel its tasks report to."""

    executor: Executor
    capacity: int
    threads: int
    reporter: Any = None  # passed to each task: a function (in-process) or a queue
    _queue: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self.executor.submit(fn, *args)

    def messages(self) -> list[tuple[str, dict]]:
        """Progress messages that workers sent since the last call."""
        out = []
        while self._queue is not None:
            try:
                out.append(self._queue.get_nowait())
            except (queue_module.Empty, EOFError, OSError):
                break
        return out

    def close(self, cancel: bool = False) -> None:
        """Wait for the tasks in flight, or (``cancel``) drop the queued ones and end the pool's
        workers at once: the runs they were running are not stored, so a resume redoes them."""
        # a process pool's workers (a private attribute: read defensively)
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=not cancel, cancel_futures=cancel)
        if cancel:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=5)
        for closer in self._closers:
            closer()


class InlineExecutor(Executor):
    """Runs each task at submit time in this process (one at a time, easy to debug)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def make_backend(kind: str, workers: int, threads: int, on_event: Callable,
                 ray_address: str | None = None, cpus: float = 1.0, gpus: float = 0.0) -> Backend:
    """Build the executor for ``--executor kind --workers N``.

    Args:
        kind: ``local`` (in this process when ``workers`` is 1, else a spawn process pool) or
            ``ray`` (one Ray task per run; local ``ray.init`` unless ``ray_address`` or the
            ``RAY_ADDRESS`` environment variable names a cluster).
        workers: tasks run at once (on a cluster: as many as its CPUs allow, see
            :func:`ray_backend`).
        threads: torch threads per task; 0 means: leave torch alone in-process, and share the
            machine's cores evenly among pool workers.
        on_event: progress callback ``on_event(event, info)`` for in-process runs.
        ray_address: ``ray`` only: the cluster's ``host:port``.
        cpus, gpus: ``ray`` only: the resources each task requests. Default 1 CPU, no GPU.

    Raises:
        MissingExtraError: ``ray`` is asked for but not installed.
        PrunusError: an unreachable ``ray_address`` or a node with another prunus version.
    """
    if kind == "ray":
        return ray_backend(workers, threads, ray_address, cpus, gpus)
    if kind != "local":
        raise PrunusError(f"--executor must be one of: local, ray (got {kind!r}).")
    if workers == 1:
        return Backend(InlineExecutor(), 1, threads, reporter=on_event)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    from prunus.registry import registering_modules

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=start_worker,
                               initargs=(channel, os.getpid(), registering_modules()))
    return Backend(pool, workers, threads, _queue=channel, _closers=[channel.close])


def start_worker(channel, parent: int | None = None, modules: list[str] | None = None) -> None:
    """Pool worker start-up: progress messages of the runs it executes go to ``channel``, the
    worker imports ``modules`` (those that registered methods in the study process at run
    time), and it dies with the study process ``parent`` (even when that is killed with
    SIGKILL, which gives the pool no chance to shut its workers down)."""
    from prunus.registry import import_plugins
    from prunus.study import runs

    import_plugins(modules or [])

    runs.WORKER_CHANNEL = channel
    # Ctrl-C reaches the whole process group: only the study process handles it (it stops
    # the pool); a worker that died of it would make its run look failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        die_with_parent(parent)


PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent: int) -> None:
    """End this process when process ``parent`` ends.

    On Linux the kernel sends SIGKILL at once (``PR_SET_PDEATHSIG``); everywhere, a daemon
    thread also polls the parent pid and calls ``os._exit`` once this process has been
    re-parented. A parent that is already gone ends this process here.
    """
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    watchdog = threading.Thread(target=watch_parent, args=(parent,), daemon=True,
                                name="prunus-parent-watchdog")
    watchdog.start()


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the watchdog remains
        return False


def watch_parent(parent: int, interval: float = PARENT_POLL_SECONDS) -> None:
    """Exit this process (without cleanup: the parent that would collect results is gone) once
    its parent is no longer ``parent``."""
    import time

    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def ray_backend(workers: int, threads: int, address: str | None, cpus: float = 1.0,
                gpus: float = 0.0) -> Backend:
    """Ray tasks, one per run or score table, each requesting ``cpus`` CPUs and ``gpus`` GPUs;
    results come back to this process to be stored. Joining a cluster
    (:func:`prunus.data.distributed.connect`) fails within seconds when the address does not
    answer and names any node whose prunus version differs. On a cluster as many tasks are kept
    in flight as its CPUs (and GPUs, when requested) hold; Ray started here gets ``workers``
    CPUs' worth. A task whose worker dies is retried by Ray (``max_retries``); when this driver
    dies its tasks end with it, and a resume reruns only the runs not stored."""
    from prunus.data.distributed import connect

    ray = require("ray", "ray")
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = connect(address, num_cpus=None if address else max(1, round(workers * cpus)),
                      field="--address")
    resources = ray.cluster_resources()
    capacity = max(workers, 1)
    if address:
        capacity = int(resources.get("CPU", 1) // cpus)
        if gpus:
            capacity = min(capacity, int(resources.get("GPU", 0) // gpus))
        if capacity < 1:
            if started:
                ray.shutdown()
            raise PrunusError(
                f"the Ray cluster at {address!r} has {resources.get('CPU', 0):g} CPUs and "
                f"{resources.get('GPU', 0):g} GPUs, too few for one run requesting {cpus:g} CPUs "
                f"and {gpus:g} GPUs; lower execution.cpus_per_run / gpus_per_run."
            )
    executor = RayExecutor(ray, cpus, gpus)
    closers = [ray.shutdown] if started else []
    return Backend(executor, capacity, threads or max(1, int(cpus)), _closers=closers)


RAY_TASK_RETRIES = 3


class RayExecutor(Executor):
    """``submit`` sends the function to Ray as a task requesting ``cpus`` CPUs and ``gpus``
    GPUs, retried if its worker dies, and returns a plain ``Future``."""

    def __init__(self, ray: Any, cpus: float = 1.0, gpus: float = 0.0) -> None:
        self.ray = ray
        self.options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": RAY_TASK_RETRIES}
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(**self.options)(fn)
        return self._remote[fn].remote(*args, **kwargs).future()
