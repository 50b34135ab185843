"""Bring your own data: numpy arrays, ``.npz``, Parquet, CSV, a saved Hugging Face dataset, or a
torch ``Dataset``, turned into a :class:`~prunus.datasets.Dataset` with stable example ids.

Every adapter ends in :func:`from_arrays`, so the rules are the same everywhere:

* labels are class indices 0..C-1; string labels are mapped to indices in sorted order (the
  names are kept in ``dataset.options["classes"]``);
* ids are the given ids (an ``id`` column or array) or else the row positions in the source,
  test rows continuing after the training ones;
* without a test split, a stratified, seeded ``test_fraction`` of each class is held out (ids
  stay the row positions, so the same file and seed always give the same split);
* ``standardize=True`` z-scores every feature with the training split's mean and standard
  deviation (recorded in ``dataset.options``; the fingerprint changes with the data).

Tables (Parquet, CSV, Hugging Face) never drop a column silently: a non-numeric column is
refused unless ``features`` leaves it out or ``encode="onehot"`` one-hot encodes it, and a
warning says when the raw feature scales differ by ``SCALE_WARNING`` times or more.
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunus.counts import apportion, fraction_count
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error, reading, require

ARRAY_OPTIONS = ("name", "num_classes", "seed", "standardize", "test_fraction")
TABLE_OPTIONS = ARRAY_OPTIONS + ("encode", "features", "id", "label")
ENCODINGS = ("none", "onehot")
SCALE_WARNING = 1000.0  # ratio of the largest to the smallest feature standard deviation


def from_arrays(
    x: Any,
    y: Any,
    ids: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    ids_test: Any = None,
    num_classes: int | None = None,
    name: str = "arrays",
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = False,
) -> Dataset:
    """Build a :class:`Dataset` from arrays (anything ``np.asarray`` accepts).

    Args:
        x: features, one row per example, shape (N, ...); a 1-D array is one feature.
        y: labels, shape (N,): integers 0..C-1, or strings (mapped to indices in sorted order).
        ids: unique integer example ids, shape (N,). Default: ``0..N-1``.
        x_test, y_test: an explicit test split. Default None: hold out ``test_fraction``.
        ids_test: ids of the test rows. Default: continue after the largest training id.
        num_classes: number of classes. Default: largest label + 1 (or the number of names).
        name: the dataset's name in logs and reports. Default ``"arrays"``.
        test_fraction: share of each class held out when no test split is given. Default 0.2.
        seed: seed of that split. Default 0.
        standardize: z-score each feature, ``(x − mean) / std`` with the training split's
            statistics (a constant feature is only centred). Default False.

    Raises:
        PrunusError: labels not 1-D, NaN labels or features, empty data, a single class,
            negative or non-integer labels, repeated ids, bad ``test_fraction`` or
            ``standardize``.
    """
    if not isinstance(standardize, (bool, np.bool_)):
        raise PrunusError(f"{name}: standardize must be true or false (got {standardize!r}).")
    x = _features(x, name)
    y_names = None
    if (x_test is None) != (y_test is None):
        raise PrunusError(f"{name}: give both x_test and y_test, or neither.")
    y = _labels_shape(y, len(x), name, "y")
    if x_test is not None:
        x_test = _features(x_test, name + " (test)")
        y_test = _labels_shape(y_test, len(x_test), name, "y_test")
    y, y_test, y_names = _class_indices(y, y_test, name)
    if num_classes is None:
        top = max(int(y.max()), -1 if y_test is None or not len(y_test) else int(y_test.max()))
        num_classes = len(y_names) if y_names is not None else top + 1
    num_classes = int(num_classes)
    if len(np.unique(y)) < 2:
        raise PrunusError(
            f"{name}: the training labels hold a single class; classification needs at least two."
        )
    ids = np.arange(len(y), dtype=np.int64) if ids is None else _ids(ids, len(y), name, "ids")
    options: dict[str, Any] = {}
    if y_names is not None:
        options["classes"] = y_names

    if x_test is None:
        options.update(test_fraction=test_fraction, seed=seed)
        train_rows, test_rows = stratified_split(y, test_fraction, seed)
        if len(test_rows) == 0:
            raise PrunusError(
                f"{name}: test_fraction={test_fraction} holds out no example of {len(y)}; "
                "raise test_fraction or give x_test and y_test."
            )
        x_train, x_test = _scaled(x[train_rows], x[test_rows], standardize, options)
        test = Dataset(name, ids[test_rows], x_test, y[test_rows], num_classes)
        return Dataset(
            name, ids[train_rows], x_train, y[train_rows], num_classes, test, options=options
        )

    if ids_test is None:
        start = int(ids.max()) + 1
        ids_test = np.arange(start, start + len(y_test), dtype=np.int64)
    else:
        ids_test = _ids(ids_test, len(y_test), name, "ids_test")
    if np.intersect1d(ids, ids_test).size:
        raise PrunusError(f"{name}: ids_test must not repeat any training id.")
    x, x_test = _scaled(x, x_test, standardize, options)
    test = Dataset(name, ids_test, x_test, y_test, num_classes)
    return Dataset(name, ids, x, y, num_classes, test, options=options)


def from_path(path: str | Path, **options: Any) -> Dataset:
    """Load a local ``.npz``, ``.parquet`` or ``.csv`` file, or a directory written by
    Hugging Face ``datasets``' ``save_to_disk``.

    ``.npz``: arrays ``x`` and ``y``, optionally ``ids``, ``x_test``, ``y_test``, ``ids_test``
    (read with ``allow_pickle=False``). Parquet, CSV and Hugging Face: one row per example;
    options ``label`` (label column, default ``"label"``), ``id`` (id column, used when present,
    default ``"id"``), ``features`` (feature columns, default every other column, refused if one
    is not numeric; a column may hold fixed-length lists or arrays) and ``encode`` (``"none"``,
    default, or ``"onehot"``: text columns become one 0/1 feature per category). A Hugging Face
    ``DatasetDict`` uses its ``train`` and, if present, ``test`` splits. Every format also takes
    ``num_classes``, ``name``, ``test_fraction`` (default 0.2), ``seed`` (default 0) and
    ``standardize`` (default False) as in :func:`from_arrays`.

    Raises:
        PrunusError: missing file, unknown option, missing column or array, bad values.
        MissingExtraError: a Hugging Face directory without the ``hf`` extra installed.
    """
    path = Path(path)
    if not path.exists():
        raise PrunusError(f"dataset path {str(path)!r} does not exist.")
    options.setdefault("name", path.stem if path.is_file() else path.name)
    if path.is_dir():
        if not _is_hf_dir(path):
            raise PrunusError(
                f"dataset directory {str(path)!r} is not a Hugging Face dataset saved with "
                "save_to_disk (no dataset_info.json or dataset_dict.json)."
            )
        _check_options(options, TABLE_OPTIONS, path)
        with reading(path, "dataset", "a Hugging Face dataset saved with save_to_disk",
                     strip=str(options["name"])):
            return _from_hf_dir(path, **options)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        _check_options(options, ARRAY_OPTIONS, path)
        with reading(path, "dataset", "a readable .npz file of arrays x and y",
                     strip=str(options["name"])):
            return _from_npz(path, **options)
    if suffix in (".parquet", ".csv"):
        _check_options(options, TABLE_OPTIONS, path)
        kind = "a readable Parquet table" if suffix == ".parquet" else "a UTF-8 CSV table with a header row"
        with reading(path, "dataset", kind,
                     strip=str(options["name"])):
            return _from_table(path, **options)
    raise PrunusError(
        f"dataset file type of {str(path)!r} must be one of: .csv, .npz, .parquet, a directory "
        f"(got {suffix!r})."
    )


def from_torch(
    dataset: Any,
    num_classes: int | None = None,
    test: Any = None,
    name: str = "torch",
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 1024,
) -> Dataset:
    """Materialise a torch ``Dataset`` (map-style or iterable) of ``(x, y)`` pairs in memory.

    Ids are the positions in the dataset's order (test positions continue after the training
    ones). ``test`` is an optional second torch dataset for the test split; without it a
    stratified ``test_fraction`` is held out. ``batch_size`` only sets how many items are
    collated at a time while reading.

    Raises:
        PrunusError: items that are not ``(x, y)`` pairs of consistent shape, plus everything
            :func:`from_arrays` raises.
    """
    x, y = _materialise(dataset, batch_size, name)
    x_test = y_test = None
    if test is not None:
        x_test, y_test = _materialise(test, batch_size, name + " (test)")
    return from_arrays(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        name=name,
        test_fraction=test_fraction,
        seed=seed,
    )


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (sorted) of a seeded split holding out ``⌊test_fraction · N⌋`` examples, each class
    its share (:func:`prunus.counts.apportion` over the class sizes)."""
    if not isinstance(test_fraction, numbers.Real) or not 0.0 < test_fraction < 1.0:
        raise PrunusError(f"test_fraction must be a number in (0, 1) (got {test_fraction!r}).")
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y == label) for label in np.unique(y)]
    quotas = apportion(fraction_count(test_fraction, len(y)), [len(rows) for rows in classes])
    test_rows = []
    for rows, quota in zip(classes, quotas):
        rng.shuffle(rows)
        test_rows.append(rows[:quota])
    test_rows = np.sort(np.concatenate(test_rows)).astype(np.int64)
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    return train_rows, test_rows


# --------------------------------------------------------------------------- array checks


def _features(x: Any, name: str) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PrunusError(
            f"{name}: x must be numeric with one row per example of a fixed shape ({exc})."
        ) from None
    if x.ndim == 0:
        raise PrunusError(f"{name}: x must have one row per example (got a scalar).")
    return x[:, None] if x.ndim == 1 else x


def _scaled(
    train: np.ndarray, test: np.ndarray, standardize: bool, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Both splits z-scored with the training split's per-feature mean and std (if asked)."""
    if not standardize:
        return train, test
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    options["standardize"] = True
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _warn_on_scales(dataset: Dataset, where: str) -> None:
    """Warn when the training features' standard deviations span ``SCALE_WARNING``× or more."""
    std = dataset.x.reshape(len(dataset), -1).std(axis=0, dtype=np.float64)
    std = std[std > 0]
    if len(std) > 1 and std.max() >= SCALE_WARNING * std.min():
        warnings.warn(
            f"{where}: raw feature scales differ by {std.max() / std.min():.0f}x (standard "
            f"deviations {std.min():.3g} to {std.max():.3g}); pass standardize=true "
            "(-o standardize=true) to z-score them with the training split's statistics.",
            stacklevel=3,
        )


def _labels_shape(y: Any, n: int, name: str, field: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise PrunusError(
            f"{name}: {field} must be a 1-D array of class labels, one per example "
            f"(got shape {tuple(y.shape)})."
        )
    if len(y) != n:
        raise PrunusError(f"{name}: {field} has {len(y)} labels for {n} rows of features.")
    if len(y) == 0:
        raise PrunusError(f"{name}: the dataset is empty.")
    return y


def _class_indices(
    y: np.ndarray, y_test: np.ndarray | None, name: str
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Integer labels as int64; string labels mapped to their index among the sorted names."""
    both = y if y_test is None else np.concatenate([y, y_test])
    if both.dtype.kind in "USO":
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in both.tolist()):
            raise PrunusError(f"{name}: labels contain missing values (NaN or None).")
        names = sorted({str(v) for v in both.tolist()})
        lookup = {v: i for i, v in enumerate(names)}
        y = np.array([lookup[str(v)] for v in y.tolist()], dtype=np.int64)
        if y_test is not None:
            y_test = np.array([lookup[str(v)] for v in y_test.tolist()], dtype=np.int64)
        return y, y_test, names
    if both.dtype.kind == "b":
        both = both.astype(np.int64)
    if both.dtype.kind not in "iuf":
        raise PrunusError(f"{name}: labels must be integers or strings (got {both.dtype}).")
    if both.dtype.kind == "f":
        if np.isnan(both).any():
            raise PrunusError(f"{name}: labels contain NaN.")
        if not np.all(both == np.round(both)):
            raise PrunusError(
                f"{name}: labels must be whole-number class indices, not fractional values."
            )
    if both.min() < 0:
        raise PrunusError(f"{name}: labels must be class indices >= 0 (got {both.min()}).")
    y = y.astype(np.int64)
    return y, None if y_test is None else y_test.astype(np.int64), None


def _ids(ids: Any, n: int, name: str, field: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n or ids.dtype.kind not in "iu":
        raise PrunusError(f"{name}: {field} must be a 1-D integer array of length {n}.")
    if len(np.unique(ids)) != n:
        raise PrunusError(f"{name}: {field} must be unique.")
    return ids.astype(np.int64)


# --------------------------------------------------------------------------- file formats


def _check_options(options: dict[str, Any], allowed: Iterable[str], path: Path) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise choice_error(f"option for {path.suffix or 'directory'} datasets", unknown[0], allowed)


ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one: end record only)


def _from_npz(path: Path, **options: Any) -> Dataset:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head not in ZIP_MAGICS:
        what = "it is empty" if not head else "not a zip archive of .npy arrays"
        raise PrunusError(f"dataset {str(path)!r} is not a readable .npz file ({what}).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise PrunusError(
            f"dataset {str(path)!r} holds object arrays, which cannot be read without "
            "unpickling, and prunus never unpickles files; save numeric or string arrays."
        ) from None
    odd = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if odd:
        raise PrunusError(
            f"dataset {str(path)!r} is not a readable .npz file ({odd[0]!r} is not a .npy array)."
        )
    allowed = ("x", "y", "ids", "x_test", "y_test", "ids_test")
    if "x" not in arrays or "y" not in arrays:
        raise PrunusError(
            f"{path.name} must hold arrays named x and y (optionally {', '.join(allowed[2:])}); "
            f"found: {', '.join(sorted(arrays)) or 'none'}."
        )
    unknown = sorted(set(arrays) - set(allowed))
    if unknown:
        raise choice_error(f"array name in {path.name}", unknown[0], allowed)
    return from_arrays(**arrays, **options)


def _from_table(path: Path, **options: Any) -> Dataset:
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pa_csv

        table = pa_csv.read_csv(path)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    columns = {col: _arrow_column(table.column(col)) for col in table.column_names}
    return _from_columns(columns, None, where=path.name, **options)


def _arrow_column(column: Any) -> np.ndarray:
    """A pyarrow column as numpy; lists of numbers become a 2-D (or deeper) array if regular."""
    import pyarrow as pa

    values = column.to_numpy(zero_copy_only=False)
    kind = column.type
    while (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        kind = kind.value_type
    nested = values.dtype == object and (pa.types.is_floating(kind) or pa.types.is_integer(kind))
    if nested and column.null_count == 0:
        try:
            values = np.stack([np.stack(list(v)) if v.dtype == object else v for v in values])
        except ValueError:
            pass  # ragged: left as objects, rejected if used as features
    return values


def _is_hf_dir(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _from_hf_dir(path: Path, **options: Any) -> Dataset:
    hf = require("datasets", "hf")
    loaded = hf.load_from_disk(str(path))
    test_split = None
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", list(loaded))
        if "train" not in loaded:
            raise PrunusError(
                f"{path.name}: prunus reads the 'train' (and 'test') split of a DatasetDict; "
                f"its splits are: {', '.join(splits)}."
            )
        train_split = loaded["train"]
        test_split = loaded.get("test")
    else:
        train_split = loaded
    label = options.get("label", "label")
    names = None
    feature = train_split.features.get(label)
    if feature is not None and hasattr(feature, "num_classes") and hasattr(feature, "names"):
        names = list(feature.names)  # a ClassLabel column: indices already, names kept
        options.setdefault("num_classes", feature.num_classes)
    columns = _hf_columns(train_split)
    test_columns = None if test_split is None else _hf_columns(test_split)
    dataset = _from_columns(columns, test_columns, where=path.name, **options)
    if names is not None:
        dataset.options["classes"] = names
    return dataset


def _hf_columns(split: Any) -> dict[str, np.ndarray]:
    table = split.with_format("numpy")
    return {col: np.asarray(table[col]) for col in split.column_names}


def _from_columns(
    columns: dict[str, np.ndarray],
    test_columns: dict[str, np.ndarray] | None,
    *,
    where: str,
    label: str = "label",
    id: str = "id",
    features: str | Sequence[str] | None = None,
    encode: str = "none",
    **split_options: Any,
) -> Dataset:
    """Pick the label, id and feature columns of a table (one-hot encoding text columns when
    ``encode="onehot"``, categories in sorted order over both splits) and build the dataset."""
    if not columns or not len(next(iter(columns.values()))):
        raise PrunusError(f"{where}: the table has no rows (or no columns).")
    if label not in columns:
        raise choice_error(f"label column of {where}", label, columns)
    if id not in columns and id != "id":
        raise choice_error(f"id column of {where}", id, columns)
    if encode not in ENCODINGS:
        raise choice_error(f"encode option of {where}", encode, ENCODINGS)
    if features is None:
        features = [col for col in columns if col not in (label, id)]
        text = [col for col in features if columns[col].dtype.kind not in "biuf"]
        if text and encode == "none":
            raise PrunusError(
                f"{where}: column(s) {', '.join(map(repr, text))} are not numeric; name the "
                "feature columns with the features option (-o 'features=[\"a\",\"b\"]') or "
                "one-hot encode text columns with encode=onehot (-o encode=onehot)."
            )
        if not features:
            raise PrunusError(
                f"{where}: no feature columns besides the label {label!r}; "
                f"columns: {', '.join(columns)}."
            )
    elif isinstance(features, str):
        features = [features]
    categories: dict[str, list[str]] = {}
    for col in features:
        if col not in columns:
            raise choice_error(f"feature column of {where}", col, columns)
        if columns[col].dtype.kind in "biuf":
            continue
        values = [columns[col]] + ([] if test_columns is None or col not in test_columns
                                   else [test_columns[col]])
        if encode == "onehot" and all(isinstance(v, str) for part in values for v in part):
            categories[col] = sorted({v for part in values for v in part})
            continue
        raise PrunusError(
            f"{where}: feature column {col!r} must hold numbers or fixed-length lists of "
            f"numbers (got {columns[col].dtype}"
            + (", with missing or non-text values" if encode == "onehot" else
               "; a text column can be one-hot encoded with encode=onehot") + ")."
        )

    def feature(values: np.ndarray, col: str) -> np.ndarray:
        if col not in categories:
            return values.reshape(len(values), -1)
        lookup = {v: i for i, v in enumerate(categories[col])}
        return np.eye(len(lookup), dtype=np.float32)[[lookup[v] for v in values]]

    def arrays(table: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
        for col in [label, *features]:
            if col not in table:
                raise choice_error(
                    f"column of the {prefix or 'train'} split of {where}", col, table
                )
        if len(features) == 1 and not categories:
            x = table[features[0]]
        else:
            x = np.concatenate([feature(table[col], col) for col in features], axis=1)
        out = {"x" + prefix: x, "y" + prefix: table[label]}
        if id in table:
            out["ids" + prefix] = table[id]
        return out

    given = arrays(columns, "")
    if test_columns is not None:
        given.update(arrays(test_columns, "_test"))
    dataset = from_arrays(**given, **split_options)
    if categories:
        dataset.options["encoded"] = categories
    if not split_options.get("standardize"):
        _warn_on_scales(dataset, where)
    return dataset


def _materialise(dataset: Any, batch_size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read every ``(x, y)`` item of a torch dataset into two numpy arrays."""
    import torch
    from torch.utils.data import DataLoader

    xs, ys = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    try:
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise PrunusError(f"{name}: torch dataset items must be (x, y) pairs.")
            x, y = batch
            xs.append(torch.as_tensor(x).detach().cpu().numpy())
            ys.append(torch.as_tensor(y).detach().cpu().numpy())
    except (RuntimeError, TypeError) as exc:
        raise PrunusError(
            f"{name}: torch dataset items must be (x, y) pairs of tensors, arrays or numbers "
            f"with one fixed shape ({exc})."
        ) from None
    if not xs:
        raise PrunusError(f"{name}: the dataset is empty.")
    return np.concatenate(xs), np.concatenate(ys)
