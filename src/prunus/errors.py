"""Errors that prunus raises for bad user input.

Every user error is a :class:`PrunusError`: one sentence that names the field and the allowed
values. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self


class PrunusError(ValueError):
    """Bad input from the user (a name, a value, a file); the message is one clear sentence."""


class MissingExtraError(PrunusError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def choice_error(field: str, value: object, allowed: Iterable[str]) -> PrunusError:
    """Build the standard 'unknown name' error that lists the valid names."""
    names = ", ".join(sorted(str(a) for a in allowed))
    return PrunusError(f"{field} must be one of: {names} (got {value!r}).")


def setting_error(key: str, owner: str, allowed: Iterable[str]) -> PrunusError:
    """Build the standard 'unknown setting' error: ``'bogus' is not a setting of model 'mlp';
    its settings are: hidden.`` (``owner`` names what the settings belong to)."""
    names = ", ".join(sorted(str(a) for a in allowed)) or "none"
    return PrunusError(f"{key!r} is not a setting of {owner}; its settings are: {names}.")


def require(module: str, extra: str):
    """Import an optional dependency or raise a :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'prunus[{extra}]'."
        ) from exc


# Exceptions that a parser raises on a corrupted, truncated, empty or foreign file. Library
# errors without a common base (pyarrow, safetensors, zipfile, zlib, datasets) are recognised by
# the module that defines them, so this module imports none of those libraries.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                UnicodeDecodeError, RecursionError, OverflowError)
_READ_ERROR_MODULES = ("pyarrow", "safetensors", "zipfile", "zlib", "tomllib", "json", "datasets",
                       "fsspec", "numpy")


def _is_read_error(exc: BaseException) -> bool:
    if isinstance(exc, _READ_ERRORS):
        return True
    return any(
        (cls.__module__ or "").split(".")[0] in _READ_ERROR_MODULES for cls in type(exc).__mro__
        if cls not in (Exception, BaseException, object)
    )


def one_line(text: object, limit: int = 200) -> str:
    """``text`` as a single line of at most ``limit`` characters (for quoting a library error)."""
    line = " ".join(str(text).split())
    line = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class reading:
    """Context manager around the reading of one user file.

    Inside it, any parser error (``BadZipFile``, ``ArrowInvalid``, ``UnicodeDecodeError``,
    ``KeyError``, a safetensors error, ...) becomes one :class:`PrunusError` sentence naming the
    file and what it should have been: ``"{what} '{path}' is not {expected} (reason)."``. A
    :class:`PrunusError` raised inside that does not name the file is re-raised with the file
    in front (a leading ``"{strip}: "`` is dropped first; default ``strip`` is ``what``).

    Example::

        with reading(path, "score table", "a Parquet file written by prunus score"):
            table = pq.read_table(path)
    """

    def __init__(self, path: object, what: str, expected: str | None = None, *,
                 strip: str | None = None, hint: str = "") -> None:
        self.path = str(path)
        self.what = what
        self.expected = expected
        self.strip = what if strip is None else strip
        self.hint = hint

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        import os

        name = os.path.basename(self.path.rstrip(os.sep)) or self.path
        if isinstance(exc, PrunusError):
            message = str(exc)
            if name in message:
                return False
            if self.strip and message.startswith(f"{self.strip}: "):
                message = message[len(self.strip) + 2:]
            raise type(exc)(f"{self.what} {self.path!r}: {message}") from None
        if isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None) == self.path:
            raise PrunusError(f"{self.what} {self.path!r} does not exist.") from None
        if not isinstance(exc, Exception) or isinstance(exc, MemoryError) or not _is_read_error(exc):
            return False
        import re

        text = str(exc).replace(self.path, name)  # the path is already in the sentence
        text = re.sub(r"^Could not open Parquet input source [^:]*: ", "", text)
        text = re.sub(r"^(CSV parse error: [^:]*):.*", r"\1", text, flags=re.DOTALL)  # not the row
        detail = one_line(text, 160) or type(exc).__name__
        if self.expected:
            text = f"{self.what} {self.path!r} is not {self.expected} ({detail})"
        else:
            text = f"{self.what} {self.path!r} could not be read ({detail})"
        raise PrunusError(text + (f"; {self.hint}" if self.hint else "") + ".") from None
