"""``prune``: score → allocate → keep, in one call (the functional form of every one-shot method)."""

from __future__ import annotations

import torch
from torch import nn

from prunus.counts import fraction_count
from prunus.errors import PrunusError, choice_error
from prunus.weights.allocation import ALLOCATIONS, SCOPES, allocate
from prunus.weights.criteria import CRITERIA, score
from prunus.weights.masks import (
    PrunableWeight,
    apply,
    masks_of,
    prunable_weights,
)
from prunus.weights.nm import nm_masks, nm_targets, parse_pattern, pattern_sparsity


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "magnitude",
    scope: str = "global",
    allocation: str = "uniform",
    data=None,
    *,
    min_density: float = 0.0,
    pattern: str = "unstructured",
    layers: list[str] | None = None,
    include_first: bool = True,
    include_last: bool = True,
    iterations: int | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    **settings,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with masks and return them (weight name -> bool, True = kept).

    Scores every prunable weight by ``method`` (magnitude, random, gradient, SNIP, GraSP,
    SynFlow; see :mod:`prunus.weights.criteria`), allocates the budget (``scope="global"``: one
    threshold; ``"layer"``: per-layer counts from ``allocation`` = ``"uniform"`` or ``"erk"``),
    and keeps the best. Exactly ``⌊sparsity·N⌋`` of the ``N`` prunable weights are pruned
    (rounding rule in :mod:`prunus.weights.allocation`). Weights that are already pruned stay
    pruned as long as the budget allows (a sparsity *below* the current one re-enables the
    best-scored pruned weights, at value 0). With ``iterations = k > 1`` the target is
    approached exponentially in ``k`` rounds, rescoring each time (density after round i:
    d₀·((1 − s)/d₀)^(i/k), from the current density d₀, 1 for an unpruned model); SynFlow
    defaults to 100 rounds as in its paper, the other criteria to 1.

    Args:
        model: the network (masks are attached as parametrizations).
        sparsity: fraction of prunable weights to prune, in [0, 1) (default 0.9). An N:M
            ``pattern`` fixes it at 1 − N/M: leave it out or pass exactly that (any other value
            is refused, never silently replaced).
        method: criterion name (default ``"magnitude"``).
        scope: ``"global"`` (default) or ``"layer"``.
        allocation: ``"uniform"`` (default) or ``"erk"``; used with ``scope="layer"``.
        data: a batch ``(x, y)``, list of batches or Dataset, for gradient/SNIP/GraSP.
        min_density: minimum fraction kept in every layer (default 0).
        pattern: ``"unstructured"`` (default) or ``"N:M"`` such as ``"2:4"`` (N largest scores
            kept in every group of M consecutive weights along the input dimension; layers whose
            input size is not a multiple of M are left dense and outside the prunable set).
        layers, include_first, include_last: which layers are prunable (:func:`prunable_weights`).
        iterations: scoring rounds (default: 100 for synflow, else 1).
        seed: seeds the random criterion and the data batch.
        optimizer: if given, its state is zeroed at pruned positions.
        **settings: passed to the criterion (``batch_size``, ``temperature``, ``input_shape``).

    Raises:
        PrunusError: unknown method/scope/allocation/pattern, sparsity outside [0, 1), a
        sparsity that contradicts an N:M pattern, missing data for a data-driven criterion, or
        an infeasible ``min_density``.
    """
    if method not in CRITERIA:
        raise choice_error("method", method, CRITERIA)
    if scope not in SCOPES:
        raise choice_error("scope", scope, SCOPES)
    if allocation not in ALLOCATIONS:
        raise choice_error("allocation", allocation, ALLOCATIONS)
    sparsity = pattern_sparsity(pattern, sparsity)
    if not 0.0 <= min_density <= 1.0:
        raise PrunusError(f"min_density must be in [0, 1] (got {min_density!r}).")
    targets = prunable_weights(model, layers, include_first, include_last)
    nm = parse_pattern(pattern)
    if nm is not None:
        targets = nm_targets(targets, nm[1])
    rounds = iterations if iterations is not None else (100 if method == "synflow" else 1)
    if rounds < 1:
        raise PrunusError(f"iterations must be a positive integer (got {iterations!r}).")
    params = next(iter(model.parameters()))
    settings.setdefault("device", params.device)
    total = sum(t.numel for t in targets)
    probe = _synflow_probe(model, targets, data, settings) if method == "synflow" and rounds > 1 else None
    start_density = 1.0 - _current_sparsity(model, targets)
    for i in range(1, rounds + 1):
        # exponential in density from where the model stands now to the target
        density = start_density * ((1.0 - sparsity) / start_density) ** (i / rounds)
        step_sparsity = sparsity if i == rounds else min(1.0 - density, sparsity)
        if probe is not None:
            scores = probe.scores(masks_of(model))
        else:
            scores = score(model, targets, method, data=data, seed=seed, **settings)
        scores = _keep_pruned_out(model, targets, scores)
        if nm is not None:
            masks = nm_masks(scores, *nm)
        else:
            masks = allocate(scores, step_sparsity, scope, allocation, min_density)
        apply(model, masks, optimizer)
    pruned = sum(int((~m).sum()) for m in masks.values())
    if nm is None:
        assert pruned == fraction_count(sparsity, total), (pruned, sparsity, total)
    return masks


def _current_sparsity(model: nn.Module, targets: list[PrunableWeight]) -> float:
    current = masks_of(model)
    pruned = sum(int((~current[t.name]).sum()) for t in targets if t.name in current)
    return pruned / sum(t.numel for t in targets)


def _synflow_probe(model, targets, data, settings):
    from prunus.weights.criteria import SynFlowProbe, _as_batches

    shape = settings.get("input_shape")
    if shape is None:
        if data is None:
            raise PrunusError("synflow needs input_shape (e.g. (1, 40)) when no data is given.")
        shape = tuple(_as_batches(data, 1, 0, torch.device("cpu"))[0][0].shape[1:])
    return SynFlowProbe(model, targets, tuple(shape))


def _keep_pruned_out(model: nn.Module, targets: list[PrunableWeight], scores: dict) -> dict:
    """Already-pruned weights get score −inf so they are chosen last (they stay pruned)."""
    current = masks_of(model)
    out = {}
    for t in targets:
        s = scores[t.name]
        if t.name in current:
            s = s.masked_fill(~current[t.name].to(s.device), -torch.inf)
        out[t.name] = s
    return out
