"""Training events and the callback base class (Composer-like, without a framework to learn).

A callback overrides any of the ``on_*`` methods; each receives the mutable :class:`State`.
Data methods (which examples, with which weights) and weight methods (which weights survive)
are callbacks, so the loop never needs editing.

Order inside one step::

    batch_start -> after_forward -> after_loss -> after_backward -> after_step -> batch_end

``epoch_start`` may set ``state.epoch_ids`` (ids to visit, in order) and ``state.epoch_weights``
(per-id loss weights aligned to them). ``batch_start`` may replace ``state.batch`` (e.g. after
a forward pass without gradients to pick a subset). ``after_loss`` may replace ``state.loss``
(built from ``state.per_example_loss``). ``fit_start`` may change ``state.total_steps`` (the
LR schedule is built after it); ``epoch_start`` may revise it too (the schedule reads it live).
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    AFTER_FORWARD = "after_forward"
    AFTER_LOSS = "after_loss"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    BATCH_END = "batch_end"
    EPOCH_END = "epoch_end"
    EVALUATION = "evaluation"
    FIT_END = "fit_end"


class Callback:
    """Base class: override the events you need; the others cost nothing."""

    def on_fit_start(self, state) -> None: ...
    def on_epoch_start(self, state) -> None: ...
    def on_batch_start(self, state) -> None: ...
    def on_after_forward(self, state) -> None: ...
    def on_after_loss(self, state) -> None: ...
    def on_after_backward(self, state) -> None: ...
    def on_after_step(self, state) -> None: ...
    def on_batch_end(self, state) -> None: ...
    def on_epoch_end(self, state) -> None: ...
    def on_evaluation(self, state) -> None: ...
    def on_fit_end(self, state) -> None: ...


class EventDispatcher:
    """Calls, for each event, only the callbacks that override its handler, in list order."""

    def __init__(self, callbacks) -> None:
        self.handlers: dict[Event, list] = {}
        for event in Event:
            name = f"on_{event.value}"
            base = getattr(Callback, name)
            self.handlers[event] = [
                getattr(cb, name)
                for cb in callbacks
                if getattr(type(cb), name, base) not in (None, base)
            ]

    def __call__(self, event: Event, state) -> None:
        for handler in self.handlers[event]:
            handler(state)

    def has(self, event: Event) -> bool:
        return bool(self.handlers[event])
