"""Compute meter: wall seconds by phase, examples forwarded/backpropagated, FLOPs, memory."""

from __future__ import annotations

import copy
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

PHASES = ("train", "eval", "scoring", "selection")


@dataclass
class PhaseClock:
    """Wall seconds by phase (train, eval, scoring, selection), nested blocks never counted
    twice; the base of every meter."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    _running: list[list] = field(default_factory=list, repr=False)  # [phase, since] stack

    @contextmanager
    def timing(self, phase: str):
        """Add the wall time of the ``with`` block to ``phase``.

        Blocks nest: an inner phase (e.g. an evaluation inside the training loop) pauses the
        outer one, so no second is counted twice. ``running_seconds`` includes the open block.
        """
        now = time.perf_counter()
        if self._running:  # pause the enclosing phase
            outer = self._running[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self._running.append([phase, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            _, start = self._running.pop()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + end - start
            if self._running:  # resume the enclosing phase
                self._running[-1][1] = end

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def running_seconds(self) -> dict[str, float]:
        """Seconds by phase, the running phase included up to now."""
        seconds = dict(self.seconds)
        if self._running:
            phase, since = self._running[-1]
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - since
        return seconds


@dataclass
class ComputeMeter(PhaseClock):
    """Counts what a run spends.

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, measured once per example
    shape (forward and backward apart, and per module) and scaled by the number of examples.
    The *theoretical* cost of a sparse model is per layer: weight-sparsity callbacks set
    ``layer_density`` (module name -> kept fraction of its weight), and each such module's
    FLOPs count times its density while every other module counts in full (a conv at 96.6%
    sparsity contributes 3.4% of its dense FLOPs). ``density`` is the overall kept fraction of
    the prunable weights (reported; it scales the FLOPs uniformly only when ``layer_density``
    is empty, for callers that set nothing else).
    """

    examples_forwarded: int = 0
    examples_backpropagated: int = 0
    flops: float = 0.0
    density: float = 1.0
    layer_density: dict[str, float] = field(default_factory=dict)
    _per_example: dict[tuple, tuple[float, float]] = field(default_factory=dict, repr=False)
    _per_module: dict[tuple, tuple[dict, dict]] = field(default_factory=dict, repr=False)

    def charge(self, phase: str, seconds: float, flops: float = 0.0) -> None:
        """Charge work done elsewhere (e.g. a share of a cached score table's cost)."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.flops += flops

    def count(
        self, model: nn.Module, x: torch.Tensor, forwarded: int, backpropagated: int
    ) -> None:
        """Count ``forwarded`` forward passes and ``backpropagated`` backward passes of
        examples shaped like ``x[0]``."""
        fwd, bwd = self.theoretical_flops_per_example(model, x)
        self.examples_forwarded += forwarded
        self.examples_backpropagated += backpropagated
        self.flops += fwd * forwarded + bwd * backpropagated

    def flops_per_example(self, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
        """Dense (forward, backward) FLOPs per example shaped like ``x[0]``."""
        key = self._measure(model, x)
        return self._per_example[key]

    def theoretical_flops_per_example(self, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
        """(forward, backward) FLOPs per example with each masked layer's FLOPs scaled by its
        density (``layer_density``); without per-layer densities, dense × ``density``."""
        key = self._measure(model, x)
        fwd, bwd = self._per_example[key]
        if not self.layer_density:
            return self.density * fwd, self.density * bwd
        fwd_by, bwd_by = self._per_module[key]
        for name, density in self.layer_density.items():
            fwd -= (1.0 - density) * fwd_by.get(name, 0.0)
            bwd -= (1.0 - density) * bwd_by.get(name, 0.0)
        return max(fwd, 0.0), max(bwd, 0.0)

    def _measure(self, model: nn.Module, x: torch.Tensor) -> tuple:
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._per_example:
            fwd, bwd, fwd_by, bwd_by = measure_flops(model, x[:8], by_module=True)
            self._per_example[key] = (fwd, bwd)
            self._per_module[key] = (fwd_by, bwd_by)
        return key

    def snapshot(self) -> dict[str, float]:
        """Cumulative counters as a flat dict (for per-epoch rows), the running phase included
        up to now (so a mid-epoch row has the training time spent so far)."""
        seconds = self.running_seconds()
        row = {f"{phase}_seconds": s for phase, s in seconds.items()}
        row.update(
            total_seconds=sum(seconds.values()),
            examples_forwarded=self.examples_forwarded,
            examples_backpropagated=self.examples_backpropagated,
            flops=self.flops,
            peak_memory_mb=peak_memory_mb(),
        )
        return row


def measure_flops(model: nn.Module, x: torch.Tensor, by_module: bool = False):
    """(forward, backward) FLOPs per example of ``model`` on a batch like ``x``.

    With ``by_module``, returns ``(forward, backward, forward_by_module, backward_by_module)``
    where the dicts map module names (as in ``model.named_modules()``, ``""`` for the model
    itself) to per-example FLOPs of that module, its submodules included.

    Runs on a copy of the model so that gradients, batch-norm statistics and RNG state of the
    real run are untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model)
    probe.train(model.training)
    rng = torch.get_rng_state()
    try:
        with FlopCounterMode(display=False) as counter:
            out = probe(x)
        forward = counter.get_total_flops()
        forward_by = _module_flops(counter)
        with FlopCounterMode(display=False) as counter:
            out = probe(x)
            out.float().sum().backward()
        both = counter.get_total_flops()
        both_by = _module_flops(counter)
    finally:
        torch.set_rng_state(rng)
    n = max(len(x), 1)
    if not by_module:
        return forward / n, max(both - forward, 0) / n
    fwd_by = {k: v / n for k, v in forward_by.items()}
    bwd_by = {k: max(both_by.get(k, 0) - forward_by.get(k, 0), 0) / n for k in both_by}
    return forward / n, max(both - forward, 0) / n, fwd_by, bwd_by


def _module_flops(counter) -> dict[str, float]:
    """Total FLOPs per module name from a FlopCounterMode (keys there are prefixed by the
    root module's class name: ``"Sequential.0"`` is module ``"0"``, ``"Sequential"`` is ``""``)."""
    out: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key.partition(".")[2]
        out[name] = out.get(name, 0.0) + float(sum(ops.values()))
    return out


def peak_memory_mb() -> float:
    """Peak memory of this process (CUDA allocator peak when a GPU is in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
