"""Weight policies by name, for the study harness and the CLI: ``get_sparsifier(name, ...)``.

| name      | schedule                                              | criterion / growth          |
|-----------|-------------------------------------------------------|-----------------------------|
| random    | one-shot at init, per-layer uniform counts (baseline) | uniform random               |
| magnitude | one-shot after 50% of training, then fine-tune        | global |θ|                  |
| gradient  | one-shot at init                                      | global |∂L/∂θ|             |
| snip      | one-shot at init                                      | global |θ ⊙ ∂L/∂θ|          |
| grasp     | one-shot at init                                      | global θ ⊙ Hg               |
| synflow   | one-shot at init, 100 data-free rounds                | global |θ ⊙ ∂R/∂θ|          |
| gmp       | gradual, cubic, 10%→60% of training                   | global |θ|                  |
| imp       | 3 rounds of prune + rewind (5% of a round), same steps | global |θ|                  |
| set       | sparse from init (ERK), drop/regrow every ΔT          | |θ| / random                |
| rigl      | sparse from init (ERK), drop/regrow every ΔT          | |θ| / |dense gradient|      |
| granet    | gradual pruning + drop/regrow by gradient             | global |θ| / |gradient|     |
| nm        | one-shot N:M (2:4) after 50% of training              | |θ| in each group of M      |

Every default can be changed with keyword settings (they are the callback's arguments).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from prunus.errors import PrunusError
from prunus.registry import WEIGHTS
from prunus.train.events import Callback
from prunus.weights.dst import SET, GraNet, RigL
from prunus.weights.schedules import GradualMagnitude, LotteryTicket, OneShot, Sparsifier


def _oneshot(method: str, **defaults) -> Callable[..., Sparsifier]:
    def factory(sparsity: float, seed: int = 0, **settings) -> Sparsifier:
        return OneShot(sparsity, **{"method": method, **defaults, **settings, "seed": seed})

    factory.__doc__ = f"One-shot {method} pruning (defaults {defaults or 'of OneShot'})."
    factory.target = OneShot  # type: ignore[attr-defined]
    return factory


@WEIGHTS.register("nm", summary="one-shot N:M (2:4) magnitude after 50% of training")
def _nm(sparsity: float, seed: int = 0, m: int = 4, **settings) -> Sparsifier:
    """N:M sparsity with N = (1 − sparsity)·M (sparsity 0.5, M = 4: the 2:4 pattern)."""
    n = (1.0 - float(sparsity)) * m
    if abs(n - round(n)) > 1e-9 or not 0 < round(n) < m:
        raise PrunusError(
            f"sparsity for method 'nm' must be k/{m} for an integer 0 < k < {m}, e.g. 0.5 for 2:4 "
            f"(got {sparsity})."
        )
    settings.setdefault("at", 0.5)
    return OneShot(sparsity, method=settings.pop("method", "magnitude"), pattern=f"{round(n)}:{m}", seed=seed, **settings)


_nm.target = OneShot  # type: ignore[attr-defined]
_nm.fixed = {"pattern"}  # type: ignore[attr-defined]  # derived from sparsity and m


def _cls(cls: type[Sparsifier]) -> Callable[..., Sparsifier]:
    def factory(sparsity: float, seed: int = 0, **settings) -> Sparsifier:
        return cls(sparsity, seed=seed, **settings)

    factory.__doc__ = cls.__doc__
    factory.target = cls  # type: ignore[attr-defined]
    return factory


# The weight registry (``prunus.registry.WEIGHTS``): ``factory(sparsity, seed=0, **settings)``
# returning a :class:`Sparsifier`; a ``target`` attribute names the class whose keywords are
# also allowed settings; ``needs`` says what its criterion reads besides the model: ``"data"``
# (batches of (x, y)) or ``"input_shape"`` (data-free SynFlow: only the input's shape); an
# integration must then be given data (or a batch to take the shape from). Register more
# anywhere with ``@WEIGHTS.register(name, needs=..., summary=...)``.
WEIGHTS.register("random", summary="one-shot at init, per-layer uniform random (baseline)")(
    _oneshot("random", scope="layer", allocation="uniform"))
WEIGHTS.register("magnitude", summary="one-shot global |θ| after 50% of training")(
    _oneshot("magnitude", at=0.5))
WEIGHTS.register("gradient", needs="data", summary="one-shot global |∂L/∂θ| at init")(_oneshot("gradient"))
WEIGHTS.register("snip", needs="data", summary="one-shot global |θ ⊙ ∂L/∂θ| at init (SNIP)")(_oneshot("snip"))
WEIGHTS.register("grasp", needs="data", summary="one-shot global θ ⊙ Hg at init (GraSP)")(_oneshot("grasp"))
WEIGHTS.register("synflow", needs="input_shape",
                 summary="one-shot data-free |θ ⊙ ∂R/∂θ| at init, 100 rounds (SynFlow)")(_oneshot("synflow"))
WEIGHTS.register("gmp", summary="gradual cubic magnitude pruning, 10%→60% of training")(
    _cls(GradualMagnitude))
WEIGHTS.register("imp", summary="iterative magnitude pruning, 3 rounds with rewinding")(
    _cls(LotteryTicket))
WEIGHTS.register("set", summary="sparse from init (ERK), drop |θ| / regrow random every ΔT")(
    _cls(SET))
WEIGHTS.register("rigl", summary="sparse from init (ERK), drop |θ| / regrow by dense gradient")(
    _cls(RigL))
WEIGHTS.register("granet", summary="gradual pruning + drop/regrow by gradient")(_cls(GraNet))
WEIGHT_METHODS = WEIGHTS


def get_sparsifier(method: str, sparsity: float = 0.9, seed: int = 0, **settings) -> Callback:
    """A trainer callback that makes the model ``sparsity``-sparse by the named policy.

    The callback sets ``state.meter.density`` (kept fraction of prunable weights, scaling the
    theoretical FLOPs) and ``state.extra["sparsity"]`` (achieved sparsity of the prunable set).

    Raises:
        PrunusError: unknown method, bad sparsity, or an unknown/invalid setting.
    """
    factory = WEIGHTS.get(method)
    allowed = _allowed_settings(factory)
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise PrunusError(
            f"setting {unknown[0]!r} is not known for weight method {method!r}; "
            f"allowed: {', '.join(sorted(allowed))}."
        )
    try:
        return factory(sparsity, seed=seed, **settings)
    except TypeError as exc:
        raise PrunusError(f"settings for weight method {method!r} are invalid ({exc}).") from None


def _allowed_settings(factory) -> set[str]:
    """The settings a weight method takes: the keyword parameters of its factory and of its
    ``target`` class (and the target's bases), less ``*args``/``**kwargs`` and what the factory
    itself fixes (``sparsity``, ``seed``, the ``method`` a one-shot factory is made for, and
    the names in its ``fixed`` attribute)."""
    fixed = {"self", "sparsity", "seed"} | set(inspect.getclosurevars(factory).nonlocals)
    fixed |= set(getattr(factory, "fixed", ()))
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    cls = getattr(factory, "target", None)
    functions = [k.__init__ for k in (cls.__mro__ if cls else ()) if "__init__" in vars(k)]
    names = {name for fn in (*functions, factory)
             for name, p in inspect.signature(fn).parameters.items() if p.kind in keyword}
    return names - fixed
