"""One registry shape for every family of methods (datasets, models, score methods, selection
policies, online methods, weight methods, negatives policies).

A family keeps a :class:`Registry`; a method is added in ONE place, where it is defined::

    from prunus.registry import SCORES

    @SCORES.register("mine", needs="outputs", summary="my per-example score")
    def my_scores(model, dataset, *, batch_size=1024, progress=None): ...

``register(name, **defaults)`` records the callable, its defaults (family-specific: for score
methods the spec ``needs``/``column``/``direction``..., for the other families the settings the
family reads) and a one-line summary (``summary=`` or the first line of the docstring).
``get(name)`` returns the callable and raises the standard one-sentence
:func:`prunus.errors.choice_error` listing the valid names; ``names()`` and ``describe()``
(``{name: one line}``) list them. A registry is also a read-only mapping ``name -> callable``,
so ``name in ONLINE`` and ``sorted(WEIGHTS)`` work.

Methods come from three places, loaded lazily on the first lookup (``get``, ``names``, ``in``,
iteration...), never at import, so importing a family stays cheap:

1. the family's built-in modules (``modules=``, and every module of the ``packages=``, found by
   listing the package: a new built-in score method is one new file in ``prunus.data.scores``),
   which register their methods when imported;
2. third-party packages, through the entry-point group ``prunus.<family>`` (e.g.
   ``[project.entry-points."prunus.scores"] mine = "my_pkg.methods:my_scores"``): the entry
   point's name is the method name and the loaded object is registered under it, unless
   loading the module already registered it (an entry point may also name a module whose
   import registers methods with the decorator);
3. modules named in the ``PRUNUS_PLUGINS`` environment variable (comma separated), imported
   before the first lookup of any family.

Worker processes (``prunus study --workers N`` uses spawned processes) start with empty
registries and fill them the same way on their first lookup, so methods from entry points or
``PRUNUS_PLUGINS`` (inherited through the environment) are available in every worker. A method
registered at run time from an importable module is imported by every worker too (see
:func:`registering_modules`); one defined in the script itself is seen because spawn re-imports
a script run as ``python my_study.py`` in each worker (keep the study call under
``if __name__ == "__main__":``). Methods defined interactively (a notebook cell) are not
importable: put them in a module.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunus.errors import PrunusError, choice_error

PLUGINS_ENV = "PRUNUS_PLUGINS"
_MISSING = object()
_plugins_lock = threading.RLock()
_plugins_imported = False


@dataclass(frozen=True)
class Entry:
    """One registered method: its callable, its defaults and a one-line summary."""

    name: str
    obj: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def __getattr__(self, key: str) -> Any:
        # spec fields read as attributes: ``entry.needs`` is ``entry.defaults["needs"]``
        defaults = object.__getattribute__(self, "defaults")
        if key in defaults:
            return defaults[key]
        raise AttributeError(f"{type(self).__name__} {self.name!r} has no field {key!r}")

    def options(self) -> dict[str, Any]:
        """The callable's options: parameters passable by keyword that have a default, with it."""
        return {
            p.name: p.default
            for p in inspect.signature(self.obj).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
        }


def first_line(obj: Any) -> str:
    """The first non-empty line of ``obj``'s docstring ('' if it has none)."""
    doc = getattr(obj, "__doc__", None) or ""
    return next((line.strip() for line in doc.strip().splitlines() if line.strip()), "")


class Registry(Mapping):
    """Methods of one family by name (a read-only ``name -> callable`` mapping).

    Args:
        family: the family's name; third-party methods come from the entry-point group
            ``prunus.<family>``.
        field: how errors name the value (default: ``"<family> method"``).
        modules: built-in modules imported on the first lookup (they register the built-ins).
        packages: packages whose every module is imported on the first lookup, before ``modules``.
    """

    def __init__(self, family: str, *, field: str | None = None, modules: tuple[str, ...] = (),
                 packages: tuple[str, ...] = ()) -> None:
        self.family = family
        self.field = field or f"{family} method"
        self.group = f"prunus.{family}"
        self.modules = tuple(modules)
        self.packages = tuple(packages)
        self._entries: dict[str, Entry] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- adding ------------------------------------------------------------------------------
    def register(self, name: str, *, summary: str | None = None, **defaults: Any):
        """Decorator recording ``obj`` under ``name`` with ``defaults`` and a one-line summary.

        Registering a name again replaces the earlier method (the last registration wins).
        """
        if not isinstance(name, str) or not name:
            raise PrunusError(f"a {self.field} name must be a non-empty string (got {name!r}).")

        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, obj, summary=summary, **defaults)
            return obj

        return decorate

    def add(self, name: str, obj: Callable[..., Any], *, summary: str | None = None, **defaults: Any) -> Entry:
        """Non-decorator form of :meth:`register`; returns the new :class:`Entry`."""
        entry = Entry(name, obj, dict(defaults), summary if summary is not None else first_line(obj))
        with self._lock:
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error if absent); for tests and interactive use."""
        with self._lock:
            self._entries.pop(name, None)

    # -- looking up --------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; unknown names raise the one-sentence choice error."""
        self.load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise choice_error(self.field, name, self._entries) from None

    def get(self, name: str, default: Any = _MISSING) -> Any:  # type: ignore[override]
        """The callable registered as ``name``.

        Raises:
            PrunusError: ``name`` is unknown (one sentence listing the valid names), unless a
                ``default`` is given, which is then returned.
        """
        self.load()
        if default is not _MISSING and name not in self._entries:
            return default
        return self.entry(name).obj

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        self.load()
        return tuple(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: one-line summary}``, sorted by name."""
        self.load()
        return {name: self._entries[name].summary for name in sorted(self._entries)}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        self.load()
        return self._entries[name].obj

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def __repr__(self) -> str:
        state = ", ".join(self._entries) if self._loaded else "not loaded"
        return f"Registry({self.family!r}: {state})"

    # -- discovery ---------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in modules, ``PRUNUS_PLUGINS`` and the entry points (once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: modules imported below register into self
            try:
                for module in (*package_modules(self.packages), *self.modules):
                    importlib.import_module(module)
                import_plugins()
                self._load_entry_points()
            except BaseException:
                self._loaded = False
                raise

    def reload(self) -> None:
        """Look for entry points (and built-in modules) again on the next lookup."""
        with self._lock:
            self._loaded = False

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            if point.name in self._entries:
                continue  # a built-in or an explicit registration wins over an entry point
            try:
                obj = point.load()
            except Exception as exc:
                raise PrunusError(
                    f"entry point {point.name!r} of group {self.group!r} ({point.value}) could "
                    f"not be loaded: {exc}."
                ) from exc
            if point.name not in self._entries and callable(obj):
                self.add(point.name, obj)


def package_modules(packages: tuple[str, ...]) -> list[str]:
    """The modules of each package in ``packages`` (not recursive), sorted by name."""
    names = []
    for package in packages:
        path = importlib.import_module(package).__path__
        names += sorted(f"{package}.{info.name}" for info in pkgutil.iter_modules(path))
    return names


def import_plugins(modules: str | list[str] | tuple[str, ...] | None = None) -> None:
    """Import plugin modules that register methods (default: ``$PRUNUS_PLUGINS``, once).

    Raises:
        PrunusError: a module cannot be imported.
    """
    global _plugins_imported
    if modules is None:
        with _plugins_lock:
            if _plugins_imported:
                return
            _plugins_imported = True
            modules = os.environ.get(PLUGINS_ENV, "")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    for module in modules:
        if not module:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PrunusError(
                f"plugin module {module!r} (from {PLUGINS_ENV} or the study's plugins) could not "
                f"be imported: {exc}."
            ) from exc


# The families. Each family module registers its built-ins into one of these.
DATASETS = Registry(
    "datasets",
    field="dataset",
    modules=("prunus.datasets.bundled", "prunus.datasets.pycode", "prunus.text.corpus"),
)
MODELS = Registry("models", field="model", modules=("prunus.models",))
SCORES = Registry("scores", field="method", modules=("prunus.data.labels",),
                  packages=("prunus.data.scores",))
SELECT = Registry("select", field="policy", modules=("prunus.data.select",))
ONLINE = Registry("online", field="online method", modules=("prunus.data.online",))
WEIGHTS = Registry("weights", field="weight method", modules=("prunus.weights.registry",))
NEGATIVES = Registry("negatives", field="negatives policy", modules=("prunus.negatives.policy",))

FAMILIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "models": MODELS,
    "scores": SCORES,
    "select": SELECT,
    "online": ONLINE,
    "weights": WEIGHTS,
    "negatives": NEGATIVES,
}


def registering_modules() -> list[str]:
    """The importable modules (outside prunus) whose methods are registered in this process, so
    that spawned workers can import them and see the same methods (a method defined in the
    running script itself, ``__main__``, is re-imported by spawn on its own)."""
    names = {getattr(entry.obj, "__module__", None)
             for registry in FAMILIES.values() for entry in list(registry._entries.values())}
    return sorted(n for n in names if n and n != "__main__" and n.split(".")[0] != "prunus")


__all__ = ["DATASETS", "FAMILIES", "MODELS", "NEGATIVES", "ONLINE", "PLUGINS_ENV", "SCORES", "SELECT",
           "WEIGHTS", "Entry", "Registry", "import_plugins", "registering_modules"]
