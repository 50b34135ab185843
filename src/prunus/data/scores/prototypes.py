"""Scores in an embedding space: distance to the nearest prototype and k-center greedy coverage.

The embedding of an example is what a trained model feeds to its last linear layer (see
:func:`embeddings`); any (N, d) array works, e.g. from a self-supervised or pretrained encoder.
These methods hold the N × d embeddings in memory (the other scores keep O(N) numbers).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from prunus.data.scores.common import Progress, batches
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, require
from prunus.registry import SCORES


@SCORES.register(
    "prototypes", needs="embeddings", options={"k": "clusters"},
    summary="distance to nearest k-means centroid",
)
def prototype_scores(
    embeddings: np.ndarray,
    k: int = 10,
    *,
    seed: int = 0,
    iterations: int = 100,
    normalize: bool = True,
) -> np.ndarray:
    """Distance to the nearest k-means centroid (Sorscher et al. 2022, *Beyond neural scaling
    laws: beating power law scaling via data pruning*).

    Far from every prototype = atypical = hard (higher = harder). The paper keeps the hardest
    examples when data is abundant and the easiest when it is scarce. The centroids are
    scikit-learn's ``KMeans`` (Lloyd, one k-means++ initialisation seeded by ``seed``), O(N·k·d)
    per iteration.

    Args:
        embeddings: (N, d) array.
        k: number of clusters. Default 10 (:func:`prunus.data.score` uses the number of classes).
        seed: seed of the k-means++ initialisation. Default 0.
        iterations: at most this many Lloyd iterations. Default 100.
        normalize: L2-normalise the embeddings first (cosine geometry). Default True.

    Raises:
        PrunusError: ``k`` not in [1, N], or embeddings not a 2-D finite array.
    """
    points = _points(embeddings, normalize)
    if int(k) != k or not 1 <= k <= len(points):
        raise PrunusError(
            f"k (number of prototypes) must be an integer in [1, {len(points)}] (got {k!r})."
        )
    cluster = require("sklearn.cluster", "datasets")
    kmeans = cluster.KMeans(n_clusters=int(k), n_init=1, max_iter=int(iterations), random_state=seed)
    return kmeans.fit(points).transform(points).min(axis=1)


# Distance terms (picks × N × d) the default k-center greedy spends: about 10 s on one CPU core.
KCENTER_BUDGET = 2e10


def kcenter_picks(n: int, d: int) -> int:
    """Default number of exact greedy picks for N examples of width d: all N while
    N·N·d ≤ :data:`KCENTER_BUDGET`, else ``KCENTER_BUDGET / (N·d)`` (at least 1)."""
    return int(min(n, max(1, KCENTER_BUDGET // (n * d))))


def kcenter_greedy(
    embeddings: np.ndarray, *, picks: int | None = None, seed: int = 0, normalize: bool = False
) -> np.ndarray:
    """Order of the k-center greedy picks (Sener & Savarese 2018, *Active Learning for
    Convolutional Neural Networks: A Core-Set Approach*).

    Starting from a seeded random example, repeatedly pick the example farthest from everything
    picked so far (Euclidean): the first ``k`` picks are the greedy k-center solution for every
    ``k`` ≤ ``picks``. The examples left after ``picks`` picks follow, farthest from the picked
    set first (greedy without the updates). Each pick updates every example's distance to the
    picked set once, so the cost is O(N·picks·d) time in float32, O(N) extra memory.

    Args:
        embeddings: (N, d) array.
        picks: exact greedy picks. Default :func:`kcenter_picks` (all N up to N²·d = 2·10¹⁰),
            with a warning when that is fewer than N.
        seed: seed of the first pick. Default 0.
        normalize: L2-normalise the embeddings first. Default False.

    Raises:
        PrunusError: ``picks`` not in [1, N], or embeddings not a 2-D finite array.
    """
    x = torch.from_numpy(_points(embeddings, normalize)).float()
    n, d = x.shape
    if picks is None:
        picks = kcenter_picks(n, d)
        if picks < n:
            warnings.warn(
                f"kcenter: {n} examples of width {d}: the first {picks} picks are exact k-center "
                f"greedy, the rest are ordered by distance to those picks (default budget: "
                f"picks·N·d ≤ {KCENTER_BUDGET:.0e}; pass picks= for more).",
                stacklevel=2,
            )
    if int(picks) != picks or not 1 <= picks <= n:
        raise PrunusError(f"picks (exact k-center picks) must be an integer in [1, {n}] (got {picks!r}).")
    squared_norms = (x * x).sum(dim=1)
    order = torch.empty(n, dtype=torch.long)
    order[0] = int(np.random.default_rng(seed).integers(n))
    nearest = torch.full((n,), torch.inf)
    for step in range(1, int(picks) + 1):
        last = order[step - 1]
        distances = torch.addmv(squared_norms + squared_norms[last], x, x[last], alpha=-2.0)
        torch.minimum(nearest, distances, out=nearest)
        nearest[last] = -torch.inf
        if step < picks:
            order[step] = nearest.argmax()
    rest = torch.argsort(nearest, descending=True, stable=True)[: n - int(picks)]
    order[int(picks):] = rest
    return order.numpy()


@SCORES.register(
    "kcenter", needs="embeddings",
    flops=lambda n, forward, backward, width: forward * n + 3.0 * n * kcenter_picks(n, width) * width,
    summary="k-center greedy coverage priority",
)
def kcenter_scores(embeddings: np.ndarray, *, seed: int = 0, normalize: bool = False) -> np.ndarray:
    """Coverage priority from :func:`kcenter_greedy`: ``1 − rank / N`` (the first pick scores 1).

    Higher = picked earlier; keeping the "hardest" ``k`` keeps the greedy k-center set (exact
    up to :func:`kcenter_picks` picks, then farthest from those picks first).
    """
    order = kcenter_greedy(embeddings, seed=seed, normalize=normalize)
    scores = np.empty(len(order), dtype=np.float64)
    scores[order] = 1.0 - np.arange(len(order)) / len(order)
    return scores


def embeddings(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, progress: Progress | None = None
) -> np.ndarray:
    """The input of the model's last-called ``nn.Linear`` (its penultimate representation) for
    every example, as a float32 (N, d) array, with the model in eval mode.

    Raises:
        PrunusError: the model calls no ``nn.Linear`` layer.
    """
    captured: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    parts = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _, x, _ in batches(model, dataset, batch_size, progress):
                captured.clear()
                model(x)
                if not captured:
                    raise PrunusError(
                        "prototype and k-center scores need a model whose output layer is nn.Linear "
                        "(its input is the embedding)."
                    )
                parts.append(captured[-1].reshape(len(x), -1).float().cpu())
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return torch.cat(parts).numpy()


def _points(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0 or not np.isfinite(x).all():
        raise PrunusError(f"embeddings must be a finite, non-empty 2-D array (got shape {x.shape}).")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x
