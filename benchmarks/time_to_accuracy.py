"""Wall-clock time-to-accuracy of online data selection against full-data training.

For each training-set size and seed, the reference trains ``cnn1d`` on all of mnist1d for
``--epochs`` epochs (AdamW, one-cycle LR). Its final test accuracy minus 0.5pp (and minus 1pp)
is that seed's target. Every method then trains with the same optimizer and schedule family
(its schedule stretched or shortened to its own step count) until its schedule ends, or until
its charged wall time passes ``--limit`` × the reference's (``--clock cpu``: its process CPU
time, for shared machines where other jobs distort wall time; ``--stop-at-target`` also stops it
once the −0.5pp target is reached). Test accuracy is evaluated every ``--eval-fraction`` of the
reference's steps for everyone; time-to-target is read at those evaluations (and at the final
one). Charged time runs from the start of training (after data loading and model building)
with evaluation excluded, so RHO-LOSS's holdout model, every extra forward pass and every
selection step are included; it is measured on two clocks, wall and process CPU.

Reported per method: seeds that reached each target, the ratio of its time-to-target to the
reference's (same seed) as a geometric mean with a 95% t-interval over the seeds that reached
it, the same ratio in process CPU seconds (robust to other load on a shared machine; the
process runs ``--threads`` threads), final test accuracy (mean ± 95% CI) and the examples
backpropagated relative to the reference. "not reached" is a result.

Method specs: ``full`` (no selection) or an online method name, optionally with settings in
parentheses, e.g. ``rs2(keep=0.4)``, ``full(epochs=4)``, ``infobatch(keep=0.3,epochs=10)``.
``epochs`` sets the method's number of epochs (RS2: rounds); the rest go to ``get_online``.

    python benchmarks/time_to_accuracy.py --sizes 40000 --seeds 0 1 --methods "rs2(keep=0.4)"
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from typing import Any

import numpy as np
import torch
from scipy import stats

from prunus.data.online import get_online
from prunus.datasets import load
from prunus.models import build_model
from prunus.train import Callback, Trainer

DEFAULT_METHODS = [
    "full(epochs=4)",
    "rs2(keep=0.4)",
    "rs2(keep=0.2,epochs=20)",
    "infobatch(keep=0.3)",
    "selective_backprop(keep=0.5)",
    "rho_loss(keep=0.5)",
    "reweight(temperature=1)",
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table_from:
        print_saved_tables(args.table_from, args)
        return
    torch.set_num_threads(args.threads)
    out = open(args.out, "a", encoding="utf-8") if args.out else None  # noqa: SIM115
    print(
        f"# mnist1d, cnn1d, reference: full data {args.epochs} epochs, batch {args.batch_size}, "
        f"AdamW lr {args.lr} one-cycle; seeds {args.seeds}; threads {args.threads}; "
        f"eval every {args.eval_fraction:.0%} of reference steps on {args.test_size} test "
        f"examples; limit {args.limit}x reference {args.clock} time",
        flush=True,
    )
    for size in args.sizes:
        data = load("mnist1d", train_size=size, test_size=args.test_size, seed=args.data_seed)
        ref_steps = args.epochs * math.ceil(size / args.batch_size)
        eval_every = max(1, int(args.eval_fraction * ref_steps))
        runs: dict[str, list[dict[str, Any]]] = {"full": []}
        for spec in args.methods:
            runs.setdefault(spec, [])
        for seed in args.seeds:
            ref = run_one(data, "full", {}, seed, args, eval_every, limit=None, target=None)
            runs["full"].append(ref)
            log(out, size, "full", seed, ref)
            limit = args.limit * ref[args.clock]
            target = ref["final_accuracy"] - args.targets[0] / 100
            for spec in args.methods:
                name, settings = parse_spec(spec)
                run = run_one(data, name, settings, seed, args, eval_every, limit, target)
                runs[spec].append(run)
                log(out, size, spec, seed, run)
        print_table(size, runs, args)
    if out:
        out.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[40_000, 200_000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--epochs", type=int, default=10, help="reference epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--targets", type=float, nargs=2, default=[0.5, 1.0], help="pp below ref")
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--limit", type=float, default=1.5, help="× reference time (see --clock)")
    p.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="clock of the time limit: charged wall seconds, or process CPU seconds (steadier "
        "when other jobs share the machine)",
    )
    p.add_argument("--test-size", type=int, default=10_000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-at-target", action="store_true")
    p.add_argument("--out", help="append one JSON line per run to this file")
    p.add_argument(
        "--table-from", help="print the tables of the seeds completed in a file written by --out"
    )
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods if m != "full"]
    return args


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    match = re.fullmatch(r"\s*([a-z_0-9]+)\s*(?:\((.*)\))?\s*", spec)
    if not match:
        sys.exit(f"method spec must look like name or name(key=value,...) (got {spec!r})")
    settings = {}
    for pair in filter(None, (match.group(2) or "").split(",")):
        key, _, raw = pair.partition("=")
        try:
            settings[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key.strip()] = raw.strip()
    return match.group(1), settings


class Budget(Callback):
    """Measures charged wall and process-CPU seconds at each evaluation; enforces the limit.

    Both clocks run from ``fit_start`` (this callback comes first, so a method's own fit_start
    work — RHO-LOSS's holdout model — is charged) and exclude evaluation: an evaluation always
    follows a ``batch_end``, so its cost is the time between that mark and ``on_evaluation``.
    """

    def __init__(self, limit: float | None, clock: str, target: float | None, stop: bool):
        self.limit, self.clock, self.target, self.stop_at_target = limit, clock, target, stop
        self.rows: list[dict[str, Any]] = []
        self.hit_limit = False

    def on_fit_start(self, state) -> None:
        now = clocks()
        self.start, self.mark, self.excluded = now, now, {"wall": 0.0, "cpu": 0.0}

    def spent(self, clock: str) -> float:
        """Seconds of ``clock`` up to the last mark, evaluation excluded."""
        return self.mark[clock] - self.start[clock] - self.excluded[clock]

    def on_batch_end(self, state) -> None:
        self.mark = clocks()
        if self.limit is not None and self.spent(self.clock) > self.limit:
            state.stop = self.hit_limit = True

    def on_evaluation(self, state) -> None:
        now = clocks()
        spent = {clock: self.spent(clock) for clock in ("wall", "cpu")}
        for clock in ("wall", "cpu"):
            self.excluded[clock] += now[clock] - self.mark[clock]
        self.mark = now
        row = state.last_eval
        self.rows.append(
            {
                "step": row["step"],
                "cadence": not row["end_of_epoch"],
                "accuracy": row["accuracy"],
                **spent,
                "meter_seconds": charged(row),
                "backpropagated": row["examples_backpropagated"],
                "flops": row["flops"],
            }
        )
        if self.stop_at_target and self.target is not None and row["accuracy"] >= self.target:
            state.stop = True


def clocks() -> dict[str, float]:
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def charged(row: dict[str, float]) -> float:
    """The compute meter's charged seconds in an evaluation row (for cross-checking)."""
    return sum(row.get(f"{p}_seconds", 0.0) for p in ("train", "scoring", "selection"))


def run_one(data, name, settings, seed, args, eval_every, limit, target) -> dict[str, Any]:
    settings = dict(settings)
    epochs = int(settings.pop("epochs", args.epochs))
    callbacks: list[Callback] = [Budget(limit, args.clock, target, args.stop_at_target)]
    if name != "full":
        callbacks.append(get_online(name, seed=seed, **settings))
    model = build_model("cnn1d", data.input_shape, data.num_classes, seed=seed)
    trainer = Trainer(
        model, data, callbacks=callbacks, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
        seed=seed, device="cpu", eval_every=eval_every,
    )
    trainer.fit()
    rows = callbacks[0].rows
    return {
        "rows": rows,
        "final_accuracy": rows[-1]["accuracy"],
        "wall": rows[-1]["wall"],
        "cpu": rows[-1]["cpu"],
        "backpropagated": rows[-1]["backpropagated"],
        "hit_limit": callbacks[0].hit_limit,
    }


def print_saved_tables(path: str, args) -> None:
    """Tables from saved runs: per size, the seeds whose reference and methods all finished."""
    by_size: dict[int, dict[int, dict[str, dict[str, Any]]]] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            run = json.loads(line)
            by_size.setdefault(run["size"], {}).setdefault(run["seed"], {})[run["spec"]] = run
    for size, seeds in sorted(by_size.items()):
        specs = ["full", *[s for s in next(iter(seeds.values())) if s != "full"]]
        for seed_runs in seeds.values():
            specs += [s for s in seed_runs if s not in specs]
        complete = [r for r in seeds.values() if all(s in r for s in specs)]
        print(f"# {len(complete)} complete seeds: {sorted(r['full']['seed'] for r in complete)}")
        if complete:
            print_table(size, {s: [r[s] for r in complete] for s in specs}, args)


def time_to(run: dict[str, Any], target: float, clock: str) -> float:
    """First charged time at which a cadence (or the final) evaluation reached ``target``."""
    rows = run["rows"]
    for i, row in enumerate(rows):
        if (row["cadence"] or i == len(rows) - 1) and row["accuracy"] >= target - 1e-12:
            return row[clock]
    return math.inf


def log(out, size, spec, seed, run) -> None:
    print(
        f"  size {size} seed {seed} {spec:<32} final {100 * run['final_accuracy']:.2f}% "
        f"wall {run['wall']:.1f}s cpu {run['cpu']:.1f}s",
        flush=True,
    )
    if out:
        out.write(json.dumps({"size": size, "spec": spec, "seed": seed, **run}) + "\n")
        out.flush()


def geometric_ci(ratios: list[float]) -> str:
    finite = [r for r in ratios if math.isfinite(r)]
    if not finite:
        return "not reached"
    logs = np.log(finite)
    mean = float(np.mean(logs))
    if len(finite) == 1:
        return f"{math.exp(mean):.2f}"
    half = stats.t.ppf(0.975, len(finite) - 1) * np.std(logs, ddof=1) / math.sqrt(len(finite))
    return f"{math.exp(mean):.2f} [{math.exp(mean - half):.2f}, {math.exp(mean + half):.2f}]"


def mean_ci(values: list[float]) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():.2f} ± {half:.2f}"


def print_table(size: int, runs: dict[str, list[dict[str, Any]]], args) -> None:
    refs = runs["full"]
    n = len(refs)
    header = f"{'method':<30}"
    for delta in args.targets:
        reach = f"reach -{delta:g}pp"
        header += f" {reach:>11} {'wall ratio':>18} {'cpu ratio':>18}"
    header += f" {'final acc %':>13} {'bwd ex':>7} {'wall s':>7} {'cpu s':>6} {'cut':>3}"
    print(f"\n## mnist1d train_size={size}, {n} seeds: time to (reference final acc − δ) as a "
          f"ratio to the reference's, geometric mean [95% CI] over the seeds that reached it")
    print(header)
    print("-" * len(header))
    for spec, method_runs in runs.items():
        line = f"{'full (reference)' if spec == 'full' else spec:<30}"
        for delta in args.targets:
            wall, cpu, reached = [], [], 0
            for ref, run in zip(refs, method_runs):
                target = ref["final_accuracy"] - delta / 100
                reached += math.isfinite(time_to(run, target, "wall"))
                wall.append(time_to(run, target, "wall") / time_to(ref, target, "wall"))
                cpu.append(time_to(run, target, "cpu") / time_to(ref, target, "cpu"))
            line += f" {f'{reached}/{n}':>11} {geometric_ci(wall):>18} {geometric_ci(cpu):>18}"
        final = mean_ci([100 * r["final_accuracy"] for r in method_runs])
        bwd = np.mean([
            r["backpropagated"] / f["backpropagated"]
            for r, f in zip(method_runs, refs)
        ])
        wall_s = np.mean([r["wall"] for r in method_runs])
        cpu_s = np.mean([r["cpu"] for r in method_runs])
        cut = sum(r["hit_limit"] for r in method_runs)
        line += f" {final:>13} {bwd:>6.2f}x {wall_s:>7.1f} {cpu_s:>6.1f} {cut:>3}"
        print(line)
    print(
        "wall/cpu ratio: charged wall seconds / process CPU seconds (evaluation excluded); "
        "bwd ex: examples backpropagated / reference's; wall s, cpu s: per run, to its end; "
        "cut: runs stopped by the time limit",
        flush=True,
    )


if __name__ == "__main__":
    main()
