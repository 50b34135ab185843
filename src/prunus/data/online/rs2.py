"""RS2: a fresh random subset every epoch, without replacement across epochs."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from prunus.data.online._common import check_fraction, check_positive_int, check_seed
from prunus.train.events import Callback


def rs2_epoch_indices(num_examples: int, keep: float, epoch: int, seed: int = 0) -> np.ndarray:
    """Indices (0 … N−1) that RS2 trains on in ``epoch`` (0-based), in visiting order.

    Okanovic et al. 2023, *Repeated Random Sampling for Minimizing the Time-to-Accuracy of
    Learning*: each epoch trains on a new random ``keep``·N subset, drawn without replacement
    across epochs, so the whole dataset is covered before any example repeats.

    Rule (remainder included): cycle ``c`` is a fresh permutation of 0 … N−1 (seeded by
    ``(seed, c)``) cut into consecutive chunks of n = ⌈keep·N⌉; a cycle lasts k = ⌈N / n⌉ epochs
    and its last chunk holds the N − (k−1)·n examples left over (it is not topped up), so every
    index is visited exactly once per cycle. k equals ⌈1/keep⌉ except on tiny datasets, where it
    can be shorter (e.g. N = 7, keep = 0.3: n = 3, k = 3).

    Args:
        num_examples: N, the size of the training set.
        keep: fraction of the data per epoch, in (0, 1].
        epoch: the epoch number (0-based).
        seed: seeds the permutations.

    Raises:
        PrunusError: ``keep`` outside (0, 1], ``num_examples`` < 1 or a negative seed.
    """
    n, cycle = _chunk_and_cycle(num_examples, keep)
    seed = check_seed(seed)
    c, position = divmod(int(epoch), cycle)
    order = np.random.default_rng([seed, c]).permutation(num_examples)
    return order[position * n : (position + 1) * n]


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
        self.chunk, self.cycle = _chunk_and_cycle(self.num_examples, self.keep)
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

    def epoch_size(self, epoch: int) -> int:
        """Number of examples in ``epoch`` (n, or the remainder in a cycle's last epoch)."""
        position = int(epoch) % self.cycle
        return min(self.chunk, self.num_examples - position * self.chunk)

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


def _chunk_and_cycle(num_examples: int, keep: float) -> tuple[int, int]:
    """(n, k): examples per epoch and epochs per cycle."""
    num_examples = check_positive_int(num_examples, "num_examples")
    keep = check_fraction(keep, "keep")
    # round first so that e.g. 0.3 * 1000 = 300.00000000000006 gives 300, not 301
    chunk = max(1, math.ceil(round(keep * num_examples, 9)))
    return chunk, math.ceil(num_examples / chunk)
