"""Writing files safely: one atomic-write helper and one early writability check.

Every file prunus writes (score tables, selections, masks, caches, study rows) goes through
:func:`atomic_write`: the content is written to a hidden temporary file in the destination's
directory, given the permissions the user's umask says (``mkstemp`` would leave 0600), then
renamed onto the destination, so a reader never sees half a file and a failure leaves nothing.
Whole directories (a saved model, a tokenizer) go through :func:`atomic_directory` the same way.
Commands call :func:`check_writable` on their outputs *before* training or scoring.

Caches (parsed corpora, tokenizers, embedding matrices) are written with :func:`write_cache`,
which records beside each file the key it was made for and a digest of its bytes, and reused
only when :func:`cache_hit` finds both unchanged: a corrupted, truncated or swapped cache is
rebuilt, with a warning saying so, never silently used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunus.errors import PrunusError

TEMP_PREFIX = ".tmp-"
CHECK_SUFFIX = ".check.json"


def default_mode(directory: bool = False) -> int:
    """The mode a new file (``0o666 & ~umask``) or directory (``0o777 & ~umask``) gets under
    the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *,
                 durable: bool = False) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path`` (atomic on POSIX).

    ``durable`` also fsyncs the file before the rename (study rows, which a resume trusts).

    Raises:
        PrunusError: the file could not be written (e.g. no space left); nothing is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, default_mode())
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PrunusError(f"could not write {str(path)!r} ({reason(exc)}).") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_directory(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary_directory)``, then rename the result onto ``path``.

    The temporary directory is hidden beside ``path`` (same file system, so the rename is
    atomic); every file in it gets the umask's mode (:func:`default_mode`) and every directory
    ``0o777 & ~umask``. An existing directory at ``path`` is first renamed aside, then the new one
    renamed in, and only then the old one deleted: a failure at any point (in ``write`` or in a
    rename) leaves the old directory as it was and no temporary behind. A reader may briefly
    find no directory between the two renames, never a half-written one.

    Raises:
        PrunusError: ``path`` is a file, or the directory could not be written (naming the reason).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrunusError(f"could not write {str(path)!r} (it is a file, not a directory).")
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f"{TEMP_PREFIX}{tag}-{path.name}")
    old = path.with_name(f"{TEMP_PREFIX}{tag}-old-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        modes = {False: default_mode(), True: default_mode(directory=True)}
        for entry in [tmp, *tmp.rglob("*")]:
            if not entry.is_symlink():
                os.chmod(entry, modes[entry.is_dir()])
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old.exists():
                os.rename(old, path)
            raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PrunusError(f"could not write {str(path)!r} ({reason(exc)}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def check_writable(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail now, not after the work, if ``path`` cannot be written: its directory must exist or
    be creatable and accept new files, and the path must not be a directory.

    Raises:
        PrunusError: naming ``flag`` and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise PrunusError(f"{flag} {str(path)!r} is a directory; give a file name.")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise PrunusError(f"{flag} {str(path)!r} cannot be written ({str(blocking)!r} is a "
                          "file, not a directory).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f"{TEMP_PREFIX}probe-{uuid.uuid4().hex[:8]}")
        probe.write_bytes(b"")
        probe.unlink()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as exc:
        raise PrunusError(f"{flag} {str(path)!r} cannot be written ({reason(exc)}).") from None
    return path


def reason(exc: OSError) -> str:
    """A short human reason for an OS error."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a parent is a file, not a directory"
    return exc.strerror or str(exc)


def write_cache(path: str | os.PathLike, write: Callable[[Path], Any], key: str) -> Path:
    """:func:`atomic_write` a cache file, then beside it ``<name>.check.json`` recording
    ``key`` (what the cache was made for), the file's size and its BLAKE2b digest."""
    path = atomic_write(path, write)
    record = json.dumps({"key": key, **_digest(path)})
    atomic_write(path.with_name(path.name + CHECK_SUFFIX), lambda tmp: tmp.write_text(record))
    return path


def cache_hit(path: str | os.PathLike, key: str) -> bool:
    """Whether the cache file at ``path`` may be reused for ``key``.

    False when there is no file. When there is one but its check record is missing or
    unreadable, names another key, or does not match the file's size and digest (a corrupted,
    truncated or swapped cache), warns that the cache is rebuilt and returns False (the caller
    rebuilds it and :func:`write_cache` replaces both files).
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.with_name(path.name + CHECK_SUFFIX).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        problem = "it has no readable check record"
    elif record.get("key") != key:
        problem = f"it was made for {record.get('key')!r}, not {key!r}"
    elif {"size": record.get("size"), "blake2b": record.get("blake2b")} != _digest(path):
        problem = "its bytes changed since it was written (corrupted, truncated or replaced)"
    else:
        return True
    warnings.warn(f"cache {str(path)!r} is not reused: {problem}; rebuilding it.", stacklevel=2)
    return False


def _digest(path: Path) -> dict[str, Any]:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "blake2b": digest.hexdigest()}


def write_records(path: str | os.PathLike, records: list, columns: tuple[str, ...]) -> Path:
    """Write dataclass-like ``records`` as a Parquet parse cache with ``columns``, checked by
    :func:`read_records` (:func:`write_cache` keyed by the file's name, which carries the hash
    of what was parsed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [getattr(r, c) for r in records] for c in columns})
    return write_cache(path, lambda tmp: pq.write_table(table, tmp), Path(path).name)


def read_records(path: str | os.PathLike, make: Callable[..., Any],
                 columns: tuple[str, ...]) -> list | None:
    """The records :func:`write_records` wrote, rebuilt with ``make(*values)``; None when there
    is no cache or it fails :func:`cache_hit` (then it is to be rebuilt)."""
    import pyarrow.parquet as pq

    if not cache_hit(path, Path(path).name):
        return None
    table = pq.read_table(path).to_pydict()
    return [make(*values) for values in zip(*(table[c] for c in columns))]
