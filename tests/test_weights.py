"""Weight sparsity: criteria, allocation and masks checked against independent computations."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunus.weights as W
from prunus.counts import apportion
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.weights.allocation import allocate, layer_counts
from prunus.weights.criteria import grasp, snip
from prunus.weights.nm import is_nm, nm_mask


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cnn1d(seed: int = 0) -> nn.Module:
    return build_model("cnn1d", (1, 40), 10, seed=seed)


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# -- magnitude & exactness ---------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.29, 0.98])
def test_global_magnitude_equals_torch_global_unstructured(sparsity):
    ours, theirs = cnn1d(), cnn1d()
    masks = W.prune(ours, sparsity, "magnitude", scope="global")
    params = [(m, "weight") for m in theirs.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    n = sum(m.weight.numel() for m, _ in params)
    torch_prune.global_unstructured(
        params, pruning_method=torch_prune.L1Unstructured, amount=math.floor(round(sparsity * 100) * n / 100)
    )
    names = [t.name for t in W.prunable_weights(ours)]
    for name, (module, _) in zip(names, params):
        assert torch.equal(masks[name], module.weight_mask.bool()), name
    assert sum(int((~m).sum()) for m in masks.values()) == math.floor(round(sparsity * 100) * n / 100)
    x, _ = batch()
    assert torch.allclose(ours(x), theirs(x))


@settings(max_examples=40, deadline=None)
@given(
    dims=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 3)), min_size=1, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    scope=st.sampled_from(["global", "layer"]),
    allocation=st.sampled_from(["uniform", "erk"]),
    min_density=st.sampled_from([0.0, 0.05]),
)
def test_exact_count_of_pruned_weights(dims, sparsity, scope, allocation, min_density):
    shapes = [(o, i, k) for o, i, k in dims]
    n = sum(math.prod(s) for s in shapes)
    gen = torch.Generator().manual_seed(1)
    scores = {f"l{i}.weight": torch.rand(s, generator=gen) for i, s in enumerate(shapes)}
    lower = [math.ceil(min_density * math.prod(s)) for s in shapes]
    expected_pruned = int(Fraction(str(sparsity)) * n)
    if sum(lower) > n - expected_pruned:
        with pytest.raises(PrunusError):
            allocate(scores, sparsity, scope, allocation, min_density)
        return
    masks = allocate(scores, sparsity, scope, allocation, min_density)
    assert sum(int((~m).sum()) for m in masks.values()) == expected_pruned
    for m, lo in zip(masks.values(), lower):
        assert int(m.sum()) >= lo


def test_largest_remainder_rounding_by_hand():
    # 3 layers of 10 weights, keep 10 (sparsity 2/3): exact shares 3.33 each -> 4, 3, 3
    assert layer_counts([(10,), (10,), (10,)], 0.67, "uniform") == [4, 3, 3]  # ⌊0.67·30⌋ = 20 pruned
    assert apportion(10, [1.0, 1.0, 1.0], [0, 0, 0], [10, 10, 10]) == [4, 3, 3]
    # shares 2.6, 5.2, 2.2 of 10 -> floors 2, 5, 2; the one left goes to the largest remainder (0.6)
    assert apportion(10, [2.6, 5.2, 2.2], [0, 0, 0], [10, 10, 10]) == [3, 5, 2]
    # a cap of 1 weight on layer 0 moves its share to the others
    assert apportion(10, [5.0, 2.5, 2.5], [0, 0, 0], [1, 10, 10]) == [1, 5, 4]


@pytest.mark.parametrize("sparsity,capped", [(0.9, set()), (0.5, {0, 3})])
def test_erk_densities_equal_formula(sparsity, capped):
    shapes = [(64, 1, 5), (64, 64, 3), (64, 64, 3), (10, 640)]
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]  # (n_in + n_out + k) / (n_in n_out k)
    kept = (1 - sparsity) * sum(sizes)
    dense: set[int] = set()
    while True:  # independent: cap layers above density 1, rescale the rest
        eps = (kept - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in range(4) if i not in dense)
        over = {i for i in range(4) if i not in dense and eps * raw[i] > 1}
        if not over:
            break
        dense |= over
    expected = [1.0 if i in dense else eps * raw[i] for i in range(4)]
    assert dense == capped  # at 50% the first conv and the head would exceed density 1
    assert W.erk_densities(shapes, sparsity) == pytest.approx(expected, rel=1e-9)
    counts = layer_counts(shapes, sparsity, "erk")
    assert sum(counts) == sum(sizes) - int(Fraction(str(sparsity)) * sum(sizes))
    for c, d, n in zip(counts, expected, sizes):
        assert abs(c - d * n) < 1.0


def test_min_density_prevents_layer_collapse():
    net = cnn1d()
    W.prune(net, 0.98, "magnitude", scope="global")
    assert min(r["params"] - r["pruned"] for r in W.sparsity_report(net)[:-1]) == 0  # collapse
    net = cnn1d()
    W.prune(net, 0.98, "magnitude", scope="global", min_density=0.01)
    for row in W.sparsity_report(net)[:-1]:
        assert row["params"] - row["pruned"] >= math.ceil(0.01 * row["params"])
    assert W.sparsity_report(net)[-1]["pruned"] == int(0.98 * 31296)


def test_random_is_seeded_and_per_layer_uniform():
    a, b, c = cnn1d(), cnn1d(), cnn1d()
    ma = W.prune(a, 0.8, "random", scope="layer", seed=3)
    mb = W.prune(b, 0.8, "random", scope="layer", seed=3)
    mc = W.prune(c, 0.8, "random", scope="layer", seed=4)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert any(not torch.equal(ma[k], mc[k]) for k in ma)
    for row in W.sparsity_report(a)[:-1]:
        assert abs(row["pruned"] - 0.8 * row["params"]) <= 1


# -- criteria against independent computations ---------------------------------------------


def test_snip_equals_weight_times_gradient():
    net = build_model("mlp", (1, 40), 10, seed=0, hidden=(16,))
    x, y = batch()
    targets = W.prunable_weights(net)
    ours = snip(net, targets, data=(x, y))
    plain = copy.deepcopy(net)
    loss = F.cross_entropy(plain(x), y)
    grads = torch.autograd.grad(loss, [plain[1].weight, plain[3].weight])
    for t, w, g in zip(targets, [plain[1].weight, plain[3].weight], grads):
        assert torch.allclose(ours[t.name], (w * g).abs().detach(), atol=1e-7)


def test_grasp_equals_weight_times_hessian_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    weight = net[0].weight.detach().clone()
    bias = net[0].bias.detach()

    def loss_of(w):
        return F.cross_entropy((x @ w.T + bias) / 200.0, y)

    w = weight.clone().requires_grad_(True)
    g = torch.autograd.grad(loss_of(w), w)[0].reshape(-1)
    hessian = torch.autograd.functional.hessian(loss_of, weight).reshape(15, 15)
    expected = (weight.reshape(-1) * (hessian @ g)).reshape(3, 5)
    ours = grasp(net, W.prunable_weights(net), data=(x, y))["0.weight"]
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-12)


def test_synflow_is_data_free_and_leaves_no_layer_empty_at_99():
    net = cnn1d()
    masks = W.prune(net, 0.99, "synflow", data=None, input_shape=(1, 40))
    rows = W.sparsity_report(net)
    assert rows[-1]["pruned"] == int(0.99 * 31296)
    assert all(row["params"] - row["pruned"] > 0 for row in rows[:-1])
    again = W.prune(cnn1d(), 0.99, "synflow", input_shape=(1, 40))
    assert all(torch.equal(masks[k], again[k]) for k in masks)  # deterministic, no data drawn
    with pytest.raises(PrunusError, match="input_shape"):
        W.prune(cnn1d(), 0.5, "synflow")


def test_synflow_single_round_score_equals_path_formula():
    # For a two-layer linear net with |W| and ones input: R = 1ᵀ|W2||W1|1, so
    # ∂R/∂W1[j,i] = Σ_k |W2[k,j]| and score1 = |W1| ⊙ (colsum|W2|)ᵀ 1ᵀ
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    scores = W.score(net, W.prunable_weights(net), "synflow", input_shape=(4,))
    w1, w2 = net[0].weight.detach().abs(), net[1].weight.detach().abs()
    expected1 = w1 * w2.sum(0)[:, None]
    expected2 = w2 * (w1 @ torch.ones(4))[None, :]
    assert torch.allclose(scores["0.weight"], expected1, rtol=1e-6)
    assert torch.allclose(scores["1.weight"], expected2, rtol=1e-6)


# -- N:M ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds_in_every_group(n, m):
    net = build_model("mlp", (1, 40), 10, seed=0, hidden=(64, 32))
    masks = W.prune(net, 1 - n / m, "magnitude", pattern=f"{n}:{m}")
    for name, mask in masks.items():
        groups = mask.reshape(mask.shape[0], -1, m)
        assert bool((groups.sum(-1) == n).all()), name
    for t in W.prunable_weights(net):
        assert is_nm(t.module.weight.detach(), n, m)
    # kept entries are the n largest |w| of their group (independent numpy check on one layer)
    w = W.prunable_weights(net)[1].weight.detach().abs().numpy().reshape(32, -1, m)
    kept = masks["3.weight"].numpy().reshape(32, -1, m)
    smallest_kept = np.where(kept, w, np.inf).min(-1)
    largest_dropped = np.where(~kept, w, -np.inf).max(-1)
    assert (smallest_kept >= largest_dropped).all()


def test_nm_skips_layers_not_divisible_and_rejects_bad_input():
    net = cnn1d()  # first conv has 1·5 inputs per row: not a multiple of 4, stays dense
    masks = W.prune(net, 0.5, pattern="2:4")
    assert "1.weight" not in masks and len(masks) == 3
    with pytest.raises(PrunusError, match="pattern"):
        W.prune(cnn1d(), 0.5, pattern="2-4")
    with pytest.raises(PrunusError, match="'2:4' fixes the sparsity at 1 - 2/4 = 0.5.*sparsity 0.75"):
        W.prune(cnn1d(), 0.75, pattern="2:4")
    with pytest.raises(PrunusError, match="multiple of M"):
        nm_mask(torch.rand(3, 5), 2, 4)


def test_nm_refuses_a_contradicting_sparsity_instead_of_replacing_it():
    # 0.9 used to be taken for "the default" and silently became 0.5
    with pytest.raises(PrunusError, match=r"pattern '2:4' fixes the sparsity at .* 0\.5.*sparsity 0\.9"):
        W.prune(cnn1d(), pattern="2:4", sparsity=0.9)
    with pytest.raises(PrunusError, match="sparsity 0.9"):
        W.OneShot(0.9, pattern="2:4")
    # the implied sparsity, given or left out, is fine
    for implied in (None, 0.5):
        net = cnn1d()
        masks = W.prune(net, implied, pattern="2:4")
        assert sum(int((~m).sum()) for m in masks.values()) * 2 == sum(m.numel() for m in masks.values())
    assert W.OneShot(0.75, pattern="1:4").sparsity == 0.75


def test_cli_prune_refuses_pattern_with_contradicting_sparsity(capsys):
    from helpers import invoke

    assert invoke("prune", "--pattern", "2:4", "--sparsity", "0.9") == 2
    err = capsys.readouterr().err
    assert "'2:4'" in err and "0.9" in err and "Traceback" not in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1


# -- masks: optimizers, save/load, remove ------------------------------------------------------


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_masks_survive_optimizer_steps_with_state(make_opt):
    net = cnn1d()
    opt = make_opt(net.parameters())
    x, y = batch(32)
    for _ in range(3):  # dense steps build momentum / Adam moments everywhere
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    masks = W.prune(net, 0.9, "magnitude", optimizer=opt)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for t in W.prunable_weights(net):
        pruned = ~masks[t.name]
        assert bool((t.module.weight[pruned] == 0).all())  # effective weight
        assert bool((t.weight[pruned] == 0).all())  # underlying value: never resurrected
        for value in opt.state[t.weight].values():
            if torch.is_tensor(value) and value.shape == t.weight.shape:
                assert bool((value[pruned] == 0).all())
    W.remove(net)
    assert W.sparsity_report(net)[-1]["zeros"] >= int(0.9 * 31296)


def test_save_load_roundtrip(tmp_path):
    net = cnn1d()
    masks = W.prune(net, 0.8, "magnitude")
    path = W.save(net, tmp_path / "model.safetensors", metadata={"method": "magnitude"})
    assert not list(tmp_path.glob(".*tmp"))
    fresh = cnn1d(seed=5)
    W.load(fresh, path)
    restored = W.masks_of(fresh)
    assert set(restored) == set(masks) and all(torch.equal(restored[k], masks[k]) for k in masks)
    net.eval(), fresh.eval()
    x, _ = batch()
    assert torch.equal(net(x), fresh(x))
    with pytest.raises(PrunusError, match="does not match"):
        W.load(build_model("mlp", (1, 40), 10), path)
    with pytest.raises(PrunusError, match="existing safetensors"):
        W.load(fresh, tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(PrunusError, match="safetensors"):
        W.load(fresh, tmp_path / "bad.safetensors")


def test_scoring_leaves_the_model_untouched():
    net = cnn1d()
    W.prune(net, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    W.prune(net, 0.7, "synflow", input_shape=(1, 40), iterations=3)
    W.prune(net, 0.8, "snip", data=batch())
    assert hasattr(net[1], "weight")  # parametrized class intact after copies were unmasked
    for k, v in net.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(v, before[k]), k  # scoring ran on a copy


def test_bad_input_is_one_sentence():
    with pytest.raises(PrunusError, match="method must be one of"):
        W.prune(cnn1d(), 0.5, "magnitudes")
    with pytest.raises(PrunusError, match=r"sparsity must be in \[0, 1\)"):
        W.prune(cnn1d(), 1.0)
    with pytest.raises(PrunusError, match="scope must be one of"):
        W.prune(cnn1d(), 0.5, scope="net")
    with pytest.raises(PrunusError, match="needs data"):
        W.prune(cnn1d(), 0.5, "snip")
    with pytest.raises(PrunusError, match="layers must name"):
        W.prune(cnn1d(), 0.5, layers=["nope"])
    with pytest.raises(PrunusError, match="weight method must be one of"):
        W.get_sparsifier("lottery", sparsity=0.5)
    with pytest.raises(PrunusError, match="setting 'evry' is not known"):
        W.get_sparsifier("rigl", sparsity=0.5, evry=3)
    with pytest.raises(PrunusError, match="sparsity for method 'nm'"):
        W.get_sparsifier("nm", sparsity=0.9)


def test_readme_weights_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "W.prune_channels" in b]
    if not blocks:
        pytest.skip("README.md has no weight-sparsity example yet")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "cnn-sparse.safetensors").exists()
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(namespace["small"]) < 0.5 * count(namespace["dense"])
    assert sum(int((~m).sum()) for m in namespace["masks"].values()) == int(0.9 * 28960)
    assert W.sparsity_report(namespace["other"])[-1]["pruned"] == int(0.95 * 28960)
