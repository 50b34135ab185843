"""Hardening: library k-means for prototypes, k-center greedy at scale, tabular feature columns,
class names, structured pruning from the CLI, cached artefacts verified on reuse."""

from __future__ import annotations

import numpy as np
import pytest

from prunus.errors import PrunusError

# -- prototypes: scikit-learn k-means -------------------------------------------------------------


def test_prototype_scores_are_distances_to_the_scikit_learn_kmeans_centroids():
    from sklearn.cluster import KMeans

    from prunus.data.scores.prototypes import prototype_scores

    points = np.random.default_rng(3).normal(size=(80, 4))  # no cluster structure: init matters
    got = prototype_scores(points, k=5, seed=7, normalize=False)
    fit = KMeans(5, n_init=1, random_state=7).fit(points)
    centres = fit.cluster_centers_
    # Lloyd's fixed point, by hand: every centroid is the mean of the points nearest to it
    nearest = np.linalg.norm(points[:, None] - centres[None], axis=2).argmin(axis=1)
    for j in range(5):
        np.testing.assert_allclose(centres[j], points[nearest == j].mean(axis=0), atol=1e-8)
    want = np.linalg.norm(points - centres[nearest], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.array_equal(got, prototype_scores(points, k=5, seed=7, normalize=False))
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    np.testing.assert_allclose(prototype_scores(points, k=5, seed=7), prototype_scores(unit, k=5, seed=7,
                                                                                       normalize=False))
    with pytest.raises(PrunusError, match=r"k \(number of prototypes\) must be an integer in \[1, 80\]"):
        prototype_scores(points, k=81)


# -- k-center greedy ------------------------------------------------------------------------------


def _greedy_by_hand(points: np.ndarray, first: int, picks: int) -> list[int]:
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    picked = [first]
    while len(picked) < picks:
        nearest = distances[:, picked].min(axis=1)
        nearest[picked] = -1
        picked.append(int(np.argmax(nearest)))
    return picked


def test_kcenter_greedy_is_exact_for_its_picks_then_farthest_from_them_first():
    from prunus.data.scores.prototypes import kcenter_greedy

    points = np.random.default_rng(5).normal(size=(60, 3))
    full = kcenter_greedy(points, seed=2)
    np.testing.assert_array_equal(full, _greedy_by_hand(points, int(full[0]), 60))
    order = kcenter_greedy(points, picks=12, seed=2)
    np.testing.assert_array_equal(order[:12], full[:12])
    rest = np.setdiff1d(np.arange(60), order[:12])
    to_picked = np.linalg.norm(points[rest][:, None] - points[order[:12]][None], axis=2).min(axis=1)
    np.testing.assert_array_equal(order[12:], rest[np.argsort(-to_picked, kind="stable")])
    assert sorted(order) == list(range(60))
    with pytest.raises(PrunusError, match=r"picks .* must be an integer in \[1, 60\]"):
        kcenter_greedy(points, picks=0)


def test_kcenter_default_picks_follow_the_stated_budget_and_warn_when_cut(monkeypatch):
    from prunus.data.scores import prototypes

    assert prototypes.kcenter_picks(1797, 64) == 1797  # digits: the whole order is exact
    assert prototypes.kcenter_picks(40_000, 640) == 781  # 2e10 / (40000 · 640)
    monkeypatch.setattr(prototypes, "KCENTER_BUDGET", 30 * 40 * 3)
    points = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.warns(UserWarning, match="the first 30 picks are exact"):
        order = prototypes.kcenter_greedy(points)
    np.testing.assert_array_equal(order, prototypes.kcenter_greedy(points, picks=30))
