"""``pycode``: a code-search retrieval task built offline from this interpreter's standard library.

Every function and method of the standard library (``sysconfig.get_paths()["stdlib"]``, minus
its test suites and installed packages) is parsed with :mod:`ast`. The first sentence of a
function's docstring is a **query**; the function's source without its docstring is its
**positive** document. The corpus holds every function (with or without a docstring), once per
distinct text.

* **Deterministic**: files are read in sorted order, ids are hashes of ``module:qualname``.
* **Deduplicated**: identical function texts are one document; a query text that describes
  functions of different source is dropped as ambiguous; repeated queries of one source are one.
* **Split by module**: modules are ordered by a seeded hash and dealt to test, dev, then train
  until each split holds its fraction of the queries, so no module is in two splits.
* **Near-identical functions** (the same *normalised source*: the ``ast`` dump of the function
  without its docstring, which ignores comments, layout and quoting) are real false negatives,
  e.g. ``posixpath.islink`` and ``ntpath.islink``. They are counted in ``stats`` and, where
  their texts differ, kept as one ``duplicate_group`` so evaluation counts every copy relevant.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import re
import sys
import sysconfig
import textwrap
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunus.datasets.registry import register
from prunus.datasets.retrieval import RetrievalDataset, RetrievalSplit
from prunus.errors import PrunusError
from prunus.files import read_records, write_records

RECIPE_VERSION = 1
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)


@register(
    "pycode",
    "retrieval: docstring sentence -> function source, from this Python's stdlib, split by module",
)
def load_pycode(
    *,
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_query_words: int = 3,
    modules: str | Sequence[str] | None = None,
    cache: bool = True,
) -> RetrievalDataset:
    """Build the ``pycode`` retrieval dataset from the running interpreter's standard library.

    Args:
        seed: salt of the module hash that deals modules to splits. Default 0.
        dev_fraction: share of queries in the dev split, in [0, 1). Default 0.1.
        test_fraction: share of queries in the test split, in (0, 1). Default 0.1.
        min_query_words: queries with fewer words are dropped (``"Constructor."``). Default 3.
        modules: only these modules and their submodules (names or a comma-separated string);
            None for the whole standard library. Default None.
        cache: keep the parsed functions in the user cache dir (``$PRUNUS_CACHE_DIR``), keyed by
            the Python version and the files' sizes and times. Default True.

    Raises:
        PrunusError: fractions out of range, no module matches ``modules``, or no query left.
    """
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= dev_fraction < 1.0:
        raise PrunusError(
            f"test_fraction must be in (0, 1) and dev_fraction in [0, 1) "
            f"(got {test_fraction!r}, {dev_fraction!r})."
        )
    if test_fraction + dev_fraction >= 1.0:
        raise PrunusError("test_fraction + dev_fraction must be below 1 to leave a train split.")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    records = extract_functions(modules=modules, cache=cache and not modules)
    if not records:
        raise PrunusError(f"modules must name standard-library modules (got {modules!r}).")
    options = {
        "seed": seed, "dev_fraction": dev_fraction, "test_fraction": test_fraction,
        "min_query_words": min_query_words, "modules": list(modules) if modules else None,
        "python": sys.version.split()[0],
    }
    return build_dataset(records, seed, dev_fraction, test_fraction, min_query_words, options)


@dataclass(frozen=True)
class FunctionRecord:
    """One function of the standard library as parsed: where it is, its text and its query."""

    module: str
    qualname: str
    occurrence: int  # 0 for the first definition of module:qualname, 1 for a redefinition, ...
    text: str  # the source without its docstring, dedented
    query: str  # first sentence of the docstring ("" when there is none)
    source_key: str  # hash of the normalised source (ast dump without the docstring)

    @property
    def name(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def id(self) -> int:
        return stable_id(f"{self.name}:{self.occurrence}")


def stable_id(key: str) -> int:
    """A non-negative int64 from a string (blake2b), the same on every machine."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- extraction


def stdlib_files(modules: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """``(module name, path)`` of the standard library's ``.py`` files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in SKIP_DIRS or p.startswith(("config-", "lib-dynload")) for p in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or any(not p.isidentifier() for p in parts):
            continue
        name = ".".join(parts)
        if modules and not any(name == m or name.startswith(m + ".") for m in modules):
            continue
        out.append((name, path))
    return out


def extract_functions(
    modules: Sequence[str] | None = None, cache: bool = True
) -> list[FunctionRecord]:
    """Every function and method (not nested in a function) of the selected stdlib files."""
    files = stdlib_files(modules)
    cache_file = _cache_file(files) if cache else None
    cached = None if cache_file is None else read_records(cache_file, FunctionRecord, _COLUMNS)
    if cached is not None:
        return cached
    records: list[FunctionRecord] = []
    for module, path in files:
        records.extend(functions_of_file(module, path))
    if cache_file is not None:
        write_records(cache_file, records, _COLUMNS)
    return records


def functions_of_file(module: str, path: Path) -> list[FunctionRecord]:
    """The functions of one source file (unparsable files give none)."""
    try:
        with tokenize.open(path) as handle:
            source = handle.read()
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    seen: dict[str, int] = defaultdict(int)
    out: list[FunctionRecord] = []
    for qualname, node in _function_nodes(tree, ""):
        text = source_without_docstring(node, lines)
        if text is None:
            continue  # the body is only a docstring: nothing to retrieve
        occurrence = seen[qualname]
        seen[qualname] += 1
        docstring = ast.get_docstring(node, clean=True) or ""
        out.append(
            FunctionRecord(
                module, qualname, occurrence, text, first_sentence(docstring), normalised_key(node)
            )
        )
    return out


def _function_nodes(node: ast.AST, prefix: str) -> Iterable[tuple[str, ast.AST]]:
    # Module- and class-level functions, also under if/try/with blocks; not functions in functions.
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
        elif isinstance(child, ast.ClassDef):
            yield from _function_nodes(child, f"{prefix}{child.name}.")
        elif isinstance(child, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or (
            type(child).__name__ == "TryStar"
        ):
            yield from _function_nodes(child, prefix)


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return first if isinstance(first.value.value, str) else None
    return None


def source_without_docstring(node: ast.AST, lines: list[str]) -> str | None:
    """The function's source lines (decorators included) with the docstring cut out, dedented.

    Returns None when the docstring is the whole body.
    """
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno
    doc = _docstring_node(node)
    if doc is not None and len(node.body) == 1:
        return None
    kept: list[str] = []
    for number in range(start, end + 1):
        line = lines[number - 1]
        if doc is not None and doc.lineno <= number <= doc.end_lineno:
            raw = line.encode("utf-8")
            head = raw[: doc.col_offset] if number == doc.lineno else b""
            tail = raw[doc.end_col_offset :] if number == doc.end_lineno else b""
            tail = tail.lstrip(b";").lstrip() if tail.strip() else tail
            line = (head + tail).decode("utf-8", errors="replace")
            if not line.strip():
                continue
        kept.append(line)
    return textwrap.dedent("".join(kept)).rstrip() + "\n"


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence: its first paragraph up to the first ``.``, ``!`` or ``?``
    followed by a space, whitespace collapsed."""
    paragraph = inspect.cleandoc(docstring).strip().split("\n\n")[0]
    paragraph = " ".join(paragraph.split())
    match = _SENTENCE.match(paragraph)
    return match.group(1) if match else paragraph


def normalised_key(node: ast.AST) -> str:
    """Hash of the function's ``ast`` dump without its docstring (ignores comments and layout)."""
    stripped = copy.copy(node)
    if _docstring_node(node) is not None:
        stripped.body = node.body[1:]
    dump = ast.dump(stripped, annotate_fields=False, include_attributes=False)
    return hashlib.blake2b(dump.encode("utf-8"), digest_size=12).hexdigest()


# --------------------------------------------------------------------------- building the dataset


def build_dataset(
    records: list[FunctionRecord],
    seed: int,
    dev_fraction: float,
    test_fraction: float,
    min_query_words: int,
    options: dict,
) -> RetrievalDataset:
    """Corpus (distinct texts), duplicate groups, deduplicated queries and the module split."""
    stats: dict[str, object] = {"functions": len(records)}
    # corpus: one document per distinct text, named after its first function
    doc_of_text: dict[str, int] = {}
    doc_records: list[FunctionRecord] = []
    doc_row = np.empty(len(records), dtype=np.int64)
    for i, rec in enumerate(records):
        if rec.text not in doc_of_text:
            doc_of_text[rec.text] = len(doc_records)
            doc_records.append(rec)
        doc_row[i] = doc_of_text[rec.text]
    stats["identical_copies"] = len(records) - len(doc_records)

    # near-identical functions: the same normalised source
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_key[rec.source_key].append(i)
    cross_module = [rows for rows in by_key.values() if len({records[r].module for r in rows}) > 1]
    stats["near_identical_groups"] = len(cross_module)
    stats["near_identical_functions"] = sum(len(rows) for rows in cross_module)
    stats["near_identical_examples"] = [
        sorted(records[r].name for r in rows) for rows in cross_module
    ]
    group = np.full(len(doc_records), -1, dtype=np.int64)
    next_group = 0
    for rows in by_key.values():
        docs = sorted(set(doc_row[rows].tolist()))
        if len(docs) > 1:
            group[docs] = next_group
            next_group += 1
    stats["duplicate_groups"] = next_group
    stats["duplicate_documents"] = int((group >= 0).sum())

    # queries: long enough, unambiguous, one per text
    identity = np.where(group >= 0, -1 - group, np.arange(len(doc_records)))
    by_query: dict[str, list[int]] = defaultdict(list)
    too_short = 0
    for i, rec in enumerate(records):
        if not rec.query:
            continue
        if len(rec.query.split()) < min_query_words:
            too_short += 1
            continue
        by_query[rec.query].append(i)
    kept: list[int] = []
    ambiguous = merged = 0
    for rows in by_query.values():
        if len({int(identity[doc_row[r]]) for r in rows}) > 1:
            ambiguous += len(rows)
            continue
        merged += len(rows) - 1
        kept.append(rows[0])
    stats.update(
        with_docstring=sum(1 for r in records if r.query),
        queries_too_short=too_short,
        queries_ambiguous=ambiguous,
        queries_merged=merged,
        queries=len(kept),
    )
    if not kept:
        raise PrunusError("pycode: no query is left; lower min_query_words or widen modules.")

    split_of_module = deal_modules(
        [r.module for r in records], [records[i].module for i in kept],
        seed, dev_fraction, test_fraction,
    )
    splits = {}
    for name in ("train", "dev", "test"):
        rows = [i for i in kept if split_of_module[records[i].module] == name]
        splits[name] = RetrievalSplit(
            np.asarray([records[i].id for i in rows], dtype=np.int64),
            [records[i].query for i in rows],
            np.asarray([doc_records[doc_row[i]].id for i in rows], dtype=np.int64),
            [records[i].module for i in rows],
        )
    relevant = sum(int(group[doc_row[i]] >= 0) for i in kept)
    stats["queries_with_duplicate_positives"] = relevant
    return RetrievalDataset(
        name="pycode",
        corpus_ids=np.asarray([r.id for r in doc_records], dtype=np.int64),
        corpus=[r.text for r in doc_records],
        corpus_modules=[r.module for r in doc_records],
        corpus_splits=[split_of_module[r.module] for r in doc_records],
        duplicate_group=group,
        splits=splits,
        options=options,
        stats=stats,
    )


def deal_modules(
    all_modules: list[str],
    query_modules: list[str],
    seed: int,
    dev_fraction: float,
    test_fraction: float,
) -> dict[str, str]:
    """Map each module to a split: modules in seeded-hash order fill test, then dev, then train,
    each until it holds its fraction of the queries."""
    counts: dict[str, int] = defaultdict(int)
    for module in query_modules:
        counts[module] += 1
    total = len(query_modules)
    order = sorted(set(all_modules), key=lambda m: (stable_id(f"{seed}:{m}"), m))
    quota = [("test", test_fraction * total), ("dev", dev_fraction * total)]
    out: dict[str, str] = {}
    filled = 0.0
    for module in order:
        while quota and filled >= quota[0][1]:
            quota.pop(0)
            filled = 0.0
        if not quota:
            out[module] = "train"
            continue
        out[module] = quota[0][0]
        filled += counts[module]
    return out


# --------------------------------------------------------------------------- cache


def _cache_file(files: list[tuple[str, Path]]) -> Path:
    from prunus.datasets.mnist1d import cache_dir

    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{RECIPE_VERSION}|{sys.version}|{sys.implementation.cache_tag}".encode())
    for module, path in files:
        stat = path.stat()
        digest.update(f"{module}|{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return cache_dir() / "datasets" / f"pycode-functions-{digest.hexdigest()}.parquet"


_COLUMNS = ("module", "qualname", "occurrence", "text", "query", "source_key")


