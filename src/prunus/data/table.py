"""Score tables: one row per training example (``id``, ``label``, one column per score) with the
metadata that says how the scores were made, stored as Parquet.

A table remembers the fingerprint of the dataset it was computed on; asking it for the scores of
another dataset is an error, so scores never get silently attached to the wrong examples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunus.errors import PrunusError, reading
from prunus.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

    from prunus.datasets.base import Dataset

HIGHER_IS_HARDER = "higher_is_harder"
LOWER_IS_HARDER = "lower_is_harder"
DIRECTIONS = (HIGHER_IS_HARDER, LOWER_IS_HARDER)
METADATA_KEY = b"prunus.score_table"
FORMAT_VERSION = 1


@dataclass
class ScoreTable:
    """Per-example scores keyed by example id, plus how they were made.

    Attributes:
        ids: stable example ids (int64), one per row.
        labels: the class label of each row (int64), as in the scored dataset.
        columns: score name -> float64 array aligned to ``ids``. The first column listed in
            ``metadata["column"]`` is the table's main score (the mean over seeds).
        metadata: ``method``, ``column`` (main score), ``directions`` (column ->
            ``"higher_is_harder"`` or ``"lower_is_harder"``), ``model``, ``epochs``, ``seeds``,
            ``dataset`` (name, options, ``fingerprint``), ``prunus_version``, ``cost``
            (``seconds``, ``flops`` and their parts) and the settings used.
    """

    ids: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        self.columns = {
            name: np.ascontiguousarray(values, dtype=np.float64)
            for name, values in self.columns.items()
        }
        if len(self.labels) != len(self.ids) or any(
            len(v) != len(self.ids) for v in self.columns.values()
        ):
            raise PrunusError("score table: ids, labels and every score column must have the same length.")
        if not self.columns:
            raise PrunusError("score table: it needs at least one score column.")
        if len(np.unique(self.ids)) != len(self.ids):
            raise PrunusError("score table: example ids must be unique.")
        self.metadata.setdefault("column", next(iter(self.columns)))
        directions = self.metadata.setdefault("directions", {})
        for name in self.columns:
            directions.setdefault(name, HIGHER_IS_HARDER)
        if self.metadata["column"] not in self.columns:
            raise PrunusError(
                f"score table: metadata column {self.metadata['column']!r} is not one of the "
                f"columns {list(self.columns)}."
            )

    def __len__(self) -> int:
        return len(self.ids)

    # -- reading scores ---------------------------------------------------------------------

    @property
    def column(self) -> str:
        """Name of the main score column."""
        return self.metadata["column"]

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the dataset the scores were computed on (None if unknown)."""
        return (self.metadata.get("dataset") or {}).get("fingerprint")

    @property
    def num_classes(self) -> int:
        """Number of classes (from the metadata, else from the labels)."""
        dataset = self.metadata.get("dataset") or {}
        return int(dataset.get("num_classes") or (self.labels.max() + 1))

    def scores(self, column: str | None = None) -> np.ndarray:
        """The values of ``column`` (default: the main score), aligned to ``ids``."""
        name = self.column if column is None else column
        if name not in self.columns:
            from prunus.errors import choice_error

            raise choice_error("column", name, self.columns)
        return self.columns[name]

    def direction(self, column: str | None = None) -> str:
        """``"higher_is_harder"`` or ``"lower_is_harder"`` for ``column``."""
        name = self.column if column is None else column
        self.scores(name)
        return self.metadata["directions"].get(name, HIGHER_IS_HARDER)

    def hardness(self, column: str | None = None) -> np.ndarray:
        """The scores oriented so that higher always means harder (negated when lower is harder)."""
        values = self.scores(column)
        return -values if self.direction(column) == LOWER_IS_HARDER else values.copy()

    def check(self, dataset: Dataset) -> None:
        """Raise a :class:`PrunusError` unless this table was computed on ``dataset``."""
        if self.fingerprint != dataset.fingerprint:
            where = (self.metadata.get("dataset") or {}).get("name", "another dataset")
            raise PrunusError(
                f"score table: it was computed on {where!r} with fingerprint {self.fingerprint}, "
                f"but dataset {dataset.name!r} has fingerprint {dataset.fingerprint}; "
                "score this dataset again (prunus score) or pass the dataset it was made on."
            )

    def aligned(self, dataset: Dataset, column: str | None = None) -> np.ndarray:
        """Scores in the row order of ``dataset`` (after the fingerprint check)."""
        self.check(dataset)
        order = np.argsort(self.ids, kind="stable")
        where = order[np.searchsorted(self.ids[order], dataset.ids)]
        return self.scores(column)[where]

    # -- comparing ---------------------------------------------------------------------------

    def rank_correlation(
        self, other: ScoreTable, column: str | None = None, other_column: str | None = None
    ) -> float:
        """Spearman rank correlation with another table's scores over the ids both contain.

        Raises:
            PrunusError: the tables share fewer than two ids.
        """
        from scipy.stats import spearmanr

        common, mine, theirs = np.intersect1d(self.ids, other.ids, return_indices=True)
        if len(common) < 2:
            raise PrunusError("score tables: they share fewer than two example ids to compare.")
        a = self.scores(column)[mine]
        b = other.scores(other_column)[theirs]
        return float(spearmanr(a, b).statistic)

    # -- conversions ---------------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """A ``pyarrow.Table`` with ``id``, ``label``, the score columns and the metadata."""
        import pyarrow as pa

        arrays = {"id": pa.array(self.ids), "label": pa.array(self.labels)}
        arrays.update({name: pa.array(values) for name, values in self.columns.items()})
        table = pa.table(arrays)
        payload = {"format_version": FORMAT_VERSION, **self.metadata}
        return table.replace_schema_metadata(
            {METADATA_KEY: json.dumps(payload, default=_json_default).encode()}
        )

    def to_pandas(self) -> pd.DataFrame:
        """A pandas DataFrame with ``id``, ``label`` and the score columns."""
        return self.to_arrow().to_pandas()

    def join(self, other: Any, on: str = "id") -> Any:
        """Attach the score columns to a pandas DataFrame or a Hugging Face ``datasets.Dataset``
        by example id (column ``on``); rows without a score get NaN.

        Raises:
            PrunusError: ``other`` has no ``on`` column, or is of another type.
        """
        if hasattr(other, "add_column") and hasattr(other, "column_names"):  # datasets.Dataset
            if on not in other.column_names:
                raise PrunusError(f"join: the dataset has no {on!r} column (has {other.column_names}).")
            rows = _lookup(self.ids, np.asarray(other[on], dtype=np.int64))
            for name, values in self.columns.items():
                padded = np.append(values, np.nan)
                other = other.add_column(name, padded[rows].tolist())
            return other
        if hasattr(other, "merge") and hasattr(other, "columns"):  # pandas.DataFrame
            if on not in other.columns:
                raise PrunusError(f"join: the frame has no {on!r} column (has {list(other.columns)}).")
            scores = self.to_pandas().drop(columns=["label"]).rename(columns={"id": on})
            return other.merge(scores, on=on, how="left")
        raise PrunusError(
            "join: other must be a pandas DataFrame or a Hugging Face datasets.Dataset "
            f"(got {type(other).__name__})."
        )

    # -- files ---------------------------------------------------------------------------------

    def write(self, path: str | os.PathLike) -> Path:
        """Write the table as Parquet, atomically (a temporary file renamed into place)."""
        import pyarrow.parquet as pq

        path = Path(path)
        if path.suffix != ".parquet":
            raise PrunusError(f"score table path must end in .parquet (got {str(path)!r}).")
        return atomic_write(path, lambda tmp: pq.write_table(self.to_arrow(), tmp))

    @classmethod
    def read(cls, path: str | os.PathLike) -> ScoreTable:
        """Read a table written by :meth:`write`.

        Raises:
            PrunusError: the file is missing, not Parquet, or not a prunus score table.
        """
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_file():
            raise PrunusError(f"score table {str(path)!r} does not exist.")
        with reading(path, "score table", "a Parquet score table written by prunus score"):
            table = pq.read_table(path)
            raw = (table.schema.metadata or {}).get(METADATA_KEY)
            if raw is None or "id" not in table.column_names or "label" not in table.column_names:
                raise PrunusError(
                    f"score table {str(path)!r} is not a prunus score table "
                    "(it needs id and label columns and prunus metadata; make one with prunus score)."
                )
            metadata = json.loads(raw)
            if not isinstance(metadata, dict):
                raise TypeError("its prunus metadata is not a JSON object")
            metadata.pop("format_version", None)
            names = [n for n in table.column_names if n not in ("id", "label")]
            for name in ("id", "label"):
                if table.column(name).null_count:
                    raise PrunusError(f"score table {str(path)!r}: column {name!r} has missing values.")
            return cls(
                ids=table.column("id").to_numpy(),
                labels=table.column("label").to_numpy(),
                columns={n: table.column(n).to_numpy() for n in names},
                metadata=metadata,
            )


def _lookup(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` in ``ids``; ``len(ids)`` where an id is absent."""
    order = np.argsort(ids, kind="stable")
    where = np.clip(np.searchsorted(ids[order], wanted), 0, max(len(ids) - 1, 0))
    rows = order[where]
    rows[ids[rows] != wanted] = len(ids)
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


SELECTION_KEY = b"prunus.selection"


def read_selection(path: str | os.PathLike, dataset: Dataset | None = None) -> np.ndarray:
    """The ids of a selection written by ``prunus select --out`` (a Parquet file with an ``id``
    column and the selection's settings in its metadata).

    With ``dataset``, the selection must have been made on it (same fingerprint) and every id
    must be one of its training ids.

    Raises:
        PrunusError: the file is missing, unreadable, not a selection, or made on other data.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise PrunusError(f"selection {str(path)!r} does not exist.")
    with reading(path, "selection", "a Parquet selection written by prunus select --out"):
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(SELECTION_KEY)
        if raw is None or "id" not in table.column_names:
            raise PrunusError(f"selection {str(path)!r} is not a prunus selection (it needs an id "
                              "column and prunus metadata; make one with prunus select --out).")
        column = table.column("id")
        if column.null_count or not pa.types.is_integer(column.type):
            raise PrunusError(f"selection {str(path)!r}: its id column must hold integer ids "
                              f"without missing values (got {column.type}, {column.null_count} missing).")
        ids = column.to_numpy().astype(np.int64)
        info = json.loads(raw)
        if not isinstance(info, dict) or not isinstance(info.get("dataset") or {}, dict):
            raise TypeError("its prunus metadata is not a JSON object")
    if dataset is None:
        return ids
    made_on = (info.get("dataset") or {}).get("fingerprint")
    if made_on is not None and made_on != dataset.fingerprint:
        raise PrunusError(
            f"selection {str(path)!r} was made on other data (fingerprint {made_on}, this "
            f"dataset's is {dataset.fingerprint}); select again on this dataset."
        )
    missing = np.setdiff1d(ids, dataset.ids)
    if len(missing):
        raise PrunusError(f"selection {str(path)!r} names {len(missing)} ids that are not in "
                          f"the dataset (e.g. {int(missing[0])}).")
    return ids
