"""What the study harness costs on top of the training it runs.

Runs the same small grid (full data, random subset and RS2 at one keep fraction, N seeds) two
ways, alternately, in one process: (a) ``run_study`` in this process (grid, per-run Parquet
files written atomically, runs.parquet rebuilt after every run; the report is timed apart) and
(b) a bare loop calling ``Trainer.fit`` on the same data, subsets, callbacks and seeds. Prints
the median seconds of each over the repeats and their ratio.

    python benchmarks/study_overhead.py --train-size 2000 --epochs 3 --seeds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from prunus.study import parse_config, run_study, write_report
    from prunus.study.grid import expand_grid
    from prunus.study.runs import load_dataset
    from prunus.study.store import StudyStore

    options = {"train_size": args.train_size, "test_size": 1000} if args.dataset == "mnist1d" else {}
    config = parse_config({
        "name": "overhead", "seeds": args.seeds, "keep": [args.keep],
        "datasets": [{"name": args.dataset, "options": options}],
        "models": [{"name": args.model}],
        "train": {"epochs": args.epochs},
        "execution": {"threads": args.threads},
    })
    dataset = load_dataset(config.datasets[0].model_dump())
    runs, _ = expand_grid(config, {config.datasets[0].display: dataset.fingerprint})

    def bare() -> float:
        start = time.perf_counter()
        for spec in runs:
            bare_run(spec, dataset)
        return time.perf_counter() - start

    def harness() -> tuple[float, float]:
        folder = Path(tempfile.mkdtemp(prefix="prunus-overhead-"))
        try:
            start = time.perf_counter()
            run_study(config, folder / "study", progress=False)
            total = time.perf_counter() - start
            start = time.perf_counter()
            write_report(StudyStore(folder / "study"))
            report = time.perf_counter() - start
            return total - report, report  # run_study wrote the report once too
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    bare()  # warm-up: imports, FLOP counter, caches
    bare_times, harness_times, report_times = [], [], []
    for _ in range(args.repeats):
        bare_times.append(bare())
        runs_seconds, report_seconds = harness()
        harness_times.append(runs_seconds)
        report_times.append(report_seconds)

    b, h, r = (statistics.median(t) for t in (bare_times, harness_times, report_times))
    paired = statistics.median(x / y for x, y in zip(harness_times, bare_times))
    print(f"{args.dataset} train_size={args.train_size} {args.model} epochs={args.epochs} "
          f"runs={len(runs)} (seeds 0..{args.seeds - 1}) threads={args.threads} "
          f"repeats={args.repeats}, medians")
    print(f"{'bare Trainer loop s':>20} {'run_study s':>12} {'ratio of medians':>17} "
          f"{'median paired ratio':>20} {'report s':>9}")
    print(f"{b:20.2f} {h:12.2f} {h / b:17.3f} {paired:20.3f} {r:9.2f}")
    print(json.dumps({"bare": bare_times, "harness": harness_times, "report": report_times}))


def bare_run(spec, dataset) -> None:
    """The same training as the harness's run, written directly against the trainer."""
    from prunus.data.online import get_online
    from prunus.models import build_model
    from prunus.train import Trainer

    data, callbacks = dataset, []
    if spec.data.kind == "random":
        rng = np.random.default_rng(spec.seed)
        ids = []
        for label in np.unique(dataset.y):
            members = rng.permutation(dataset.ids[dataset.y == label])
            ids.append(members[: int(spec.data.keep * len(members))])
        data = dataset.subset(np.sort(np.concatenate(ids)))
    elif spec.data.kind == "online":
        callbacks.append(get_online(spec.data.method, keep=spec.data.keep, seed=spec.seed))
    model = build_model(spec.model["name"], data.input_shape, data.num_classes, seed=spec.seed)
    Trainer(model, data, callbacks=callbacks, seed=spec.seed, **spec.train).fit()


if __name__ == "__main__":
    main()
