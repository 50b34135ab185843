"""GraNd speed: prunus's hook-based exact per-example gradient norms vs a per-example autograd
loop vs torch.func vmap(grad), on the same examples, in one process; and EL2N/loss scoring
throughput vs a bare ``torch.inference_mode()`` forward over the same data.

Each repeat runs every method once (in rotating order) over the same N examples; the table
shows medians over repeats, the speedup over the loop, and the cost relative to one plain
batched forward + backward of the same data (the floor). All methods are checked to agree.

    python benchmarks/grand_speed.py --models cnn1d mlp --examples 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
