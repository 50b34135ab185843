"""GraNd is exact or refuses: every norm is checked against an independent per-example autograd
loop (``loss.backward()`` on one example, sqrt of the summed squared ``.grad`` of every trainable
parameter), and the path taken (hooks or whole-model torch.func) is checked too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunus.data.scores import grand
from prunus.data.scores.grand import per_example_grad_norms
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.weights import prune

RTOL = 1e-4


def loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params=None) -> torch.Tensor:
    """The oracle: one backward per example in eval mode, norm of the accumulated ``.grad``."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    norms = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norms.append(
            torch.sqrt(sum(p.grad.double().square().sum() for p in params if p.grad is not None))
        )
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


@pytest.fixture
def scored(monkeypatch):
    """``scored(model, x, y, **kw)`` -> (norms, path), path ``"hooks"`` or ``"torch.func"``."""
    paths = []
    whole_model = grand._vmap_norms
    monkeypatch.setattr(
        grand, "_vmap_norms", lambda *a, **k: paths.append("torch.func") or whole_model(*a, **k)
    )

    def run(model, x, y, **kwargs):
        paths.clear()
        norms = per_example_grad_norms(model, x, y, **kwargs)
        return norms, (paths[0] if paths else "hooks")

    return run


def check(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.double(), want.double(), rtol=RTOL, atol=1e-7)


# -- (1) tied output embedding + a parameter owned by the root module ---------------------------


class TiedLM(nn.Module):
    """Embedding shared with the output layer, plus a root-owned scale (the issue's case)."""

    def __init__(self, functional: bool, vocab: int = 12, dim: int = 6) -> None:
        super().__init__()
        self.functional = functional
        self.embed = nn.Embedding(vocab, dim)
        self.scale = nn.Parameter(torch.randn(dim))
        self.mix = nn.Linear(dim, dim)
        if not functional:
            self.out = nn.Linear(dim, vocab, bias=False)
            self.out.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(x) * self.scale)).mean(1)
        return F.linear(h, self.embed.weight) if self.functional else self.out(h)


@pytest.mark.parametrize("functional", [False, True], ids=["tied-module", "tied-F.linear"])
def test_tied_output_embedding_with_root_parameter(scored, functional):
    torch.manual_seed(0)
    model = TiedLM(functional)
    x, y = torch.randint(0, 12, (8, 4)), torch.randint(0, 12, (8,))
    got, path = scored(model, x, y)
    check(got, loop_norms(model, x, y))
    assert path == "torch.func"


def test_tied_head_with_last_layer_counts_the_shared_weight_once(scored):
    torch.manual_seed(1)
    model = TiedLM(functional=False)
    x, y = torch.randint(0, 12, (6, 4)), torch.randint(0, 12, (6,))
    got, path = scored(model, x, y, last_layer=True)
    check(got, loop_norms(model, x, y, params=[model.out.weight]))
    assert path == "torch.func"


class ReusedLinear(nn.Module):
    """A hook-supported layer whose weight is also used outside its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.head(h + F.linear(h, self.a.weight))


def test_weight_used_outside_its_layer_goes_to_torch_func(scored):
    torch.manual_seed(2)
    model = ReusedLinear()
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    got, path = scored(model, x, y)
    check(got, loop_norms(model, x, y))
    assert path == "torch.func"


# -- (2) models masked with prunus.weights ----------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.95])
@pytest.mark.parametrize(("name", "shape"), [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8))])
def test_masked_models_match_the_loop(scored, name, shape, sparsity):
    torch.manual_seed(3)
    model = build_model(
        name, shape, 10, seed=0, **({"hidden": [16]} if name == "mlp" else {"width": 4})
    )
    prune(model, sparsity)
    x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    got, path = scored(model, x, y)
    want = loop_norms(
        model, x, y
    )  # .grad of parametrizations.weight.original (masked by the chain rule)
    check(got, want)
    assert path == "torch.func"
    model.train()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    got, path = scored(model, x, y, last_layer=True)
    check(got, loop_norms(model, x, y, params=[p for p in head.parameters() if p.requires_grad]))
    assert path == "torch.func"


def test_masked_entries_get_zero_gradient_in_the_reported_norm():
    """The norm is that of ∇_original = ∇_weight ⊙ mask: pruning every weight of the only layer
    leaves just the bias gradient."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 3))
    prune(model, 0.5)
    layer = model[0]
    mask = layer.parametrizations.weight[0].mask
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    g = torch.softmax(model(x), 1) - F.one_hot(y, 3)
    want = ((g[:, :, None] * x[:, None, :] * mask).square().sum((1, 2)) + g.square().sum(1)).sqrt()
    check(per_example_grad_norms(model, x, y), want.detach())


# -- (3) hook-supported layers mixed with unsupported ones --------------------------------------


class Scale(nn.Module):
    """A custom layer with its own parameter (not known to the hooks)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, *([1] * (x.dim() - 2)))


class MixedUnsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.scale = Scale(4)
        self.group = nn.GroupNorm(2, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.group(self.scale(self.conv(x))))).flatten(1))


class WithLayerNorm(nn.Module):
    """Linear on tokens, LayerNorm, a Linear called twice, Conv1d: all supported by the hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3, stride=2, padding=1)
        self.token = nn.Linear(5, 4)
        self.norm = nn.LayerNorm(4)
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.token(self.conv(x).transpose(1, 2)))
        return self.head(self.shared(torch.tanh(self.shared(h))).flatten(1))


def test_unsupported_layer_sends_the_whole_model_to_torch_func(scored):
    torch.manual_seed(5)
    model = MixedUnsupported()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(9, 2, 10), torch.randint(0, 3, (9,))
    model.train()
    got, path = scored(model, x, y)
    assert model.training, "the model's mode must be restored"
    check(got, loop_norms(model, x, y))
    assert path == "torch.func"


def test_layernorm_and_repeated_calls_stay_on_hooks(scored):
    torch.manual_seed(6)
    model = WithLayerNorm()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(9, 2, 10), torch.randint(0, 3, (9,))
    got, path = scored(model, x, y)
    check(got, loop_norms(model, x, y))
    assert path == "hooks"


# -- (4) plain models: the fast path, still exact -------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("mlp", (1, 8, 8), {"hidden": [32, 16]}),
        ("cnn", (1, 8, 8), {"width": 8}),
        ("resnet_tiny", (1, 24), {"width": 4}),
    ],
)
def test_plain_models_take_the_hooks_and_match(scored, name, shape, options):
    torch.manual_seed(7)
    model = build_model(name, shape, 10, seed=0, **options)
    x, y = torch.randn(12, *shape), torch.randint(0, 10, (12,))
    got, path = scored(model, x, y)
    check(got, loop_norms(model, x, y))
    assert path == "hooks"


# -- refusing ---------------------------------------------------------------------------------


class DataDependent(nn.Module):
    """Python control flow on a tensor value: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).mean(1)
        if h.sum() > 0:
            h = -h
        return self.head(h)


def test_refuses_when_neither_path_is_exact():
    model = DataDependent()
    with pytest.raises(PrunusError, match="torch.func.vmap"):
        per_example_grad_norms(model, torch.randint(0, 10, (4, 3)), torch.randint(0, 2, (4,)))


def test_refuses_a_model_without_trainable_parameters():
    model = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(PrunusError, match="trainable"):
        per_example_grad_norms(model, torch.randn(2, 3), torch.randint(0, 2, (2,)))


# -- (5) second oracle: opacus per-sample gradients -------------------------------------------


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_agree_on_a_plain_model():
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
    )
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 4, (10,))
    got = per_example_grad_norms(model, x, y)
    sampled = opacus.GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(sampled(x), y, reduction="sum").backward()
    want = sum(p.grad_sample.flatten(1).double().square().sum(1) for p in model.parameters()).sqrt()
    sampled._close()
    check(got, want)
