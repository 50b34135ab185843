"""RS2: a fresh random subset every epoch, without replacement across epochs."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from prunus.counts import fraction_count
from prunus.data.online._common import check_fraction, check_positive_int, check_seed
from prunus.train.events import Callback


def rs2_epoch_indices(num_examples: int, keep: float, epoch: int, seed: int = 0) -> np.ndarray:
    """Indices (0 … N−1) that RS2 trains on in ``epoch`` (0-based), in visiting order.

    Okanovic et al. 2023, *Repeated Random Sampling for Minimizing the Time-to-Accuracy of
    Learning*: each epoch trains on a new random ``keep``·N subset, drawn without replacement
    across epochs, so the whole dataset is covered before any example repeats.

    Rule: every epoch takes exactly n = max(1, ⌊keep·N⌋) examples (prunus's one rounding rule,
    :func:`prunus.counts.fraction_count`), so ``keep`` × E epochs backpropagate keep·E·N
    examples. The examples come from a stream of permutations of 0 … N−1 (permutation ``c``
    seeded by ``(seed, c)``), taken in order. When a permutation runs out mid-epoch, the epoch
    is topped up from the next permutation, skipping the examples already in this epoch (they
    stay in that permutation's queue for the following epochs), so no example appears twice in
    one epoch and every example is visited once per permutation.

    Args:
        num_examples: N, the size of the training set.
        keep: fraction of the data per epoch, in (0, 1].
        epoch: the epoch number (0-based).
        seed: seeds the permutations.

    Raises:
        PrunusError: ``keep`` outside (0, 1], ``num_examples`` < 1 or a negative seed.
    """
    return _stream(num_examples, keep, check_seed(seed)).epoch(int(epoch))


@functools.lru_cache(maxsize=16)
def _stream(num_examples: int, keep: float, seed: int) -> _PermutationStream:
    return _PermutationStream(num_examples, epoch_size(num_examples, keep), seed)


class _PermutationStream:
    """The permutation stream of :func:`rs2_epoch_indices`, replayed from epoch 0 once and
    remembered, so asking for epoch e costs O(N) per new epoch."""

    def __init__(self, num_examples: int, n: int, seed: int) -> None:
        self.num_examples, self.n, self.seed = num_examples, n, seed
        self.epochs: list[np.ndarray] = []
        self.permutation = 0
        self.queue = np.random.default_rng([seed, 0]).permutation(num_examples)

    def epoch(self, epoch: int) -> np.ndarray:
        while len(self.epochs) <= epoch:
            self.epochs.append(self._next())
        return self.epochs[epoch]

    def _next(self) -> np.ndarray:
        taken = self.queue[: self.n]
        self.queue = self.queue[self.n :]
        missing = self.n - len(taken)
        if missing == 0:
            return taken
        self.permutation += 1
        fresh = np.random.default_rng([self.seed, self.permutation]).permutation(self.num_examples)
        clash = np.isin(fresh, taken)
        top_up = fresh[~clash][:missing]
        # what this epoch skipped or did not reach waits, in order, for the next epochs
        used = np.zeros(self.num_examples, dtype=bool)
        used[top_up] = True
        self.queue = fresh[~used[fresh]]
        return np.concatenate([taken, top_up])


class RS2Sampler(Sampler[int]):
    """RS2 as a ``torch.utils.data.Sampler``: ``DataLoader(data, sampler=RS2Sampler(...))``.

    Call ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``). Size the LR
    schedule with ``total_steps(epochs, batch_size)`` — RS2 shortens the schedule to the steps
    actually taken. See :func:`rs2_epoch_indices` for the rule.

    Args:
        num_examples: N, the size of the dataset the loader indexes.
        keep: fraction of the data per epoch, in (0, 1].
        seed: seeds the permutations (default 0).
    """

    def __init__(self, num_examples: int, keep: float, seed: int = 0) -> None:
        self.num_examples = check_positive_int(num_examples, "num_examples")
        self.keep = check_fraction(keep, "keep")
        self.seed = check_seed(seed)
        self.chunk = epoch_size(self.num_examples, self.keep)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the subset of ``epoch`` (0-based) for the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        yield from self.indices(self.epoch).tolist()

    def __len__(self) -> int:
        return self.epoch_size(self.epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """The indices of ``epoch`` in visiting order."""
        return rs2_epoch_indices(self.num_examples, self.keep, epoch, self.seed)

    def epoch_size(self, epoch: int | None = None) -> int:
        """Number of examples in an epoch: n = max(1, ⌊keep·N⌋), the same in every epoch."""
        return self.chunk

    def steps_per_epoch(self, batch_size: int, epoch: int | None = None) -> int:
        """Mini-batches in ``epoch`` (default: the current one), the last one possibly partial."""
        size = self.epoch_size(self.epoch if epoch is None else epoch)
        return math.ceil(size / check_positive_int(batch_size, "batch_size"))

    def total_steps(self, epochs: int, batch_size: int) -> int:
        """Mini-batches over ``epochs`` epochs: the length to give the LR schedule."""
        epochs = check_positive_int(epochs, "epochs")
        return sum(self.steps_per_epoch(batch_size, e) for e in range(epochs))


class RS2(Callback):
    """RS2 in the prunus trainer: ``keep``·N fresh examples per epoch, shortened LR schedule.

    ``fit_start`` sets ``state.total_steps`` to the steps RS2 actually takes; ``epoch_start``
    sets ``state.epoch_ids`` (the subset, in visiting order). See :func:`rs2_epoch_indices`.

    Args:
        keep: fraction of the training set per epoch, in (0, 1] (default 0.3).
        seed: seeds the permutations (default 0).

    Raises:
        PrunusError: ``keep`` outside (0, 1] or a negative seed.
    """

    def __init__(self, keep: float = 0.3, seed: int = 0) -> None:
        self.keep = check_fraction(keep, "keep")
        self.seed = check_seed(seed)
        self.sampler: RS2Sampler | None = None

    def on_fit_start(self, state) -> None:
        self.sampler = RS2Sampler(len(state.train), self.keep, self.seed)
        state.total_steps = self.sampler.total_steps(state.config.epochs, state.config.batch_size)

    def on_epoch_start(self, state) -> None:
        with state.meter.timing("selection"):
            state.epoch_ids = state.train.ids[self.sampler.indices(state.epoch)]


def epoch_size(num_examples: int, keep: float) -> int:
    """n = max(1, ⌊keep·N⌋): the examples RS2 trains on in every epoch."""
    num_examples = check_positive_int(num_examples, "num_examples")
    return fraction_count(check_fraction(keep, "keep"), num_examples, at_least=1)
