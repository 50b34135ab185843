"""Online data selection: decide inside the training loop which examples to train on.

Each method has a functional form for your own loop and a callback for the prunus trainer:

| name                 | own loop                                     | trainer callback      |
|----------------------|----------------------------------------------|-----------------------|
| ``rs2``              | :class:`RS2Sampler` (a ``Sampler``)          | :class:`RS2`          |
| ``infobatch``        | :class:`InfoBatch` (a ``Sampler`` + weights) | :class:`InfoBatchCallback` |
| ``selective_backprop`` | :func:`select_by_percentile`               | :class:`SelectiveBackprop` |
| ``rho_loss``         | :func:`rho_select`                           | :class:`RhoLoss`      |
| ``reweight``         | :func:`loss_weights`                         | :class:`LossReweighting` |

``get_online(name, keep=..., seed=0, **settings)`` builds the callback by name; ``keep`` is the
fraction of the data kept (per epoch for rs2; of the well-learned examples for infobatch; of
all examples seen, in expectation, trained in full batches, for selective_backprop; of each batch for rho_loss; reweight keeps
every example and accepts only keep=1).
"""

from __future__ import annotations

import inspect
from typing import Any

from prunus.data.online.infobatch import InfoBatch, InfoBatchCallback, infobatch_prune
from prunus.data.online.reweight import LossReweighting, loss_weights
from prunus.data.online.rho_loss import RhoLoss, irreducible_losses, rho_select
from prunus.data.online.rs2 import RS2, RS2Sampler, rs2_epoch_indices
from prunus.data.online.selective_backprop import (
    SelectiveBackprop,
    keep_probabilities,
    select_by_percentile,
)
from prunus.errors import PrunusError
from prunus.registry import ONLINE
from prunus.train.events import Callback

# The online registry (``prunus.registry.ONLINE``); a method registered anywhere with
# ``@ONLINE.register(name, summary=...)`` is a callback factory ``factory(keep=..., seed=...,
# **settings)``; ``keeps_all=True`` marks one that trains on every example (keep must be 1).
ONLINE.register("rs2", summary="repeated sampling of random subsets, a new subset every epoch")(RS2)
ONLINE.register("infobatch", summary="prune well-learned examples per epoch, rescale the rest")(
    InfoBatchCallback
)
ONLINE.register("selective_backprop", summary="backpropagate high-loss examples (percentile)")(
    SelectiveBackprop
)
ONLINE.register("rho_loss", summary="train on each batch's largest reducible loss")(RhoLoss)
ONLINE.register("reweight", keeps_all=True, summary="keep every example, weight the loss")(
    LossReweighting
)
ONLINE_METHODS = ONLINE


def get_online(name: str, keep: float | None = None, seed: int = 0, **settings: Any) -> Callback:
    """The trainer callback of online method ``name``.

    Args:
        name: a registered online method (:data:`ONLINE_METHODS`, the registry
            ``prunus.registry.ONLINE``: rs2, infobatch, selective_backprop, rho_loss, reweight).
        keep: fraction kept, in (0, 1] (default: the method's own default); see the module doc
            for its meaning per method. ``reweight`` keeps everything and accepts only 1.
        seed: seeds the method's random draws (default 0).
        **settings: the method's other keywords (e.g. ``final_full=0.125`` for infobatch).

    Raises:
        PrunusError: an unknown name or setting, or a value outside its range.
    """
    entry = ONLINE.entry(name)
    factory = entry.obj
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("keep", "seed")]
    for key in settings:
        if key not in allowed:
            raise PrunusError(
                f"{key!r} is not a setting of online method {name!r}; "
                f"its settings are: {', '.join(allowed) or 'none'}."
            )
    if entry.defaults.get("keeps_all"):
        if keep is not None and float(keep) != 1.0:
            raise PrunusError(
                f"keep must be 1 for online method {name!r}, which keeps every example "
                f"(got {keep!r})."
            )
        return factory(**settings)
    if keep is not None:
        settings["keep"] = keep
    return factory(seed=seed, **settings)


__all__ = [
    "ONLINE_METHODS",
    "RS2",
    "InfoBatch",
    "InfoBatchCallback",
    "LossReweighting",
    "RS2Sampler",
    "RhoLoss",
    "SelectiveBackprop",
    "get_online",
    "infobatch_prune",
    "irreducible_losses",
    "keep_probabilities",
    "loss_weights",
    "rho_select",
    "rs2_epoch_indices",
    "select_by_percentile",
]
