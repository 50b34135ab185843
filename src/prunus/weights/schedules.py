"""When to prune during training: one-shot, gradual (GMP), iterative with rewinding (IMP).

Each schedule is a trainer callback built on :class:`Sparsifier`, which owns the prunable set,
applies masks (zeroing the pruned weights, their gradients and optimizer state), and reports
the achieved sparsity as ``state.extra["sparsity"]``, ``state.meter.density`` (the kept
fraction of prunable weights) and ``state.meter.layer_density`` (each masked layer's kept
fraction, which scales that layer's *theoretical* FLOPs). Pruning done before the
first step (at initialisation) is charged to the ``scoring`` phase of the compute meter;
pruning during training runs inside the timed training loop, so it is in ``train`` seconds.

Step numbers count optimizer steps already taken (``state.step`` at ``batch_start``); fractions
such as ``at=0.5`` are fractions of ``state.total_steps``.
"""

from __future__ import annotations

import torch

from prunus.counts import fraction_count
from prunus.errors import PrunusError
from prunus.train.events import Callback
from prunus.weights.masks import (
    PrunableWeight,
    check_sparsity,
    layer_densities,
    masks_of,
    plain_state,
    prunable_weights,
    zero_pruned,
)
from prunus.weights.nm import pattern_sparsity
from prunus.weights.pruning import prune


def gmp_sparsity(
    step: int,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    start_step: int = 0,
    end_step: int = 1,
    every: int = 1,
) -> float:
    """Gradual magnitude pruning schedule (Zhu & Gupta 2017, *To prune, or not to prune*).

    s_t = s_f + (s_i − s_f)·(1 − (t − t₀)/(n·Δt))³ for t₀ ≤ t ≤ t₀ + n·Δt, where t is rounded
    down to the last pruning step t₀ + j·Δt (``every`` = Δt, ``end_step`` = t₀ + n·Δt).
    Before ``start_step`` the sparsity is 0; from ``end_step`` on it is ``final_sparsity``.
    """
    if step < start_step:
        return 0.0
    if step >= end_step:
        return final_sparsity
    every = max(int(every), 1)
    t = start_step + ((step - start_step) // every) * every
    progress = (t - start_step) / max(end_step - start_step, 1)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


class Sparsifier(Callback):
    """Base of the weight-sparsity callbacks (see the module docstring).

    Args:
        sparsity: target fraction of prunable weights pruned, in [0, 1).
        scope: ``"global"`` (one threshold, default) or ``"layer"``.
        allocation: ``"uniform"`` (default) or ``"erk"`` per-layer densities (``scope="layer"``).
        min_density: minimum kept fraction per layer (default 0).
        layers, include_first, include_last: which layers are prunable.
        seed: seeds random scores, random masks and scoring batches.
        batch_size: examples in the batch that data-driven criteria score on (default 128).
    """

    name = "sparsifier"

    def __init__(
        self,
        sparsity: float,
        *,
        scope: str = "global",
        allocation: str = "uniform",
        min_density: float = 0.0,
        layers: list[str] | None = None,
        include_first: bool = True,
        include_last: bool = True,
        seed: int = 0,
        batch_size: int = 128,
    ) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.scope = scope
        self.allocation = allocation
        self.min_density = min_density
        self.layers = layers
        self.include_first = include_first
        self.include_last = include_last
        self.seed = seed
        self.batch_size = batch_size
        self.targets: list[PrunableWeight] = []
        self.total_steps = 0

    # -- events ------------------------------------------------------------------------
    def on_fit_start(self, state) -> None:
        self.targets = prunable_weights(state.model, self.layers, self.include_first, self.include_last)
        self.total_steps = max(int(state.total_steps), 1)
        self.report(state)

    # -- helpers for subclasses ------------------------------------------------------------
    @property
    def prunable(self) -> int:
        return sum(t.numel for t in self.targets)

    def pruned(self, model) -> int:
        masks = masks_of(model)
        return sum(int((~masks[t.name]).sum()) for t in self.targets if t.name in masks)

    def report(self, state) -> None:
        """Publish the achieved sparsity of the prunable set, its density, and each masked
        layer's density (which scales that layer's theoretical FLOPs)."""
        sparsity = self.pruned(state.model) / self.prunable
        state.extra["sparsity"] = sparsity
        state.meter.density = 1.0 - sparsity
        state.meter.layer_density = layer_densities(state.model)

    def prune_to(self, state, sparsity: float, method: str = "magnitude", **settings) -> None:
        """Prune the prunable set to ``sparsity`` by ``method`` (pruned weights stay pruned)."""
        prune(
            state.model,
            sparsity,
            method,
            scope=settings.pop("scope", self.scope),
            allocation=settings.pop("allocation", self.allocation),
            data=state.train,
            min_density=self.min_density,
            layers=[t.name.rpartition(".")[0] for t in self.targets],
            seed=self.seed,
            optimizer=state.optimizer,
            batch_size=self.batch_size,
            device=state.device,
            input_shape=tuple(state.train.input_shape),
            **settings,
        )
        self.report(state)

    def step_at(self, fraction: float) -> int:
        return fraction_count(fraction, self.total_steps)


def restart_schedule(state, steps: int) -> None:
    """Replace the trainer's LR schedule by a fresh one over ``steps`` steps (LR rewinding)."""
    from prunus.train.trainer import build_scheduler

    state.scheduler = build_scheduler(state.optimizer, state.config, max(int(steps), 1))


class OneShot(Sparsifier):
    """Prune once, at initialisation (``at=0``) or after a fraction of training (then the rest
    of training fine-tunes the pruned network).

    Args:
        sparsity: see :class:`Sparsifier`.
        method: criterion (magnitude, random, gradient, snip, grasp, synflow; default magnitude).
        at: fraction of training steps before pruning (default 0: at initialisation).
        restart_lr: restart the LR schedule over the remaining steps after pruning (default False).
        pattern: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``).
        iterations: scoring rounds (default: 100 for synflow, 1 otherwise).
        **common: scope, allocation, min_density, layers, include_first, include_last, seed,
            batch_size (see :class:`Sparsifier`).
    """

    name = "oneshot"

    def __init__(
        self,
        sparsity: float,
        method: str = "magnitude",
        at: float = 0.0,
        restart_lr: bool = False,
        pattern: str = "unstructured",
        iterations: int | None = None,
        **common,
    ) -> None:
        super().__init__(sparsity, **common)
        pattern_sparsity(pattern, sparsity)  # an N:M pattern fixes the sparsity: refuse others
        if not 0.0 <= at < 1.0:
            raise PrunusError(f"at must be a fraction of training in [0, 1) (got {at!r}).")
        self.method = method
        self.at = at
        self.restart_lr = restart_lr
        self.pattern = pattern
        self.iterations = iterations
        self.done = False

    def on_fit_start(self, state) -> None:
        super().on_fit_start(state)
        self.done = False
        if self.step_at(self.at) == 0:
            with state.meter.timing("scoring"):
                self._prune(state)

    def on_batch_start(self, state) -> None:
        if not self.done and state.step >= self.step_at(self.at):
            self._prune(state)
            if self.restart_lr:
                restart_schedule(state, state.total_steps - state.step)

    def _prune(self, state) -> None:
        self.prune_to(
            state, self.sparsity, self.method, pattern=self.pattern, iterations=self.iterations
        )
        self.done = True


class GradualMagnitude(Sparsifier):
    """Gradual magnitude pruning (Zhu & Gupta 2017): prune every ``every`` steps following the
    cubic schedule of :func:`gmp_sparsity` from ``initial_sparsity`` at ``start`` to
    ``sparsity`` at ``end`` (fractions of training), then train on at the final sparsity.

    Args:
        sparsity: final sparsity.
        initial_sparsity: s_i (default 0).
        start, end: fractions of training where pruning starts/ends (defaults 0.1, 0.6).
        every: steps between pruning events (default: ``(end−start)·T/10`` capped at 100).
        method: criterion (default ``"magnitude"``).
        **common: see :class:`Sparsifier` (default scope ``"global"``).
    """

    name = "gmp"

    def __init__(
        self,
        sparsity: float,
        initial_sparsity: float = 0.0,
        start: float = 0.1,
        end: float = 0.6,
        every: int | None = None,
        method: str = "magnitude",
        **common,
    ) -> None:
        super().__init__(sparsity, **common)
        check_sparsity(initial_sparsity, "initial_sparsity")
        if not 0.0 <= start < end <= 1.0:
            raise PrunusError(f"start and end must satisfy 0 <= start < end <= 1 (got {start}, {end}).")
        if every is not None and every < 1:
            raise PrunusError(f"every must be a positive number of steps (got {every!r}).")
        self.initial_sparsity = min(initial_sparsity, self.sparsity)
        self.start, self.end, self.every, self.method = start, end, every, method

    def on_fit_start(self, state) -> None:
        super().on_fit_start(state)
        self.t0, self.t1 = self.step_at(self.start), max(self.step_at(self.end), self.step_at(self.start) + 1)
        self.dt = self.every or max(1, min(100, (self.t1 - self.t0) // 10))

    def target(self, step: int) -> float:
        return gmp_sparsity(step, self.sparsity, self.initial_sparsity, self.t0, self.t1, self.dt)

    def on_batch_start(self, state) -> None:
        if state.step < self.t0:
            return
        goal = self.target(state.step)
        if fraction_count(goal, self.prunable) > self.pruned(state.model):
            self.prune_to(state, goal, self.method)


class LotteryTicket(Sparsifier):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Training is split into ``rounds + 1`` equal segments. The weights (and buffers) are saved
    after ``k = round(rewind·segment)`` steps of the first segment. At the start of segment r
    (r = 1..rounds) the network is pruned by global magnitude to s_r = 1 − (1 − s)^(r/rounds)
    (each round removes the same fraction p = 1 − (1 − s)^(1/rounds) of the remaining
    weights; the last reaches s exactly), the surviving weights are rewound bit-exactly to the
    saved values, optimizer state is cleared, and the LR schedule restarts over the segment.
    All segments together take the trainer's epochs, so IMP here costs the same number of
    steps as the other methods (the papers train every round for a full schedule; give the
    trainer ``(rounds + 1)×`` the epochs to reproduce that).

    Args:
        sparsity: final sparsity.
        rounds: pruning rounds (default 3).
        rewind: rewind point as a fraction of the first segment (default 0.05; 0 = to init).
        method: criterion (default magnitude).
        **common: see :class:`Sparsifier` (default scope ``"global"``).
    """

    name = "imp"

    def __init__(self, sparsity: float, rounds: int = 3, rewind: float = 0.05, method: str = "magnitude", **common) -> None:
        super().__init__(sparsity, **common)
        if int(rounds) < 1:
            raise PrunusError(f"rounds must be a positive integer (got {rounds!r}).")
        if not 0.0 <= rewind < 1.0:
            raise PrunusError(f"rewind must be a fraction of a round in [0, 1) (got {rewind!r}).")
        self.rounds, self.rewind, self.method = int(rounds), rewind, method
        self.saved: dict[str, torch.Tensor] | None = None
        self.rewound = 0

    def on_fit_start(self, state) -> None:
        super().on_fit_start(state)
        self.segment = max(self.total_steps // (self.rounds + 1), 1)
        self.rewind_step = min(fraction_count(self.rewind, self.segment), self.segment - 1)
        self.saved = None
        self.rewound = 0

    def on_batch_start(self, state) -> None:
        t = state.step
        if t == 0:
            restart_schedule(state, self.segment)
        if t == self.rewind_step and self.saved is None:
            self.saved = {k: v.detach().clone() for k, v in plain_state(state.model).items()}
        r = t // self.segment
        if t % self.segment == 0 and 1 <= r <= self.rounds and r > self.rewound:
            goal = self.sparsity if r == self.rounds else 1.0 - (1.0 - self.sparsity) ** (r / self.rounds)
            self.prune_to(state, goal, self.method)
            rewind_weights(state.model, self.saved, state.optimizer)
            state.optimizer.state.clear()
            last = r == self.rounds
            restart_schedule(state, state.total_steps - t if last else self.segment)
            self.rewound = r


@torch.no_grad()
def rewind_weights(model, saved: dict[str, torch.Tensor], optimizer=None) -> None:
    """Copy ``saved`` (plain ``state_dict`` names) back into ``model``; masked weights get the
    saved values at kept positions and stay 0 at pruned ones."""
    masked = {t.name: t for t in _masked(model)}
    # tied weights (a language model's head and embedding) are in ``saved`` under both names
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(
        model.named_buffers(remove_duplicate=False)
    )
    for name, value in saved.items():
        dest = masked[name].weight if name in masked else tensors.get(name)
        if dest is None:
            raise PrunusError(f"cannot rewind {name!r}: the model has no such tensor.")
        dest.copy_(value)
    zero_pruned(model, optimizer)


def _masked(model):
    from prunus.weights.masks import masked_targets

    return masked_targets(model)


