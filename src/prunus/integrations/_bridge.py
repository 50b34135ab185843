"""The loop-independent half of the integrations: prunus policies driven by someone else's loop.

:class:`PolicyRunner` holds a prunus :class:`~prunus.train.trainer.State` and fires the prunus
events (:mod:`prunus.train.events`) on the policies as the host framework (Hugging Face
``Trainer``, Lightning) reports its own steps, so every online data policy and every weight
policy runs unchanged. The framework adapters only translate their hooks into
:meth:`PolicyRunner.batch_start`, :meth:`PolicyRunner.loss`, :meth:`PolicyRunner.after_backward`
and :meth:`PolicyRunner.after_step`.

Example ids are the **row positions** of the training dataset the framework loads from (or,
with ``train_data=``, that prunus Dataset's ids, row for row): the runner's
:class:`EpochSampler` decides which rows each epoch visits, in which order, so it knows the ids
of every batch by counting the rows the loop has consumed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from prunus.config import TrainConfig, validated
from prunus.errors import PrunusError
from prunus.train.events import Callback, Event, EventDispatcher
from prunus.train.meter import ComputeMeter
from prunus.train.trainer import Batch, State

# A per-example loss of a framework batch: ``loss_fn(batch) -> (B,)`` float tensor.
LossFn = Callable[[Any], torch.Tensor]

class PolicyRunner:
    """Runs prunus policies (online data and weight callbacks) inside another training loop.

    Args:
        policies: prunus callbacks, e.g. ``get_online("rs2", keep=0.3)`` or
            ``get_sparsifier("gmp", sparsity=0.9)``; fired in this order at every event.
        seed: seeds the visiting order of epochs no policy chooses (default 0).
        train_data: the training set as a prunus :class:`~prunus.datasets.Dataset` whose rows
            are the framework dataset's rows (needed by ``rho_loss`` only).
        scoring_data: an ``(x, y)`` batch (or a list of them) for the one-shot criteria that
            score on data (gradient, SNIP, GraSP; a weight method registered with
            ``needs="data"``), or whose shape data-free SynFlow (``needs="input_shape"``) reads.

    Raises:
        PrunusError: a policy that is not a prunus callback.
    """

    def __init__(
        self,
        policies: Sequence[Callback],
        *,
        seed: int = 0,
        train_data: Any = None,
        scoring_data: Any = None,
    ) -> None:
        self.policies = list(policies)
        for policy in self.policies:
            if not isinstance(policy, Callback):
                raise PrunusError(
                    "policies must be prunus callbacks (e.g. prunus.data.online.get_online('rs2') "
                    f"or prunus.weights.get_sparsifier('gmp', sparsity=0.9)); got {policy!r}."
                )
        self.fire = EventDispatcher(self.policies)
        self.seed = int(seed)
        self.train_data = train_data
        self.scoring_data = scoring_data
        self.state: State | None = None
        self.loss_fn: LossFn | None = None
        self.sampler: EpochSampler | None = None
        self._orders: deque[tuple[np.ndarray, np.ndarray | None]] = deque()
        self._cursor = 0
        self._batch: Any = None
        self._batch_ids: torch.Tensor | None = None
        self._pending: dict[int, Any] = {}
        self._skipped = False
        self._scheduler: Any = None
        self._epochs = 0
        # set by an adapter whose framework builds the loader after its fit-start hook
        self.starter: Callable[[], None] | None = None

    # -- what the framework adapters ask -----------------------------------------------------
    @property
    def started(self) -> bool:
        return self.state is not None

    @property
    def selects_batches(self) -> bool:
        """True when a data policy acts on batches or losses (a loss hook is then needed)."""
        return any(
            not _is_weight_policy(p)
            and any(_overrides(p, name) for name in ("on_batch_start", "on_after_loss"))
            for p in self.policies
        )

    @property
    def chooses_epochs(self) -> bool:
        """True when a data policy chooses the examples of an epoch (a sampler is then needed)."""
        return any(not _is_weight_policy(p) and _overrides(p, "on_epoch_start") for p in self.policies)

    def make_sampler(self, num_examples: int, batch_size: int) -> EpochSampler:
        """The sampler the training loader must use (one per runner)."""
        if self.sampler is None:
            self.sampler = EpochSampler(self, int(num_examples), int(batch_size))
        return self.sampler

    def start(
        self,
        model: torch.nn.Module,
        *,
        epochs: int,
        batch_size: int,
        total_steps: int,
        num_examples: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Fire ``fit_start`` (once): the policies see the model, the data size and the plan."""
        if self.started:
            return
        if num_examples is None:
            num_examples = self.sampler.num_examples if self.sampler is not None else 1
        if device is None:
            device = next(model.parameters()).device
        device = torch.device(device)
        config = validated(
            TrainConfig,
            {"epochs": max(int(epochs), 1), "batch_size": max(int(batch_size), 1),
             "seed": self.seed, "device": str(device)},
            "train",
        )
        train = self.train_data if self.train_data is not None else _Rows(
            int(num_examples), self.scoring_data
        )
        if self.train_data is not None and len(self.train_data) != num_examples:
            raise PrunusError(
                f"train_data has {len(self.train_data)} rows but the training dataset has "
                f"{num_examples}; pass the prunus Dataset whose rows are the training rows."
            )
        self._check_policies()
        self.state = State(
            model=model, train=train, eval=None, config=config, device=device,
            meter=ExampleMeter(), optimizer=_unwrap(optimizer),
        )
        self.state.total_steps = max(int(total_steps), 1)
        self.state.extra["ids_are_positions"] = bool(
            np.array_equal(train.ids, np.arange(len(train)))
        )
        self.state.extra["per_example_loss"] = self._losses_of
        self.fire(Event.FIT_START, self.state)
        self._scheduler = self.state.scheduler

    def ensure_started(self) -> None:
        """Start through the adapter's ``starter`` if nothing has started the policies yet."""
        if not self.started and self.starter is not None:
            self.starter()

    def set_optimizer(self, optimizer: Any) -> None:
        """The framework's optimizer, once it exists (policies zero its state where they prune)."""
        self.state.optimizer = _unwrap(optimizer)

    def epoch_order(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Fire ``epoch_start`` and return the epoch's ids (in order) and loss weights."""
        state = self._require_started()
        state.epoch, self._epochs = self._epochs, self._epochs + 1
        state.epoch_ids, state.epoch_weights = None, None
        self.fire(Event.EPOCH_START, state)
        ids = state.epoch_ids
        if ids is None:
            order = np.random.default_rng([self.seed, state.epoch]).permutation(len(state.train))
            ids = state.train.ids[order] if self.train_data is not None else order
        ids = np.asarray(ids, dtype=np.int64)
        weights = None if state.epoch_weights is None else np.asarray(state.epoch_weights, np.float32)
        self._orders.append((ids, weights))
        return ids, weights

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions in the framework dataset of example ``ids``."""
        return self._require_started().positions(ids)

    def batch_start(self, batch: Any, step: int) -> Any:
        """Fire ``batch_start`` for the framework batch; returns the batch to train on (the
        same object when no policy changed it), or None when this step is to be skipped."""
        state = self._require_started()
        state.step = int(step)
        ids, weights = self._next_ids(batch_len(batch) if batch is not None else 0)
        self._batch, self._batch_ids = batch, ids
        self._skipped = False
        state.backpropagated = None
        state.batch = Batch(ids, ids, ids, weights)
        given = state.batch
        self.fire(Event.BATCH_START, state)
        if state.batch is given:
            return batch
        self._keep_pending(state.batch)
        if state.batch is None or len(state.batch) == 0:
            self._skipped = True
            return None
        return self._rows_of(state.batch.ids)

    def loss(self, per_example_loss: torch.Tensor) -> torch.Tensor:
        """Fire ``after_loss``: the objective from the batch's per-example losses (mean, times
        the batch's loss weights, or what a policy such as ``reweight`` builds)."""
        state = self._require_started()
        batch = state.batch
        if batch is not None and len(per_example_loss) != len(batch):
            raise PrunusError(
                f"per_example_loss must return one loss per example of the batch "
                f"({len(batch)}); got shape {tuple(per_example_loss.shape)}."
            )
        state.per_example_loss = per_example_loss
        weights = None if batch is None else batch.weights
        if weights is None:
            state.loss = per_example_loss.mean()
        else:
            state.loss = (per_example_loss * weights.to(per_example_loss.device)).mean()
        self.fire(Event.AFTER_LOSS, state)
        return state.loss

    def after_backward(self) -> None:
        """Fire ``after_backward`` (gradients present, optimizer step not yet taken)."""
        state = self._require_started()
        if self._skipped:
            return
        self.fire(Event.AFTER_BACKWARD, state)
        if state.scheduler is not self._scheduler and state.optimizer is not None:
            # a policy restarted the LR schedule (LR rewinding): its LR is used from now on
            for group, lr in zip(state.optimizer.param_groups, state.scheduler.get_last_lr()):
                group["lr"] = lr

    def after_step(self, step: int) -> None:
        """Fire ``after_step`` and ``batch_end`` once the optimizer has stepped."""
        state = self._require_started()
        if self._skipped:
            self._skipped = False
            return
        if state.scheduler is not self._scheduler:
            state.scheduler.step()
        state.step = int(step)
        self.fire(Event.AFTER_STEP, state)
        batch = state.batch
        n = 0 if batch is None else len(batch)
        state.meter.examples_forwarded += n
        state.meter.examples_backpropagated += n if state.backpropagated is None else state.backpropagated
        self.fire(Event.BATCH_END, state)

    def epoch_end(self) -> None:
        if self.started:
            self.fire(Event.EPOCH_END, self.state)

    def fit_end(self) -> None:
        if self.started:
            self.fire(Event.FIT_END, self.state)

    # -- helpers -----------------------------------------------------------------------------
    def _require_started(self) -> State:
        self.ensure_started()
        if self.state is None:
            raise PrunusError(
                "the prunus policies were used before training started; let the integration "
                "build the training data loader (or call start()) first."
            )
        return self.state

    def _check_policies(self) -> None:
        from prunus.data.online.rho_loss import RhoLoss

        for policy in self.policies:
            if isinstance(policy, RhoLoss) and self.train_data is None:
                raise PrunusError(
                    "rho_loss trains its irreducible-loss model with prunus: pass train_data= "
                    "(the training set as a prunus Dataset, row for row)."
                )
            needs = _needs(policy) if _is_weight_policy(policy) else None
            if needs and self.scoring_data is None and self.train_data is None:
                what = ("scores on data" if needs == "data" else
                        "is data-free but needs the model's input shape (read from the batch)")
                raise PrunusError(
                    f"weight method {policy.method!r} {what}: pass scoring_data= (an (x, y) "
                    "batch of the training set) or train_data= (a prunus Dataset)."
                )

    def _next_ids(self, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ids (and loss weights) of the next ``size`` rows the loop consumes."""
        device = self.state.device
        if self.sampler is None:  # no sampler of ours: ids are unknown, count positions
            ids = torch.arange(self._cursor, self._cursor + size, device=device)
            self._cursor += size
            return ids, None
        while self._orders and self._cursor >= len(self._orders[0][0]):
            self._orders.popleft()
            self._cursor = 0
        if not self._orders:
            raise PrunusError(
                "the training loader yielded more rows than the prunus sampler planned; "
                "build the training loader with the integration's sampler."
            )
        order, weights = self._orders[0]
        rows = slice(self._cursor, self._cursor + size)
        self._cursor += size
        ids = torch.as_tensor(order[rows], device=device)
        w = None if weights is None else torch.as_tensor(weights[rows], device=device)
        return ids, w

    def _losses_of(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses of the examples with ids ``x`` (the hook that
        :func:`prunus.data.online._common.losses_without_grad` calls)."""
        if self.loss_fn is None:
            raise PrunusError(
                "this data policy needs per-example losses: use the integration's loss hook "
                "(hf.PrunusTrainer, or lightning.PrunusModule with per_example_loss)."
            )
        return self.loss_fn(self._rows_of(x))

    def _rows_of(self, ids: torch.Tensor) -> Any:
        """The framework batch holding the examples ``ids`` (from this batch or queued ones)."""
        current = self._batch_ids
        if current is not None and len(ids) == len(current) and bool((ids == current).all()):
            return self._batch
        where = {int(i): k for k, i in enumerate(current.tolist())} if current is not None else {}
        rows = []
        for i in ids.tolist():
            if i in where:
                rows.append(index_batch(self._batch, where[i]))
            elif i in self._pending:
                rows.append(self._pending[i])
            else:  # pragma: no cover - a policy asked for an example it never saw
                raise PrunusError(f"example {i} is neither in this batch nor queued by a policy.")
        return collate_rows(rows)

    def _keep_pending(self, training: Batch | None) -> None:
        """Keep the rows of the examples a policy holds for a later step (e.g. Selective
        Backprop's queue: any :class:`Batch` attribute of a policy) or trains on now."""
        wanted: set[int] = set() if training is None else set(training.ids.tolist())
        for policy in self.policies:
            for value in vars(policy).values():
                if isinstance(value, Batch) and len(value):
                    wanted.update(value.ids.tolist())
        current = self._batch_ids.tolist() if self._batch_ids is not None else []
        for k, i in enumerate(current):
            if i in wanted and i not in self._pending:
                self._pending[i] = index_batch(self._batch, k)
        self._pending = {i: row for i, row in self._pending.items() if i in wanted}


class EpochSampler(Sampler[int]):
    """The rows each epoch visits, as the runner's policies choose them (RS2's subset,
    InfoBatch's pruned and reordered epoch, RHO-LOSS without its holdout), or a seeded
    permutation of all rows when no policy chooses. Iterating starts the next epoch."""

    def __init__(self, runner: PolicyRunner, num_examples: int, batch_size: int) -> None:
        if num_examples < 1:
            raise PrunusError(f"the training dataset must hold examples (got {num_examples}).")
        self.runner = runner
        self.num_examples = num_examples
        self.batch_size = batch_size
        self._next: np.ndarray | None = None
        self._current: np.ndarray | None = None
        self._iterating = False

    def set_epoch(self, epoch: int) -> None:
        """Accepted for loaders that call it; epochs are counted by iterations."""

    def _upcoming(self) -> np.ndarray:
        if self._next is None:
            self._next = self.runner.positions(self.runner.epoch_order()[0])
        return self._next

    def __len__(self) -> int:
        if self._iterating and self._current is not None:
            return len(self._current)
        self.runner.ensure_started()
        if not self.runner.started:
            return self.num_examples
        return len(self._upcoming())

    def __iter__(self) -> Iterator[int]:
        order = self._upcoming()
        self._current, self._next = order, None
        self._iterating = True
        try:
            yield from order.tolist()
        finally:
            self._iterating = False


class SelectionSampler(Sampler[int]):
    """A static selection as a sampler: the kept rows, in a fresh seeded order every epoch.

    Args:
        rows: row positions of the kept examples in the dataset the loader indexes (see
            :func:`rows_of_ids` to turn prunus ids into rows).
        shuffle: visit the rows in a new seeded order each epoch (default True).
        seed: seeds the orders (default 0).

    Raises:
        PrunusError: an empty selection or negative rows.
    """

    def __init__(self, rows: Sequence[int] | np.ndarray, shuffle: bool = True, seed: int = 0) -> None:
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(self.rows) == 0:
            raise PrunusError("the selection keeps no example; keep at least one row.")
        if (self.rows < 0).any():
            raise PrunusError("selection rows must be row positions ≥ 0.")
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Visit the rows in the order of ``epoch`` (called by Lightning and ``accelerate``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[int]:
        epoch = max(self.epoch, self._iterations)
        self._iterations = epoch + 1
        if not self.shuffle:
            yield from self.rows.tolist()
            return
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        yield from self.rows[order].tolist()


def rows_of_ids(ids: Sequence[int] | np.ndarray, dataset_ids: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Row positions of the kept ``ids`` in a dataset whose rows have ids ``dataset_ids``
    (None: ids are row positions already).

    Raises:
        PrunusError: an id the dataset does not have.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if dataset_ids is None:
        return ids
    dataset_ids = np.asarray(dataset_ids, dtype=np.int64)
    order = np.argsort(dataset_ids, kind="stable")
    found = np.searchsorted(dataset_ids[order], ids)
    found = np.minimum(found, len(order) - 1)
    bad = dataset_ids[order][found] != ids
    if bad.any():
        raise PrunusError(
            f"selection id {int(ids[bad][0])} is not an id of the dataset; "
            "was the selection made on another dataset?"
        )
    return np.sort(order[found])


class ExampleMeter(ComputeMeter):
    """The compute meter of a foreign loop: examples forwarded and backpropagated are counted,
    FLOPs are not (the host framework owns the forward pass and reports its own)."""

    def count(self, model, x, forwarded: int, backpropagated: int) -> None:
        self.examples_forwarded += forwarded
        self.examples_backpropagated += backpropagated


class _Rows:
    """The training set as the policies see it in a foreign loop: ``N`` rows whose ids are
    their positions, iterable as the scoring batches of data-driven pruning criteria."""

    def __init__(self, num_examples: int, scoring_data: Any = None) -> None:
        self.ids = np.arange(num_examples, dtype=np.int64)
        self.scoring_data = scoring_data
        self.input_shape = _input_shape(scoring_data)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)

    def __iter__(self):
        data = self.scoring_data
        if data is None:
            return iter(())
        if isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0]):
            return iter([data])
        return iter(data)


def _input_shape(data: Any) -> tuple[int, ...]:
    if data is None:
        return ()
    first = data if isinstance(data, tuple) and torch.is_tensor(data[0]) else next(iter(data))
    return tuple(first[0].shape[1:])


# -- framework batches: a tensor, or (nested) tuples / lists / dicts of tensors ------------------


def batch_len(batch: Any) -> int:
    """Rows in a framework batch (the first dimension of its first tensor)."""
    if torch.is_tensor(batch):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = []
    for value in values:
        if torch.is_tensor(value) or isinstance(value, (Mapping, list, tuple)):
            return batch_len(value)
    raise PrunusError("a training batch must be a tensor or a tuple/list/dict of tensors.")


def index_batch(batch: Any, index: Any) -> Any:
    """``batch`` (a tensor or nested tuple/list/dict of tensors) at rows ``index`` along the
    first dimension; an integer index gives one example without the batch dimension."""
    if torch.is_tensor(batch):
        return batch[index]
    if isinstance(batch, Mapping):
        return {k: index_batch(v, index) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(index_batch(v, index) for v in batch)
    if isinstance(batch, list):
        return [index_batch(v, index) for v in batch]
    return batch


def collate_rows(rows: list[Any], key: str = "") -> Any:
    """Stack single examples back into a batch; sequences of different lengths are
    right-padded (``labels`` with −100, everything else with 0)."""
    first = rows[0]
    if torch.is_tensor(first):
        if first.dim() == 0 or all(r.shape == first.shape for r in rows):
            return torch.stack(rows)
        length = max(r.shape[0] for r in rows)
        fill = -100 if key == "labels" else 0
        out = first.new_full((len(rows), length, *first.shape[1:]), fill)
        for k, r in enumerate(rows):
            out[k, : r.shape[0]] = r
        return out
    if isinstance(first, Mapping):
        return {k: collate_rows([r[k] for r in rows], k) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(collate_rows([r[k] for r in rows]) for k in range(len(first)))
    return first


def _needs(policy: Callback) -> str | None:
    """What a weight policy's criterion reads besides the model (its registration's ``needs``:
    ``"data"``, ``"input_shape"``) or None."""
    from prunus.registry import WEIGHTS

    method = getattr(policy, "method", None)
    return WEIGHTS.entry(method).defaults.get("needs") if method in WEIGHTS else None


def _is_weight_policy(policy: Callback) -> bool:
    from prunus.weights.schedules import Sparsifier

    return isinstance(policy, Sparsifier)


def _overrides(policy: Callback, name: str) -> bool:
    return getattr(type(policy), name, None) is not getattr(Callback, name)


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside a framework wrapper (accelerate's, Lightning's)."""
    while optimizer is not None and hasattr(optimizer, "optimizer") and not isinstance(
        optimizer, torch.optim.Optimizer
    ):
        optimizer = optimizer.optimizer
    return optimizer


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    return math.ceil(num_rows / max(int(batch_size), 1))
