"""How long MNIST-1D takes to be ready: generated the first time, then read from the cache.

Each "fresh process" row runs a new Python process with an empty cache directory (or the one
just filled) and times, inside it, everything from ``import prunus.datasets`` to the returned
Dataset, imports included. The "in process" rows time the generator alone (its in-memory
memo cleared) and the mnist1d package's own per-example loop on a smaller draw, side by side,
and give the per-example speedup, then a cache hit in the same process. Medians over ``--repeats``.

    python benchmarks/datasets_mnist1d.py [--train-size 100000] [--test-size 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
start = time.perf_counter()
from prunus.datasets import load
d = load("mnist1d", train_size={train_size}, test_size={test_size}, seed={seed})
print(json.dumps({{"seconds": time.perf_counter() - start, "fingerprint": d.fingerprint}}))
"""


def fresh_process(cache: str, train_size: int, test_size: int, seed: int) -> dict:
    code = CHILD.format(train_size=train_size, test_size=test_size, seed=seed)
    env = dict(os.environ, PRUNUS_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--package-samples", type=int, default=2000)
    args = parser.parse_args()
    n = args.train_size + args.test_size
    rows = []

    first, cached, prints = [], [], set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            result = fresh_process(cache, args.train_size, args.test_size, args.seed)
            first.append(result["seconds"])
            prints.add(result["fingerprint"])
            result = fresh_process(cache, args.train_size, args.test_size, args.seed)
            cached.append(result["seconds"])
            prints.add(result["fingerprint"])
    assert len(prints) == 1, "generated and cached datasets differ"
    rows.append(("first time, fresh process (imports included)", n, first))
    rows.append(("from cache, fresh process (imports included)", n, cached))

    import importlib

    from prunus.datasets import mnist1d as m1d

    package = importlib.import_module("mnist1d.data")
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate the two generators
        m1d._reference_stats.cache_clear()
        start = time.perf_counter()
        m1d.make_mnist1d(args.train_size, args.test_size, args.seed, cache=False)
        ours.append(time.perf_counter() - start)
        settings = package.get_dataset_args()
        settings.num_samples, settings.seed = args.package_samples, args.seed
        start = time.perf_counter()
        package.make_dataset(settings)
        theirs.append(time.perf_counter() - start)
    rows.append(("prunus generator, in process, no cache", n, ours))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PRUNUS_CACHE_DIR"] = cache
        m1d.make_mnist1d(args.train_size, args.test_size, args.seed)
        hits = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            m1d.make_mnist1d(args.train_size, args.test_size, args.seed)
            hits.append(time.perf_counter() - start)
    rows.append(("from cache, in process", n, hits))
    rows.append(("mnist1d package make_dataset, in process", args.package_samples, theirs))

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"MNIST-1D, seed {args.seed}, median of {args.repeats} repeats, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    print(f"{'what':<48} {'examples':>9} {'median s':>9} {'min s':>8} {'us/example':>11}")
    for what, count, times in rows:
        median = statistics.median(times)
        print(
            f"{what:<48} {count:>9} {median:>9.3f} {min(times):>8.3f} {1e6 * median / count:>11.1f}"
        )
    per_ours = statistics.median(ours) / n
    per_theirs = statistics.median(theirs) / args.package_samples
    print(
        f"per-example speedup of the vectorised generator over the package: "
        f"{per_theirs / per_ours:.0f}x"
    )


if __name__ == "__main__":
    main()
