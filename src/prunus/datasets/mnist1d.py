"""MNIST-1D generated locally, vectorised over examples, cached on disk.

The recipe is the one of the ``mnist1d`` package (Greydanus, "Scaling down deep learning",
2020): each of the package's ten 12-point digit templates is padded with 36–60 zeros, dilated
to 72 points, scaled by a factor in [0.8, 1.2], rolled by 0–47 positions, its zero region
filled with Gaussian-smoothed noise, iid noise added, sheared, and resampled to 40 points.
The package draws one example at a time in a Python loop; here every step is done for a whole
block of examples at once with numpy, from the same distributions (not the same random stream).

Reproducibility and stability:

* examples are drawn in blocks of ``BLOCK`` from independent streams
  ``SeedSequence(seed, spawn_key=(split, block))``, so training example ``i`` is the same for
  every ``train_size > i`` and the test split (its own stream) never depends on ``train_size``;
* each run of ten consecutive examples holds every class once, so any prefix is balanced to
  within one example per class (exactly balanced when its length is a multiple of 10);
* the package standardises by the mean and std of the very dataset it draws, which would tie
  every value to the dataset size. Here the mean and std come from a fixed reference draw of
  ``REFERENCE_SIZE`` examples (seed ``REFERENCE_SEED``, a stream of its own), the same affine map
  for every seed and size: a given example's values never change with ``train_size``.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, require
from prunus.files import cache_hit, write_cache

RECIPE_VERSION = 1
BLOCK = 1000  # examples per independent random stream (a multiple of the 10 classes)
TEST_ID_OFFSET = 1_000_000_000  # test ids are TEST_ID_OFFSET + row, train ids are the row
MAX_SIZE = 10_000_000
REFERENCE_SIZE = 20_000
REFERENCE_SEED = 0
TRAIN, TEST, REFERENCE = 0, 1, 2  # stream codes of the three splits
NUM_CLASSES = 10
CACHE_ENV = "PRUNUS_CACHE_DIR"


def make_mnist1d(
    train_size: int = 4000, test_size: int = 1000, seed: int = 0, cache: bool = True
) -> Dataset:
    """Generate (or load from the on-disk cache) MNIST-1D with stable example ids.

    Args:
        train_size: number of training examples, 1 to 10,000,000. Default 4000.
        test_size: number of test examples, 1 to 10,000,000. Default 1000.
        seed: seed of the draw (any non-negative integer). Default 0.
        cache: read and write the generated arrays in the user cache directory
            (``platformdirs.user_cache_dir("prunus")``, or ``$PRUNUS_CACHE_DIR``). Default True.

    Returns:
        A :class:`Dataset` with ``x`` of shape (train_size, 1, 40) float32, labels 0–9, train ids
        ``0..train_size-1`` and test ids ``1_000_000_000 + 0..test_size-1``.

    Raises:
        PrunusError: a size or the seed out of range; MissingExtraError if ``mnist1d`` is missing.
    """
    train_size = _check_int("train_size", train_size, 1, MAX_SIZE)
    test_size = _check_int("test_size", test_size, 1, MAX_SIZE)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    options = {"train_size": train_size, "test_size": test_size, "seed": seed}
    path = cache_path(**options) if cache else None

    reuse = path is not None and cache_hit(path, path.name)
    arrays = _read_cache(path, train_size, test_size) if reuse else None
    if arrays is None:
        arrays = _generate_splits(_recipe(), train_size, test_size, seed)
        if path is not None:
            _write_cache(path, arrays)

    test = Dataset("mnist1d", arrays["ids_test"], arrays["x_test"], arrays["y_test"], NUM_CLASSES)
    return Dataset(
        "mnist1d",
        arrays["ids"],
        arrays["x"],
        arrays["y"],
        NUM_CLASSES,
        test=test,
        options=dict(options, cache=cache),
    )


def generate_signals(n: int, seed: int, split: int = TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples of one stream, *before* standardisation: (x (n, 40) float64, y).

    ``split`` picks the stream (0 train, 1 test, 2 the standardisation reference).
    """
    return _draw(_recipe(), n, seed, split)


def standardisation() -> tuple[float, float]:
    """The fixed (mean, std) that every generated signal is standardised with."""
    return _reference_stats(_recipe())


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$PRUNUS_CACHE_DIR`` or the user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prunus"))


def cache_path(*, train_size: int, test_size: int, seed: int) -> Path:
    """The cache file of one set of options; its name also carries a hash of the recipe version,
    its constants and the installed mnist1d version (read without importing the package, which
    is slow to import: a cache hit must not pay for it)."""
    from importlib import metadata

    try:
        package_version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        require("mnist1d", "datasets")  # raises the MissingExtraError that names the extra
        package_version = "unknown"
    recipe = [RECIPE_VERSION, BLOCK, REFERENCE_SIZE, REFERENCE_SEED, package_version]
    digest = hashlib.blake2b(json.dumps(recipe).encode(), digest_size=6).hexdigest()
    name = f"mnist1d-seed{seed}-train{train_size}-test{test_size}-v{RECIPE_VERSION}-{digest}.npz"
    return cache_dir() / "datasets" / name


# --------------------------------------------------------------------------- the recipe


class _Recipe:
    """The package's templates and default arguments, plus every dilated template."""

    def __init__(self) -> None:
        data = require("mnist1d.data", "datasets")
        transform = require("mnist1d.transform", "datasets")
        self.interpolate = transform.interpolate
        self.templates = np.asarray(data.get_templates()["x"], dtype=np.float64)  # (10, 12)
        args = data.get_dataset_args(as_dict=True)
        self.template_len = int(args["template_len"])
        self.pad_low, self.pad_high = (int(v) for v in args["padding"])
        self.scale_coeff = float(args["scale_coeff"])
        self.max_translation = int(args["max_translation"])
        self.corr_noise_scale = float(args["corr_noise_scale"])
        self.iid_noise_scale = float(args["iid_noise_scale"])
        self.shear_scale = float(args["shear_scale"])
        self.final_seq_length = int(args["final_seq_length"])
        if args.get("shuffle_seq"):
            raise PrunusError("mnist1d: the shuffle_seq variant is not supported.")
        self.length = self.template_len + self.pad_high  # 72: length after dilation
        self.dilated = self._dilate_all()  # (10, n_paddings, 72)

    def _dilate_all(self) -> np.ndarray:
        # Padding takes one of 25 lengths, so "pad then dilate" has only 10 x 25 outcomes: the
        # package's own interpolation is run once for each and looked up per example.
        eps = 1e-8  # the package's offset that keeps the template's support nonzero
        out = []
        for template in self.templates:
            rows = []
            for pad in range(self.pad_low, self.pad_high + 1):
                padded = np.concatenate([template + eps, np.zeros(pad)])
                rows.append(self.interpolate(padded, self.length))
            out.append(rows)
        return np.asarray(out)


@lru_cache(maxsize=1)
def _recipe() -> _Recipe:
    return _Recipe()


def _draw(recipe: _Recipe, n: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for block in range(-(-n // BLOCK)):
        stream = np.random.SeedSequence(seed, spawn_key=(split, block))
        x, y = _draw_block(recipe, np.random.default_rng(stream), BLOCK)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


class Draws(NamedTuple):
    """The random variables of a block of examples, one row (or one value) per example."""

    labels: np.ndarray  # class 0..9
    padding: np.ndarray  # zeros appended to the template, pad_low..pad_high
    scale: np.ndarray  # uniform in [0, 1): amplitude factor 1 + scale_coeff * (scale - 0.5)
    shift: np.ndarray  # roll by 0..max_translation-1 positions
    corr_noise: np.ndarray  # (n, 72) standard normal, smoothed into the correlated noise
    iid_noise: np.ndarray  # (n, 72) standard normal
    shear: np.ndarray  # uniform in [0, 1): slope shear_scale * (shear - 0.5)


def _draw_block(recipe: _Recipe, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw examples (a multiple of 10) from one stream."""
    draws = draw_variables(recipe, rng, n)
    return transform_templates(recipe, draws), draws.labels


def draw_variables(recipe: _Recipe, rng: np.random.Generator, n: int) -> Draws:
    """Every random choice of ``n`` examples, drawn for all of them at once."""
    r = recipe
    # Each run of ten consecutive labels is a permutation of the ten classes.
    labels = rng.permuted(np.tile(np.arange(NUM_CLASSES), (n // NUM_CLASSES, 1)), axis=1).ravel()
    return Draws(
        labels=labels,
        padding=rng.integers(r.pad_low, r.pad_high + 1, size=n),
        scale=rng.random(n),
        shift=rng.integers(0, r.max_translation, size=n),
        corr_noise=rng.standard_normal((n, r.length)),
        iid_noise=rng.standard_normal((n, r.length)),
        shear=rng.random(n),
    )


def transform_templates(recipe: _Recipe, draws: Draws) -> np.ndarray:
    """The package's ``transform`` applied to every example at once: (n, 40) float64."""
    from scipy.ndimage import gaussian_filter1d

    r = recipe
    n = len(draws.labels)
    x = r.dilated[draws.labels, draws.padding - r.pad_low]  # pad, then dilate to 72 points
    x = x * (1 + r.scale_coeff * (draws.scale - 0.5))[:, None]  # scale
    columns = (np.arange(r.length)[None, :] - draws.shift[:, None]) % r.length
    x = np.take_along_axis(x, columns, axis=1)  # translate: a roll by 0..47
    # Smoothed noise where the signal is exactly zero, then iid noise everywhere.
    corr = gaussian_filter1d(r.corr_noise_scale * draws.corr_noise, 2, axis=1)
    x = np.where(x != 0, x, corr)
    x = x + r.iid_noise_scale * draws.iid_noise
    slope = r.shear_scale * (draws.shear - 0.5)  # shear
    x = x - slope[:, None] * np.linspace(-0.5, 0.5, r.length)[None, :]
    x = r.interpolate(x.T, r.final_seq_length).T  # resample to 40 points
    return x.reshape(n, r.final_seq_length)


@lru_cache(maxsize=4)
def _reference_stats(recipe: _Recipe) -> tuple[float, float]:
    x, _ = _draw(recipe, REFERENCE_SIZE, REFERENCE_SEED, REFERENCE)
    return float(x.mean()), float(x.std())


def _generate_splits(recipe: _Recipe, train_size: int, test_size: int, seed: int) -> dict:
    mean, std = _reference_stats(recipe)
    arrays = {}
    for split, n, suffix, offset in (
        (TRAIN, train_size, "", 0),
        (TEST, test_size, "_test", TEST_ID_OFFSET),
    ):
        x, y = _draw(recipe, n, seed, split)
        arrays["x" + suffix] = ((x - mean) / std).astype(np.float32)[:, None, :]
        arrays["y" + suffix] = y.astype(np.int64)
        arrays["ids" + suffix] = offset + np.arange(n, dtype=np.int64)
    return arrays


# --------------------------------------------------------------------------- the cache


def _read_cache(path: Path, train_size: int, test_size: int) -> dict | None:
    """The cached arrays (already checked by :func:`prunus.files.cache_hit`), or None when
    they are unreadable or of the wrong shape."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError):
        return None
    expected = {
        "x": train_size,
        "y": train_size,
        "ids": train_size,
        "x_test": test_size,
        "y_test": test_size,
        "ids_test": test_size,
    }
    if any(key not in arrays or len(arrays[key]) != n for key, n in expected.items()):
        return None
    return arrays


def _write_cache(path: Path, arrays: dict) -> None:
    """Write atomically with its check record (key = the file name, which holds every option
    and the recipe's hash); never fails the load."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    try:
        write_cache(path, write, path.name)
    except PrunusError:
        pass  # an unwritable cache directory only costs the next load its generation time


def _check_int(field: str, value: object, low: int, high: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise PrunusError(
            f"mnist1d option {field} must be an integer in [{low}, {high}] (got {value!r})."
        )
    return number
