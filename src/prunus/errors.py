"""Errors that prunus raises for bad user input.

Every user error is a :class:`PrunusError`: one sentence that names the field and the allowed
values. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class PrunusError(ValueError):
    """Bad input from the user (a name, a value, a file); the message is one clear sentence."""


class MissingExtraError(PrunusError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def choice_error(field: str, value: object, allowed: Iterable[str]) -> PrunusError:
    """Build the standard 'unknown name' error that lists the valid names."""
    names = ", ".join(sorted(str(a) for a in allowed))
    return PrunusError(f"{field} must be one of: {names} (got {value!r}).")


def require(module: str, extra: str):
    """Import an optional dependency or raise a :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'prunus[{extra}]'."
        ) from exc
