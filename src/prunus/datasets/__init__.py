"""Datasets with stable example ids: bundled (mnist1d, digits, mnist5k) and adapters."""

from prunus.datasets.base import Dataset
from prunus.datasets.noise import add_label_noise
from prunus.datasets.registry import list_datasets, load, register

__all__ = ["Dataset", "add_label_noise", "from_arrays", "list_datasets", "load", "register"]


def from_arrays(*args, **kwargs) -> Dataset:
    """Build a :class:`Dataset` from numpy arrays (see :func:`prunus.datasets.adapters.from_arrays`)."""
    from prunus.datasets.adapters import from_arrays as _from_arrays

    return _from_arrays(*args, **kwargs)
