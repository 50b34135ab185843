"""Writing TOML (a study's ``config.toml``, study files made by code) with ``tomli-w``."""

from __future__ import annotations

from typing import Any

import tomli_w

from prunus.errors import PrunusError


def to_toml(values: dict[str, Any]) -> str:
    """Serialise plain data (dicts, lists, scalars) to TOML that ``tomllib`` reads back equal.

    TOML has no null, so keys whose value is ``None`` are left out, at any depth. A value TOML
    cannot hold (an object, a ``None`` inside a list) is a :class:`PrunusError`.
    """
    try:
        return tomli_w.dumps(without_none(values))
    except TypeError as exc:
        raise PrunusError(f"cannot write this value to TOML: {exc}.") from None


def without_none(value: Any) -> Any:
    """``value`` with every ``None``-valued key removed from its dicts, however deep."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value]
    return value
