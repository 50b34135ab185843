"""Dataset registry: ``load(name, **options)`` for bundled datasets and local files."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunus.datasets.base import Dataset
from prunus.datasets.noise import add_label_noise
from prunus.errors import PrunusError, choice_error


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[..., Dataset]
    description: str
    extra: str | None = None

    def options(self) -> dict[str, object]:
        """The loader's keyword options and their defaults."""
        sig = inspect.signature(self.loader)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }


_REGISTRY: dict[str, DatasetEntry] = {}
FILE_SUFFIXES = (".npz", ".parquet", ".csv")


def register(name: str, description: str, extra: str | None = None):
    """Decorator that adds a loader ``fn(**options) -> Dataset`` to the registry."""

    def decorate(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY[name] = DatasetEntry(name, loader, description, extra)
        return loader

    return decorate


def list_datasets() -> list[DatasetEntry]:
    """All registered datasets, sorted by name."""
    _import_bundled()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_entry(name: str) -> DatasetEntry:
    _import_bundled()
    if name not in _REGISTRY:
        raise choice_error("dataset", name, list(_REGISTRY) + ["a path to .npz/.parquet/.csv"])
    return _REGISTRY[name]


def load(name: str, *, noise: float = 0.0, noise_seed: int = 0, noise_kind: str = "symmetric",
         **options) -> Dataset:
    """Load a dataset by registry name or local path.

    Args:
        name: a bundled name (``prunus datasets list``) or a local ``.npz``, ``.parquet``,
            ``.csv`` file or a Hugging Face dataset directory saved with ``save_to_disk``.
        noise: label-noise rate in [0, 1): that fraction of training labels (exactly
            ``round(noise * N)``) is moved to another class (see ``noise_kind``). Default 0.
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
        dataset = entry.loader(**options)
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


def _import_bundled() -> None:
    # Registration happens on import of the bundled module; done lazily to keep imports light.
    from prunus.datasets import (
        bundled,  # noqa: F401
        pycode,  # noqa: F401
    )
    from prunus.text import corpus  # noqa: F401  (stdlib, text)
