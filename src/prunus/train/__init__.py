"""Training loop with events, callbacks and a compute meter."""

from prunus.train.events import Callback, Event
from prunus.train.meter import ComputeMeter, measure_flops
from prunus.train.trainer import Batch, State, Trainer, TrainResult, evaluate

__all__ = [
    "Batch",
    "Callback",
    "ComputeMeter",
    "Event",
    "State",
    "TrainResult",
    "Trainer",
    "evaluate",
    "measure_flops",
]
