"""Weight sparsity during training: schedules, dynamic sparse training, structured removal,
the study/CLI contract and torch.compile, on tiny data."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import invoke
from torch import nn

import prunus.weights as W
from prunus.datasets import Dataset
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.train import Callback, Trainer
from prunus.weights.dst import cosine_fraction, drop_and_regrow


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def signals() -> Dataset:
    """256 + 64 one-channel signals of length 40 whose class sets where a bump sits."""
    rng = np.random.default_rng(0)

    def draw(n, offset):
        y = np.arange(n) % 10
        x = rng.normal(0, 0.3, size=(n, 1, 40)).astype(np.float32)
        x[np.arange(n), 0, 4 * y] += 2.0
        return Dataset("signals", np.arange(n) + offset, x, y, 10)

    train = draw(256, 0)
    train.test = draw(64, 10_000)
    return train


def fit(model, data, callbacks, epochs=2, **kw):
    return Trainer(model, data, callbacks=callbacks, epochs=epochs, batch_size=32, lr=3e-3, **kw).fit()


class Recorder(Callback):
    """Records the published sparsity after every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_batch_end(self, state) -> None:
        self.values.append(state.extra["sparsity"])


# -- GMP -----------------------------------------------------------------------------------


def test_gmp_values_by_hand():
    # s_f = 0.9, s_i = 0, t0 = 100, n·Δt = 1000, Δt = 100
    values = {t: W.gmp_sparsity(t, 0.9, 0.0, 100, 1100, 100) for t in (0, 100, 199, 350, 600, 1099, 1100, 5000)}
    assert values[0] == 0.0 and values[100] == 0.0 and values[199] == 0.0
    assert values[350] == pytest.approx(0.9 * (1 - 0.8**3))  # t rounded down to 300
    assert values[600] == pytest.approx(0.9 * (1 - 0.5**3))
    assert values[1099] == pytest.approx(0.9 * (1 - 0.1**3))  # last pruning step before the end
    assert values[1100] == 0.9 and values[5000] == 0.9
    assert W.gmp_sparsity(600, 0.9, 0.5, 100, 1100, 100) == pytest.approx(0.9 - 0.4 * 0.5**3)


def test_gradual_magnitude_in_training_reaches_exact_target(signals):
    net = build_model("cnn1d", (1, 40), 10, seed=0)
    rec = Recorder()
    gmp = W.GradualMagnitude(0.8, start=0.1, end=0.6, every=2)
    fit(net, signals, [gmp, rec], epochs=2)
    assert all(b >= a for a, b in zip(rec.values, rec.values[1:]))  # never decreases
    assert len(set(rec.values)) > 3  # several pruning events
    assert rec.values[-1] == int(Fraction("0.8") * 31296) / 31296
    assert W.sparsity_report(net)[-1]["pruned"] == int(0.8 * 31296)


# -- dynamic sparse training ---------------------------------------------------------------------


def test_drop_and_regrow_matches_sorted_selection():
    gen = torch.Generator().manual_seed(0)
    weight, grad = torch.randn(20, 30, generator=gen), torch.randn(20, 30, generator=gen)
    mask = torch.rand(20, 30, generator=gen) < 0.2
    new, grown = drop_and_regrow(weight, mask, 0.3, grad.abs())
    w, g, m = weight.numpy().ravel(), grad.abs().numpy().ravel(), mask.numpy().ravel()
    active = np.flatnonzero(m)
    k = int(0.3 * len(active))
    dropped = active[np.argsort(np.abs(w[active]))[:k]]
    after = m.copy()
    after[dropped] = False
    inactive = np.flatnonzero(~after)
    regrow = inactive[np.argsort(-g[inactive])[:k]]
    expected = after.copy()
    expected[regrow] = True
    assert np.array_equal(new.numpy().ravel(), expected)
    assert np.array_equal(np.flatnonzero(grown.numpy().ravel()), np.sort(regrow))
    assert int(new.sum()) == int(mask.sum())


def test_rigl_regrows_largest_dense_gradient(signals):
    """At each update, the new mask = survivors of the magnitude drop + the k inactive weights
    with the largest |∂L/∂θ|, where the dense gradient is recomputed independently here."""
    net = build_model("cnn1d", (1, 40), 10, seed=0)
    rigl = W.RigL(0.8, every=3, drop_fraction=0.3, until=1.0)
    checks = []

    class Before(Callback):  # runs before RigL's after_backward
        def on_after_backward(self, state):
            if not rigl.is_update_step(state.step):
                return
            plain = W.masks.plain_copy(state.model)  # same weights, masks baked in, no hooks
            loss = F.cross_entropy(plain(state.batch.x), state.batch.y)
            names = [t.name for t in rigl.targets]
            params = dict(plain.named_parameters())
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            self.snapshot = {
                n: (t.weight.detach().clone(), W.masks_of(state.model)[n], g)
                for n, t, g in zip(names, rigl.targets, grads)
            }
            self.alpha = rigl.fraction(state.step)

    class After(Callback):
        def on_after_backward(self, state):
            if not rigl.is_update_step(state.step):
                return
            new_masks = W.masks_of(state.model)
            for name, (weight, mask, grad) in before.snapshot.items():
                if bool(mask.all()):  # ERK keeps small layers dense: nothing to regrow there
                    assert bool(new_masks[name].all())
                    continue
                w, g, m = weight.numpy().ravel(), grad.abs().numpy().ravel(), mask.numpy().ravel()
                active = np.flatnonzero(m)
                k = int(before.alpha * len(active))
                after = m.copy()
                after[active[np.argsort(np.abs(w[active]), kind="stable")[:k]]] = False
                inactive = np.flatnonzero(~after)
                expected = after.copy()
                expected[inactive[np.argsort(-g[inactive], kind="stable")[:k]]] = True
                assert np.array_equal(new_masks[name].numpy().ravel(), expected), name
                # regrown weights start at exactly 0
                grown = expected & ~after
                original = {t.name: t.weight for t in rigl.targets}[name].detach().numpy().ravel()
                assert np.all(original[grown] == 0)
            checks.append(state.step)

    before = Before()
    fit(net, signals, [before, rigl, After()], epochs=2)
    assert len(checks) >= 4 and rigl.updates == len(checks)
    assert any(not bool(m.all()) for m in W.masks_of(net).values())
    assert W.sparsity_report(net)[-1]["pruned"] == int(0.8 * 31296)


def test_cosine_drop_fraction():
    assert cosine_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert cosine_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert cosine_fraction(100, 100, 0.3) == 0.0


@pytest.mark.parametrize("method", ["set", "granet"])
def test_set_and_granet_keep_exact_sparsity(signals, method):
    net = build_model("cnn1d", (1, 40), 10, seed=0)
    rec = Recorder()
    cb = W.get_sparsifier(method, sparsity=0.9, seed=1, every=3)
    fit(net, signals, [cb, rec], epochs=2)
    assert cb.updates > 0
    assert rec.values[-1] == int(0.9 * 31296) / 31296
    if method == "set":
        assert set(rec.values) == {rec.values[-1]}  # sparse from the first step, counts constant


# -- lottery tickets ---------------------------------------------------------------------------


def test_rewinding_restores_saved_weights_bit_exactly(signals):
    net = build_model("cnn1d", (1, 40), 10, seed=0)
    imp = W.LotteryTicket(0.75, rounds=2, rewind=0.25)
    seen = []

    class Check(Callback):
        def on_batch_start(self, state):  # runs right after the ticket's batch_start
            if state.step in (imp.segment, 2 * imp.segment):
                masks = W.masks_of(state.model)
                for t in imp.targets:
                    saved = imp.saved[t.name]
                    keep = masks[t.name]
                    assert torch.equal(t.weight[keep], saved[keep])  # bit-exact
                    assert bool((t.weight[~keep] == 0).all())
                bn = state.model[2]
                assert torch.equal(bn.running_mean, imp.saved["2.running_mean"])
                assert torch.equal(bn.weight, imp.saved["2.weight"])
                assert len(state.optimizer.state) == 0
                seen.append(state.extra["sparsity"])

    fit(net, signals, [imp, Check()], epochs=3)
    n = 31296
    assert len(seen) == 2 and seen[1] == int(0.75 * n) / n
    assert seen[0] == pytest.approx(1 - 0.25**0.5, abs=1 / n)
    assert imp.rewind_step == (imp.segment * 25) // 100 and imp.rewind_step > 0


# -- structured removal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (1, 40)), ("cnn1d", (1, 40)), ("cnn", (1, 28, 28)), ("resnet_tiny", (1, 40))],
)
def test_structured_removal_gives_smaller_model_with_equal_outputs(name, shape):
    net = build_model(name, shape, 10, seed=0)
    x = torch.randn(16, *shape)
    net.train()
    for _ in range(2):  # non-trivial batch-norm statistics
        net(x)
    masked = W.masks.plain_copy(net)
    keeps = W.channel_masks(masked, 0.5, "l1")
    small = W.remove_channels(masked)
    for keep in keeps.values():
        assert int((~keep).sum()) == len(keep) // 2
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(small) < 0.6 * count(net)
    direct = W.prune_channels(net, 0.5, "l1")
    masked.eval(), small.eval(), direct.eval()
    with torch.no_grad():
        assert torch.allclose(masked(x), small(x), atol=1e-5)
        assert torch.allclose(direct(x), small(x), atol=1e-5)
    masked.train(), small.train()
    with torch.no_grad():  # batch statistics: removed channels were exact zeros
        assert torch.allclose(masked(x), small(x), atol=1e-4)


def test_structured_taylor_and_errors(signals):
    net = build_model("cnn1d", (1, 40), 10, seed=0)
    small = W.prune_channels(net, 0.25, "taylor", data=signals)
    assert small[1].out_channels == 48 and small[11].in_features == 48 * 10
    with pytest.raises(PrunusError, match="needs data"):
        W.prune_channels(net, 0.5, "taylor")
    with pytest.raises(PrunusError, match="criterion must be one of"):
        W.prune_channels(net, 0.5, "l3")
    with pytest.raises(PrunusError, match="sparsity"):
        W.prune_channels(net, 1.0)


def test_structured_arbitrary_model_through_torch_pruning():
    pytest.importorskip("torch_pruning", reason="optional extra 'structured' (torch-pruning) not installed")

    class Branchy(nn.Module):  # not a Sequential chain: needs the dependency graph
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.relu(self.b(h)) + h
            return self.head(h.mean((2, 3)))

    net = Branchy()
    x = torch.randn(2, 1, 8, 8)
    small = W.prune_channels(net, 0.5, "l1", example_input=x)
    assert small.a.out_channels == 8 and small.head.out_features == 10
    assert small(x).shape == (2, 10)


# -- the study / CLI contract --------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(W.WEIGHT_METHODS))
def test_every_weight_method_publishes_exact_sparsity(signals, method):
    net = build_model("mlp", (1, 40), 10, seed=0, hidden=(64, 32))
    sparsity = 0.5 if method == "nm" else 0.8
    cb = W.get_sparsifier(method, sparsity=sparsity, seed=0)
    seen = {}

    class Meter(Callback):
        def on_fit_end(self, state):
            seen.update(sparsity=state.extra["sparsity"], density=state.meter.density)

    result = fit(net, signals, [cb, Meter()], epochs=2)
    n = 40 * 64 + 64 * 32 + 32 * 10
    assert seen["sparsity"] == int(Fraction(str(sparsity)) * n) / n
    assert seen["density"] == pytest.approx(1 - seen["sparsity"])
    assert math.isfinite(result.final["accuracy"])


def test_cli_prune_writes_safetensors_and_table(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code = invoke("prune", "--dataset", "digits", "--model", "mlp", "--method", "gmp",
                   "--sparsity", "0.75", "--epochs", "1", "--out", str(out), "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    n = 64 * 256 + 256 * 256 + 256 * 10
    assert summary["achieved_sparsity"] == int(0.75 * n) / n
    fresh = build_model("mlp", (1, 8, 8), 10, seed=3)
    W.load(fresh, out)
    assert W.sparsity_report(fresh)[-1]["pruned"] == int(0.75 * n)
    assert invoke("prune", "--method", "lottery") == 2
    assert "weight method must be one of" in capsys.readouterr().err
    assert invoke("prune", "--method", "rigl", "-s", "evry=3") == 2
    assert "evry" in capsys.readouterr().err


# -- torch.compile -------------------------------------------------------------------------------


def _compile_works(backend: str) -> str | None:
    try:
        fn = torch.compile(nn.Linear(2, 2), backend=backend)
        fn(torch.ones(1, 2))
    except Exception as exc:  # noqa: BLE001 - any failure means compile is unusable here
        return f"torch.compile(backend={backend!r}) is unavailable on this build ({type(exc).__name__})"
    return None


def _train_compiled(net, x, y, backend: str) -> nn.Module:
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    return compiled


def test_masks_hold_under_torch_compile(signals):
    """Dynamo traces the parametrization and AOTAutograd builds the joint forward/backward
    graph (``aot_eager`` skips only the C++ code generation, which would cost ~30 s here)."""
    reason = _compile_works("aot_eager")
    if reason:
        pytest.skip(reason)
    net = build_model("mlp", (1, 40), 10, seed=0, hidden=(32,))
    masks = W.prune(net, 0.7, "magnitude")
    x, y = torch.from_numpy(signals.x[:32]), torch.from_numpy(signals.y[:32])
    compiled = _train_compiled(net, x, y, "aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), net(x), atol=1e-6)
    for t in W.prunable_weights(net):
        assert bool((t.module.weight[~masks[t.name]] == 0).all())
        assert bool((t.weight[~masks[t.name]] == 0).all())
        assert bool((t.weight[masks[t.name]] != 0).any())


@pytest.mark.skipif(
    not __import__("os").environ.get("PRUNUS_SLOW_TESTS"),
    reason="inductor compilation takes ~30 s on 2 cores; set PRUNUS_SLOW_TESTS=1 to run it",
)
def test_masks_hold_under_inductor_and_trainer_compile(signals):
    reason = _compile_works("inductor")
    if reason:
        pytest.skip(reason)
    net = build_model("mlp", (1, 40), 10, seed=0, hidden=(32,))
    masks = W.prune(net, 0.7, "magnitude")
    fit(net, signals, [], epochs=1, compile=True, optimizer="adam")
    for t in W.prunable_weights(net):
        assert bool((t.module.weight[~masks[t.name]] == 0).all())
        assert bool((t.weight[~masks[t.name]] == 0).all())
