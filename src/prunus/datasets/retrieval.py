"""Retrieval datasets: queries with known relevant documents in a corpus, keyed by stable ids.

A classification :class:`~prunus.datasets.Dataset` holds arrays and labels; a retrieval dataset
holds texts: a corpus of documents and, per split, queries with the id of their positive
document. ``duplicate_group`` marks documents that are near-identical to each other (for
``pycode``: the same normalised source); every member of a query's positive's group counts as
relevant when retrieval is evaluated, so a copy of the answer is never scored as a miss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunus.errors import PrunusError, choice_error

SPLITS = ("train", "dev", "test")


@dataclass
class RetrievalSplit:
    """The queries of one split: ids, texts, positive document ids and source modules."""

    query_ids: np.ndarray
    queries: list[str]
    positive_ids: np.ndarray
    modules: list[str]

    def __post_init__(self) -> None:
        self.query_ids = np.ascontiguousarray(self.query_ids, dtype=np.int64)
        self.positive_ids = np.ascontiguousarray(self.positive_ids, dtype=np.int64)
        if not (len(self.query_ids) == len(self.queries) == len(self.positive_ids)):
            raise PrunusError("query ids, query texts and positive ids must have the same length.")

    def __len__(self) -> int:
        return len(self.query_ids)

    def take(self, rows: np.ndarray) -> RetrievalSplit:
        """The queries at the given row positions."""
        rows = np.asarray(rows, dtype=np.int64)
        return RetrievalSplit(
            self.query_ids[rows],
            [self.queries[r] for r in rows],
            self.positive_ids[rows],
            [self.modules[r] for r in rows],
        )


@dataclass
class RetrievalDataset:
    """A corpus of documents plus train/dev/test queries whose positives are corpus ids.

    ``corpus_ids`` are stable int64 ids, ``corpus`` the texts, ``corpus_modules`` where each
    document comes from and ``corpus_splits`` the split of that module. ``duplicate_group`` is
    ``-1`` for a document with no near-identical twin, else a group number shared by its twins.
    ``stats`` records how the data was extracted (counts of what was dropped and why).
    """

    name: str
    corpus_ids: np.ndarray
    corpus: list[str]
    corpus_modules: list[str]
    corpus_splits: list[str]
    duplicate_group: np.ndarray
    splits: dict[str, RetrievalSplit]
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    _row_of_id: dict[int, int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.corpus_ids = np.ascontiguousarray(self.corpus_ids, dtype=np.int64)
        self.duplicate_group = np.ascontiguousarray(self.duplicate_group, dtype=np.int64)
        if len(np.unique(self.corpus_ids)) != len(self.corpus_ids):
            raise PrunusError(f"{self.name}: corpus ids must be unique.")

    def __len__(self) -> int:
        return len(self.corpus_ids)

    @property
    def train(self) -> RetrievalSplit:
        return self.split("train")

    @property
    def test(self) -> RetrievalSplit:
        return self.split("test")

    def split(self, name: str) -> RetrievalSplit:
        """The queries of split ``name`` (train, dev or test)."""
        if name not in self.splits:
            raise choice_error("split", name, list(self.splits))
        return self.splits[name]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Corpus row positions of the given document ids."""
        if self._row_of_id is None:
            self._row_of_id = {int(i): r for r, i in enumerate(self.corpus_ids)}
        try:
            return np.asarray([self._row_of_id[int(i)] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise PrunusError(f"document id {exc.args[0]} is not in corpus {self.name!r}.") from None

    def texts(self, ids: np.ndarray) -> list[str]:
        """The texts of the given document ids."""
        return [self.corpus[r] for r in self.rows(ids)]

    def relevant_ids(self, positive_ids: np.ndarray) -> list[np.ndarray]:
        """For each positive id: itself plus every document in its duplicate group."""
        groups = self.duplicate_group
        members: dict[int, np.ndarray] = {}
        for group in np.unique(groups[groups >= 0]):
            members[int(group)] = self.corpus_ids[groups == group]
        out = []
        for row, pid in zip(self.rows(positive_ids), positive_ids):
            group = int(groups[row])
            out.append(members[group] if group >= 0 else np.asarray([pid], dtype=np.int64))
        return out

    def corpus_rows(self, split: str | None = None) -> np.ndarray:
        """Row positions of the documents from the modules of ``split`` (all when None)."""
        if split is None:
            return np.arange(len(self.corpus_ids))
        if split not in self.splits:
            raise choice_error("split", split, list(self.splits))
        return np.flatnonzero(np.asarray(self.corpus_splits) == split)

    @property
    def fingerprint(self) -> str:
        """Hash of the corpus, its duplicate groups and every split's queries and positives."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.corpus_ids.tobytes())
            digest.update(self.duplicate_group.tobytes())
            for text in self.corpus:
                digest.update(text.encode("utf-8") + b"\0")
            for name in sorted(self.splits):
                split = self.splits[name]
                digest.update(name.encode() + split.query_ids.tobytes() + split.positive_ids.tobytes())
                for text in split.queries:
                    digest.update(text.encode("utf-8") + b"\0")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def summary(self) -> dict[str, Any]:
        """Plain facts for display: sizes, duplicate groups, fingerprint."""
        out: dict[str, Any] = {"name": self.name, "corpus": len(self.corpus_ids)}
        for name, split in self.splits.items():
            out[f"{name} queries"] = len(split)
            out[f"{name} modules"] = len(set(split.modules))
        out.update({k: v for k, v in self.stats.items() if not isinstance(v, (list, dict))})
        out["fingerprint"] = self.fingerprint
        return out
