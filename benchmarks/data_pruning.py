"""Static data pruning on MNIST-1D: does scoring and keeping the hard examples beat a random
subset of the same size? Run through the study harness, so every score table is computed once
and cached, full data and the random subset are added automatically and paired by seed.

Methods (each at keep 0.3 / 0.5 / 0.7): EL2N-hardest, EL2N-CCS, GraNd-hardest,
forgetting-hardest, AUM-hardest (hardest = lowest margin, the direction the AUM score table
declares), plus random subset and full data. The table shows test accuracy mean ± std over
seeds, the paired differences to random and to full data trained for the same compute with
their 95% t-intervals and the harness's verdicts (``prunus.study.stats``: Holm-corrected, 5
seeds to decide), and each arm's cost with its score table paid in full.

    python benchmarks/data_pruning.py                       # the issue's setting (slow)
    python benchmarks/data_pruning.py --train-size 4000 --epochs 6 --workers 2 --out /tmp/dp
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

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
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--proxy-seeds", type=int, default=2, help="proxy runs averaged per score")
    parser.add_argument("--proxy-epochs", type=int, default=0,
                        help="EL2N/GraNd proxy epochs (0: the harness default, 20%% of --epochs)")
    parser.add_argument("--trajectory-epochs", type=int, default=0,
                        help="forgetting/AUM proxy epochs (0: the harness default, ⌈20%%⌉ of --epochs but at least 5)")
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
    """One row per arm: accuracy, the paired differences to random and to full data trained for
    the same compute, with the harness's verdicts (t-intervals, Holm, 5 seeds to decide)."""
    from prunus.study.report import load_rows
    from prunus.study.stats import summarize
    from prunus.study.verdicts import verdict_word

    arms = summarize(load_rows(store), ["full-1pp"])
    full = next((a for a in arms if a.is_full), None)
    metas = store.score_metas()
    full_seconds = full.cost_seconds.mean if full else math.nan

    def accuracy(a) -> str:
        e = a.accuracy
        ci = f"[{100 * e.low:.1f}, {100 * e.high:.1f}]" if e.has_interval else "[n/a]"
        return f"{100 * e.mean:5.1f} {ci}"

    def difference(c) -> str:
        if c is None:
            return ""
        d = c.difference
        ci = f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]" if d.has_interval else "[n/a]"
        return f"{100 * d.mean:+.1f} {ci}"

    header = (f"{'arm':<34} {'acc % [95% CI]':>19} {'vs random, pp':>18} "
              f"{'vs same compute, pp':>20} {'cost / full':>11}  verdict vs random")
    print()
    print(header)
    print("-" * len(header))
    for a in arms:
        if a.weight_policy != "dense":
            continue
        rand, compute = a.comparison("random"), a.comparison("compute")
        word = verdict_word(rand) if rand is not None else ""
        cost = f"{a.time_ratio.mean:.2f}" if not math.isnan(a.time_ratio.mean) else "-"
        print(f"{a.policy[:34]:<34} {accuracy(a):>19} {difference(rand):>18} "
              f"{difference(compute):>20} {cost:>11}  {word}")
    print("\ncost / full: the arm's wall time with its score table paid in full (proxy runs "
          "included) over full data's, per seed. Intervals are 95% Student-t over seeds "
          "(raw); verdicts are Holm-corrected over the setting's comparisons and need 5 seeds.")
    if full:
        print(f"one full-data run: {full_seconds:.1f} s; score tables: " + ", ".join(
            f"{m.get('method', k)} {m['seconds'] / full_seconds:.2f}× a full run"
            for k, m in metas.items()))


if __name__ == "__main__":
    main()
