"""Scoring cost: GraNd speed (prunus's hook-based exact per-example gradient norms vs a
per-example autograd loop vs torch.func vmap(grad), on the same examples, in one process);
EL2N/loss scoring throughput vs a bare ``torch.inference_mode()`` forward over the same data;
and the peak memory of scoring a large MNIST-1D training set.

Each repeat runs every method once (in rotating order) over the same N examples; the table
shows medians over repeats, the speedup over the loop, and the cost relative to one plain
batched forward + backward of the same data (the floor). All methods are checked to agree.

Memory: each score method runs in a fresh child process that loads mnist1d (``--memory-examples``
training examples, default 200,000) and builds an untrained ``cnn1d`` (memory does not depend on
the weights); the child then resets its peak-RSS counter (``/proc/self/clear_refs``), scores
every example and reports ``VmHWM``. The table compares that peak with the resident size just
before scoring (interpreter, torch, model and data) and with the bytes of the data itself:
streaming scoring should add O(batch + N scalars), not O(N × parameters).

    python benchmarks/scoring.py --models cnn1d mlp --examples 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from prunus.data.scores.grand import per_example_grad_norms
from prunus.data.scores.loss import el2n_scores, loss_scores
from prunus.datasets import Dataset
from prunus.models import build_model

SHAPES = {"cnn1d": (1, 40), "mlp": (1, 40), "cnn": (1, 8, 8), "resnet_tiny": (1, 40)}


def prunus_hooks(model, x, y, batch):
    return torch.cat([per_example_grad_norms(model, x[i : i + batch], y[i : i + batch])
                      for i in range(0, len(x), batch)])


def autograd_loop(model, x, y, batch):
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        out.append(torch.sqrt(sum(g.double().square().sum() for g in grads)))
    return torch.stack(out)


def func_vmap(model, x, y, batch):
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_one(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for i in range(0, len(x), batch):
        grads = per_example(params, x[i : i + batch], y[i : i + batch])
        out.append(sum(g.flatten(1).double().square().sum(1) for g in grads.values()).sqrt())
    return torch.cat(out)


def plain_forward_backward(model, x, y, batch):
    """The floor: one batched forward + backward (mean loss), no per-example anything."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(0, len(x), batch):
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        torch.autograd.grad(loss, params)


METHODS = {
    "prunus GraNd (hooks)": prunus_hooks,
    "torch.func vmap(grad)": func_vmap,
    "per-example autograd loop": autograd_loop,
    "plain batched fwd+bwd (floor)": plain_forward_backward,
}


def bench(name: str, examples: int, batch: int, repeats: int, device: str, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    model = build_model(name, SHAPES[name], 10, seed=seed).to(device)
    x = torch.randn(examples, *SHAPES[name], device=device)
    y = torch.randint(0, 10, (examples,), device=device)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm running statistics
        for i in range(0, examples, batch):
            model(x[i : i + batch])
    times = {m: [] for m in METHODS}
    results = {}
    order = list(METHODS)
    for m in order:  # warm-up (first-call costs of torch.func, allocator)
        results[m] = METHODS[m](model, x[:batch], y[:batch], batch)
    for r in range(repeats):
        for m in order[r % len(order):] + order[: r % len(order)]:
            _sync(device)
            start = time.perf_counter()
            out = METHODS[m](model, x, y, batch)
            _sync(device)
            times[m].append(time.perf_counter() - start)
            if out is not None:
                results[m] = out
    reference = results["per-example autograd loop"].double()
    rows = []
    loop = statistics.median(times["per-example autograd loop"])
    floor = statistics.median(times["plain batched fwd+bwd (floor)"])
    for m in order:
        median = statistics.median(times[m])
        err = None
        if results[m] is not None:
            err = float(((results[m].double() - reference).abs() / reference).max())
        rows.append({"model": name, "method": m, "median_s": median, "ex_per_s": examples / median,
                     "vs_loop": loop / median, "vs_floor": median / floor, "max_rel_err": err})
    return rows


def bench_forward(name: str, examples: int, repeats: int, seed: int) -> list[dict]:
    """EL2N and loss scoring vs a bare inference forward (batch 1024, CPU), medians."""
    torch.manual_seed(seed)
    model = build_model(name, SHAPES[name], 10, seed=seed).eval()
    x = torch.randn(examples, *SHAPES[name])
    y = torch.randint(0, 10, (examples,))
    data = Dataset("bench", torch.arange(examples).numpy(), x.numpy(), y.numpy(), 10)

    def bare(_):
        with torch.inference_mode():
            for i in range(0, examples, 1024):
                model(x[i : i + 1024])

    methods = {"bare inference forward": bare, "EL2N scores": lambda d: el2n_scores(model, d),
               "loss scores": lambda d: loss_scores(model, d)}
    times = {m: [] for m in methods}
    order = list(methods)
    for m in order:
        methods[m](data)
    for r in range(repeats):
        for m in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            methods[m](data)
            times[m].append(time.perf_counter() - start)
    bare_s = statistics.median(times["bare inference forward"])
    return [{"model": name, "method": m, "median_s": statistics.median(times[m]),
             "ex_per_s": examples / statistics.median(times[m]),
             "vs_bare": bare_s / statistics.median(times[m])} for m in order]


MEMORY_CHILD = """
import gc, json, os, time
import torch
torch.set_num_threads(1)
from prunus.datasets import load
from prunus.models import build_model
from prunus.data.scores.grand import grand_scores
from prunus.data.scores.loss import el2n_scores, loss_scores

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None

data = load("mnist1d", train_size={examples}, test_size=100, seed=0)
model = build_model("cnn1d", data.input_shape, data.num_classes, seed=0)
method = "{method}"
limit = {limit_mib} * 2 ** 20
done = [0]

def watch(examples):
    # stop a run whose resident size passes the limit (reported, not fatal)
    done[0] += examples  # progress reports the examples of each batch
    if method == "grand_gc":
        gc.collect()
    if status("VmRSS") > limit:
        raise MemoryError(examples)

before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
start = time.perf_counter()
stopped_at = None
try:
    if method == "el2n":
        scores = el2n_scores(model, data, batch_size={batch}, progress=watch)
    elif method == "loss":
        scores = loss_scores(model, data, batch_size={batch}, progress=watch)
    elif method in ("grand", "grand_gc"):
        scores = grand_scores(model, data, batch_size={batch}, progress=watch)
    else:
        scores = None
except MemoryError:
    scores, stopped_at = None, done[0]
seconds = time.perf_counter() - start
print(json.dumps({{
    "before": before, "peak": status("VmHWM"), "reset": reset, "seconds": seconds,
    "data_bytes": int(data.x.nbytes + data.y.nbytes + data.ids.nbytes),
    "params": sum(p.numel() for p in model.parameters()),
    "scores_bytes": 0 if scores is None else int(scores.nbytes), "stopped_at": stopped_at,
}}))
"""

MEMORY_METHODS = {"data only (no scoring)": ("none", 1024), "EL2N (batch 1024)": ("el2n", 1024),
                  "loss (batch 1024)": ("loss", 1024), "GraNd exact (batch 256)": ("grand", 256),
                  "GraNd + gc.collect()/batch": ("grand_gc", 256)}


def bench_memory(examples: int, limit_mib: int) -> list[dict]:
    """Peak RSS of scoring ``examples`` mnist1d examples with an untrained cnn1d, per method,
    each in a fresh child process (1 torch thread). A first child fills the dataset cache, so
    every measured child reads the same cached arrays."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for label, (method, batch) in [("cache warm-up", ("none", 1024)), *MEMORY_METHODS.items()]:
        code = MEMORY_CHILD.format(examples=examples, method=method, batch=batch,
                                   limit_mib=limit_mib)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {label} failed:\n{done.stderr[-2000:]}")
        if label != "cache warm-up":
            rows.append({"method": label, "examples": examples,
                         **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn1d", "mlp"], choices=sorted(SHAPES))
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forward-examples", type=int, default=20000,
                        help="examples for the EL2N/loss vs bare forward table (0 skips it)")
    parser.add_argument("--memory-examples", type=int, nargs="*", default=[20_000, 200_000],
                        help="mnist1d training set sizes for the peak-memory table (none skips it)")
    parser.add_argument("--memory-limit-mib", type=int, default=4096,
                        help="a memory child whose RSS passes this stops scoring and says so")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; "
          f"{args.examples} examples, batch {args.batch}, median of {args.repeats} repeats, seed {args.seed}")
    header = (f"{'model':<8} {'method':<31} {'median s':>9} {'examples/s':>11} "
              f"{'speedup vs loop':>16} {'x floor':>8} {'max rel err':>12}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        for row in bench(name, args.examples, args.batch, args.repeats, args.device, args.seed):
            err = "-" if row["max_rel_err"] is None else f"{row['max_rel_err']:.1e}"
            print(f"{row['model']:<8} {row['method']:<31} {row['median_s']:>9.3f} {row['ex_per_s']:>11,.0f} "
                  f"{row['vs_loop']:>15.1f}x {row['vs_floor']:>7.2f}x {err:>12}")
    if args.forward_examples:
        print()
        print(f"forward-only scores: {args.forward_examples} examples, batch 1024, CPU, "
              f"median of {args.repeats} repeats (throughput relative to the bare forward)")
        header = f"{'model':<8} {'method':<31} {'median s':>9} {'examples/s':>11} {'vs bare':>8}"
        print(header)
        print("-" * len(header))
        for name in args.models:
            for row in bench_forward(name, args.forward_examples, args.repeats, args.seed):
                print(f"{row['model']:<8} {row['method']:<31} {row['median_s']:>9.3f} "
                      f"{row['ex_per_s']:>11,.0f} {row['vs_bare']:>7.2f}x")
    if args.memory_examples:
        mib = 2.0 ** 20
        rows = [row for n in args.memory_examples
                for row in bench_memory(n, args.memory_limit_mib)]
        print()
        print(f"peak memory: mnist1d, untrained cnn1d ({rows[0]['params']:,} parameters), fresh "
              f"process per row, 1 thread; 'added' = peak RSS while scoring - RSS just before "
              f"(interpreter, torch, model and data loaded)")
        header = (f"{'examples':>9} {'method':<26} {'data MiB':>9} {'RSS before MiB':>15} "
                  f"{'peak MiB':>9} {'added MiB':>10} {'scores MiB':>11} {'seconds':>8}")
        print(header)
        print("-" * len(header))
        for row in rows:
            peak = "n/a" if not row["reset"] else f"{row['peak'] / mib:.1f}"
            added = "n/a" if not row["reset"] else f"{(row['peak'] - row['before']) / mib:.1f}"
            print(f"{row['examples']:>9,} {row['method']:<26} {row['data_bytes'] / mib:>9.1f} "
                  f"{row['before'] / mib:>15.1f} {peak:>9} {added:>10} "
                  f"{row['scores_bytes'] / mib:>11.2f} {row['seconds']:>8.1f}"
                  + (f"  stopped: RSS passed {args.memory_limit_mib} MiB after "
                     f"{row['stopped_at']:,} examples" if row["stopped_at"] is not None else ""))
        largest = max(args.memory_examples)
        dense = largest * rows[0]["params"] * 4 / mib
        print(f"(for scale: materialising every per-example gradient of {largest:,} examples "
              f"would take {largest:,} x {rows[0]['params']:,} x 4 B = {dense:,.0f} MiB)")


if __name__ == "__main__":
    main()
