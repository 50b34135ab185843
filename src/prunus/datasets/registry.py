"""Dataset registry: ``load(name, **options)`` for bundled datasets and local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunus.datasets.base import Dataset
from prunus.datasets.noise import add_label_noise
from prunus.errors import PrunusError, choice_error
from prunus.registry import DATASETS, Entry

FILE_SUFFIXES = (".npz", ".parquet", ".csv")


def register(name: str, description: str, extra: str | None = None):
    """Decorator that adds a loader ``fn(**options) -> Dataset`` to the dataset registry
    (``prunus.registry.DATASETS``); ``description`` is its one line, ``extra`` the pip extra
    it needs (if any)."""
    return DATASETS.register(name, summary=description, extra=extra)


def list_datasets() -> list[Entry]:
    """All registered datasets (``entry.name``, ``.summary``, ``.extra``, ``.options()``), by name."""
    return [DATASETS.entry(name) for name in sorted(DATASETS)]


def get_entry(name: str) -> Entry:
    """The registry entry of dataset ``name`` (a one-sentence error listing the valid names)."""
    if name not in DATASETS:
        raise choice_error("dataset", name, [*DATASETS, "a path to .npz/.parquet/.csv"])
    return DATASETS.entry(name)


def load(name: str, *, noise: float = 0.0, noise_seed: int = 0, noise_kind: str = "symmetric",
         **options) -> Dataset:
    """Load a dataset by registry name or local path.

    Args:
        name: a bundled name (``prunus datasets list``) or a local ``.npz``, ``.parquet``,
            ``.csv`` file or a Hugging Face dataset directory saved with ``save_to_disk``.
        noise: label-noise rate in [0, 1): that fraction of training labels (exactly
            ``⌊noise · N⌋``) is moved to another class (see ``noise_kind``). Default 0.
        noise_seed: seed of the noise draw. Default 0.
        noise_kind: ``symmetric`` (to a uniformly drawn other class), ``pairs`` (each class
            to one confusable class, ``c -> (c + 1) mod C``) or ``instance`` (flip chance rising
            with a proxy model's confusion, to its most confusable other class; see
            :func:`prunus.datasets.add_label_noise`).
        **options: the loader's own options (see ``prunus datasets show NAME``).

    Raises:
        PrunusError: unknown name or option, bad file, bad arrays, one-class data.
    """
    path = Path(str(name))
    if str(name).lower().endswith(FILE_SUFFIXES) or path.is_dir() or (
        path.suffix and path.is_file()  # a local file of another type: from_path says which
    ):
        from prunus.datasets.adapters import from_path

        dataset = from_path(path, **options)
    else:
        entry = get_entry(str(name))
        allowed = entry.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise choice_error(f"option of dataset {name!r}", unknown[0], allowed)
        dataset = entry.obj(**options)
    if not isinstance(dataset, Dataset):  # a retrieval dataset (pycode): no labels to check
        if noise:
            raise PrunusError(f"noise applies to classification datasets only, not {name!r}.")
        return dataset
    if len(np.unique(dataset.y)) < 2:
        raise PrunusError(
            f"dataset {dataset.name!r} has a single class in its training split; "
            "classification needs at least two."
        )
    if noise:
        dataset = add_label_noise(dataset, rate=noise, seed=noise_seed, kind=noise_kind)
    return dataset

