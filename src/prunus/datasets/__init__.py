"""Datasets with stable example ids: bundled (mnist1d, digits, mnist5k) and adapters."""

from prunus.datasets.adapters import from_arrays, from_path, from_torch
from prunus.datasets.base import Dataset
from prunus.datasets.noise import add_label_noise
from prunus.datasets.registry import list_datasets, load, register

__all__ = [
    "Dataset",
    "add_label_noise",
    "from_arrays",
    "from_path",
    "from_torch",
    "list_datasets",
    "load",
    "register",
]
