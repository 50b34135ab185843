import pytest
import torch

from prunus.errors import PrunusError
from prunus.models import build_model, list_models


@pytest.mark.parametrize(
    "name, shape",
    [
        ("mlp", (1, 40)),
        ("cnn1d", (1, 40)),
        ("cnn1d", (40,)),
        ("cnn", (1, 28, 28)),
        ("cnn", (1, 8, 8)),
        ("resnet_tiny", (1, 40)),
        ("resnet_tiny", (1, 8, 8)),
    ],
)
def test_models_map_inputs_to_logits(name, shape):
    model = build_model(name, shape, 10, seed=0)
    assert model(torch.randn(4, *shape)).shape == (4, 10)


def test_build_is_seeded():
    a = build_model("cnn1d", (1, 40), 10, seed=1)
    b = build_model("cnn1d", (1, 40), 10, seed=1)
    c = build_model("cnn1d", (1, 40), 10, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_factory_path_and_unknown_names():
    model = build_model("prunus.models:mlp", (8,), 3, hidden=(4,))
    assert model(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(PrunusError, match="model must be one of: cnn, cnn1d"):
        build_model("vgg99", (8,), 3)
    with pytest.raises(PrunusError, match="package.module:factory"):
        build_model("nowhere.module:thing", (8,), 3)
    assert set(list_models()) >= {"mlp", "cnn1d", "cnn", "resnet_tiny"}


def test_user_module_is_accepted_unchanged():
    net = torch.nn.Linear(3, 2)
    assert build_model(net, (3,), 2) is net
