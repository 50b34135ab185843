"""Static data scores, score tables and the score/select CLI, each checked against an
independent computation (per-example autograd loops, numpy formulas, hand-made trajectories)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import invoke
from scipy.stats import spearmanr
from torch import nn

from prunus.data import SCORE_METHODS, ScoreTable, score, select
from prunus.data.scores import (
    AreaUnderMargin,
    DynamicUncertainty,
    ForgettingEvents,
    area_under_margin,
    dynamic_uncertainty,
    el2n_scores,
    forgetting_counts,
    grand_scores,
    kcenter_greedy,
    loss_scores,
    per_example_grad_norms,
    prototype_scores,
    uncertainty_scores,
)
from prunus.data.scoring import METHODS
from prunus.datasets import Dataset, load
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.train import Batch

TINY_MLP = {"hidden": [32]}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    full = load("digits")
    return full.subset(full.ids[:400])


def loop_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params=None) -> torch.Tensor:
    """The reference: one autograd backward per example, in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    norms = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norms.append(torch.sqrt(sum(g.double().square().sum() for g in grads)))
    return torch.stack(norms)


def warm_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Give batch-norm layers non-trivial running statistics and affine parameters."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.3 * torch.randn_like(x))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


class Mixed(nn.Module):
    """Linear, Conv1d (dilated; strided), BatchNorm, in-place ReLU, a Linear on a
    sequence, a LayerNorm (hooked too), a layer called twice and a Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm1d(6)
        self.conv2 = nn.Conv1d(6, 5, 3, stride=2, padding=1)
        self.token = nn.Linear(5, 4)
        self.norm = nn.LayerNorm(4)
        self.shared = nn.Linear(4, 4)
        self.conv2d = nn.Conv2d(1, 2, 2)
        self.head = nn.Linear(4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.bn(self.conv(x)))
        h = self.conv2(h).transpose(1, 2)
        h = self.norm(self.token(h))
        h = self.shared(torch.tanh(self.shared(h)))
        side = self.conv2d(x.unsqueeze(1)).mean((1, 2, 3)).unsqueeze(1)
        return self.head(h.flatten(1)) + side


# -- GraNd ---------------------------------------------------------------------------------------


def test_grand_matches_per_example_autograd_on_mixed_layers():
    torch.manual_seed(0)
    model = Mixed().double()
    x = torch.randn(10, 2, 12, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    warm_batchnorm(model, x)
    model.train()
    got = per_example_grad_norms(model, x, y)
    assert model.training, "the model's mode must be restored"
    want = loop_grad_norms(model, x, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("name", "shape"), [("mlp", (1, 8, 8)), ("cnn1d", (1, 40)), ("cnn", (1, 8, 8))]
)
def test_grand_matches_loop_on_registered_models(name, shape):
    torch.manual_seed(1)
    model = build_model(name, shape, 10, seed=0).double()
    x = torch.randn(12, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (12,))
    warm_batchnorm(model, x)
    torch.testing.assert_close(per_example_grad_norms(model, x, y), loop_grad_norms(model, x, y), rtol=1e-9, atol=0)


def test_grand_streams_a_dataset_in_float32(digits):
    model = build_model("cnn", digits.input_shape, 10, seed=0)
    warm_batchnorm(model, torch.from_numpy(digits.x[:64]))
    got = grand_scores(model, digits.subset(digits.ids[:20]), batch_size=8)
    x, y = torch.from_numpy(digits.x[:20]), torch.from_numpy(digits.y[:20])
    np.testing.assert_allclose(got, loop_grad_norms(model, x, y).numpy(), rtol=1e-4)


def test_grand_last_layer_is_the_head_gradient_norm_only():
    torch.manual_seed(2)
    model = build_model("cnn1d", (1, 40), 10, seed=0).double()
    x = torch.randn(6, 1, 40, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    head = model[-1]
    want = loop_grad_norms(model, x, y, params=[head.weight, head.bias])
    torch.testing.assert_close(per_example_grad_norms(model, x, y, last_layer=True), want, rtol=1e-10, atol=0)


def test_grand_with_tied_weights_and_frozen_layers():
    torch.manual_seed(3)
    first, second = nn.Linear(5, 5), nn.Linear(5, 5)
    second.weight = first.weight  # tied
    frozen = nn.Linear(5, 3)
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), frozen).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    torch.testing.assert_close(per_example_grad_norms(model, x, y), loop_grad_norms(model, x, y), rtol=1e-10, atol=0)


class Tokens(nn.Module):
    """Embedding of integer tokens (torch.func fallback), a parameter owned by the root module
    (fallback on the whole module) and a Linear applied to every position (ghost norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.position = nn.Parameter(torch.randn(5, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(x) + self.position)).mean(1))


def test_grand_fallback_for_embeddings_and_loose_parameters():
    torch.manual_seed(4)
    model = Tokens().double()
    x = torch.randint(0, 20, (7, 5))
    y = torch.randint(0, 3, (7,))
    got = per_example_grad_norms(model, x, y)
    assert not got.requires_grad
    torch.testing.assert_close(got, loop_grad_norms(model, x, y), rtol=1e-10, atol=0)


class TiedOutput(nn.Module):
    """Input embedding reused functionally as the output projection (tied embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mix = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.mix(self.embed(x))).mean(1), self.embed.weight)


def test_grand_detects_parameters_used_outside_their_layer(monkeypatch):
    from prunus.data.scores import grand

    calls = []
    whole_model = grand._vmap_norms
    monkeypatch.setattr(grand, "_vmap_norms", lambda *a: calls.append(1) or whole_model(*a))
    torch.manual_seed(5)
    model = TiedOutput().double()
    x, y = torch.randint(0, 10, (6, 3)), torch.randint(0, 10, (6,))
    torch.testing.assert_close(per_example_grad_norms(model, x, y), loop_grad_norms(model, x, y), rtol=1e-10, atol=0)
    assert calls, "the functional reuse must send the model to whole-model per-sample gradients"
    calls.clear()
    per_example_grad_norms(Mixed(), torch.randn(4, 2, 12), torch.randint(0, 3, (4,)))
    per_example_grad_norms(build_model("resnet_tiny", (1, 40), 10), torch.randn(4, 1, 40), torch.randint(0, 10, (4,)))
    assert not calls, "ordinary models must stay on the per-layer path"


def test_grand_refuses_batchnorm_without_running_statistics():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    with pytest.raises(PrunusError, match="running statistics"):
        per_example_grad_norms(model, torch.randn(5, 4), torch.randint(0, 2, (5,)))


# -- output scores -----------------------------------------------------------------------------


def test_loss_el2n_and_uncertainty_match_numpy_formulas():
    x = np.array([[1.0, 0.0], [0.5, -1.0], [-2.0, 0.3], [0.0, 0.0]], dtype=np.float32)
    y = np.array([0, 2, 1, 1])
    data = Dataset("hand", np.arange(4), x.reshape(4, 1, 2), y, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    weight = np.array([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.25]])
    bias = np.array([0.1, -0.2, 0.3])
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight))
        model[1].bias.copy_(torch.from_numpy(bias))
    logits = x.astype(np.float64) @ weight.T + bias
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    top = np.sort(p, axis=1)
    np.testing.assert_allclose(loss_scores(model, data), -np.log(p[np.arange(4), y]), rtol=1e-5)
    np.testing.assert_allclose(el2n_scores(model, data), np.sqrt(((p - onehot) ** 2).sum(1)), rtol=1e-5)
    np.testing.assert_allclose(uncertainty_scores(model, data), -(p * np.log(p)).sum(1), rtol=1e-5)
    np.testing.assert_allclose(uncertainty_scores(model, data, "least_confidence"), 1 - top[:, -1], rtol=1e-5)
    np.testing.assert_allclose(uncertainty_scores(model, data, "margin"), top[:, -1] - top[:, -2], rtol=1e-5)
    with pytest.raises(PrunusError, match="kind must be one of"):
        uncertainty_scores(model, data, "variance")


# -- trajectories ------------------------------------------------------------------------------

CORRECT = np.array(  # [presentation, example]
    [
        [1, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [1, 0, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [1, 0, 1, 0, 1],
    ],
    dtype=bool,
)
# example 0: 1→0 twice; 1: never learned → 5 presentations; 2: never forgotten;
# 3: learned then forgotten once; 4: learned at the last presentation.
FORGETTING = [2.0, 5.0, 0.0, 1.0, 0.0]


def fake_state(train: Dataset, ids, logits, labels) -> SimpleNamespace:
    ids = torch.as_tensor(ids)
    batch = Batch(ids, torch.zeros(len(ids), 1), torch.as_tensor(labels))
    return SimpleNamespace(train=train, batch=batch, outputs=torch.as_tensor(logits, dtype=torch.float32),
                           positions=train.positions)


def run_recorder(recorder, train: Dataset, logits_per_step: np.ndarray, batches) -> np.ndarray:
    """Feed ``logits_per_step[t]`` (all examples) to the recorder in the given id batches."""
    recorder.on_fit_start(SimpleNamespace(train=train))
    for step_logits in logits_per_step:
        for ids in batches:
            rows = train.positions(np.asarray(ids))
            recorder.on_after_forward(fake_state(train, ids, step_logits[rows], train.y[rows]))
    return recorder.scores()


def test_forgetting_counts_on_a_hand_made_trajectory():
    np.testing.assert_array_equal(forgetting_counts(CORRECT), FORGETTING)
    labels = np.zeros(5, dtype=np.int64)
    train = Dataset("t", np.array([10, 11, 12, 13, 14]), np.zeros((5, 1), np.float32), labels, 2)
    logits = np.where(CORRECT[..., None], [[2.0, 0.0]], [[0.0, 2.0]])  # argmax 0 = correct
    got = run_recorder(ForgettingEvents(), train, logits, batches=[[12, 10], [14, 11, 13]])
    np.testing.assert_array_equal(got, FORGETTING)


def test_area_under_margin_on_hand_made_logits():
    logits = np.array(
        [
            [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]],  # margins: 1, 3
            [[0.5, 1.5, 0.0], [1.0, 0.0, 2.0]],  # margins: -1, 1
        ]
    )
    labels = np.array([0, 2])
    np.testing.assert_allclose(area_under_margin(logits, labels), [0.0, 2.0])
    train = Dataset("t", np.array([0, 1]), np.zeros((2, 1), np.float32), labels, 3)
    got = run_recorder(AreaUnderMargin(), train, logits, batches=[[1], [0]])
    np.testing.assert_allclose(got, [0.0, 2.0], rtol=1e-6)


def test_dynamic_uncertainty_on_hand_made_probabilities():
    p_true = np.array([[0.2, 0.5], [0.4, 0.5], [0.8, 0.9]])
    # windows of two: sample std of (a, b) is |a − b| / √2.
    want = [(0.2 + 0.4) / np.sqrt(2) / 2, (0.0 + 0.4) / np.sqrt(2) / 2]
    np.testing.assert_allclose(dynamic_uncertainty(p_true, window=2), want)
    np.testing.assert_allclose(dynamic_uncertainty(p_true, window=5), np.std(p_true, axis=0, ddof=1))
    train = Dataset("t", np.array([0, 1]), np.zeros((2, 1), np.float32), np.array([0, 0]), 2)
    logits = np.stack([np.log(p_true), np.log(1 - p_true)], axis=2)  # softmax gives p_true back
    got = run_recorder(DynamicUncertainty(window=2), train, logits, batches=[[0, 1]])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(PrunusError, match="window"):
        DynamicUncertainty(window=1)


# -- embeddings ----------------------------------------------------------------------------------


def test_prototype_distances_match_scikit_learn_kmeans():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(size=(30, 2)) for c in centres])
    got = prototype_scores(points, k=3, normalize=False)
    reference = KMeans(3, n_init=10, random_state=0).fit(points)
    want = np.linalg.norm(points - reference.cluster_centers_[reference.labels_], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_kcenter_greedy_matches_a_brute_force_loop():
    points = np.random.default_rng(1).normal(size=(40, 3))
    order = kcenter_greedy(points, seed=4)
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    picked = [order[0]]
    for _ in range(len(points) - 1):
        nearest = distances[:, picked].min(axis=1)
        nearest[picked] = -1
        picked.append(int(np.argmax(nearest)))
    np.testing.assert_array_equal(order, picked)


# -- score(): proxy runs, seeds, cost, determinism ------------------------------------------------


def test_score_methods_are_all_described():
    assert set(SCORE_METHODS) == set(METHODS)


def test_score_at_initialisation_equals_the_functional_form(digits):
    table = score(digits, "mlp", "loss", epochs=0, seeds=[3], model_options=TINY_MLP, device="cpu")
    model = build_model("mlp", digits.input_shape, 10, seed=3, **TINY_MLP)
    np.testing.assert_allclose(table.scores(), loss_scores(model, digits))
    assert table.metadata["epochs"] == 0 and table.metadata["cost"]["flops"] > 0


def test_score_averages_seeds_and_is_deterministic(digits):
    both = score(digits, "mlp", "el2n", epochs=1, seeds=[0, 1], model_options=TINY_MLP, device="cpu")
    one = score(digits, "mlp", "el2n", epochs=1, seeds=[1], model_options=TINY_MLP, device="cpu")
    np.testing.assert_array_equal(both.columns["el2n_seed1"], one.scores())
    np.testing.assert_allclose(both.scores(), (both.columns["el2n_seed0"] + both.columns["el2n_seed1"]) / 2)
    meta = both.metadata
    assert meta["seeds"] == [0, 1] and meta["epochs"] == 1 and meta["full_epochs"] == 10
    assert meta["dataset"]["fingerprint"] == digits.fingerprint
    assert meta["cost"]["seconds"] > 0 and meta["cost"]["flops"] > 0
    np.testing.assert_array_equal(both.ids, digits.ids)


def test_score_records_trajectories_during_proxy_training(digits):
    forgetting = score(digits, "mlp", "forgetting", epochs=2, model_options=TINY_MLP, device="cpu")
    values = forgetting.scores()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 2
    with pytest.raises(PrunusError, match="epochs must be at least 2"):
        score(digits, "mlp", "dynamic_uncertainty", epochs=1)


def test_score_rejects_bad_input(digits):
    with pytest.raises(PrunusError, match="method must be one of"):
        score(digits, method="el3n")
    with pytest.raises(PrunusError, match="seeds"):
        score(digits, seeds=[])
    with pytest.raises(PrunusError, match="proxy_fraction"):
        score(digits, proxy_fraction=0.0)
    with pytest.raises(PrunusError, match="train.lr"):
        score(digits, "mlp", lr=-1.0)


# -- score tables ----------------------------------------------------------------------------------


def small_table(fingerprint="abc") -> ScoreTable:
    return ScoreTable(
        ids=np.array([5, 3, 9, 1]),
        labels=np.array([0, 1, 0, 1]),
        columns={"aum": np.array([0.5, -1.0, 2.0, 0.1])},
        metadata={"method": "aum", "directions": {"aum": "lower_is_harder"},
                  "dataset": {"name": "toy", "fingerprint": fingerprint, "num_classes": 2},
                  "cost": {"seconds": 1.5, "flops": 2e9}},
    )


def test_parquet_round_trip_keeps_scores_and_metadata(tmp_path):
    table = small_table()
    path = table.write(tmp_path / "scores" / "aum.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["aum.parquet"]  # no temp file left
    back = ScoreTable.read(path)
    np.testing.assert_array_equal(back.ids, table.ids)
    np.testing.assert_array_equal(back.scores(), table.scores())
    assert back.metadata == table.metadata
    assert back.direction() == "lower_is_harder"
    np.testing.assert_array_equal(back.hardness(), -table.scores())
    frame = back.to_pandas()
    assert list(frame.columns) == ["id", "label", "aum"]
    joined = back.join(pd.DataFrame({"id": [1, 2, 9], "text": ["a", "b", "c"]}))
    np.testing.assert_allclose(joined["aum"].to_numpy(), [0.1, np.nan, 2.0])
    with pytest.raises(PrunusError, match="not a prunus score table"):
        frame.to_parquet(tmp_path / "plain.parquet")
        ScoreTable.read(tmp_path / "plain.parquet")
    with pytest.raises(PrunusError, match=r"\.parquet"):
        table.write(tmp_path / "aum.csv")


def test_join_to_a_hugging_face_dataset_on_id():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"id": [9, 4, 5], "text": ["a", "b", "c"]})
    joined = small_table().join(hf)
    np.testing.assert_allclose(joined["aum"], [2.0, np.nan, 0.5])
    assert joined["text"] == ["a", "b", "c"]


def test_rank_correlation_over_common_ids():
    a = small_table()
    b = ScoreTable(np.array([1, 9, 3, 7]), np.array([1, 0, 1, 0]), {"x": np.array([4.0, 1.0, 2.0, 0.0])})
    common = [1, 3, 9]
    want = spearmanr([0.1, -1.0, 2.0], [4.0, 2.0, 1.0]).statistic
    assert a.rank_correlation(b) == pytest.approx(want)
    assert set(np.intersect1d(a.ids, b.ids)) == set(common)


def test_wrong_fingerprint_is_a_clear_error(digits):
    table = score(digits, "mlp", "loss", epochs=0, model_options=TINY_MLP, device="cpu")
    other = load("digits")
    for action in (lambda: table.check(other), lambda: table.aligned(other),
                   lambda: select(table, 0.5, dataset=other)):
        with pytest.raises(PrunusError, match="fingerprint"):
            action()
    np.testing.assert_array_equal(table.aligned(digits), table.scores())


# -- CLI -----------------------------------------------------------------------------------------


def run_cli(args: list[str]) -> int:
    return invoke(*map(str, args)) or 0


def test_cli_score_select_compare(tmp_path, capsys):
    el2n = tmp_path / "el2n.parquet"
    common = ["--dataset", "digits", "--model", "mlp", "-m", "hidden=[16]", "--epochs", "1", "--device", "cpu"]
    assert run_cli(["score", *common, "--method", "el2n", "--out", el2n]) == 0
    assert "el2n scores" in capsys.readouterr().out
    table = ScoreTable.read(el2n)
    assert table.metadata["method"] == "el2n" and len(table) == len(load("digits"))
    loss = tmp_path / "loss.parquet"
    assert run_cli(["score", *common, "--method", "loss", "--epochs", "0", "--out", loss, "--json"]) == 0
    keep = tmp_path / "keep.parquet"
    assert run_cli(["select", el2n, "--keep", "0.5", "--policy", "ccs", "--out", keep]) == 0
    kept = pd.read_parquet(keep)
    assert len(kept) == len(table) // 2
    np.testing.assert_array_equal(kept["id"], select(table, 0.5, "ccs"))
    assert run_cli(["scores", "compare", el2n, loss, "--keep", "0.2"]) == 0
    assert "Spearman" in capsys.readouterr().out
    assert run_cli(["scores", "show", el2n]) == 0

    assert run_cli(["select", el2n, "--keep", "1.5"]) == 2
    assert run_cli(["select", el2n, "--keep", "0.5", "--policy", "middle"]) == 2
    assert run_cli(["select", el2n, "--keep", "0.5", "--dataset", "digits", "-o", "seed=1"]) == 2
    assert run_cli(["score", "--method", "el3n", "--out", tmp_path / "x.parquet"]) == 2
    assert run_cli(["select", tmp_path / "missing.parquet", "--keep", "0.5"]) == 2
    assert "policy must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_grand_leaves_no_reference_cycles_behind():
    """Each batch's autograd graph must be freed at once, not when the garbage collector runs
    (a cycle through the gradient hooks once kept every batch alive: memory grew per batch)."""
    import gc

    from prunus.data.scores.grand import per_example_grad_norms
    from prunus.models import build_model

    model = build_model("cnn1d", (1, 40), 10, seed=0)
    x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
    per_example_grad_norms(model, x, y)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            per_example_grad_norms(model, x, y)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
