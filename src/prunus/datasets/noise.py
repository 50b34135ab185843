"""Label noise with an exact record of which ids were flipped: symmetric, pairwise or
instance-dependent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from prunus.counts import fraction_count
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error

NOISE_KINDS = ("symmetric", "pairs", "instance")
PROXY_MODEL = "mlp"  # instance noise: the proxy whose confusion decides the flips
PROXY_EPOCHS = 5


def add_label_noise(
    dataset: Dataset,
    rate: float,
    seed: int = 0,
    *,
    kind: str = "symmetric",
    pairs: Mapping[int, int] | Sequence[int] | None = None,
    proxy_probs: np.ndarray | None = None,
    proxy_model: Any = PROXY_MODEL,
    proxy_epochs: int = PROXY_EPOCHS,
) -> Dataset:
    """Flip exactly ``⌊rate · N⌋`` training labels (:func:`prunus.counts.fraction_count`).

    ``kind="symmetric"`` (default) moves each chosen label to a uniformly drawn *other* class.
    ``kind="pairs"`` moves it to one fixed confusable class (class-conditional pair noise, as in
    CIFAR-10N-style benchmarks): ``c -> (c + 1) mod C`` by default, or ``pairs[c]`` when a map is
    given (a sequence of C classes or a ``{class: class}`` dict; classes it leaves out are
    mapped to ``(c + 1) mod C``). Both choose the flipped examples uniformly at random.

    ``kind="instance"`` (instance-dependent noise, as in Chen et al. 2021, *Beyond
    Class-Conditional Assumption*): a proxy model's probabilities ``p̂(x)`` (``proxy_probs`` when
    given, else :func:`proxy_confusion_probs`: ``proxy_model`` trained ``proxy_epochs`` epochs
    on the clean labels with seed ``seed``, its softmax averaged over the training passes) give
    each example a confusion ``c(x) = 1 − p̂_y(x)``; the flipped set is a weighted sample
    without replacement with weights ``w = max(c, 1e-6)`` (Efraimidis–Spirakis: the
    ``⌊rate · N⌋`` largest keys ``log(u) / w``, u uniform), so the chance of a flip rises
    with the confusion, and each flipped label moves to the proxy's most probable *other* class
    ``argmax_{k ≠ y} p̂_k(x)``.

    The flipped ids are recorded in ``flipped_ids`` and the original labels in ``clean_y``.
    The test split is never touched. Deterministic given ``seed``.

    Raises:
        PrunusError: if ``rate`` is outside [0, 1), ``kind`` is unknown, or ``pairs`` maps a
            class outside [0, C) or onto itself, or ``proxy_probs`` is not (N, C) probabilities.
    """
    if not 0.0 <= rate < 1.0:
        raise PrunusError(f"noise must be a rate in [0, 1) (got {rate!r}).")
    if kind not in NOISE_KINDS:
        raise choice_error("noise kind", kind, NOISE_KINDS)
    if pairs is not None and kind != "pairs":
        raise PrunusError(f"pairs is only used with kind='pairs' (got kind={kind!r}).")
    if proxy_probs is not None and kind != "instance":
        raise PrunusError(f"proxy_probs is only used with kind='instance' (got kind={kind!r}).")
    if kind == "instance":
        return _instance_noise(dataset, rate, seed, proxy_probs, proxy_model, proxy_epochs)
    num_classes = dataset.num_classes
    target = _pair_map(pairs, num_classes) if kind == "pairs" else None
    rng = np.random.default_rng(seed)
    n = len(dataset)
    n_flip = fraction_count(rate, n)
    rows = np.sort(rng.choice(n, size=n_flip, replace=False))
    y = dataset.y.copy()
    if target is None:
        # A shift in [1, C-1] moves each label to a uniformly chosen *different* class.
        shift = rng.integers(1, num_classes, size=n_flip)
        y[rows] = (y[rows] + shift) % num_classes
        options = dict(dataset.options, noise=rate, noise_seed=seed)
    else:
        y[rows] = target[y[rows]]
        options = dict(dataset.options, noise=rate, noise_seed=seed, noise_kind=kind)
        if pairs is not None:
            options["noise_pairs"] = target.tolist()
    return _flipped(dataset, y, rows, options)


def proxy_confusion_probs(
    dataset: Dataset, model: Any = PROXY_MODEL, epochs: int = PROXY_EPOCHS, seed: int = 0
) -> np.ndarray:
    """The proxy probabilities instance-dependent noise is drawn from: ``model`` trained
    ``epochs`` epochs (batch 128, the trainer's defaults otherwise, CPU) on the training split
    as labelled, with ``p̂(x)`` the mean of its softmax over the training forward passes of x
    (the average prediction during training, as in Chen et al. 2021). Deterministic given
    ``seed``. Returns (N, C) float64 rows summing to 1, aligned to the dataset's rows.
    """
    import copy

    import torch
    from torch import nn

    from prunus.models import build_model
    from prunus.train import Trainer
    from prunus.train.events import Callback

    n, num_classes = len(dataset), dataset.num_classes
    total = np.zeros((n, num_classes))
    seen = np.zeros(n)

    class MeanProbs(Callback):
        def on_after_forward(self, state) -> None:
            rows = state.positions(state.batch.ids.cpu().numpy())
            with torch.no_grad():
                p = torch.softmax(state.outputs.detach().double(), dim=1).cpu().numpy()
            np.add.at(total, rows, p)
            np.add.at(seen, rows, 1)

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = build_model(model, dataset.input_shape, num_classes, seed=seed)
    train = replace(dataset, test=None)
    Trainer(net, train, callbacks=[MeanProbs()], epochs=int(epochs), batch_size=128,
            device="cpu", seed=seed).fit()
    return total / np.maximum(seen, 1)[:, None]


def _instance_noise(dataset, rate, seed, proxy_probs, proxy_model, proxy_epochs) -> Dataset:
    n, num_classes = len(dataset), dataset.num_classes
    if proxy_probs is None:
        probs = proxy_confusion_probs(dataset, proxy_model, proxy_epochs, seed)
        proxy = {"noise_proxy": proxy_model if isinstance(proxy_model, str) else type(proxy_model).__name__,
                 "noise_proxy_epochs": int(proxy_epochs)}
    else:
        probs = np.asarray(proxy_probs, dtype=np.float64)
        if probs.shape != (n, num_classes) or not np.isfinite(probs).all() or (probs < 0).any() \
                or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
            raise PrunusError(
                f"proxy_probs must be ({n}, {num_classes}) probabilities, one row per training "
                f"example with each row summing to 1 (got shape {probs.shape})."
            )
        proxy = {"noise_proxy": "given"}
    labels = dataset.y
    confusion = 1.0 - probs[np.arange(n), labels]
    weights = np.maximum(confusion, 1e-6)
    rng = np.random.default_rng(seed)
    keys = np.log(rng.random(n)) / weights  # Efraimidis–Spirakis: the largest keys are kept
    rows = np.sort(np.argsort(-keys, kind="stable")[: fraction_count(rate, n)])
    others = probs.copy()
    others[np.arange(n), labels] = -np.inf
    y = labels.copy()
    y[rows] = others[rows].argmax(axis=1)
    options = dict(dataset.options, noise=rate, noise_seed=seed, noise_kind="instance", **proxy)
    return _flipped(dataset, y, rows, options)


def _flipped(dataset: Dataset, y: np.ndarray, rows: np.ndarray, options: dict) -> Dataset:
    clean = dataset.y if dataset.clean_y is None else dataset.clean_y
    return replace(
        dataset,
        y=y,
        clean_y=clean.copy(),
        flipped_ids=np.sort(dataset.ids[rows]),
        options=options,
        _fingerprint=None,
    )


def _pair_map(pairs: Mapping[int, int] | Sequence[int] | None, num_classes: int) -> np.ndarray:
    """``target[c]``: the class that label ``c`` flips to under pair noise."""
    target = (np.arange(num_classes) + 1) % num_classes
    if pairs is None:
        return target
    items = pairs.items() if isinstance(pairs, Mapping) else enumerate(pairs)
    if not isinstance(pairs, Mapping) and len(pairs) != num_classes:
        raise PrunusError(
            f"pairs must list one target class for each of the {num_classes} classes "
            f"(got {len(pairs)})."
        )
    for source, dest in items:
        if int(source) != source or int(dest) != dest or not (
            0 <= source < num_classes and 0 <= dest < num_classes
        ):
            raise PrunusError(
                f"pairs must map classes in [0, {num_classes - 1}] to classes in "
                f"[0, {num_classes - 1}] (got {source!r} -> {dest!r})."
            )
        if source == dest:
            raise PrunusError(f"pairs must map each class to another class (got {source} -> {dest}).")
        target[int(source)] = int(dest)
    return target
