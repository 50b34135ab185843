"""Shared plumbing for scoring passes: stream a dataset through a model one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from prunus.datasets.base import Dataset

Progress = Callable[[int], None]


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU/float32 if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def batches(
    model: nn.Module, dataset: Dataset, batch_size: int, progress: Progress | None = None
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(rows, x, y)`` for consecutive batches, on the model's device and dtype.

    Only one batch is materialised on the device at a time; ``progress(n)`` is called after each
    batch with the number of examples it held.
    """
    device, dtype = model_device_dtype(model)
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, min(start + batch_size, len(dataset)))
        x = torch.from_numpy(dataset.x[rows]).to(device=device, dtype=dtype)
        y = torch.from_numpy(dataset.y[rows]).to(device)
        yield rows, x, y
        if progress is not None:
            progress(rows.stop - rows.start)
