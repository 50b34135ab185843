"""Rich progress display as a trainer callback (epochs × batches, ETA)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prunus.train.events import Callback


class RichProgress(Callback):
    """Shows a bar over all training steps with the latest test accuracy and an ETA."""

    def __init__(self, console: Console | None = None, description: str = "train") -> None:
        self.console = console
        self.description = description
        self.progress: Progress | None = None
        self.task = None

    def on_fit_start(self, state) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.description, total=state.total_steps, epoch=1, epochs=state.config.epochs, acc="-"
        )

    def on_epoch_start(self, state) -> None:
        self.progress.update(self.task, epoch=state.epoch + 1)

    def on_batch_end(self, state) -> None:
        self.progress.update(self.task, completed=state.step)

    def on_evaluation(self, state) -> None:
        acc = state.last_eval.get("accuracy")
        if acc is not None and not math.isnan(acc):
            self.progress.update(self.task, acc=f"{100 * acc:.2f}%")

    def on_fit_end(self, state) -> None:
        self.progress.update(self.task, completed=state.step, total=state.step)
        self.progress.stop()
