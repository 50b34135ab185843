"""Packages that import light: public names resolve to their submodule on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``home`` maps each public name to the
    submodule (relative to ``package``) that defines it.

    A public name must not equal a submodule's name: importing the submodule would rebind the
    package attribute to the module.
    """

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
