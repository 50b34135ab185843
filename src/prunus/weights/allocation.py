"""Allocate a weight budget: how many weights each layer keeps, and which ones.

Two scopes, as in the literature:

* **global** — one threshold across all prunable layers: the ``K`` highest scores overall are
  kept (Global MP). An optional ``min_density`` first reserves the best ``⌈min_density·n_l⌉``
  weights of every layer so no layer collapses.
* **layer** — each layer keeps its own count ``k_l`` (its own threshold). The counts come from
  densities: ``uniform`` (every layer at the same density) or ``erk`` (Erdős–Rényi-Kernel,
  Evci et al. 2020: density_l ∝ (n_in + n_out + k_h + k_w)/(n_in·n_out·k_h·k_w), i.e. kept
  count ∝ the *sum* of the weight's dimensions, scaled to the budget, capped at 1).

Exactness and the rounding rule. For ``N`` prunable weights and sparsity ``s``, exactly
``⌊s·N⌋`` are pruned (``s`` read as the decimal it is written as), so ``K = N − ⌊s·N⌋`` are
kept. Per-layer counts are real numbers ``q_l = clip(ε·w_l, lo_l, n_l)`` with ``ε`` solved so
that ``Σ q_l = K``; each layer gets ``⌊q_l⌋`` and the ``K − Σ⌊q_l⌋`` remaining units go to the
layers with the largest remainders ``q_l − ⌊q_l⌋`` (ties: the larger share, then the earlier
layer) — Hamilton's largest-remainder method (:func:`prunus.counts.apportion`, exact rational
arithmetic), so the total is exact and no layer is off by a unit or more.

Ties between equal scores are broken by position (a stable sort), so masks are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch

from prunus.counts import apportion, fraction_count, proportional_shares
from prunus.errors import PrunusError, choice_error

ALLOCATIONS = ("uniform", "erk")
SCOPES = ("global", "layer")


def layer_counts(
    shapes: Sequence[Sequence[int]],
    sparsity: float,
    allocation: str = "uniform",
    min_density: float = 0.0,
) -> list[int]:
    """Exact number of weights each layer keeps (largest-remainder rounding, see module doc).

    Args:
        shapes: weight shapes, ``(n_out, n_in, *kernel)``.
        sparsity: fraction of all the weights to prune, in [0, 1).
        allocation: ``"uniform"`` or ``"erk"``.
        min_density: lower bound on each layer's density (default 0).

    Raises:
        PrunusError: unknown allocation, or a ``min_density`` the budget cannot meet.
    """
    if allocation not in ALLOCATIONS:
        raise choice_error("allocation", allocation, ALLOCATIONS)
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    kept = total - fraction_count(sparsity, total)
    lower = [min(n, fraction_count(min_density, n, up=True)) for n in sizes]
    if sum(lower) > kept:
        raise PrunusError(
            f"min_density asks to keep {sum(lower)} weights but the sparsity keeps only {kept}; "
            "lower min_density or sparsity."
        )
    return apportion(kept, _weights(shapes, allocation), lower, sizes)


def erk_densities(shapes: Sequence[Sequence[int]], sparsity: float) -> list[float]:
    """Real-valued ERK densities (before rounding to counts): ``min(1, ε·Σdims/Πdims)``."""
    sizes = [math.prod(s) for s in shapes]
    kept = (1 - Fraction(str(float(sparsity)))) * sum(sizes)
    shares = proportional_shares(kept, _weights(shapes, "erk"), upper=sizes)
    return [float(q / n) for q, n in zip(shares, sizes)]


def _weights(shapes: Sequence[Sequence[int]], allocation: str) -> list[int]:
    """Each layer's claim on the kept budget: its size (uniform) or the sum of its dimensions
    (ERK: kept count ∝ n_in + n_out + k_h + k_w)."""
    return [math.prod(s) if allocation == "uniform" else sum(s) for s in shapes]


def keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` highest scores (ties: lower flat index first)."""
    flat = scores.reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if count > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:count]] = True
    return keep.reshape(scores.shape)


def per_layer_masks(scores: dict[str, torch.Tensor], counts: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each layer keeps its own ``counts[l]`` highest scores."""
    return {name: keep_top(s, c) for (name, s), c in zip(scores.items(), counts)}


def global_masks(
    scores: dict[str, torch.Tensor], kept: int, min_counts: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """One threshold across layers: keep the ``kept`` highest scores overall.

    ``min_counts[l]`` weights of layer ``l`` (its best) are reserved first, so each layer keeps
    at least that many; the rest of the budget goes to the highest remaining scores.
    """
    names = list(scores)
    flats = [scores[n].reshape(-1).float() for n in names]
    if min_counts is not None:
        flats = [f.clone() for f in flats]
        for f, c in zip(flats, min_counts):
            if c > 0:
                f[keep_top(f, c)] = math.inf
    joined = torch.cat([f.to(flats[0].device) for f in flats])
    keep = keep_top(joined, kept)
    out, start = {}, 0
    for name, f in zip(names, flats):
        out[name] = keep[start : start + f.numel()].reshape(scores[name].shape).to(scores[name].device)
        start += f.numel()
    return out


def allocate(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    allocation: str = "uniform",
    min_density: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Turn scores (higher = keep) into exact masks at ``sparsity``.

    ``scope="global"`` uses one threshold (``allocation`` is ignored); ``scope="layer"`` keeps
    per-layer counts from :func:`layer_counts`. Scores of ``-inf`` are kept only if the budget
    cannot be met otherwise.

    Raises:
        PrunusError: unknown scope/allocation, or an infeasible ``min_density``.
    """
    if scope not in SCOPES:
        raise choice_error("scope", scope, SCOPES)
    shapes = [tuple(s.shape) for s in scores.values()]
    if scope == "layer":
        return per_layer_masks(scores, layer_counts(shapes, sparsity, allocation, min_density))
    if allocation not in ALLOCATIONS:
        raise choice_error("allocation", allocation, ALLOCATIONS)
    sizes = [math.prod(s) for s in shapes]
    kept = sum(sizes) - fraction_count(sparsity, sum(sizes))
    minimum = [min(n, fraction_count(min_density, n, up=True)) for n in sizes]
    if sum(minimum) > kept:
        raise PrunusError(
            f"min_density={min_density} keeps more weights than sparsity={sparsity} allows; "
            "lower one of them."
        )
    return global_masks(scores, kept, minimum if any(minimum) else None)
