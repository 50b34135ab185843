"""InfoBatch: prune part of the well-learned examples each epoch and rescale the rest."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from prunus.data.online._common import RowLookup, check_fraction, check_positive_int, check_seed
from prunus.errors import PrunusError
from prunus.train.events import Callback


def infobatch_prune(
    losses: np.ndarray, keep: float = 0.5, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One InfoBatch draw: which examples to train on this epoch, and their loss weights.

    Qin et al. 2024, *InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning*.
    Examples whose latest loss is below the mean loss are "well learned"; each of them is kept
    independently with probability ``keep`` (the paper's prune ratio is r = 1 − keep) and a kept
    one has its loss multiplied by 1/keep = 1/(1 − r), so the expected gradient of the epoch
    equals the full-data gradient. Every other example is kept with weight 1.

    Args:
        losses: latest loss per example (NaN = not seen yet; such examples are never pruned).
        keep: probability of keeping a well-learned example, in (0, 1] (default 0.5).
        rng: a numpy ``Generator`` (default: a fresh unseeded one).

    Returns:
        ``(indices, weights)``: the kept indices in ascending order and their loss weights.

    Raises:
        PrunusError: ``keep`` outside (0, 1].
    """
    keep = check_fraction(keep, "keep")
    rng = np.random.default_rng() if rng is None else rng
    losses = np.asarray(losses, dtype=np.float64)
    known = ~np.isnan(losses)
    draws = rng.random(len(losses))  # drawn for every example, so a draw never depends on others
    if not known.any():
        return np.arange(len(losses)), np.ones(len(losses))
    well_learned = known & (losses < losses[known].mean())
    kept = np.flatnonzero(~well_learned | (draws < keep))
    weights = np.where(well_learned[kept], 1.0 / keep, 1.0)
    return kept, weights


class InfoBatch(Sampler[int]):
    """InfoBatch for your own loop: a ``Sampler`` over 0 … N−1 plus per-example loss weights.

    Each epoch: ``set_epoch(epoch)``, iterate (e.g. through ``BatchSampler``), multiply each
    example's loss by ``weights(ids)``, and report the *unweighted* losses with
    ``update(ids, losses)``. The last ⌈final_full·epochs⌉ epochs use all data with weight 1 (the
    paper's annealing), as does epoch 0 (no losses are known yet). See :func:`infobatch_prune`.

    Args:
        num_examples: N, the size of the dataset.
        epochs: the number of epochs the run will train (for the final full-data phase).
        keep: probability of keeping a well-learned example (default 0.5, i.e. r = 0.5).
        final_full: δ, the fraction of epochs at the end that use all data (default 0.125).
        seed: seeds the draws and the visiting order (default 0).

    Raises:
        PrunusError: any argument outside its range.
    """

    def __init__(
        self,
        num_examples: int,
        epochs: int,
        keep: float = 0.5,
        final_full: float = 0.125,
        seed: int = 0,
    ) -> None:
        self.num_examples = check_positive_int(num_examples, "num_examples")
        self.epochs = check_positive_int(epochs, "epochs")
        self.keep = check_fraction(keep, "keep")
        if not 0.0 <= float(final_full) <= 1.0:
            raise PrunusError(f"final_full must be a number in [0, 1] (got {final_full!r}).")
        self.final_full = float(final_full)
        self.seed = check_seed(seed)
        self.losses = np.full(self.num_examples, np.nan)
        self._weight = np.ones(self.num_examples, dtype=np.float32)
        self.set_epoch(0)

    def is_pruning_epoch(self, epoch: int) -> bool:
        """False during the final full-data epochs."""
        full = math.ceil(round(self.final_full * self.epochs, 9))
        return epoch < self.epochs - full

    def set_epoch(self, epoch: int) -> None:
        """Draw the examples (and weights) of ``epoch`` from the losses reported so far."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        pruning = self.is_pruning_epoch(self.epoch)
        losses = self.losses if pruning else np.full_like(self.losses, np.nan)  # nothing pruned
        kept, weights = infobatch_prune(losses, self.keep, rng)
        self._weight.fill(1.0)
        self._weight[kept] = weights
        self.order = kept[rng.permutation(len(kept))]

    def __iter__(self) -> Iterator[int]:
        yield from self.order.tolist()

    def __len__(self) -> int:
        return len(self.order)

    def weights(self, ids) -> torch.Tensor:
        """Loss weights of the given indices this epoch (1/keep or 1), as a float tensor."""
        device = ids.device if isinstance(ids, torch.Tensor) else None
        rows = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        return torch.as_tensor(self._weight[rows], device=device)

    def update(self, ids, losses) -> None:
        """Record the latest unweighted per-example losses of the given indices."""
        rows = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if isinstance(losses, torch.Tensor):
            losses = losses.detach().float().cpu().numpy()
        self.losses[rows] = losses


class InfoBatchCallback(Callback):
    """InfoBatch in the prunus trainer.

    ``epoch_start`` sets ``state.epoch_ids`` and ``state.epoch_weights`` (1/keep on the kept
    well-learned examples) and revises ``state.total_steps`` so the LR schedule ends with the
    run (future pruned epochs are assumed as long as the current one). ``after_loss`` records
    ``state.per_example_loss`` (unweighted) per example. See :class:`InfoBatch`.

    Args:
        keep: probability of keeping a well-learned example (default 0.5, r = 1 − keep).
        final_full: δ, fraction of the epochs at the end that use all data (default 0.125).
        seed: seeds the draws (default 0).
    """

    def __init__(self, keep: float = 0.5, final_full: float = 0.125, seed: int = 0) -> None:
        InfoBatch(1, 1, keep, final_full, seed)  # validates the arguments once, at the edge
        self.keep, self.final_full, self.seed = float(keep), float(final_full), int(seed)
        self.sampler: InfoBatch | None = None

    def on_fit_start(self, state) -> None:
        n = len(state.train)
        self.sampler = InfoBatch(n, state.config.epochs, self.keep, self.final_full, self.seed)
        self._rows = RowLookup(state.train.ids)
        self._losses = torch.full((n,), float("nan"), device=state.device)
        state.total_steps = self._planned_steps(state, epoch=0, steps_so_far=0, size=n)

    def on_epoch_start(self, state) -> None:
        with state.meter.timing("selection"):
            self.sampler.losses[:] = self._losses.cpu().numpy()
            self.sampler.set_epoch(state.epoch)
            rows = self.sampler.order
            state.epoch_ids = state.train.ids[rows]
            weights = self.sampler.weights(rows).numpy()
            if (weights != 1).any():
                state.epoch_weights = weights
            state.total_steps = self._planned_steps(state, state.epoch, state.step, len(rows))

    def on_after_loss(self, state) -> None:
        rows = self._rows(state.batch.ids)
        self._losses[rows] = state.per_example_loss.detach().float()

    def _planned_steps(self, state, epoch: int, steps_so_far: int, size: int) -> int:
        """Steps taken so far + this epoch's + an estimate for the epochs still to come."""
        cfg, n = state.config, len(state.train)
        # nothing pruned yet (epoch 0): assume half the examples are below the mean loss
        pruned_size = size if size < n else round(n * (1 - (1 - self.keep) / 2))
        total = steps_so_far + math.ceil(size / cfg.batch_size)
        for later in range(epoch + 1, cfg.epochs):
            later_size = pruned_size if self.sampler.is_pruning_epoch(later) else n
            total += math.ceil(later_size / cfg.batch_size)
        return total
