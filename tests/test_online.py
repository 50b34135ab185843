"""Online selection: RS2, InfoBatch, Selective Backprop, RHO-LOSS, loss reweighting."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import invoke
from torch import nn

from prunus.data.online import (
    ONLINE_METHODS,
    InfoBatch,
    InfoBatchCallback,
    LossReweighting,
    RhoLoss,
    RS2Sampler,
    SelectiveBackprop,
    get_online,
    infobatch_prune,
    keep_probabilities,
    loss_weights,
    rho_select,
    rs2_epoch_indices,
    select_by_percentile,
)
from prunus.datasets import Dataset
from prunus.errors import PrunusError
from prunus.train import Callback, Trainer

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- helpers


def make_data(n=240, offset=1000, stride=3, seed=0):
    """Gaussian blobs whose ids are *not* row positions (offset and stride), 3 classes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(3, 8))

    def draw(count, first):
        y = np.arange(count) % 3
        x = centers[y] + rng.normal(0, 1, size=(count, 8))
        ids = first + stride * np.arange(count)
        return Dataset("blobs", ids, x.astype(np.float32), y, 3)

    train = draw(n, offset)
    train.test = draw(60, 10**6)
    return train


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class Recorder(Callback):
    """Records what the trainer actually trains on (placed after the method's callback)."""

    def __init__(self):
        self.epoch_ids, self.epoch_weights, self.steps = [], [], []
        self.state = None

    def on_epoch_start(self, state):
        self.epoch_ids.append(None if state.epoch_ids is None else np.array(state.epoch_ids))
        self.epoch_weights.append(
            None if state.epoch_weights is None else np.array(state.epoch_weights)
        )

    def on_after_loss(self, state):
        batch = state.batch
        self.steps.append(
            {
                "epoch": state.epoch,
                "ids": batch.ids.numpy().copy(),
                "weights": None if batch.weights is None else batch.weights.numpy().copy(),
                "per_example_loss": state.per_example_loss.detach().numpy().copy(),
                "loss": state.loss.item(),
            }
        )

    def on_fit_end(self, state):
        self.state = state


def fit(callbacks, data=None, **settings):
    data = make_data() if data is None else data
    recorder = Recorder()
    config = {"epochs": 4, "batch_size": 32, "device": "cpu", "seed": 0, **settings}
    result = Trainer(make_model(), data, callbacks=[*callbacks, recorder], **config).fit()
    return result, recorder


# --------------------------------------------------------------------------- RS2


@pytest.mark.parametrize("n, keep", [(100, 0.3), (1000, 0.25), (37, 0.5), (101, 0.1), (10, 1.0),
                                     (7, 0.3), (1000, 0.7)])
def test_rs2_takes_exactly_the_budget_every_epoch_without_repeats(n, keep):
    # Rule: ⌊keep·N⌋ examples every epoch, from a stream of permutations; a permutation that
    # runs out mid-epoch is topped up from the next one, skipping examples already in the epoch.
    size = max(1, int(round(keep * n, 9)))
    sampler = RS2Sampler(n, keep, seed=3)
    epochs = [sampler.indices(e) for e in range(12)]
    assert all(len(e) == size for e in epochs)
    assert all(len(np.unique(e)) == size for e in epochs)  # no example twice in one epoch
    counts = np.bincount(np.concatenate(epochs), minlength=n)
    passes = 12 * size / n
    assert counts.min() >= math.floor(passes) - 1 and counts.max() <= math.ceil(passes) + 1
    if size * math.floor(1 / keep) == n:  # epochs tile the data: each pass is a permutation
        per_pass = n // size
        for p in range(12 // per_pass):
            seen = np.concatenate(epochs[p * per_pass:(p + 1) * per_pass])
            assert np.array_equal(np.sort(seen), np.arange(n))
    if keep < 1:
        assert not np.array_equal(epochs[0], sampler.indices(math.ceil(1 / keep)))
    assert np.array_equal(rs2_epoch_indices(n, keep, 5, seed=3), epochs[5])


def test_rs2_budget_over_epochs_is_keep_times_epochs():
    # keep 0.3 for 4 epochs backpropagates 1.2·N examples, not 1.0·N (no short last epoch)
    sampler = RS2Sampler(4000, 0.3, seed=0)
    assert sum(len(sampler.indices(e)) for e in range(4)) == 1.2 * 4000
    assert sampler.total_steps(epochs=4, batch_size=128) == 4 * math.ceil(1200 / 128)


def test_rs2_tiny_data_and_sampler_with_dataloader():
    # N = 7, keep = 0.3: ⌊2.1⌋ = 2 examples per epoch, every epoch
    sampler = RS2Sampler(7, 0.3, seed=0)
    assert [sampler.epoch_size(e) for e in range(4)] == [2, 2, 2, 2]
    assert sampler.total_steps(epochs=4, batch_size=2) == 4
    data = torch.utils.data.TensorDataset(torch.arange(7))
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    seen = []
    for epoch in range(7):
        sampler.set_epoch(epoch)
        assert len(loader) == sampler.steps_per_epoch(2)
        seen += [int(v) for (batch,) in loader for v in batch]
    assert sorted(seen) == sorted(list(range(7)) * 2)  # 14 = two full passes over 7


def test_rs2_in_trainer_covers_data_and_shortens_schedule():
    data = make_data(n=240)
    result, rec = fit([get_online("rs2", keep=0.25, seed=1)], data, epochs=8)
    per_epoch = [np.concatenate([s["ids"] for s in rec.steps if s["epoch"] == e]) for e in range(8)]
    assert all(len(ids) == 60 for ids in per_epoch)
    for c in range(2):
        assert np.array_equal(np.sort(np.concatenate(per_epoch[4 * c : 4 * c + 4])), data.ids)
    assert rec.state.total_steps == rec.state.step == 8 * 2  # schedule = steps actually taken
    assert result.final["lr"] < 1e-3 * 3e-3  # the one-cycle schedule reached its end
    assert result.meter.examples_backpropagated == 8 * 60


# --------------------------------------------------------------------------- InfoBatch


def per_example_gradients(weight, x, y):
    """Gradient of each example's cross-entropy w.r.t. a linear model, one autograd call each."""
    grads = []
    for xi, yi in zip(x, y):
        w = weight.clone().requires_grad_(True)
        F.cross_entropy((xi @ w)[None], yi[None]).backward()
        grads.append(w.grad.flatten().clone())
    return torch.stack(grads).double().numpy()


def test_infobatch_rescaled_gradient_is_unbiased():
    rng = np.random.default_rng(0)
    n, d, k = 200, 5, 3
    x = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, k, n))
    weight = torch.tensor(rng.normal(size=(d, k)), dtype=torch.float32)
    grads = per_example_gradients(weight, x, y)
    losses = F.cross_entropy(x @ weight, y, reduction="none").numpy()
    full = grads.mean(0)
    keep, draws = 0.4, 4000
    estimates, unscaled = [], []
    for s in range(draws):
        kept, w = infobatch_prune(losses, keep, np.random.default_rng(s))
        estimates.append((w[:, None] * grads[kept]).sum(0) / n)
        unscaled.append(grads[kept].sum(0) / n)
    mean = np.mean(estimates, axis=0)
    # Tolerance: 4 standard errors of the mean of `draws` draws, per coordinate, where the
    # per-draw variance is (1/N²) Σ_{well-learned} (1 − keep)/keep · g_i².
    well = losses < losses.mean()
    se = np.sqrt(((1 - keep) / keep * grads[well] ** 2).sum(0) / n**2 / draws)
    assert np.all(np.abs(mean - full) <= 4 * se + 1e-12)
    # without the 1/keep rescaling the same draws are visibly biased (so the check can fail)
    assert np.max(np.abs(np.mean(unscaled, axis=0) - full) / (se + 1e-12)) > 20


def test_infobatch_sampler_prunes_below_mean_and_ends_with_full_epochs():
    n = 50
    ib = InfoBatch(n, epochs=8, keep=0.5, final_full=0.25, seed=0)
    assert len(ib) == n and torch.all(ib.weights(np.arange(n)) == 1)  # epoch 0: nothing known
    losses = np.linspace(0.0, 2.0, n)
    ib.update(torch.arange(n), torch.tensor(losses))
    below = losses < losses.mean()
    for epoch in range(1, 8):
        ib.set_epoch(epoch)
        order = np.array(list(ib))
        weights = ib.weights(order).numpy()
        assert len(set(order.tolist())) == len(order)
        if epoch >= 6:  # ⌈0.25·8⌉ = 2 final epochs use all data, weight 1
            assert np.array_equal(np.sort(order), np.arange(n)) and np.all(weights == 1)
            continue
        assert np.all(np.isin(np.flatnonzero(~below), order))  # above-mean never pruned
        assert len(order) < n
        np.testing.assert_allclose(weights, np.where(below[order], 2.0, 1.0))


def test_infobatch_in_trainer_weights_stores_unweighted_losses_and_schedule_ends():
    data = make_data(n=240)
    callback = InfoBatchCallback(keep=0.5, final_full=0.25, seed=0)
    _, rec = fit([callback], data, epochs=4)
    sizes = [len(ids) for ids in rec.epoch_ids]
    assert sizes[0] == 240 and sizes[-1] == 240 and all(s < 240 for s in sizes[1:3])
    assert rec.epoch_weights[0] is None and rec.epoch_weights[-1] is None
    assert set(np.unique(np.concatenate(rec.epoch_weights[1:3])).tolist()) == {1.0, 2.0}
    # the trainer's loss is mean(w·ℓ); the stored loss per id is the unweighted ℓ of its last step
    last = {}
    for step in rec.steps:
        w = 1.0 if step["weights"] is None else step["weights"]
        assert step["loss"] == pytest.approx(float(np.mean(w * step["per_example_loss"])), rel=1e-5)
        last.update(zip(step["ids"].tolist(), step["per_example_loss"].tolist()))
    stored = callback._losses.numpy()[data.positions(np.array(list(last)))]
    np.testing.assert_allclose(stored, list(last.values()), rtol=1e-6)
    assert rec.state.total_steps == rec.state.step  # the LR schedule ends with the run


# --------------------------------------------------------------------------- Selective Backprop


def test_selective_backprop_keep_probability_matches_formula():
    rng = np.random.default_rng(0)
    history = torch.tensor(rng.exponential(size=300))
    losses = torch.tensor(np.concatenate([rng.exponential(size=20), [0.0, 100.0]]))
    for beta in (0.0, 1.0, 2.5):
        # mid-rank percentile: (#below + ½·#equal) / R
        expected = [
            ((sum(h < v for h in history.tolist()) + 0.5 * sum(h == v for h in history.tolist())) / 300) ** beta
            for v in losses.tolist()
        ]
        np.testing.assert_allclose(keep_probabilities(losses, history, beta), expected, rtol=1e-6)
    # the Bernoulli draws follow those probabilities (5000 draws: binomial SE ≤ 0.0071)
    g = torch.Generator().manual_seed(0)
    freq = torch.stack(
        [select_by_percentile(losses, history, 2.0, g) for _ in range(5000)]
    ).double().mean(0)
    assert torch.all((freq - keep_probabilities(losses, history, 2.0)).abs() < 0.03)
    # keep = 1/(β+1): uniform ranks keep that fraction in expectation
    assert SelectiveBackprop(keep=0.25).beta == pytest.approx(3.0)
    for keep in (0.3, 0.5):
        beta = 1 / keep - 1
        for r in (32, 1024):
            distinct = torch.randperm(r, generator=torch.Generator().manual_seed(r)).double()
            mean = keep_probabilities(distinct, distinct, beta).mean().item()
            assert mean == pytest.approx(keep, abs=2e-3)  # k/R ranks gave keep + ~1/(2R)
    # tied losses share the middle rank: all-equal history keeps each with probability ½^β
    assert keep_probabilities(torch.ones(4), torch.ones(10), 1.0).tolist() == [0.5] * 4


class RandomLosses(nn.Module):
    """Logits drawn afresh on every call: per-example losses are i.i.d. and never improve."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        return self.linear(x) * 0 + 2 * torch.randn(len(x), 3)


class BatchSizes(Callback):
    def __init__(self):
        self.sizes, self.ids = [], []

    def on_after_loss(self, state):
        self.sizes.append(len(state.batch))
        self.ids.append(state.batch.ids.numpy().copy())

    def on_fit_end(self, state):
        self.state = state


@pytest.mark.parametrize("keep", [0.3, 0.5])
def test_selective_backprop_backpropagates_keep_in_full_batches(keep):
    n, b = 4000, 32
    rng = np.random.default_rng(0)
    data = Dataset("random", np.arange(n), rng.normal(size=(n, 8)).astype(np.float32), np.arange(n) % 3, 3)
    sizes = BatchSizes()
    torch.manual_seed(0)
    result = Trainer(
        RandomLosses(), data, callbacks=[SelectiveBackprop(keep=keep, seed=0), sizes],
        epochs=1, batch_size=b, device="cpu", seed=0,
    ).fit()
    fraction = result.meter.examples_backpropagated / n
    assert fraction == pytest.approx(keep, abs=0.03)  # was 0.303 / 0.516 in shrunken batches
    assert sum(sizes.sizes) == result.meter.examples_backpropagated
    assert all(size == b for size in sizes.sizes[:-1])  # queued into full batches
    assert 1 <= sizes.sizes[-1] < 2 * b  # the last step trains whatever is queued
    ids = np.concatenate(sizes.ids)
    assert len(np.unique(ids)) == len(ids)  # each selected example once
    assert sizes.state.total_steps == sizes.state.step == len(sizes.sizes)  # the LR schedule ends with the run


def test_selective_backprop_meter_counts_forwarded_and_backpropagated():
    data = make_data(n=240)
    result, rec = fit([get_online("selective_backprop", keep=0.5, seed=0)], data, epochs=2)
    kept = sum(len(s["ids"]) for s in rec.steps)
    assert [len(s["ids"]) for s in rec.steps[:-1]] == [32] * (len(rec.steps) - 1)  # full batches
    assert len(rec.steps) < 2 * 8  # steps wait until a full batch is selected
    assert 0.35 * 480 < kept < 0.65 * 480
    # forwarded: the no-grad pass over every full batch + the training pass over the kept ones
    assert result.meter.examples_forwarded == 2 * 240 + kept
    assert result.meter.examples_backpropagated == kept
    fwd, bwd = result.meter.flops_per_example(rec.state.model, torch.from_numpy(data.x[:8]))
    assert result.meter.flops == pytest.approx(fwd * (480 + kept) + bwd * kept)


def test_selection_forward_is_counted_and_leaves_batchnorm_statistics_alone():
    from types import SimpleNamespace

    from prunus.config import TrainConfig
    from prunus.data.online._common import losses_without_grad
    from prunus.train import ComputeMeter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    state = SimpleNamespace(
        model=model, config=TrainConfig(), device=torch.device("cpu"), meter=ComputeMeter()
    )
    x, y = torch.randn(32, 8) * 3 + 1, torch.randint(0, 3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = losses_without_grad(state, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    expected = F.cross_entropy(model(x), y, reduction="none")  # training mode: batch statistics
    torch.testing.assert_close(losses, expected.detach())
    assert (state.meter.examples_forwarded, state.meter.examples_backpropagated) == (32, 0)


def test_meter_counts_nested_phases_once_and_snapshots_the_running_phase(monkeypatch):
    # the selection forward passes are timed as training, and an evaluation inside the
    # training loop must not be counted as training too: a fake clock checks the bookkeeping
    from types import SimpleNamespace

    from prunus.train import ComputeMeter
    from prunus.train import meter as meter_module

    clock = [0.0]
    monkeypatch.setattr(meter_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    meter = ComputeMeter()
    with meter.timing("train"):
        clock[0] += 2.0
        with meter.timing("eval"):
            clock[0] += 5.0
        clock[0] += 1.0
        mid = meter.snapshot()
        assert (mid["train_seconds"], mid["eval_seconds"]) == (3.0, 5.0)
        clock[0] += 4.0
    assert meter.seconds["train"] == 7.0 and meter.seconds["eval"] == 5.0
    assert meter.snapshot()["total_seconds"] == 12.0


# --------------------------------------------------------------------------- RHO-LOSS


def test_rho_select_picks_top_k_reducible_losses():
    rng = np.random.default_rng(1)
    losses, irreducible = rng.exponential(size=50), rng.exponential(size=50)
    for k in (1, 7, 50, 80):
        picked = rho_select(torch.tensor(losses), torch.tensor(irreducible), k)
        reducible = [(losses[i] - irreducible[i], i) for i in range(50)]
        expected = {i for _, i in sorted(reducible, reverse=True)[: min(k, 50)]}
        assert set(picked.tolist()) == expected
    with pytest.raises(PrunusError, match="irreducible"):
        rho_select(torch.zeros(3), torch.zeros(4), 1)


def test_rho_loss_holds_out_data_and_charges_its_model():
    data = make_data(n=240)
    callback = RhoLoss(keep=0.25, holdout_fraction=0.1, irreducible_epochs=2, seed=0)
    result, rec = fit([callback], data, epochs=2)
    holdout_ids = data.ids[callback.holdout_rows]
    assert len(holdout_ids) == 24
    trained = np.concatenate([s["ids"] for s in rec.steps])
    assert not np.isin(trained, holdout_ids).any()
    batches = [min(32, 216 - 32 * b) for b in range(7)]  # 216 training rows -> 7 batches
    sizes = [len(s["ids"]) for s in rec.steps]
    assert sizes == 2 * [math.ceil(b / 4) for b in batches]  # ⌈0.25·B⌉ of each batch
    kept = sum(sizes)
    holdout_training = 2 * 24  # irreducible model: 2 epochs on 24 examples
    assert result.meter.examples_backpropagated == holdout_training + kept
    assert result.meter.examples_forwarded == holdout_training + 240 + 2 * 216 + kept
    assert result.meter.seconds["scoring"] > 0
    # its irreducible loss is the trained holdout model's loss on each training example
    assert torch.isfinite(callback.irreducible).all() and len(callback.irreducible) == 240
    assert rec.state.total_steps == rec.state.step == 2 * 7


def test_rho_loss_with_a_given_holdout_and_irreducible_model():
    data, holdout = make_data(n=240, seed=0), make_data(n=60, offset=50_000, seed=1)
    small = nn.Sequential(nn.Linear(8, 3))
    before = small[0].weight.detach().clone()
    callback = RhoLoss(keep=0.5, holdout=holdout, irreducible_model=small, irreducible_epochs=1)
    result, rec = fit([callback], data, epochs=1)
    assert not torch.equal(before, small[0].weight)  # trained on the holdout
    trained = np.concatenate([s["ids"] for s in rec.steps])
    assert len(trained) == 120 and np.isin(trained, data.ids).all()  # nothing held out
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    expected = F.cross_entropy(small(x), y, reduction="none")
    torch.testing.assert_close(callback.irreducible, expected.detach())
    assert result.meter.examples_backpropagated == 60 + 120


# --------------------------------------------------------------------------- reweighting


def test_loss_weights_mean_one_softmax_and_uniform_limit():
    losses = torch.tensor([0.1, 0.5, 2.0, 3.0, 0.0])
    for tau in (0.5, 1.0, -2.0):
        w = loss_weights(losses, tau)
        e = np.exp(losses.numpy() / tau)
        np.testing.assert_allclose(w.numpy(), 5 * e / e.sum(), rtol=1e-5)
        assert w.mean().item() == pytest.approx(1.0)
    gaps = [(loss_weights(losses, tau) - 1).abs().max().item() for tau in (1, 10, 100, 1e4)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3
    assert torch.argmax(loss_weights(losses, -1.0)) == 4  # negative τ favours low losses
    leaf = losses.clone().requires_grad_(True)
    assert not loss_weights(leaf, 1.0).requires_grad  # weights are detached
    with pytest.raises(PrunusError, match="temperature"):
        loss_weights(losses, 0.0)


def test_reweight_replaces_trainer_loss():
    result, rec = fit([LossReweighting(temperature=2.0)], epochs=1)
    for step in rec.steps:
        ell = step["per_example_loss"]
        w = len(ell) * np.exp(ell / 2) / np.exp(ell / 2).sum()
        assert step["loss"] == pytest.approx(float(np.mean(w * ell)), rel=1e-5)
    assert result.meter.examples_backpropagated == 240


# --------------------------------------------------------------------------- all methods


def method_settings(name):
    return {
        "rs2": {"keep": 0.5},
        "infobatch": {"keep": 0.5},
        "selective_backprop": {"keep": 0.5},
        "rho_loss": {"keep": 0.5, "irreducible_epochs": 1},
        "reweight": {},
    }[name]


@pytest.mark.parametrize("name", sorted(ONLINE_METHODS))
def test_deterministic_per_seed(name):
    runs = []
    for seed in (0, 0, 1):
        result, rec = fit([get_online(name, seed=seed, **method_settings(name))], epochs=2)
        runs.append(([s["ids"].tolist() for s in rec.steps], result.final["accuracy"]))
    assert runs[0] == runs[1]
    if name != "reweight":  # reweighting draws nothing at random
        assert runs[0][0] != runs[2][0]


def test_get_online_rejects_bad_input():
    with pytest.raises(PrunusError, match="infobatch, reweight, rho_loss, rs2, selective_backprop"):
        get_online("rs3", keep=0.3)
    with pytest.raises(PrunusError, match=r"keep must be a number in \(0, 1\]"):
        get_online("rs2", keep=1.5)
    with pytest.raises(PrunusError, match="settings are: beta, history_size, start"):
        get_online("selective_backprop", keep=0.5, colour="red")
    with pytest.raises(PrunusError, match="keep must be 1"):
        get_online("reweight", keep=0.5)
    assert isinstance(get_online("reweight", keep=1.0), LossReweighting)


# --------------------------------------------------------------------------- CLI and README


@pytest.mark.parametrize("name", sorted(ONLINE_METHODS))
def test_cli_train_online_smoke(name, capsys):
    keep = "1.0" if name == "reweight" else "0.5"
    args = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--json"]
    assert invoke(*args, "--online", name, "--keep", keep) == 0
    epoch = json.loads(capsys.readouterr().out)["epochs"][0]
    assert epoch["accuracy"] > 0.3
    if name in ("selective_backprop", "rho_loss"):
        assert epoch["examples_backpropagated"] < epoch["examples_forwarded"]


def test_cli_bad_online_name_exits_2(capsys):
    assert invoke("train", "--dataset", "digits", "--model", "mlp", "--online", "nope") == 2
    assert "online method must be one of: infobatch, reweight" in capsys.readouterr().err


def readme_block(marker):
    """The ```python block of README.md that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert found, f"README.md has no python example using {marker}"
    return found[0]


@pytest.mark.parametrize("marker", ["RS2Sampler", "InfoBatch("])
def test_readme_own_loop_examples_run(marker):
    code = readme_block(marker)
    assert len(code.strip().splitlines()) <= 10
    data = make_data(n=240)
    X, Y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model = make_model()
    namespace = {
        "model": model,
        "opt": torch.optim.AdamW(model.parameters(), lr=1e-2),
        "X": X,
        "Y": Y,
        "train_set": torch.utils.data.TensorDataset(X, Y),
    }
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    with torch.no_grad():
        accuracy = (model(X).argmax(1) == Y).float().mean().item()
    assert accuracy > 0.8
