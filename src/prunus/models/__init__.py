"""Reference networks and a registry; any user ``nn.Module`` works too.

``build_model("cnn1d", input_shape=(1, 40), num_classes=10, seed=0)`` builds a registered
network with seeded initialisation. A name of the form ``"package.module:factory"`` imports
``factory`` and calls it with ``input_shape`` and ``num_classes`` keywords (plus options).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from prunus.errors import PrunusError, choice_error, one_line, setting_error
from prunus.registry import MODELS

ModelFactory = Callable[..., nn.Module]


def register_model(name: str, description: str | None = None, **defaults):
    """Decorator adding ``factory(input_shape, num_classes, **options) -> nn.Module`` to the
    model registry (``prunus.registry.MODELS``), with a one-line ``description`` (default: the
    first line of its docstring)."""
    return MODELS.register(name, summary=description, **defaults)


def list_models() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    return MODELS.describe()


def build_model(
    name: str | nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int = 0,
    **options,
) -> nn.Module:
    """Build a model by registry name or ``"package.module:factory"``, seeded.

    A ready ``nn.Module`` is returned unchanged (its initialisation is the user's).

    Raises:
        PrunusError: unknown name, unimportable factory, or a model that does not fit the data.
    """
    if isinstance(name, nn.Module):
        return name
    factory = resolve_factory(name)
    allowed = _settings(factory)
    if allowed is not None:
        for key in options:
            if key not in allowed:
                raise setting_error(key, f"model {name!r}", allowed)
    torch.manual_seed(seed)
    try:
        return factory(input_shape=tuple(input_shape), num_classes=num_classes, **options)
    except TypeError as exc:
        raise PrunusError(f"model {name!r} could not be built with options {options}: {exc}.")


def _settings(factory: ModelFactory) -> list[str] | None:
    """The options a model factory takes (its keywords besides the shape and class count), or
    None when it takes any (``**options``) or has no readable signature."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.name not in ("input_shape", "num_classes")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_fit(model: nn.Module, dataset, where: str = "--model") -> None:
    """Refuse a model that does not fit a classification dataset, before any training.

    A dry forward pass of the first two training examples (eval mode, no gradients; the
    model's train/eval mode is restored) must succeed and give one logit per class, shape
    ``(2, num_classes)``. Datasets without inputs ``x`` and classes (retrieval, language
    corpora) are left to their own checks.

    Args:
        model: the built model.
        dataset: the dataset it will train on.
        where: the flag or config field that named the model, at the start of the error.

    Raises:
        PrunusError: the forward pass fails on the dataset's input shape, or the output is not
            one logit per class (the sentence says what was expected and what came).
    """
    if not hasattr(dataset, "num_classes") or not hasattr(dataset, "x"):
        return
    sample = torch.from_numpy(dataset.x[:2])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample.to(device))
    except Exception as exc:  # noqa: BLE001 - any failure means the model does not fit
        raise PrunusError(
            f"{where} does not fit dataset {dataset.name!r}: it fails on inputs of shape "
            f"{tuple(dataset.input_shape)} ({one_line(exc)})."
        ) from None
    finally:
        model.train(training)
    expected = (len(sample), dataset.num_classes)
    got = tuple(getattr(out, "shape", ()))
    if got != expected:
        raise PrunusError(
            f"{where} does not fit dataset {dataset.name!r}: it must output one logit per "
            f"class, shape {expected} for {len(sample)} examples (got shape {got})."
        )


def resolve_factory(name: str) -> ModelFactory:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise PrunusError(
                f"model {name!r} must be 'package.module:factory' importable here ({exc})."
            ) from exc
    if name not in MODELS:
        raise choice_error("model", name, [*MODELS.names(), "package.module:factory"])
    return MODELS.get(name)


def _channels_and_length(input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) == 1:
        return 1, input_shape[0]
    if len(input_shape) == 2:
        return input_shape[0], input_shape[1]
    raise PrunusError(f"cnn1d needs inputs of shape (C, L) or (L,) (got {input_shape}).")


@register_model("mlp", "multilayer perceptron on flattened inputs (hidden=256,256)")
def mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (256, 256)
) -> nn.Module:
    """Flatten, then ``Linear-ReLU`` per hidden width, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class Unsqueeze(nn.Module):
    """Adds a channel dimension to (N, L) inputs; leaves (N, C, L) alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


@register_model("cnn1d", "1-D CNN for sequences such as mnist1d (3 conv layers, width 64)")
def cnn1d(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """Three Conv1d-BN-ReLU blocks (the last two stride 2), global pooling, linear head."""
    channels, length = _channels_and_length(tuple(input_shape))
    return nn.Sequential(
        Unsqueeze(),
        nn.Conv1d(channels, width, 5, padding=2),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * _conv_out(_conv_out(length, 3, 2, 1), 3, 2, 1), num_classes),
    )


def _conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


@register_model("cnn", "small 2-D CNN for 28x28 or 8x8 images (2 conv layers + linear)")
def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """Two Conv2d-BN-ReLU blocks with 2x2 max-pooling (skipped below 8 px), linear head."""
    if len(input_shape) != 3:
        raise PrunusError(f"cnn needs image inputs of shape (C, H, W) (got {input_shape}).")
    channels, height, _width = input_shape
    pool = height >= 16
    layers: list[nn.Module] = [
        nn.Conv2d(channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int, conv: type[nn.Module], norm) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetTiny(nn.Module):
    """A three-stage ResNet (widths w, 2w, 4w; one block each) for 1-D or 2-D inputs."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) == 3:
            conv, norm, pool = nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d
            channels = input_shape[0]
        else:
            conv, norm, pool = nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d
            channels, _ = _channels_and_length(tuple(input_shape))
        self.lift = Unsqueeze()
        self.stem = nn.Sequential(conv(channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(width, width, 1, conv, norm),
            BasicBlock(width, 2 * width, 2, conv, norm),
            BasicBlock(2 * width, 4 * width, 2, conv, norm),
        )
        self.pool = pool(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = self.lift(x)
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(self.pool(out), 1))


@register_model("resnet_tiny", "three-stage ResNet (width 16) for 1-D signals or images")
def resnet_tiny(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """See :class:`ResNetTiny`."""
    return ResNetTiny(tuple(input_shape), num_classes, width=width)


# Causal LMs (gpt_tiny, gpt_small, llama_tiny) register themselves; transformers loads on use.
from prunus.text import lm as _lm  # noqa: F401

__all__ = ["build_model", "check_fit", "list_models", "register_model"]
