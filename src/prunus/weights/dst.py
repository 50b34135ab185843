"""Dynamic sparse training: the mask changes during training (SET, RigL, GraNet).

Every ``every`` steps, until ``until`` of training, each layer drops the fraction ``α_t`` of its
active weights with the smallest magnitude and regrows the same number of inactive ones — at
random (SET) or where the dense gradient |∂L/∂θ| is largest (RigL, GraNet). Per-layer counts
are therefore constant between pruning events. Regrown weights start at exactly 0 with zero
optimizer state. The dense gradient is the gradient of the training loss of the current batch
with respect to the *effective* (masked) weight; it is captured from the regular backward pass
of that step (:class:`prunus.weights.masks.Mask` retains it), so it costs no extra pass.
The mask update happens after the backward pass and before the optimizer step; gradients at
positions that are pruned or regrown are zeroed, so those weights do not move in that step.
"""

from __future__ import annotations

import math

import torch

from prunus.counts import fraction_count
from prunus.errors import PrunusError
from prunus.weights.allocation import keep_top
from prunus.weights.masks import apply, masks_of
from prunus.weights.schedules import Sparsifier, gmp_sparsity


def drop_and_regrow(
    weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float, grow_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One drop-and-regrow update of one layer.

    Drops ``k = ⌊drop_fraction·active⌋`` active weights with the smallest |weight|, then grows
    the ``k`` weights with the highest ``grow_scores`` among those inactive after the drop
    (which may include just-dropped ones, as in RigL). Ties: lower flat index first.

    Returns:
        (new mask, bool tensor of the grown positions).
    """
    active = int(mask.sum())
    k = fraction_count(drop_fraction, active)
    after_drop = keep_top(weight.abs().masked_fill(~mask, -math.inf), active - k)
    grown = keep_top(grow_scores.float().masked_fill(after_drop, -math.inf), k)
    return after_drop | grown, grown


def cosine_fraction(step: int, stop_step: int, initial: float = 0.3) -> float:
    """RigL's drop-fraction decay: α_t = α/2·(1 + cos(π·t/T_end)); 0 from ``stop_step`` on."""
    if step >= stop_step:
        return 0.0
    return initial / 2.0 * (1.0 + math.cos(math.pi * step / max(stop_step, 1)))


class DynamicSparsity(Sparsifier):
    """Shared machinery of SET / RigL / GraNet (see the module docstring).

    Args:
        sparsity: target sparsity.
        every: steps between mask updates ΔT (default: 100, or fewer so that a short run still
            gets ≥ 10 updates).
        drop_fraction: α (default 0.3).
        decay: ``"cosine"`` (RigL, default) or ``"constant"`` (SET).
        until: fraction of training after which the mask is frozen (default 0.75).
        grow: ``"gradient"`` or ``"random"``.
        **common: see :class:`Sparsifier`; default allocation ``"erk"``, scope ``"layer"``.
    """

    grow = "gradient"

    def __init__(
        self,
        sparsity: float,
        every: int | None = None,
        drop_fraction: float = 0.3,
        decay: str = "cosine",
        until: float = 0.75,
        **common,
    ) -> None:
        common.setdefault("allocation", "erk")
        common.setdefault("scope", "layer")
        super().__init__(sparsity, **common)
        if every is not None and int(every) < 1:
            raise PrunusError(f"every must be a positive number of steps (got {every!r}).")
        if not 0.0 <= drop_fraction <= 1.0:
            raise PrunusError(f"drop_fraction must be in [0, 1] (got {drop_fraction!r}).")
        if decay not in ("cosine", "constant"):
            raise PrunusError(f"decay must be one of: constant, cosine (got {decay!r}).")
        if not 0.0 < until <= 1.0:
            raise PrunusError(f"until must be a fraction of training in (0, 1] (got {until!r}).")
        self.every, self.drop_fraction, self.decay, self.until = every, drop_fraction, decay, until
        self.updates = 0

    def on_fit_start(self, state) -> None:
        super().on_fit_start(state)
        self.stop = self.step_at(self.until)
        self.dt = int(self.every) if self.every else max(1, min(100, self.stop // 10))
        self.updates = 0
        with state.meter.timing("scoring"):
            self.initial_masks(state)

    def initial_masks(self, state) -> None:
        """Random masks with per-layer counts from ``allocation`` (sparse from the start)."""
        if self.sparsity > 0:
            self.prune_to(state, self.sparsity, "random", scope="layer")

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.dt == 0 and step < self.stop

    def fraction(self, step: int) -> float:
        if self.decay == "constant":
            return self.drop_fraction if step < self.stop else 0.0
        return cosine_fraction(step, self.stop, self.drop_fraction)

    def on_batch_start(self, state) -> None:
        if self.is_update_step(state.step) and self.grow == "gradient":
            self._set_capture(state.model, True)

    def on_after_backward(self, state) -> None:
        if not self.is_update_step(state.step):
            return
        grads = self._captured(state.model) if self.grow == "gradient" else None
        self._set_capture(state.model, False)
        self.before_regrow(state)
        self.regrow(state, grads)

    def before_regrow(self, state) -> None:
        """Hook for GraNet's gradual pruning (nothing for SET / RigL)."""

    @torch.no_grad()
    def regrow(self, state, grads: dict[str, torch.Tensor] | None) -> None:
        alpha = self.fraction(state.step)
        current = masks_of(state.model)
        if alpha <= 0:
            return
        gen = torch.Generator().manual_seed(hash((self.seed, state.step)) % (2**62))
        new_masks, grown_all = {}, {}
        for t in self.targets:
            mask = current.get(t.name)
            if mask is None or bool(mask.all()):
                continue  # dense layer: nothing inactive to regrow
            if grads is not None:
                if t.name not in grads:
                    continue
                scores = grads[t.name].abs()
            else:
                scores = torch.rand(t.shape, generator=gen).to(mask.device)
            new_mask, grown = drop_and_regrow(t.weight, mask, alpha, scores)
            new_masks[t.name], grown_all[t.name] = new_mask, grown
        apply(state.model, new_masks, state.optimizer)
        for t in self.targets:  # regrown weights start at 0 with zero optimizer state
            if t.name in grown_all:
                _zero_at(t.weight, grown_all[t.name], state.optimizer)
        self.updates += 1
        self.report(state)

    def _set_capture(self, model, on: bool) -> None:
        for t in self.targets:
            m = t.mask_module
            if m is not None:
                m.capture = on
                if not on:
                    m.last = None

    def _captured(self, model) -> dict[str, torch.Tensor]:
        grads = {}
        for t in self.targets:
            m = t.mask_module
            if m is None or not m.capture:
                continue  # masked only after this step's forward pass
            if m.last is None or m.last.grad is None:
                raise PrunusError(
                    f"{self.name} needs the dense gradient of {t.name!r}; it was not captured "
                    "(is the model compiled? use compile=False with dynamic sparse training)."
                )
            grads[t.name] = m.last.grad.detach()
        return grads


def _zero_at(original: torch.Tensor, where: torch.Tensor, optimizer) -> None:
    original.masked_fill_(where, 0.0)
    if original.grad is not None:
        original.grad.masked_fill_(where, 0.0)
    if optimizer is not None:
        for value in optimizer.state.get(original, {}).values():
            if torch.is_tensor(value) and value.shape == original.shape:
                value.masked_fill_(where, 0.0)


class SET(DynamicSparsity):
    """SET (Mocanu et al. 2018, *Scalable training of artificial neural networks with adaptive
    sparse connectivity*): start from a random sparse mask (ERK counts), every ΔT steps drop
    the fraction ζ (default 0.3, constant) of smallest-magnitude active weights per layer and
    regrow as many at random. Defaults as :class:`DynamicSparsity` with ``decay="constant"``.
    """

    name = "set"
    grow = "random"

    def __init__(self, sparsity: float, **settings) -> None:
        settings.setdefault("decay", "constant")
        super().__init__(sparsity, **settings)


class RigL(DynamicSparsity):
    """RigL (Evci et al. 2020, *Rigging the Lottery*): random ERK-sparse start; every ΔT (=100)
    steps until 75% of training drop α_t (cosine from α=0.3) of the smallest-magnitude active
    weights per layer and regrow the same number where |dense gradient| is largest; new weights
    start at 0. Defaults as :class:`DynamicSparsity`.
    """

    name = "rigl"
    grow = "gradient"


class GraNet(DynamicSparsity):
    """GraNet (Liu et al. 2021, *Sparse Training via Boosting Pruning Plasticity with
    Neuroregeneration*): gradual magnitude pruning from ``initial_sparsity`` (default 0:
    dense-to-sparse; > 0 starts from a random ERK mask: sparse-to-sparse) to ``sparsity``
    between ``start`` and ``end`` (defaults 0.1, 0.6 of training; cubic schedule of
    :func:`~prunus.weights.schedules.gmp_sparsity`; global magnitude by default), and at each
    of those ΔT steps, after pruning, the RigL drop-and-regrow by gradient ("zero-cost
    neuroregeneration") until ``until`` (default 0.75).

    Args:
        sparsity, every, drop_fraction, decay, until: as :class:`DynamicSparsity`.
        initial_sparsity: s_i (default 0).
        start, end: fractions of training where gradual pruning starts and ends.
        prune_scope: scope of the gradual pruning step (default ``"global"``).
    """

    name = "granet"
    grow = "gradient"

    def __init__(
        self,
        sparsity: float,
        initial_sparsity: float = 0.0,
        start: float = 0.1,
        end: float = 0.6,
        prune_scope: str = "global",
        **settings,
    ) -> None:
        super().__init__(sparsity, **settings)
        if not 0.0 <= start < end <= 1.0:
            raise PrunusError(f"start and end must satisfy 0 <= start < end <= 1 (got {start}, {end}).")
        self.initial_sparsity = min(float(initial_sparsity), self.sparsity)
        self.start, self.end, self.prune_scope = start, end, prune_scope

    def on_fit_start(self, state) -> None:
        self.t0 = None
        super().on_fit_start(state)

    def initial_masks(self, state) -> None:
        self.t0 = self.step_at(self.start)
        self.t1 = max(self.step_at(self.end), self.t0 + 1)
        if self.initial_sparsity > 0:
            self.prune_to(state, self.initial_sparsity, "random", scope="layer")

    def goal(self, step: int) -> float:
        return gmp_sparsity(step, self.sparsity, self.initial_sparsity, self.t0, self.t1, self.dt)

    def on_batch_start(self, state) -> None:
        super().on_batch_start(state)
        # pruning events that are not regrowth steps (e.g. the final one at ``end``)
        if not self.is_update_step(state.step) and state.step >= self.t0:
            self._gradual(state)

    def before_regrow(self, state) -> None:
        if state.step >= self.t0:
            self._gradual(state)

    def _gradual(self, state) -> None:
        goal = self.goal(state.step)
        if fraction_count(goal, self.prunable) > self.pruned(state.model):
            self.prune_to(state, goal, "magnitude", scope=self.prune_scope)


