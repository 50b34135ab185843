"""Scores that follow each example through training: forgetting events, area under the margin
(AUM) and dynamic uncertainty.

Each method is a pure function of a prediction trajectory (arrays indexed ``[presentation,
example]``), plus a trainer callback that records the same statistic while a model trains,
using the logits of the training forward pass each time an example is in a batch. The callbacks
keep O(N) numbers (dynamic uncertainty: O(N · window)), never the whole trajectory, and return
scores aligned to the training dataset's ids from ``.scores()``.
"""

from __future__ import annotations

import numpy as np
import torch

from prunus.data.table import LOWER_IS_HARDER
from prunus.errors import PrunusError
from prunus.registry import SCORES
from prunus.train.events import Callback

# -- pure functions of a trajectory -----------------------------------------------------------


def forgetting_counts(correct: np.ndarray) -> np.ndarray:
    """Forgetting events (Toneva et al. 2019, *An Empirical Study of Example Forgetting*).

    ``correct[t, i]`` says whether example ``i`` was classified correctly the ``t``-th time it was
    seen. The score counts the correct → incorrect transitions between consecutive presentations.
    Examples never classified correctly get ``T`` (the number of presentations), more than any
    learned example can reach (at most ``⌊T/2⌋``), so they rank as the most forgettable.
    Higher = harder.
    """
    correct = np.asarray(correct, dtype=bool)
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    never_learned = ~correct.any(axis=0)
    events[never_learned] = correct.shape[0]
    return events


def area_under_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUM (Pleiss et al. 2020, *Identifying Mislabeled Data using the Area Under the Margin*).

    ``logits[t, i, :]`` are the logits of example ``i`` at its ``t``-th presentation; the margin
    is the assigned class's logit minus the largest other logit, and AUM is its mean over
    presentations. Low or negative AUM flags likely mislabeled examples: *lower* = harder.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return _margins(logits, labels).mean(axis=0)


def dynamic_uncertainty(p_true: np.ndarray, window: int = 10) -> np.ndarray:
    """Dynamic uncertainty (He et al. 2023, *Large-scale Dataset Pruning with Dynamic
    Uncertainty*).

    ``p_true[t, i]`` is the predicted probability of example ``i``'s label at its ``t``-th
    presentation. For every window of ``window`` consecutive presentations take the sample
    standard deviation (ddof=1) of ``p_true``; the score is the mean over all windows. With fewer
    than ``window`` presentations the whole trajectory is one window. Higher = harder (the model
    keeps changing its mind). Default ``window`` 10.

    Raises:
        PrunusError: fewer than two presentations, or ``window`` < 2.
    """
    p_true = np.asarray(p_true, dtype=np.float64)
    _check_window(window)
    steps = p_true.shape[0]
    if steps < 2:
        raise PrunusError("dynamic uncertainty needs at least two presentations (epochs >= 2).")
    width = min(window, steps)
    stds = [p_true[k : k + width].std(axis=0, ddof=1) for k in range(steps - width + 1)]
    return np.mean(stds, axis=0)


def _margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    assigned = np.take_along_axis(logits, labels[None, :, None], axis=2)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels[None, :, None], -np.inf, axis=2)
    return assigned - others.max(axis=2)


def _check_window(window: int) -> None:
    if int(window) != window or window < 2:
        raise PrunusError(f"window must be an integer >= 2 (got {window!r}).")


# -- callbacks recording the same statistics during training --------------------------------


class TrajectoryRecorder(Callback):
    """Base: calls ``record(rows, logits, labels)`` with the training logits of every batch."""

    def on_fit_start(self, state) -> None:
        self.num_examples = len(state.train)
        self.ids = state.train.ids.copy()
        self.reset(self.num_examples)

    def on_after_forward(self, state) -> None:
        batch = state.batch
        rows = state.positions(batch.ids.cpu().numpy())
        with torch.no_grad():
            self.record(rows, state.outputs.detach().float(), batch.y)

    def reset(self, n: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def record(self, rows: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _unseen_is_nan(self, values: np.ndarray, seen: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64)
        values[seen == 0] = np.nan
        return values


@SCORES.register("forgetting", needs="trajectory", default_epochs=5,
                 summary="correct→incorrect transitions (default proxy ≥ 5 epochs)")
class ForgettingEvents(TrajectoryRecorder):
    """Counts forgetting events per example while training (see :func:`forgetting_counts`).

    Default proxy run: at least 5 epochs (capped at the full run's): with fewer, most examples
    have no event and tie (mnist1d, MLP: 57% of the examples tie at the hardest-50% cut after 2
    epochs, 28% after 5).

    ``.scores()``: events per example, aligned to the training ids; never-learned examples get
    the number of times they were seen; never-seen examples get NaN.
    """

    def reset(self, n: int) -> None:
        self.previous = np.zeros(n, dtype=bool)
        self.events = np.zeros(n, dtype=np.int64)
        self.learned = np.zeros(n, dtype=bool)
        self.seen = np.zeros(n, dtype=np.int64)

    def record(self, rows, logits, labels) -> None:
        correct = (logits.argmax(1) == labels).cpu().numpy()
        self.events[rows] += self.previous[rows] & ~correct
        self.previous[rows] = correct
        self.learned[rows] |= correct
        self.seen[rows] += 1

    def scores(self) -> np.ndarray:
        events = self.events.astype(np.float64)
        never = ~self.learned
        events[never] = self.seen[never]
        return self._unseen_is_nan(events, self.seen)


@SCORES.register(
    "aum", needs="trajectory", column="aum", direction=LOWER_IS_HARDER, default_epochs=5,
    summary="mean margin of the assigned logit (default proxy ≥ 5 epochs)",
)
class AreaUnderMargin(TrajectoryRecorder):
    """Accumulates the margin (assigned logit − largest other logit) per example while training.

    Default proxy run: at least 5 epochs (capped at the full run's), so that the margin is
    averaged over a stretch of training (Pleiss et al. 2020 average it up to the first LR drop).

    ``.scores()``: the mean margin (AUM, see :func:`area_under_margin`); lower = harder.
    """

    def reset(self, n: int) -> None:
        self.total = np.zeros(n, dtype=np.float64)
        self.seen = np.zeros(n, dtype=np.int64)

    def record(self, rows, logits, labels) -> None:
        assigned = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf"))
        self.total[rows] += (assigned - others.max(1).values).double().cpu().numpy()
        self.seen[rows] += 1

    def scores(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._unseen_is_nan(self.total / self.seen, self.seen)


@SCORES.register(
    "dynamic_uncertainty", needs="trajectory", min_epochs=2, default_epochs=10,
    options={"window": "window"},
    summary="windowed std of p_y over training (default proxy ≥ 10 epochs)",
)
class DynamicUncertainty(TrajectoryRecorder):
    """Records ``p_y`` per presentation in a ring of ``window`` values per example and averages
    the windowed standard deviations (see :func:`dynamic_uncertainty`). Default ``window`` 10.

    Default proxy run: at least 10 epochs (capped at the full run's), one default window.

    ``.scores()``: aligned to the training ids; NaN for examples seen fewer than two times.
    """

    def __init__(self, window: int = 10) -> None:
        _check_window(window)
        self.window = int(window)

    def reset(self, n: int) -> None:
        self.ring = np.zeros((n, self.window), dtype=np.float64)
        self.seen = np.zeros(n, dtype=np.int64)
        self.total = np.zeros(n, dtype=np.float64)
        self.windows = np.zeros(n, dtype=np.int64)

    def record(self, rows, logits, labels) -> None:
        p_true = torch.softmax(logits, 1).gather(1, labels[:, None])[:, 0].double().cpu().numpy()
        self.ring[rows, self.seen[rows] % self.window] = p_true
        self.seen[rows] += 1
        full = rows[self.seen[rows] >= self.window]
        if len(full):
            self.total[full] += self.ring[full].std(axis=1, ddof=1)
            self.windows[full] += 1

    def scores(self) -> np.ndarray:
        out = np.full(len(self.seen), np.nan)
        done = self.windows > 0
        out[done] = self.total[done] / self.windows[done]
        for count in np.unique(self.seen[~done & (self.seen >= 2)]):
            rows = np.flatnonzero(~done & (self.seen == count))
            out[rows] = self.ring[rows, :count].std(axis=1, ddof=1)
        return out
