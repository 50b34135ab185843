"""The one formatter of pydantic validation errors: the first problem as one sentence that
names the field (``policies[2].keep[0] must be ...``), for study configs and for every setting
validated with :func:`prunus.config.validated` (training, negatives and LM settings).

A validator raises ``ValueError("must be ...")`` for a message about its own field (the field's
name is put in front) or :class:`PolicyError` for a problem across fields whose message is
already a full sentence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

TYPE_WORDS = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false"}
BOUNDS = ("greater_than", "less_than_equal", "greater_than_equal", "less_than")


class PolicyError(ValueError):
    """A cross-field problem whose message is already a full sentence."""


def describe_error(exc: ValidationError, source: str = "config", where: str = "") -> str:
    """The first problem in ``exc`` as one sentence naming the field.

    Args:
        exc: what pydantic raised.
        source: what the values came from (a file name), for a missing field or a problem that
            names no field.
        where: a prefix for every field name (``"train"`` gives ``train.lr``).
    """
    err = exc.errors()[0]
    field = ".".join(part for part in (where, format_location(err["loc"])) if part)
    kind, got, message = err["type"], err.get("input"), str(err.get("msg", ""))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, PolicyError):
        return str(cause)
    message = message.removeprefix("Value error, ").rstrip(".")
    if not field:
        return f"{source}: {message}."
    if kind == "extra_forbidden":
        return f"{field} is not a known setting; remove it or check its spelling."
    if kind == "missing":
        return f"{field} is required but missing from {source}."
    if kind == "literal_error":
        return f"{field} must be one of {err['ctx']['expected']} (got {got!r})."
    if kind in BOUNDS:
        return f"{field}: {message} (got {got!r})."
    if kind == "value_error":
        return f"{field} {message}."
    if kind in TYPE_WORDS and isinstance(got, str):
        return f"{field} must be {TYPE_WORDS[kind]} written without quotes (got {got!r})."
    return f"{field}: {message} (got {short(got)})."


def format_location(loc: tuple) -> str:
    """``('policies', 2, 'keep', 0)`` -> ``policies[2].keep[0]`` (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("list[", "int", "float", "str", "constrained-", "function-")):
            continue  # pydantic names the union branch it tried; the user never wrote it
        else:
            out += f".{part}" if out else part
    return out


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
