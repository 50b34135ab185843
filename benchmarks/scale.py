"""Scale: scoring N mnist1d examples on Ray with 1, 2 and 4 workers vs one process, Ray's
overhead on small datasets, and a 24-run study grid on the local executor vs Ray.

Scoring. ``score(..., epochs=0)`` (an untrained ``cnn1d`` proxy, so that the time is the
scoring pass, not proxy training) for EL2N and GraNd over the first N training examples of
mnist1d. The single-process path runs with 1 torch thread and with all cores; Ray runs in
this process (``ray.init(num_cpus=4)``, one node), each scoring actor with one CPU (one torch
thread). Throughput counts examples per second of the whole ``score()`` call (Ray: shipping
the data, starting the actors, collecting the scores); efficiency is the throughput with k
workers over k × the throughput with 1 worker. Peak memory per worker is the largest resident
set (RSS) a scoring actor process reached, sampled every 50 ms. Every Ray table is checked
bit-identical to the one-thread local table.

Overhead. The same EL2N scoring at small sizes, one process (1 thread) vs Ray with 2 workers:
where Ray's fixed cost (actor start, data shipping) is paid back.

Study. 24 runs (mnist1d 2000 examples, an MLP, 2 epochs; full data, random, RS2 and a
compute-matched full-data baseline over 6 seeds): wall seconds on the local executor (1 and 2
worker processes) vs Ray (2 workers), and the ratio.

    python benchmarks/scale.py              # N = 1,000,000
    python benchmarks/scale.py --quick      # N = 20,000, small overhead sizes
    python benchmarks/scale.py --n 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from typing import Self

import numpy as np
import psutil
import ray
import torch

from prunus.data import score
from prunus.datasets import load

WORKERS = (1, 2, 4)
METHODS = ("el2n", "grand")


class PeakRss:
    """Samples the RSS of every Ray scoring-actor process until stopped; the peak per pid."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                if "MapWorker" in " ".join(process.info["cmdline"] or []):
                    try:
                        rss = process.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                    self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
            time.sleep(self.interval)


def timed_score(data, method: str, **kwargs):
    start = time.perf_counter()
    table = score(data, method=method, epochs=0, **kwargs)
    return table, time.perf_counter() - start


def same(a, b) -> bool:
    return all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)


def scoring_table(data, cores: int) -> list[str]:
    n = len(data)
    lines = [(f"{'method':<7}{'path':<22}{'seconds':>9}{'examples/s':>12}{'efficiency':>12}"
              f"{'peak RSS/worker':>17}{'identical':>11}")]
    for method in METHODS:
        torch.set_num_threads(1)
        reference, seconds = timed_score(data, method)
        lines.append(f"{method:<7}{'one process, 1 thread':<22}{seconds:>9.1f}{n / seconds:>12,.0f}"
                     f"{'':>12}{'':>17}{'':>11}")
        torch.set_num_threads(cores)
        table, seconds = timed_score(data, method)
        lines.append(f"{method:<7}{f'one process, {cores} thr.':<22}{seconds:>9.1f}"
                     f"{n / seconds:>12,.0f}{'':>12}{'':>17}{same(table, reference)!s:>11}")
        torch.set_num_threads(1)
        base = None
        for workers in WORKERS:
            with PeakRss() as rss:
                table, seconds = timed_score(data, method, executor="ray", workers=workers)
            rate = n / seconds
            base = base or rate
            peak = max(rss.peaks.values(), default=0) / 2**20
            lines.append(f"{method:<7}{f'ray, {workers} worker(s)':<22}{seconds:>9.1f}{rate:>12,.0f}"
                         f"{rate / (workers * base):>12.2f}{peak:>14,.0f} MB"
                         f"{same(table, reference)!s:>11}")
    return lines


def overhead_table(full, sizes: list[int]) -> list[str]:
    lines = [f"{'examples':>9}{'one process s':>15}{'ray (2 workers) s':>19}{'ray / local':>13}"]
    torch.set_num_threads(1)
    for n in sizes:
        data = full.subset(full.ids[:n])
        _, local = timed_score(data, "el2n")
        _, remote = timed_score(data, "el2n", executor="ray", workers=2)
        lines.append(f"{n:>9,}{local:>15.2f}{remote:>19.2f}{remote / local:>13.2f}")
    return lines


def study_table() -> list[str]:
    from prunus.study import run_study
    from prunus.study.config import StudyConfig

    config = StudyConfig.model_validate({
        "name": "scale", "seeds": [0, 1, 2, 3, 4, 5], "keep": [0.5],
        "datasets": [{"name": "mnist1d", "options": {"train_size": 2000, "test_size": 500}}],
        "models": [{"name": "mlp", "options": {"hidden": [32]}}],
        "train": {"epochs": 2, "batch_size": 64}, "policies": [{"online": "rs2"}],
        "execution": {"threads": 1},
    })
    lines = [f"{'executor':<26}{'runs':>6}{'wall s':>9}{'vs local, 1 worker':>20}"]
    base = None
    with tempfile.TemporaryDirectory() as folder:
        for label, executor, workers in (("local, 1 worker (inline)", "local", 1),
                                         ("local, 2 worker processes", "local", 2),
                                         ("ray, 2 workers", "ray", 2)):
            start = time.perf_counter()
            result = run_study(config, os.path.join(folder, label.replace(" ", "_")),
                               executor=executor, workers=workers, progress=False)
            wall = time.perf_counter() - start
            base = base or wall
            lines.append(f"{label:<26}{result.runs:>6}{wall:>9.1f}{wall / base:>20.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="examples scored")
    parser.add_argument("--quick", action="store_true", help="N = 20,000 and small overhead sizes")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.n
    sizes = [1_000, 4_000] if args.quick else [1_000, 4_000, 16_000, 64_000]
    cores = os.cpu_count() or 1
    print(f"machine: {cores} CPU cores ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f} at start (shared machine), torch "
          f"{torch.__version__}, ray {ray.__version__}")
    full = load("mnist1d", train_size=max(n, *sizes), test_size=100)
    data = full.subset(full.ids[:n])
    ray.init(num_cpus=max(WORKERS), log_to_driver=False, include_dashboard=False,
             logging_level="warning")
    try:
        print(f"\nscoring {n:,} mnist1d examples (untrained cnn1d, epochs=0); Ray: one node, "
              f"{max(WORKERS)} logical CPUs on {cores} cores")
        print("\n".join(scoring_table(data, cores)))
        print("\nRay overhead on small datasets (EL2N)")
        print("\n".join(overhead_table(full, sizes)))
    finally:
        ray.shutdown()
    print("\nstudy grid of 24 short runs")
    print("\n".join(study_table()))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
