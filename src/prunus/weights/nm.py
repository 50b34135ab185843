"""N:M semi-structured sparsity: in every group of M consecutive weights keep the N best.

Groups run along the input (reduction) dimension of the weight seen as a matrix
``(n_out, n_in·k_h·k_w)`` — PyTorch's own layout, where for a convolution the kernel positions
of one input channel are consecutive. 2:4 is the pattern NVIDIA Ampere and later GPUs
accelerate; on a CPU no PyTorch kernel exploits it, so its savings are theoretical there.
Exactly ``N`` weights per group survive, so the sparsity of the pruned set is exactly 1 − N/M.
"""

from __future__ import annotations

import re

import torch

from prunus.errors import PrunusError
from prunus.weights.masks import PrunableWeight


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Bool mask keeping the ``n`` highest scores in each group of ``m`` consecutive entries of
    every row of ``scores`` viewed as ``(rows, -1)`` (ties: earlier position first).

    Raises:
        PrunusError: ``n``/``m`` out of range, or a row length that is not a multiple of ``m``.
    """
    if not 0 < n <= m:
        raise PrunusError(f"N:M needs 0 < N <= M (got {n}:{m}).")
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise PrunusError(
            f"N:M needs an input size that is a multiple of M={m} (got {rows.shape[1]})."
        )
    groups = rows.reshape(rows.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def nm_masks(scores: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """:func:`nm_mask` for every layer."""
    return {name: nm_mask(s, n, m) for name, s in scores.items()}


def nm_targets(targets: list[PrunableWeight], m: int) -> list[PrunableWeight]:
    """The targets whose input size is a multiple of ``m`` (the others stay dense)."""
    kept = [t for t in targets if (t.numel // t.shape[0]) % m == 0]
    if not kept:
        raise PrunusError(f"no prunable layer has an input size that is a multiple of M={m}.")
    return kept


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4).

    Raises:
        PrunusError: anything else.
    """
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise PrunusError(f"pattern must be 'unstructured' or 'N:M' such as '2:4' (got {pattern!r}).")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PrunusError(f"pattern N:M needs 0 < N < M (got {pattern!r}).")
    return n, m


def pattern_sparsity(pattern: str, sparsity: float | None, default: float = 0.9) -> float:
    """The sparsity a pruning call means: N:M fixes it at 1 − N/M, so ``sparsity`` must be
    ``None`` (left out) or equal to that; unstructured uses ``sparsity`` (``default`` if None).

    Raises:
        PrunusError: a bad pattern, or a sparsity that contradicts the N:M pattern.
    """
    from prunus.weights.masks import check_sparsity

    nm = parse_pattern(pattern)
    if nm is None:
        return check_sparsity(default if sparsity is None else sparsity)
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is None:
        return implied
    value = check_sparsity(sparsity)
    if abs(value - implied) > 1e-12:
        raise PrunusError(
            f"pattern {pattern!r} fixes the sparsity at 1 - {nm[0]}/{nm[1]} = {implied:g}, "
            f"which contradicts sparsity {sparsity:g}; leave the sparsity out or set it to {implied:g}."
        )
    return implied


def is_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive weights has at most ``n`` non-zeros."""
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        return False
    return bool(((rows.reshape(rows.shape[0], -1, m) != 0).sum(-1) <= n).all())
