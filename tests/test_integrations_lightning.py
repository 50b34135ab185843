"""prunus policies in a real ``lightning.Trainer``: each family acts, masks are exact."""

import math
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset

L = pytest.importorskip("lightning.pytorch")

from prunus.counts import fraction_count
from prunus.data.online import get_online, loss_weights, rs2_epoch_indices
from prunus.datasets import Dataset
from prunus.errors import MissingExtraError, PrunusError
from prunus.integrations.lightning import (
    PrunusCallback,
    PrunusModule,
    SelectionDataModule,
)
from prunus.train.events import Callback
from prunus.weights import get_sparsifier, masks_of, prunable_weights

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 120, 20


class Rows(TorchDataset):
    """Two Gaussian classes; records which rows the loader reads."""

    def __init__(self, n=N):
        rng = np.random.default_rng(0)
        self.y = torch.from_numpy((np.arange(n) % 2).astype(np.int64))
        self.x = torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)) + self.y[:, None]
        self.read: list[int] = []

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i], self.y[i]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


class Plain(L.LightningModule):
    """A LightningModule with an ordinary training_step (no per-example loss)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class Net(PrunusModule):
    """The same network with a per-example loss; records the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.trained: list[int] = []
        self.losses: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        return self.net(x)

    def per_example_loss(self, batch):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        if torch.is_grad_enabled():
            self.trained.append(len(y))
        return losses

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def fit(module, callback, data, epochs=3, **trainer_options):
    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return callback.dataloader(data, batch_size=BATCH)

    extra = trainer_options.pop("callbacks", [])
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[callback, *extra], accelerator="cpu",
        enable_checkpointing=False, logger=False, enable_progress_bar=False,
        enable_model_summary=False, **trainer_options,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, Data())
    return trainer


def adam_steps(module) -> int:
    optimizer = module.trainer.optimizers[0]
    return int(optimizer.state[next(module.parameters())]["step"])


# --------------------------------------------------------------------------- data policies


def test_rs2_visits_its_subsets_with_a_plain_module():
    data = Rows()
    callback = PrunusCallback(get_online("rs2", keep=0.25, seed=3))
    trainer = fit(Plain(), callback, data, epochs=3)
    expected = np.concatenate([rs2_epoch_indices(N, 0.25, e, seed=3) for e in range(3)])
    assert data.read == expected.tolist()
    assert callback.state.meter.examples_backpropagated == 3 * fraction_count(0.25, N)
    assert trainer.global_step == 3 * math.ceil(fraction_count(0.25, N) / BATCH)


def test_selective_backprop_trains_full_batches_of_about_keep():
    module = Net()
    callback = PrunusCallback(get_online("selective_backprop", keep=0.5, seed=0))
    fit(module, callback, Rows(), epochs=4)
    meter = callback.state.meter
    trained = sum(module.trained)
    assert meter.examples_backpropagated == trained
    assert 0.35 < trained / (4 * N) < 0.65
    assert meter.examples_forwarded == 4 * N + trained  # every row scored once without grad
    assert all(size == BATCH for size in module.trained[:-1])
    assert adam_steps(module) == len(module.trained)  # skipped steps never moved the weights


class EpochSpy(Callback):
    """A prunus callback fired after the policy: records each epoch's size and weights."""

    def __init__(self):
        self.sizes, self.weights = [], []

    def on_epoch_start(self, state):
        self.sizes.append(len(state.epoch_ids))
        self.weights.append(None if state.epoch_weights is None else set(state.epoch_weights.tolist()))


def test_infobatch_prunes_and_reweights_between_full_epochs():
    module = Net()
    spy = EpochSpy()
    callback = PrunusCallback(get_online("infobatch", keep=0.5, final_full=0.25, seed=0), spy)
    fit(module, callback, Rows(), epochs=4)
    assert spy.sizes[0] == spy.sizes[3] == N and spy.sizes[1] < N and spy.sizes[2] < N
    assert spy.weights[0] is None and spy.weights[1] == {1.0, 2.0}
    assert sum(module.trained) == callback.state.meter.examples_backpropagated == sum(spy.sizes)


def test_reweight_replaces_the_loss():
    module = Net()
    callback = PrunusCallback(get_online("reweight", temperature=0.5))
    fit(module, callback, Rows(), epochs=1)
    state = callback.state
    expected = (state.per_example_loss * loss_weights(state.per_example_loss, 0.5)).mean()
    assert torch.allclose(state.loss, expected)
    assert not torch.allclose(state.loss, state.per_example_loss.mean())


def test_rho_loss_trains_on_the_top_of_each_batch_and_skips_its_holdout():
    data = Rows()
    ids = 1000 + 3 * np.arange(N)  # prunus ids that are not row positions
    train = Dataset("rows", ids, data.x.numpy(), data.y.numpy(), 2)
    module = Net()
    policy = get_online("rho_loss", keep=0.25, holdout_fraction=0.25, irreducible_model=mlp())
    callback = PrunusCallback(policy, train_data=train)
    fit(module, callback, data, epochs=2)
    holdout = set(policy.holdout_rows.tolist())
    assert holdout and not holdout & set(data.read)
    assert sorted(set(data.read)) == sorted(set(range(N)) - holdout)
    rows = N - len(holdout)
    sizes = [min(BATCH, rows - start) for start in range(0, rows, BATCH)]
    assert module.trained == [max(1, size // 4) for size in sizes] * 2  # ⌊0.25·B⌋, at least 1


# --------------------------------------------------------------------------- weight policies

WEIGHT_CASES = [
    ("random", 0.8, {}),
    ("magnitude", 0.8, {}),
    ("gmp", 0.8, {"every": 2}),
    ("imp", 0.8, {"rounds": 2}),
    ("set", 0.8, {"every": 2}),
    ("rigl", 0.8, {"every": 2}),
    ("granet", 0.8, {"every": 2}),
    ("nm", 0.5, {}),
]


@pytest.mark.parametrize(("method", "sparsity", "settings"), WEIGHT_CASES)
def test_weight_policy_reaches_an_exact_mask(method, sparsity, settings):
    module = Plain()
    policy = get_sparsifier(method, sparsity=sparsity, **settings)
    callback = PrunusCallback(policy)
    fit(module, callback, Rows(), epochs=3)
    masks = masks_of(module)
    targets = prunable_weights(module)
    pruned = sum(int((~masks[t.name]).sum()) for t in targets if t.name in masks)
    assert pruned == fraction_count(sparsity, sum(t.numel for t in targets))
    for t in targets:  # the trained weights are zero wherever the mask prunes
        if t.name in masks:
            assert bool((t.weight[~masks[t.name]] == 0).all())
    if method in ("set", "rigl", "granet"):
        assert policy.updates > 0


def test_lottery_ticket_rewinds_the_learning_rate_schedule():
    class LearningRates(L.Callback):
        def __init__(self):
            self.seen = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.seen.append(optimizer.param_groups[0]["lr"])

    policy = get_sparsifier("imp", sparsity=0.8, rounds=2)
    recorder = LearningRates()
    fit(Plain(), PrunusCallback(policy), Rows(), epochs=3, callbacks=[recorder])
    # the module's own LR is a constant 1e-2; prunus's schedule restarts at each round
    assert max(recorder.seen) <= 1e-2 + 1e-12 and len(set(recorder.seen)) > 3
    segment = policy.segment
    assert recorder.seen[segment] < recorder.seen[segment - 1]  # warmup again after the rewind


def test_snip_scores_on_the_given_batch():
    data = Rows()
    with pytest.raises(PrunusError, match="scoring_data"):
        fit(Plain(), PrunusCallback(get_sparsifier("snip", sparsity=0.7)), data, epochs=1)
    module = Plain()
    fit(module, PrunusCallback(get_sparsifier("snip", sparsity=0.7), scoring_data=(data.x, data.y)),
        data, epochs=1)
    assert sum(int((~m).sum()) for m in masks_of(module).values()) == fraction_count(0.7, 8 * 16 + 16 * 2)


def test_data_and_weight_policies_together():
    module = Net()
    callback = PrunusCallback(
        get_online("selective_backprop", keep=0.5), get_sparsifier("rigl", sparsity=0.75, every=2)
    )
    fit(module, callback, Rows(), epochs=2)
    assert callback.state.extra["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert callback.state.meter.examples_backpropagated < 2 * N


# --------------------------------------------------------------------------- static selections


def test_selection_datamodule_visits_the_kept_rows_each_epoch_in_new_orders():
    data = Rows()
    ids = np.arange(1000, 1000 + 3 * N, 3)  # ids that are not positions
    kept = ids[::4]
    module = SelectionDataModule(data, kept, batch_size=BATCH, dataset_ids=ids, seed=1)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Plain(), module)
    rows = np.flatnonzero(np.isin(ids, kept)).tolist()
    first, second = data.read[: len(rows)], data.read[len(rows):]
    assert sorted(first) == sorted(second) == rows
    assert first != second
    with pytest.raises(PrunusError, match="not an id"):
        SelectionDataModule(data, [7], dataset_ids=ids)


# --------------------------------------------------------------------------- errors


def test_data_policies_need_the_loader_and_the_loss_hook():
    rows = Rows()

    class OwnLoader(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(rows, batch_size=BATCH)

    trainer = L.Trainer(max_epochs=1, callbacks=[PrunusCallback(get_online("rs2", keep=0.5))],
                        accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(PrunusError, match="dataloader"):
        trainer.fit(Plain(), OwnLoader())
    with pytest.raises(PrunusError, match="PrunusModule"):
        fit(Plain(), PrunusCallback(get_online("selective_backprop")), rows, epochs=1)
    with pytest.raises(PrunusError, match="accumulate_grad_batches"):
        fit(Net(), PrunusCallback(get_online("rs2")), rows, epochs=1, accumulate_grad_batches=2)
    with pytest.raises(PrunusError, match="train_data"):
        fit(Net(), PrunusCallback(get_online("rho_loss")), rows, epochs=1)
    with pytest.raises(PrunusError, match="prunus callbacks"):
        PrunusCallback("rs2")
    used = PrunusCallback(get_online("rs2"))
    fit(Plain(), used, rows, epochs=1)
    with pytest.raises(PrunusError, match="one fit"):
        fit(Plain(), used, rows, epochs=1)


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "prunus.integrations.lightning", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'prunus\[lightning\]'"):
        import prunus.integrations.lightning  # noqa: F401


def test_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "integrations" / "lightning_trainer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "examples backpropagated" in out and "sparsity 0.900" in out
