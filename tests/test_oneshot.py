"""One-shot pruning of pretrained transformers (prunus.weights.oneshot): every method against an
independent computation on 2-block tiny GPT-2 / Llama / BERT models built from a config."""

import copy
import json
import math
import warnings

import pytest
import torch
from helpers import invoke
from torch import nn

from prunus.counts import fraction_count
from prunus.errors import PrunusError
from prunus.weights import load, masks_of, oneshot, remove, save, sparsity_report
from prunus.weights.pretrained import (
    block_layers,
    capture_inputs,
    find_blocks,
    is_conv1d,
    layer_statistics,
    owl_sparsities,
    reconstruction_error,
    sparsegpt_prune,
)

transformers = pytest.importorskip("transformers")

VOCAB = 300
LENGTH = 24


def tiny(kind: str, **options) -> nn.Module:
    """A seeded 2-block model: gpt (GPT-2, Conv1D weights), llama, or bert (an encoder)."""
    if kind == "bert":
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64,
                                         max_position_embeddings=64)
        return transformers.BertModel(config).eval()
    from prunus.text.lm import build_lm

    return build_lm(f"{kind}_tiny", vocab_size=VOCAB, context_length=64, seed=0, **options)


def calibration(kind: str, batches: int = 2, size: int = 4, seed: int = 0) -> list:
    """Token-id batches; for bert dict batches whose last rows are padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ids = torch.randint(2, VOCAB, (size, LENGTH), generator=g)
        if kind != "bert":
            out.append(ids)
            continue
        mask = torch.ones_like(ids)
        mask[-1, LENGTH // 2:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def matrix_of(model: nn.Module, name: str, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """A weight (or a mask) of module ``name`` in (out, in) layout (Conv1D is transposed)."""
    module = dict(model.named_modules())[name]
    value = module.weight.detach() if tensor is None else tensor
    return value.t() if is_conv1d(module) else value


def input_norms(model: nn.Module, batches: list, names: list[str]) -> dict[str, torch.Tensor]:
    """Σ x_j² over real tokens of every named layer's inputs, from plain full-model forwards
    (no block-by-block machinery)."""
    sums: dict[str, torch.Tensor] = {}
    current = {}
    modules = dict(model.named_modules())

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0]
            if current.get("mask") is not None:
                x = x[current["mask"]]
            x = x.reshape(-1, x.shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x ** 2).sum(0)
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, dict):
                current["mask"] = batch["attention_mask"].bool()
                model(**batch)
            else:
                current["mask"] = None
                model(batch, use_cache=False)
    for h in handles:
        h.remove()
    return sums


def wanda_by_hand(weight: torch.Tensor, norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask: in each row prune the int(s·in) lowest |W_ij|·‖X_j‖₂."""
    scores = weight.double().abs() * norms.sqrt()
    k = int(sparsity * weight.shape[1])
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return keep


# --------------------------------------------------------------------------- Wanda


@pytest.mark.parametrize("kind", ["gpt", "llama", "bert"])
def test_wanda_masks_equal_a_by_hand_computation_block_by_block(kind):
    model = tiny(kind)
    dense = copy.deepcopy(model)
    batches = calibration(kind)
    result = oneshot(model, batches, sparsity=0.5, method="wanda")
    masks = masks_of(model)
    names, _ = find_blocks(model)
    for index, block in enumerate(names):
        # block l is calibrated on the outputs of the pruned blocks < l: prune the dense copy's
        # earlier blocks with oneshot's masks, then take plain forward statistics
        reference = copy.deepcopy(dense)
        earlier = {k: v for k, v in masks.items() if any(k.startswith(f"{b}.") for b in names[:index])}
        if earlier:
            from prunus.weights import apply

            apply(reference, earlier)
        layers = [lay.name for lay in block_layers(block, dict(reference.named_modules())[block])]
        norms = input_norms(reference, batches, layers)
        for name in layers:
            expected = wanda_by_hand(matrix_of(dense, name), norms[name], 0.5)
            got = matrix_of(model, name, masks[f"{name}.weight"])
            assert torch.equal(got, expected), name
    assert {r.name for r in result.layers} == set(masks)
    assert all(r.sparsity == 0.5 for r in result.layers)
    assert "lm_head.weight" in result.excluded or kind == "bert"
    assert any("embed" in n or "wte" in n for n in result.excluded)


@pytest.mark.parametrize("kind", ["gpt", "llama", "bert"])
def test_sequential_capture_equals_a_plain_forward_for_the_first_block(kind):
    model = tiny(kind)
    batches = calibration(kind)
    names, blocks = find_blocks(model)
    layers = block_layers(names[0], blocks[0])
    with torch.no_grad():
        states = capture_inputs(model, blocks[0], batches)
        grams = layer_statistics(blocks[0], layers, states)
    norms = input_norms(model, batches, [lay.name for lay in layers])
    real = sum(int(b["attention_mask"].sum()) if isinstance(b, dict) else b.numel() for b in batches)
    for lay in layers:
        gram, count = grams[lay.name]
        assert count == real
        torch.testing.assert_close(torch.diagonal(gram).double(), norms[lay.name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, name", [("llama", "model.layers.0.self_attn.q_proj"),
                                        ("gpt", "transformer.h.0.attn.c_attn"),
                                        ("bert", "encoder.layer.0.attention.self.query")])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reported_error_of_a_first_layer_equals_the_gram_formula(kind, name, method):
    # llama: no bias; gpt: Conv1D with bias; bert: bias and padded rows left out
    model = tiny(kind)
    with torch.no_grad():  # non-zero biases (initialised at zero), so that they count
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    dense = copy.deepcopy(model)
    batches = calibration(kind)
    result = oneshot(model, batches, method=method)
    captured, inputs = [], []
    handle = dict(dense.named_modules())[name].register_forward_hook(
        lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        for b in batches:
            if isinstance(b, dict):
                dense(**b)
                x = captured.pop()[b["attention_mask"].bool()]
            else:
                dense(b, use_cache=False)
                x = captured.pop()
            inputs.append(x.reshape(-1, x.shape[-1]))
    handle.remove()
    x = torch.cat(inputs).double()
    row = next(r for r in result.layers if r.name == f"{name}.weight")
    expected = reconstruction_error(matrix_of(dense, name), matrix_of(model, name), x.t() @ x)
    assert row.error == pytest.approx(expected, rel=1e-4)
    assert all(0 < r.error < 1 for r in result.layers)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_every_reported_error_equals_the_direct_product_on_the_pruned_models_inputs(kind, method):
    # layers with fewer inputs than outputs take the error from their input Gram, the others
    # from a direct product; both must equal ‖WX − ŴX‖/‖WX‖ computed here in float64 on the
    # inputs each layer receives in the pruned model's own forward
    model = tiny(kind)
    dense = copy.deepcopy(model)
    batches = calibration(kind)
    result = oneshot(model, batches, method=method)
    names = [r.name.removesuffix(".weight") for r in result.layers]
    modules = dict(model.named_modules())
    inputs = {name: [] for name in names}
    handles = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: inputs[n].append(i[0].reshape(-1, i[0].shape[-1]).double()))
        for n in names]
    with torch.no_grad():
        for b in batches:
            model(b, use_cache=False)
    for h in handles:
        h.remove()
    shapes = {tuple(matrix_of(dense, n).shape) for n in names}
    assert any(o > i for o, i in shapes) and any(o <= i for o, i in shapes)  # both paths run
    for row, name in zip(result.layers, names):
        x = torch.cat(inputs[name])
        w, new = matrix_of(dense, name).double(), matrix_of(model, name).double()
        expected = float(torch.linalg.norm(x @ (w - new).t()) / torch.linalg.norm(x @ w.t()))
        assert row.error == pytest.approx(expected, rel=1e-4), name


# --------------------------------------------------------------------------- SparseGPT


def obs_by_hand(weight, hessian, sparsity, block, nm=None, dampening=0.01):
    """Slow SparseGPT, column by column in float64: the inverse Hessian of the columns not yet
    processed is inverted afresh for every column (no Cholesky, no lazy updates)."""
    w = weight.double().clone()
    h = hessian.double().clone()
    cols = w.shape[1]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += dampening * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    pruned = torch.zeros_like(w, dtype=torch.bool)

    def inverse_from(j):
        return torch.linalg.inv(h[j:, j:])

    for j in range(cols):
        if nm is None and j % block == 0:
            end = min(j + block, cols)
            saliency = torch.stack([w[:, c] ** 2 / inverse_from(c)[0, 0] for c in range(j, end)], 1)
            k = int(sparsity * saliency.numel())
            flat = torch.zeros(saliency.numel(), dtype=torch.bool)
            flat[torch.topk(saliency.reshape(-1), k, largest=False).indices] = True
            pruned[:, j:end] = flat.reshape(saliency.shape)
        if nm is not None and j % nm[1] == 0:
            saliency = torch.stack([w[:, c] ** 2 / inverse_from(c)[0, 0] for c in range(j, j + nm[1])], 1)
            low = torch.topk(saliency, nm[1] - nm[0], dim=1, largest=False).indices
            pruned[:, j:j + nm[1]].scatter_(1, low, True)
        inv = inverse_from(j)
        q = torch.where(pruned[:, j], 0.0, w[:, j])
        # OBS: remove (w_j − q_j) and move the others by −(w_j − q_j)/[H_F⁻¹]_jj · [H_F⁻¹]_j,F
        w[:, j:] -= ((w[:, j] - q) / inv[0, 0]).unsqueeze(1) * inv[0].unsqueeze(0)
        w[:, j] = q
    return w, ~pruned


def layer_problem(seed=0, rows=12, cols=32, tokens=120):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    x = mixing @ torch.randn(cols, tokens, generator=g)  # correlated inputs
    x[5] = 0.0  # a dead input
    weight = torch.randn(rows, cols, generator=g)
    return weight, x


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_equals_slow_obs_and_beats_magnitude(nm):
    weight, x = layer_problem()
    hessian = 2 * x @ x.t() / x.shape[1]
    new, keep = sparsegpt_prune(weight, hessian, 0.5, nm=nm, block_size=8)
    expected, expected_keep = obs_by_hand(weight, hessian, 0.5, block=8, nm=nm)
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(new.double(), expected, rtol=0, atol=1e-5)
    assert int((~keep).sum()) == weight.numel() // 2
    assert torch.all(new[~keep] == 0)
    magnitude = torch.zeros_like(weight)
    if nm is None:
        top = torch.topk(weight.abs(), weight.shape[1] // 2, dim=1).indices
    else:
        groups = weight.abs().reshape(weight.shape[0], -1, 4)
        top = (torch.topk(groups, 2, dim=2).indices + 4 * torch.arange(groups.shape[1]).view(1, -1, 1))
        top = top.reshape(weight.shape[0], -1)
    magnitude.scatter_(1, top, weight.gather(1, top))
    gram = x @ x.t()
    assert reconstruction_error(weight, new, gram) < reconstruction_error(weight, magnitude, gram)


def test_sparsegpt_retries_a_singular_hessian_with_more_dampening():
    weight, x = layer_problem()
    hessian = 2 * x @ x.t() / x.shape[1]
    hessian[0, 1] = hessian[1, 0] = 20.0  # indefinite at the default dampening
    with pytest.warns(UserWarning, match="dampening"):
        new, _ = sparsegpt_prune(weight, hessian, 0.5)
    assert torch.isfinite(new).all()


# --------------------------------------------------------------------------- patterns, exactness


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "random"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_holds_in_every_group(method, pattern):
    n, m = map(int, pattern.split(":"))
    model = tiny("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = oneshot(model, calibration("llama"), method=method, pattern=pattern)
    assert bool(caught) == (m == 8)
    for name, mask in masks_of(model).items():
        groups = mask.reshape(mask.shape[0], -1, m)
        assert torch.all(groups.sum(-1) == n), name
        weight = dict(model.named_modules())[name.removesuffix(".weight")].weight
        assert torch.all((weight != 0).reshape(mask.shape[0], -1, m).sum(-1) <= n)
    # llama_tiny's down_proj has 172 inputs: a multiple of 4, not of 8
    assert bool(result.skipped) == (m == 8)
    assert all(s.endswith("down_proj.weight") for s in result.skipped)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "random"])
def test_exact_share_zero_in_every_matrix(method):
    model = tiny("gpt")
    oneshot(model, calibration("gpt"), sparsity=0.3, method=method, block_size=16)
    for row in sparsity_report(model)[:-1]:
        assert row["pruned"] == fraction_count(0.3, row["params"]), row["layer"]
        assert row["zeros"] >= row["pruned"]


def test_global_magnitude_is_exact_in_total_and_keeps_the_largest():
    model = tiny("gpt")
    dense = copy.deepcopy(model)
    oneshot(model, calibration("gpt"), sparsity=0.6, method="magnitude", scope="global")
    masks = masks_of(model)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == fraction_count(0.6, total)
    kept = torch.cat([dict(dense.named_modules())[k[:-7]].weight.detach()[m].abs() for k, m in masks.items()])
    dropped = torch.cat([dict(dense.named_modules())[k[:-7]].weight.detach()[~m].abs() for k, m in masks.items()])
    assert kept.min() >= dropped.max()


def test_random_is_seeded():
    a, b = tiny("gpt"), tiny("gpt")
    oneshot(a, calibration("gpt"), method="random", seed=3)
    oneshot(b, calibration("gpt"), method="random", seed=3)
    assert all(torch.equal(m, masks_of(b)[k]) for k, m in masks_of(a).items())


# --------------------------------------------------------------------------- OWL


def test_owl_sparsities_by_hand():
    got = owl_sparsities([0.01, 0.03, 0.02, 0.05], 0.7, 0.08)
    # normalised to [0, 2λ] = [0, 0.16]: 0, 0.08, 0.04, 0.16 (mean 0.07)
    expected = [0.7 + 0.07, 0.7 - 0.01, 0.7 + 0.03, 0.7 - 0.09]
    assert got == pytest.approx(expected, abs=1e-12)
    assert sum(got) / 4 == pytest.approx(0.7, abs=1e-12)
    assert owl_sparsities([0.1, 0.1], 0.5) == [0.5, 0.5]
    with pytest.raises(PrunusError, match="owl_lambda"):
        owl_sparsities([0.0, 1.0], 0.95, 0.08)


def test_owl_averages_to_the_requested_sparsity():
    model = tiny("gpt", n_layer=4)
    result = oneshot(model, calibration("gpt"), sparsity=0.7, method="wanda", layer_sparsity="owl")
    assert len(result.block_sparsities) == 4
    assert sum(result.block_sparsities) / 4 == pytest.approx(0.7, abs=1e-12)
    assert max(result.block_sparsities) - min(result.block_sparsities) == pytest.approx(0.16)
    # denser where the outliers are
    ratios = result.outlier_ratios
    assert result.block_sparsities[ratios.index(max(ratios))] == min(result.block_sparsities)
    assert result.achieved_sparsity == pytest.approx(0.7, abs=1e-3)
    for row in result.layers:
        target = result.block_sparsities[row.block]
        assert row.sparsity * math.prod(row.shape) == fraction_count(target, math.prod(row.shape))


# --------------------------------------------------------------------------- masks and files


def test_masks_survive_save_load_remove(tmp_path):
    model = tiny("gpt")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(9))
    result = oneshot(model, calibration("gpt"), method="sparsegpt", pattern="2:4")
    with torch.no_grad():
        pruned = model(ids).logits
    total = sparsity_report(model)[-1]
    assert total["sparsity"] == 0.5 and result.achieved_sparsity == 0.5
    # SparseGPT moved the kept weights (written into the weights themselves)
    name = result.layers[0].name
    module = dict(model.named_modules())[name[:-7]]
    kept = masks_of(model)[name]
    assert not torch.allclose(module.parametrizations.weight.original[kept], original[name][kept])
    path = save(model, tmp_path / "pruned.safetensors")
    fresh = tiny("gpt")
    load(fresh, path)
    assert all(torch.equal(m, masks_of(fresh)[k]) for k, m in masks_of(model).items())
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, pruned)
    remove(fresh)
    assert not masks_of(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, pruned)
    zeros = sum(int((dict(fresh.named_modules())[r.name[:-7]].weight == 0).sum()) for r in result.layers)
    assert zeros >= total["pruned"]


def test_explicit_blocks_and_bad_input():
    model = tiny("gpt")
    result = oneshot(model, calibration("gpt"), blocks="transformer.h", exclude=["*.c_attn"])
    assert not any("c_attn" in r.name for r in result.layers)
    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(PrunusError, match="no recognisable repeated blocks"):
        oneshot(plain, torch.randn(4, 8))
    with pytest.raises(PrunusError, match="sparsity must be in"):
        oneshot(tiny("gpt"), calibration("gpt"), sparsity=1.0)
    with pytest.raises(PrunusError, match="N < M"):
        oneshot(tiny("gpt"), calibration("gpt"), pattern="4:4")
    with pytest.raises(PrunusError, match="at least one batch"):
        oneshot(tiny("gpt"), [])
    with pytest.raises(PrunusError, match="method must be one of"):
        oneshot(tiny("gpt"), calibration("gpt"), method="obs")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved gpt_tiny with a small BPE tokenizer, and a directory of calibration texts."""
    import numpy as np

    from prunus.text.corpus import TextSplit
    from prunus.text.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("oneshot")
    texts = [f"def function_{i}(value):\n    return value * {i} + {i % 7}\n" * 4 for i in range(60)]
    split = TextSplit(np.arange(len(texts)), texts, ["g"] * len(texts))
    tokenizer = train_tokenizer(split, vocab_size=VOCAB, cache=False)
    tiny("gpt").save_pretrained(root / "gpt")
    tokenizer.save_pretrained(root / "gpt")
    (root / "texts").mkdir()
    for i, text in enumerate(texts):
        (root / "texts" / f"t{i}.py").write_text(text)
    (root / "short").mkdir()
    (root / "short" / "a.txt").write_text("x = 1\n")
    return root


def test_cli_prunes_a_model_directory(model_dir, capsys):
    out = model_dir / "pruned"
    code = invoke("oneshot", str(model_dir / "gpt"), "--method", "sparsegpt", "--pattern", "2:4",
                  "--calibration", str(model_dir / "texts"), "--samples", "8", "--seq-len", "32",
                  "--out", str(out), "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["achieved_sparsity"] == 0.5 and summary["samples"] == 8
    assert len(summary["layers"]) == 8 and "lm_head.weight" in summary["excluded"]
    assert {"config.json", "model.safetensors", "masks.safetensors", "oneshot.json"} <= {p.name for p in out.iterdir()}
    reloaded = dict(transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).named_modules())
    for row in summary["layers"]:
        zeros = int((reloaded[row["name"][:-7]].weight == 0).sum())
        assert zeros >= fraction_count(0.5, math.prod(row["shape"]))
    fresh = tiny("gpt")
    load(fresh, out / "masks.safetensors")
    assert len(masks_of(fresh)) == 8


def test_cli_table(model_dir, capsys):
    code = invoke("oneshot", str(model_dir / "gpt"), "--calibration", str(model_dir / "texts"),
                  "--samples", "4", "--seq-len", "32", "--layer-sparsity", "owl", "--sparsity", "0.6")
    assert code == 0
    out = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_proj.weight" in out and "left dense" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--pattern", "4:4"], "N:M needs 0 < N < M"),
        (["--pattern", "2:4", "--sparsity", "0.7"], "fixes the sparsity"),
        (["--calibration", "SHORT", "--seq-len", "32"], "fewer tokens than one sequence"),
        (["--seq-len", "100"], "--seq-len 100 is longer"),
        (["--block", "transformer.nope"], "blocks must name modules"),
        (["--method", "obs"], "method must be one of"),
        (["--layer-sparsity", "wild"], "layer_sparsity must be one of"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(model_dir, args, message, capsys):
    out = model_dir / "never"
    args = [str(model_dir / "short") if a == "SHORT" else a for a in args]
    if "--calibration" not in args:
        args += ["--calibration", str(model_dir / "texts")]
    if "--seq-len" not in args:
        args += ["--seq-len", "32"]
    code = invoke("oneshot", str(model_dir / "gpt"), "--samples", "4", *args, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_model_directory_that_does_not_load(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "gpt2", ')
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "broken", "is not a Hugging Face model directory"),
                          (tmp_path / "empty", "is not a Hugging Face model directory"),
                          (tmp_path / "missing", "MODEL_DIR must be")):
        assert invoke("oneshot", str(path)) == 2
        assert message in capsys.readouterr().err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "file").write_text("x")
    assert invoke("oneshot", str(tmp_path / "broken"), "--out", str(out)) == 2
    assert "not an empty directory" in capsys.readouterr().err
