"""Weight sparsity benchmarks: accuracy of every weight policy, and real speed of structured removal.

Part 1 (``accuracy``): mnist1d (``--train-size``, default 40k), models ``cnn1d`` and ``mlp``,
every method of ``prunus.weights.WEIGHT_METHODS`` chosen with ``--methods`` at each sparsity and
seed, plus dense training, all with the same trainer settings and the same number of epochs
(IMP fits its rounds into those epochs; one-shot ``magnitude`` prunes at 50% and fine-tunes for
the rest). Results are appended to a JSON-lines file, one line per run, so a killed run resumes
(``--results``); the table prints mean ± 95% CI (t) over seeds and the paired difference to dense.

Part 2 (``speed``): structured removal of 50% of the channels (L1 norm) from a trained ``cnn1d``
(mnist1d) and the 2-D ``cnn`` (mnist5k, 28×28), fine-tuned; CPU inference latency of the dense
and the pruned model measured alternately in one process, medians over repeats, at batch 1 and
256. For contrast, 90% *unstructured* magnitude masks baked into the same dense layers: the
theoretical FLOPs drop 10× but the measured latency does not (no sparse kernel is used); N:M
2:4 has no CPU kernel in PyTorch, so its saving is theoretical only and is not timed.

    python benchmarks/sparsity.py accuracy --epochs 2 --workers 2
    python benchmarks/sparsity.py speed --repeats 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

DEFAULT_METHODS = "random,magnitude,gmp,snip,synflow,imp,set,rigl,granet"


# -- part 1: accuracy ------------------------------------------------------------------------------


def run_one(job: dict) -> dict:
    """Train one model under one weight policy; returns the final metrics."""
    import torch

    torch.set_num_threads(job["threads"])
    from prunus.datasets import load
    from prunus.models import build_model
    from prunus.train import Trainer
    from prunus.weights import get_sparsifier, sparsity_report

    data = load("mnist1d", train_size=job["train_size"], test_size=job["test_size"], seed=0)
    net = build_model(job["model"], data.input_shape, data.num_classes, seed=job["seed"])
    callbacks = []
    if job["method"] != "dense":
        callbacks.append(get_sparsifier(job["method"], sparsity=job["sparsity"], seed=job["seed"]))
    start = time.perf_counter()
    result = Trainer(
        net, data, callbacks=callbacks, epochs=job["epochs"], batch_size=128, lr=3e-3,
        optimizer="adamw", schedule="onecycle", seed=job["seed"],
    ).fit()
    final = result.final
    rows = sparsity_report(net, callbacks[0].targets) if callbacks else [{"sparsity": 0.0}]
    return {
        **job,
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "achieved_sparsity": rows[-1]["sparsity"],
        "train_seconds": final["train_seconds"],
        "scoring_seconds": final["scoring_seconds"],
        "wall_seconds": time.perf_counter() - start,
        "theoretical_flops": final["flops"],
    }


def job_key(job: dict) -> tuple:
    return (job["model"], job["method"], job["sparsity"], job["seed"], job["epochs"], job["train_size"])


def accuracy(args: argparse.Namespace) -> None:
    results_path = Path(args.results)
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[job_key(row)] = row
    jobs = []  # in the order given: dense first, then sparsity by sparsity (a partial run is useful)
    seeds = [int(s) for s in args.seeds.split(",")]
    for model in args.models.split(","):
        base = {"model": model, "epochs": args.epochs, "train_size": args.train_size,
                    "test_size": args.test_size, "threads": args.threads}
        jobs += [{**base, "seed": seed, "method": "dense", "sparsity": 0.0} for seed in seeds]
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            for seed in seeds:
                for method in args.methods.split(","):
                    jobs.append({**base, "seed": seed, "method": method, "sparsity": sparsity})
    todo = [j for j in jobs if job_key(j) not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {results_path}, {len(todo)} to do", flush=True)
    if todo and not args.report_only:
        from prunus.datasets import load

        load("mnist1d", train_size=args.train_size, test_size=args.test_size, seed=0)  # fill the cache once
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_one, j) for j in todo]  # the pool takes them in order
            for i, future in enumerate(as_completed(futures), 1):
                row = future.result()
                done[job_key(row)] = row
                with results_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"[{i}/{len(todo)}] {row['model']:6s} {row['method']:9s} s={row['sparsity']:<5} "
                    f"seed={row['seed']} acc={100 * row['accuracy']:.2f}% "
                    f"({row['wall_seconds']:.0f}s)", flush=True,
                )
    print_accuracy_tables([done[job_key(j)] for j in jobs if job_key(j) in done], args)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student t) of ``values``."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, half


def print_accuracy_tables(rows: list[dict], args) -> None:
    models = sorted({r["model"] for r in rows}, key=lambda m: args.models.split(",").index(m))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        sparsities = sorted({r["sparsity"] for r in mine if r["method"] != "dense"})
        methods = [m for m in args.methods.split(",") if any(r["method"] == m for r in mine)]
        dense = {r["seed"]: r["accuracy"] for r in mine if r["method"] == "dense"}
        seeds = sorted({r["seed"] for r in mine})
        epochs = mine[0]["epochs"]
        print(
            f"\n## {model} on mnist1d (train {mine[0]['train_size']:,}, test {mine[0]['test_size']:,}), "
            f"{epochs} epochs, seeds {seeds}: test accuracy %, mean ± 95% CI"
        )
        if dense:
            m, h = mean_ci([100 * v for v in dense.values()])
            print(f"dense: {m:.2f} ± {h:.2f}")
        header = f"| {'method':9s} | " + " | ".join(f"s={s:<18}" for s in sparsities) + " |"
        print(header)
        print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
        best_at_90 = None
        for method in methods:
            cells = []
            for s in sparsities:
                accs = [100 * r["accuracy"] for r in mine if r["method"] == method and r["sparsity"] == s]
                if not accs:
                    cells.append(f"{'-':20s}")
                    continue
                m, h = mean_ci(accs)
                cells.append(f"{m:6.2f} ± {h:5.2f} (n={len(accs)})".ljust(20))
                if abs(s - 0.9) < 1e-9 and (best_at_90 is None or m > best_at_90[1]):
                    best_at_90 = (method, m)
            print(f"| {method:9s} | " + " | ".join(cells) + " |")
        if dense and best_at_90:
            deltas = [
                100 * (r["accuracy"] - dense[r["seed"]])
                for r in mine
                if r["method"] == best_at_90[0] and abs(r["sparsity"] - 0.9) < 1e-9 and r["seed"] in dense
            ]
            m, h = mean_ci(deltas)
            verdict = "within" if m > -1.0 else "NOT within"
            print(
                f"best at s=0.9: {best_at_90[0]}, paired difference to dense {m:+.2f} ± {h:.2f} pp "
                f"({verdict} 1pp of dense)"
            )
        # cost at 0.9: wall seconds and theoretical FLOPs relative to dense
        if dense:
            dense_rows = [r for r in mine if r["method"] == "dense"]
            dense_flops = statistics.fmean(r["theoretical_flops"] for r in dense_rows)
            dense_wall = statistics.fmean(r["train_seconds"] for r in dense_rows)
            print(
                "cost at s=0.9 (means): method: train wall s (dense "
                f"{dense_wall:.0f}s) · scoring s · theoretical training FLOPs vs dense"
            )
            for method in methods:
                at = [r for r in mine if r["method"] == method and abs(r["sparsity"] - 0.9) < 1e-9]
                if at:
                    print(
                        f"  {method:9s} {statistics.fmean(r['train_seconds'] for r in at):6.0f}s"
                        f" · {statistics.fmean(r['scoring_seconds'] for r in at):5.1f}s"
                        f" · {statistics.fmean(r['theoretical_flops'] for r in at) / dense_flops:.2f}× (theoretical)"
                    )


# -- part 2: real speed of structured removal ------------------------------------------------------


def latency(model, x, repeats: int) -> list[float]:
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return times


def paired_latency(dense, pruned, x, repeats: int, inner: int) -> tuple[float, float]:
    """Median seconds per call of ``dense`` and ``pruned``, timed alternately."""
    import torch

    with torch.inference_mode():
        for _ in range(3):
            dense(x), pruned(x)
    a, b = [], []
    for _ in range(repeats):
        a.append(statistics.fmean(latency(dense, x, inner)))
        b.append(statistics.fmean(latency(pruned, x, inner)))
    return statistics.median(a), statistics.median(b)


def speed(args: argparse.Namespace) -> None:
    import copy

    import torch

    torch.set_num_threads(args.threads)
    from prunus.datasets import load
    from prunus.models import build_model
    from prunus.train import Trainer, evaluate
    from prunus.train.meter import measure_flops
    from prunus.weights import prune, prune_channels, remove

    cases = [
        ("cnn1d", "mnist1d", {"train_size": args.train_size, "test_size": args.test_size, "seed": 0}),
        ("cnn", "mnist5k", {}),
    ]
    print(
        f"\n## structured removal of 50% channels (L1), {args.epochs} epochs dense + {args.epochs} "
        f"fine-tune, torch threads {args.threads}, seed {args.seed}, medians of {args.repeats} "
        "alternating repeats"
    )
    print("| model | data | params dense→pruned | acc dense | acc pruned+ft | Δ pp | batch | dense ms | pruned ms | speedup | FLOPs ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    unstructured = []
    for model_name, data_name, options in cases:
        data = load(data_name, **options)
        train = {"batch_size": 128, "lr": 3e-3, "optimizer": "adamw", "schedule": "onecycle", "seed": args.seed}
        dense = build_model(model_name, data.input_shape, data.num_classes, seed=args.seed)
        Trainer(dense, data, epochs=args.epochs, **train).fit()
        acc_dense = evaluate(dense, data.test)["accuracy"]
        pruned = prune_channels(dense, 0.5, "l1")
        Trainer(pruned, data, epochs=args.epochs, **train).fit()
        acc_pruned = evaluate(pruned, data.test)["accuracy"]
        masked = copy.deepcopy(dense)
        prune(masked, 0.9, "magnitude", scope="layer")
        remove(masked)
        dense.eval(), pruned.eval(), masked.eval()
        n_dense = sum(p.numel() for p in dense.parameters())
        n_pruned = sum(p.numel() for p in pruned.parameters())
        for batch in (1, 256):
            x = torch.from_numpy(data.test.x[:batch])
            if len(x) < batch:
                x = x.repeat(math.ceil(batch / len(x)), *([1] * (x.dim() - 1)))[:batch]
            inner = 20 if batch == 1 else 2
            t_dense, t_pruned = paired_latency(dense, pruned, x, args.repeats, inner)
            flops_ratio = measure_flops(dense, x[:8])[0] / measure_flops(pruned, x[:8])[0]
            print(
                f"| {model_name} | {data_name} | {n_dense:,}→{n_pruned:,} | {100 * acc_dense:.2f} | "
                f"{100 * acc_pruned:.2f} | {100 * (acc_pruned - acc_dense):+.2f} | {batch} | "
                f"{1e3 * t_dense:.3f} | {1e3 * t_pruned:.3f} | {t_dense / t_pruned:.2f}× | "
                f"{flops_ratio:.2f}× |", flush=True,
            )
            t_dense2, t_masked = paired_latency(dense, masked, x, args.repeats, inner)
            unstructured.append((model_name, batch, t_dense2, t_masked))
    print("\n## 90% unstructured magnitude masks baked into dense layers (same kernels)")
    print("| model | batch | dense ms | 90%-sparse ms | measured speedup | theoretical FLOPs ratio |")
    print("|---|---|---|---|---|---|")
    for model_name, batch, t_dense, t_masked in unstructured:
        print(
            f"| {model_name} | {batch} | {1e3 * t_dense:.3f} | {1e3 * t_masked:.3f} | "
            f"{t_dense / t_masked:.2f}× | 10× on prunable layers (theoretical, not realised) |"
        )
    print("N:M 2:4: no CPU kernel in this PyTorch build (semi-structured sparse tensors are CUDA-only): not timed.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    acc = sub.add_parser("accuracy", help="accuracy of every weight policy (part 1)")
    acc.add_argument("--models", default="cnn1d,mlp")
    acc.add_argument("--methods", default=DEFAULT_METHODS)
    acc.add_argument("--sparsities", default="0.5,0.8,0.9,0.95,0.98")
    acc.add_argument("--seeds", default="0,1,2")
    acc.add_argument("--epochs", type=int, default=10)
    acc.add_argument("--train-size", type=int, default=40000)
    acc.add_argument("--test-size", type=int, default=4000)
    acc.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 1))
    acc.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    acc.add_argument("--results", default="sparsity_results.jsonl", help="JSON lines, appended (resumable)")
    acc.add_argument("--report-only", action="store_true", help="only print the tables from --results")
    spd = sub.add_parser("speed", help="real latency of structured removal (part 2)")
    spd.add_argument("--epochs", type=int, default=3)
    spd.add_argument("--train-size", type=int, default=40000)
    spd.add_argument("--test-size", type=int, default=4000)
    spd.add_argument("--repeats", type=int, default=30)
    spd.add_argument("--threads", type=int, default=1)
    spd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.part == "accuracy":
        accuracy(args)
    else:
        speed(args)


if __name__ == "__main__":
    sys.exit(main())
