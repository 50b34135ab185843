"""Static data pruning on MNIST-1D: does scoring and keeping the hard examples beat a random
subset of the same size? Run through the study harness, so every score table is computed once
and cached, full data and the random subset are added automatically and paired by seed.

Methods (each at keep 0.3 / 0.5 / 0.7): EL2N-hardest, EL2N-CCS, GraNd-hardest,
forgetting-hardest, AUM-hardest (hardest = lowest margin, the direction the AUM score table
declares), plus random subset and full data. The table shows test accuracy mean ± std over
seeds, the paired difference to random with its 95% bootstrap interval
(``prunus.study.stats``), a plain verdict, and each method's scoring cost (its score table's
wall time) as a fraction of one full-data run's training time.

    python benchmarks/data_pruning.py                       # the issue's setting (slow)
    python benchmarks/data_pruning.py --train-size 4000 --epochs 6 --workers 2 --out /tmp/dp
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

KEEPS = [0.3, 0.5, 0.7]
METHODS = [  # (label, score method, select policy)
    ("EL2N-hardest", "el2n", "hardest"),
    ("EL2N-CCS", "el2n", "ccs"),
    ("GraNd-hardest", "grand", "hardest"),
    ("forgetting-hardest", "forgetting", "hardest"),
    ("AUM-hardest", "aum", "hardest"),
]
TRAJECTORY = {"forgetting", "aum"}


def study_config(args: argparse.Namespace) -> dict:
    """The study as the dict a study TOML file would hold."""
    policies = []
    for label, method, select in METHODS:
        proxy: dict = {"seeds": args.proxy_seeds}
        epochs = args.trajectory_epochs if method in TRAJECTORY else args.proxy_epochs
        if epochs:
            proxy["epochs"] = epochs
        policies.append({"score": method, "select": select, "label": label, "proxy": proxy})
    return {
        "name": "data_pruning",
        "seeds": list(range(args.seeds)),
        "keep": KEEPS,
        "targets": ["full-1pp"],
        "datasets": [{"name": "mnist1d", "options": {"train_size": args.train_size,
                                                      "test_size": args.test_size}}],
        "models": [{"name": args.model}],
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "schedule": "onecycle"},
        "policies": policies,
        "execution": {"workers": args.workers, "threads": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=40000)
    parser.add_argument("--test-size", type=int, default=4000)
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--proxy-seeds", type=int, default=2, help="proxy runs averaged per score")
    parser.add_argument("--proxy-epochs", type=int, default=0,
                        help="EL2N/GraNd proxy epochs (0: the harness default, 20%% of --epochs)")
    parser.add_argument("--trajectory-epochs", type=int, default=0,
                        help="forgetting/AUM proxy epochs (0: the harness default, 20%% of --epochs)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (1 torch thread each)")
    parser.add_argument("--with-rs2", action="store_true",
                        help="also run the RS2 baseline the harness adds by default")
    parser.add_argument("--out", default=None, help="study directory (default: a temporary one); "
                        "an existing one is resumed")
    parser.add_argument("--progress", action="store_true", help="show the harness's progress bars")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from prunus.study import StudyStore, parse_config, plugins, run_study

    if not args.with_rs2:
        # The harness always adds RS2 next to the random subset; this benchmark's comparison is
        # static selection vs random and full data, so that extra baseline is left out here.
        available = plugins.online_methods
        plugins.online_methods = lambda: tuple(m for m in (available() or ()) if m != "rs2")

    config = parse_config(study_config(args), source="data_pruning")
    out = Path(args.out or tempfile.mkdtemp(prefix="prunus-data-pruning-"))
    resume = StudyStore(out).exists()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread per "
          f"run, {args.workers} worker(s); mnist1d train {args.train_size} / test {args.test_size}, "
          f"{args.model}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, onecycle; "
          f"seeds {list(range(args.seeds))}; proxy: {args.proxy_seeds} seeds, EL2N/GraNd "
          f"{args.proxy_epochs or 'default'} epochs, forgetting/AUM "
          f"{args.trajectory_epochs or 'default'} epochs; study dir {out}", flush=True)
    start = time.perf_counter()
    result = run_study(config, out, resume=resume, progress=args.progress)
    print(f"study: {result.runs} runs ({result.ran} run now, {result.failed} failed) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    print_table(StudyStore(out))


def print_table(store) -> None:
    from prunus.study.report import load_rows
    from prunus.study.stats import paired_difference

    finals = [r for r in load_rows(store) if r["final"] and r["status"] == "ok"]
    by_arm: dict[tuple[str, float], dict[int, dict]] = {}
    for row in finals:
        name = "full data" if row["data_kind"] == "full" else row["data_policy"]
        keep = 1.0 if row["data_kind"] == "full" else float(row["keep"])
        by_arm.setdefault((name, keep), {})[row["seed"]] = row
    full = by_arm.get(("full data", 1.0), {})
    full_seconds = statistics.mean(r["cost_seconds"] for r in full.values()) if full else math.nan
    metas = store.score_metas()

    def accuracy(runs: dict[int, dict]) -> str:
        acc = [100 * r["accuracy"] for r in runs.values()]
        std = statistics.stdev(acc) if len(acc) > 1 else math.nan
        return f"{statistics.mean(acc):5.1f} ± {std:3.1f}"

    def scoring_fraction(runs: dict[int, dict]) -> str:
        key = next(iter(runs.values()))["score_table"]
        if key is None or key not in metas:
            return "-"
        return f"{metas[key]['seconds'] / full_seconds:.2f}"

    header = (f"{'method':<20} {'keep':>5} {'acc % (mean ± std)':>18} {'vs random, pp [95% CI]':>24} "
              f"{'scoring / full run':>18}  verdict")
    print()
    print(header)
    print("-" * len(header))
    if full:
        print(f"{'full data':<20} {1.0:>5.1f} {accuracy(full):>18} {'':>24} {'-':>18}  "
              f"(one full-data run: {full_seconds:.1f} s training)")
    for keep in KEEPS:
        random = by_arm.get(("random", keep), {})
        if random:
            print(f"{'random':<20} {keep:>5.1f} {accuracy(random):>18} {'':>24} {'0':>18}")
        rand_acc = {s: r["accuracy"] for s, r in random.items()}
        for label, *_ in METHODS:
            runs = by_arm.get((label, keep))
            if not runs:
                print(f"{label:<20} {keep:>5.1f} {'no finished runs':>18}")
                continue
            diff = paired_difference({s: r["accuracy"] for s, r in runs.items()}, rand_acc)
            ci = (f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}]"
                  if diff.has_interval else f"{100 * diff.mean:+.1f} [n/a]")
            print(f"{label:<20} {keep:>5.1f} {accuracy(runs):>18} {ci:>24} "
                  f"{scoring_fraction(runs):>18}  {verdict(diff)}")
    print("\nscoring / full run: the score table's wall time (all proxy seeds) over the mean "
          "training time of one full-data run; EL2N-hardest and EL2N-CCS share one table.")
    print("verdict: 'beats random' / 'worse than random' only when the paired 95% bootstrap "
          "interval over seeds excludes 0 (percentile intervals over 3 seeds are approximate).")


def verdict(diff) -> str:
    if not diff.has_interval or np.isnan(diff.mean):
        return "undecided (too few paired seeds)"
    if diff.low > 0:
        return "beats random"
    if diff.high < 0:
        return "worse than random"
    return "no clear difference from random"


if __name__ == "__main__":
    main()
