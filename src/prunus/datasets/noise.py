"""Symmetric label noise with an exact record of which ids were flipped."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from prunus.datasets.base import Dataset
from prunus.errors import PrunusError


def add_label_noise(dataset: Dataset, rate: float, seed: int = 0) -> Dataset:
    """Flip exactly ``round(rate * N)`` training labels to a uniformly drawn other class.

    The flipped ids are recorded in ``flipped_ids`` and the original labels in ``clean_y``.
    The test split is never touched. Deterministic given ``seed``.

    Raises:
        PrunusError: if ``rate`` is outside [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise PrunusError(f"noise must be a rate in [0, 1) (got {rate!r}).")
    rng = np.random.default_rng(seed)
    n = len(dataset)
    n_flip = round(rate * n)
    rows = np.sort(rng.choice(n, size=n_flip, replace=False))
    y = dataset.y.copy()
    # A shift in [1, C-1] moves each label to a uniformly chosen *different* class.
    shift = rng.integers(1, dataset.num_classes, size=n_flip)
    y[rows] = (y[rows] + shift) % dataset.num_classes
    options = dict(dataset.options, noise=rate, noise_seed=seed)
    clean = dataset.y if dataset.clean_y is None else dataset.clean_y
    return replace(
        dataset,
        y=y,
        clean_y=clean.copy(),
        flipped_ids=np.sort(dataset.ids[rows]),
        options=options,
        _fingerprint=None,
    )
