"""prunus Trainer vs a bare hand-written PyTorch loop: same model, data, seed and epochs.

Both loops do the same work (shuffle, forward, per-example cross-entropy, AdamW, one-cycle LR,
evaluation after every epoch); the bare loop has no events, no meter and no FLOP counting.
They are timed alternately in one process; the script prints the median of each and the
ratio prunus / bare (wall clock, and process CPU time, which a busy machine disturbs less),
and checks that both reach identical test accuracy.

    python benchmarks/trainer_overhead.py --dataset mnist1d --train-size 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from prunus.config import TrainConfig
from prunus.datasets import load
from prunus.models import build_model
from prunus.train import Trainer, evaluate
from prunus.train.trainer import build_optimizer, build_scheduler


def bare_loop(dataset, model, cfg: TrainConfig) -> float:
    """The loop a user would write by hand; returns the final test accuracy."""
    torch.manual_seed(cfg.seed)
    x_all, y_all = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)
    optimizer = build_optimizer(model, cfg)
    total = cfg.epochs * math.ceil(len(dataset) / cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg, total)
    accuracy = 0.0
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(dataset)))
        model.train()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx], reduction="none").mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        accuracy = evaluate(model, dataset.test, cfg.eval_batch_size)["accuracy"]
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    options = {"train_size": args.train_size} if args.dataset == "mnist1d" else {}
    dataset = load(args.dataset, **options)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device="cpu")

    def fresh_model():
        return build_model(args.model, dataset.input_shape, dataset.num_classes, seed=args.seed)

    times: dict[str, list[float]] = {"prunus": [], "bare": []}
    cpu: dict[str, list[float]] = {"prunus": [], "bare": []}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = ("prunus", "bare") if repeat % 2 == 0 else ("bare", "prunus")
        for which in order:
            model = fresh_model()
            start, start_cpu = time.perf_counter(), time.process_time()
            if which == "prunus":
                result = Trainer(model, dataset, config=cfg).fit()
                accuracy[which] = result.history[-1]["accuracy"]
            else:
                accuracy[which] = bare_loop(dataset, model, cfg)
            times[which].append(time.perf_counter() - start)
            cpu[which].append(time.process_time() - start_cpu)

    prunus_median = statistics.median(times["prunus"])
    bare_median = statistics.median(times["bare"])
    print(
        f"dataset={args.dataset} train={len(dataset)} model={args.model} epochs={args.epochs} "
        f"batch={args.batch_size} seed={args.seed} repeats={args.repeats} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'loop':<8} {'median s':>9} {'min s':>8} {'max s':>8} {'median cpu s':>13} {'test acc':>9}")
    for which in ("bare", "prunus"):
        t = times[which]
        print(
            f"{which:<8} {statistics.median(t):>9.3f} {min(t):>8.3f} {max(t):>8.3f} "
            f"{statistics.median(cpu[which]):>13.3f} {accuracy[which]:>9.4f}"
        )
    ratios = [p / b for p, b in zip(times["prunus"], times["bare"])]
    cpu_ratios = [p / b for p, b in zip(cpu["prunus"], cpu["bare"])]
    print(f"ratio prunus/bare (wall): median of totals {prunus_median / bare_median:.3f}, "
          f"median of paired ratios {statistics.median(ratios):.3f}")
    print(f"ratio prunus/bare (cpu):  median of paired ratios {statistics.median(cpu_ratios):.3f}")
    print(f"identical accuracy: {accuracy['prunus'] == accuracy['bare']}")


if __name__ == "__main__":
    main()
