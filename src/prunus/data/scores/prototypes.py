"""Scores in an embedding space: distance to the nearest prototype and k-center greedy coverage.

The embedding of an example is what a trained model feeds to its last linear layer (see
:func:`embeddings`); any (N, d) array works, e.g. from a self-supervised or pretrained encoder.
These methods hold the N × d embeddings in memory (the other scores keep O(N) numbers).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prunus.data.scores.common import Progress, batches
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError
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
    examples when data is abundant and the easiest when it is scarce.

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
    centroids, _ = kmeans(points, k, seed=seed, iterations=iterations)
    return torch.cdist(points, centroids).min(dim=1).values.double().numpy()


def kmeans(
    points: np.ndarray | torch.Tensor, k: int, *, seed: int = 0, iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding; returns ``(centroids (k, d), assignment (N,))``.

    Stops when no assignment changes. A cluster that empties is moved to the point farthest
    from its centroid. Deterministic for a given seed.
    """
    x = torch.as_tensor(points, dtype=torch.float64) if not torch.is_tensor(points) else points.double()
    n = len(x)
    if int(k) != k or not 1 <= k <= n:
        raise PrunusError(f"k (number of prototypes) must be an integer in [1, {n}] (got {k!r}).")
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    nearest = torch.cdist(x, centroids[0][None])[:, 0].square()
    for _ in range(1, k):
        weights = nearest.numpy()
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick][None])[:, 0].square())
    centroids = torch.stack(centroids)
    assignment = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        distances = torch.cdist(x, centroids)
        new = distances.argmin(dim=1)
        if torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            far = distances.gather(1, assignment[:, None])[:, 0].argsort(descending=True)
            centroids[empty] = x[far[: int(empty.sum())]]
    return centroids, assignment


def kcenter_greedy(embeddings: np.ndarray, *, seed: int = 0, normalize: bool = False) -> np.ndarray:
    """Order of the k-center greedy picks (Sener & Savarese 2018, *Active Learning for
    Convolutional Neural Networks: A Core-Set Approach*).

    Starting from a seeded random example, repeatedly pick the example farthest from everything
    picked so far (Euclidean). The first ``k`` picks are the greedy k-center solution for every
    ``k``, so one ordering serves every budget. O(N² d) time, O(N) extra memory.
    """
    x = _points(embeddings, normalize).numpy()
    n = len(x)
    squared_norms = np.einsum("ij,ij->i", x, x)
    order = np.empty(n, dtype=np.int64)
    order[0] = np.random.default_rng(seed).integers(n)
    nearest = np.full(n, np.inf)
    for step in range(1, n):
        last = order[step - 1]
        distances = squared_norms - 2.0 * (x @ x[last]) + squared_norms[last]
        np.minimum(nearest, distances, out=nearest)
        nearest[last] = -np.inf
        order[step] = int(nearest.argmax())
    return order


@SCORES.register(
    "kcenter", needs="embeddings", flops=lambda n, forward, backward, width: forward * n + 3.0 * n * n * width,
    summary="k-center greedy coverage priority",
)
def kcenter_scores(embeddings: np.ndarray, *, seed: int = 0, normalize: bool = False) -> np.ndarray:
    """Coverage priority from :func:`kcenter_greedy`: ``1 − rank / N`` (the first pick scores 1).

    Higher = picked earlier; keeping the "hardest" ``k`` keeps the greedy k-center set.
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


def _points(embeddings: np.ndarray, normalize: bool) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if x.dim() != 2 or len(x) == 0 or not torch.isfinite(x).all():
        raise PrunusError(
            f"embeddings must be a finite, non-empty 2-D array (got shape {tuple(x.shape)})."
        )
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return x
