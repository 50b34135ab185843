"""GraNd exact or refused, measured: prunus's per-example gradient norms against an independent
per-example autograd loop (one ``backward`` per example) and, on a plain model, opacus's
per-sample gradients; the path prunus took (layer hooks or whole-model ``torch.func``) and the
time of each, side by side in one process.

    python benchmarks/grand_oracle.py [--examples 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from prunus.data.scores import grand
from prunus.data.scores.grand import per_example_grad_norms
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.weights import prune


def loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The oracle: one backward per example in eval mode, norm of every trainable ``.grad``."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norms.append(torch.sqrt(sum(p.grad.double().square().sum()
                                    for p in params if p.grad is not None)))
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


class TiedLM(nn.Module):
    """An embedding shared with the output layer plus a parameter owned by the root module."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.scale = nn.Parameter(torch.randn(dim))
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.embed(x) * self.scale)).mean(1))


class WithPReLU(nn.Module):
    """Supported layers (conv, linear) around a learnable PReLU, which the hooks do not cover."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5)
        self.act = nn.PReLU(4)
        self.head = nn.Linear(4 * 36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


class Mixed(nn.Module):
    """Supported layers (conv, linear) around a GRU, which neither path can do exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5)
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.conv(x).transpose(1, 2))
        return self.head(h[:, -1])


def cases(n: int):
    """(name, model, x, y) for each kind of model the issue names."""
    torch.manual_seed(0)
    signal = torch.randn(n, 1, 40)
    labels = torch.randint(0, 10, (n,))
    yield "mlp (plain)", build_model("mlp", (1, 40), 10, seed=0), signal, labels
    yield "cnn1d (plain)", build_model("cnn1d", (1, 40), 10, seed=0), signal, labels
    yield "tied embedding + root parameter", TiedLM(), torch.randint(0, 50, (n, 12)), \
        torch.randint(0, 50, (n,))
    for sparsity in (0.5, 0.9):
        model = build_model("cnn1d", (1, 40), 10, seed=0)
        prune(model, sparsity)
        yield f"cnn1d pruned to {sparsity:.0%} (masked)", model, signal, labels
    yield "conv + PReLU + linear (mixed)", WithPReLU(), signal, labels
    yield "conv + GRU + linear (mixed)", Mixed(), signal, labels


def path_taken(model, x, y) -> tuple[torch.Tensor, str]:
    taken = []
    whole = grand._vmap_norms
    grand._vmap_norms = lambda *a, **k: taken.append("torch.func") or whole(*a, **k)
    try:
        return per_example_grad_norms(model, x, y), (taken[0] if taken else "hooks")
    finally:
        grand._vmap_norms = whole


def median_seconds(fn, args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opacus_row(n: int) -> str:
    try:
        import opacus
    except ImportError:
        return "opacus is not installed (pip install opacus): its column is skipped."
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 32),
                          nn.Tanh(), nn.Linear(32, 10))
    x, y = torch.randn(n, 1, 40), torch.randint(0, 10, (n,))
    got = per_example_grad_norms(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = opacus.GradSampleModule(model, loss_reduction="sum")
        F.cross_entropy(sampled(x), y, reduction="sum").backward()
    want = sum(p.grad_sample.flatten(1).double().square().sum(1)
               for p in model.parameters()).sqrt()
    sampled._close()
    error = ((got.double() - want).abs() / want).max().item()
    return f"opacus {opacus.__version__} on a plain conv/linear model: max relative difference {error:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.examples} examples, 1 thread, median of {args.repeats} repeats")
    print(f"{'model':34} {'path':10} {'max rel. error':>14} {'prunus s':>9} {'loop s':>8} {'speed-up':>8}")
    for name, model, x, y in cases(args.examples):
        try:
            got, path = path_taken(model, x, y)
        except PrunusError as error:
            print(f"{name:34} refused: {str(error)[:90]}…")
            continue
        want = loop_norms(model, x, y)
        error = ((got.double() - want).abs() / want.clamp_min(1e-12)).max().item()
        ours = median_seconds(per_example_grad_norms, (model, x, y), args.repeats)
        loop = median_seconds(loop_norms, (model, x, y), args.repeats)
        print(f"{name:34} {path:10} {error:14.1e} {ours:9.3f} {loop:8.3f} {loop / ours:7.1f}x")
    print(opacus_row(args.examples))


if __name__ == "__main__":
    main()
