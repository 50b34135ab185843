"""The in-memory dataset every prunus method works on: arrays keyed by stable example ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prunus.errors import PrunusError


@dataclass
class Dataset:
    """A labelled classification dataset with stable integer example ids.

    ``ids``, ``x`` and ``y`` are the training split; ``test`` is the held-out split (itself a
    ``Dataset`` with ``test=None``). Scores, selections and logs are keyed by ``ids``, never by
    position. ``flipped_ids`` lists the ids whose label was changed by ``noise=`` (``clean_y``
    keeps the original labels, aligned to ``ids``).
    """

    name: str
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    test: Dataset | None = None
    flipped_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    clean_y: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)
        if self.x.dtype != np.float32:
            self.x = self.x.astype(np.float32)
        self.x = np.ascontiguousarray(self.x)
        validate_arrays(self.ids, self.x, self.y, self.num_classes, where=self.name)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch dimension)."""
        return tuple(self.x.shape[1:])

    @property
    def fingerprint(self) -> str:
        """Hash of ids, labels and data of both splits; changes when any of them changes."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for split in (self, self.test):
                if split is None:
                    continue
                for array in (split.ids, split.y, split.x):
                    digest.update(str(array.shape).encode())
                    digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(str(self.num_classes).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given ids (raises if an id is not in this dataset)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        where = np.searchsorted(sorted_ids, ids)
        where = np.clip(where, 0, len(sorted_ids) - 1)
        if len(ids) and not np.array_equal(sorted_ids[where], ids):
            missing = ids[sorted_ids[where] != ids][:5].tolist()
            raise PrunusError(f"ids {missing} are not in dataset {self.name!r}.")
        return order[where]

    def subset(self, ids: np.ndarray) -> Dataset:
        """The training examples with the given ids (same test split, same id values)."""
        rows = self.positions(ids)
        keep = np.isin(self.flipped_ids, self.ids[rows])
        return replace(
            self,
            ids=self.ids[rows],
            x=self.x[rows],
            y=self.y[rows],
            clean_y=None if self.clean_y is None else self.clean_y[rows],
            flipped_ids=self.flipped_ids[keep],
            _fingerprint=None,
        )

    def class_counts(self) -> np.ndarray:
        """Number of training examples per class."""
        return np.bincount(self.y, minlength=self.num_classes)

    def summary(self) -> dict[str, Any]:
        """Plain facts for display: sizes, shape, classes (and their names, when the labels were
        strings or named classes), fingerprint."""
        facts = {
            "name": self.name,
            "train": len(self),
            "test": 0 if self.test is None else len(self.test),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "flipped": len(self.flipped_ids),
            "fingerprint": self.fingerprint,
        }
        if "classes" in self.options:
            facts["class_names"] = list(self.options["classes"])
        return facts


def validate_arrays(
    ids: np.ndarray, x: np.ndarray, y: np.ndarray, num_classes: int, where: str = "dataset"
) -> None:
    """Check shapes, labels and values; raise one clear :class:`PrunusError` on bad input."""
    if ids.ndim != 1 or y.ndim != 1:
        raise PrunusError(
            f"{where}: labels must be a 1-D array of class indices (got shape {tuple(y.shape)})."
        )
    if not (len(ids) == len(x) == len(y)):
        raise PrunusError(
            f"{where}: ids, x and y must have the same length "
            f"(got {len(ids)}, {len(x)}, {len(y)})."
        )
    if len(y) == 0:
        raise PrunusError(f"{where}: the dataset is empty.")
    if len(np.unique(ids)) != len(ids):
        raise PrunusError(f"{where}: example ids must be unique.")
    if y.min() < 0 or y.max() >= num_classes:
        raise PrunusError(
            f"{where}: labels must be integers in [0, {num_classes - 1}] "
            f"(got values from {y.min()} to {y.max()})."
        )
    if not np.isfinite(x).all():
        raise PrunusError(f"{where}: x contains NaN or infinite values.")
