"""Label issues: every detector by hand and against cleanlab, every noise kind exact, K-fold
proxies, the labels CLI."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import invoke
from torch import nn

from prunus.data.labels import (
    LABEL_METHODS,
    aum_with_threshold_examples,
    confident_joint,
    confident_learning,
    confident_thresholds,
    find_label_issues,
    fold_assignment,
    out_of_fold_probs,
    self_confidence,
    two_component_split,
)
from prunus.datasets import Dataset, add_label_noise, from_arrays, load
from prunus.errors import PrunusError

# Six examples, three classes; the comments give each row's confident class.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.80, 0.10, 0.10],  # label 0: p0 .80 >= t0 .6                      -> 0
    [0.40, 0.30, 0.30],  # label 0: nothing reaches its threshold       -> not counted
    [0.10, 0.70, 0.20],  # label 1: p1 .70 >= t1 .475                    -> 1
    [0.65, 0.25, 0.10],  # label 1: p0 .65 >= .6 only                   -> 0 (an issue)
    [0.00, 0.48, 0.52],  # label 2: p1 .48 >= .475 and p2 .52 >= .41   -> argmax of both: 2
    [0.10, 0.60, 0.30],  # label 2: p1 .60 >= .475, p2 .30 < .41       -> 1 (an issue)
])


def test_thresholds_and_confident_joint_by_hand():
    np.testing.assert_allclose(confident_thresholds(LABELS, PROBS), [0.6, 0.475, 0.41])
    np.testing.assert_array_equal(confident_joint(LABELS, PROBS), [[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    result = confident_learning(LABELS, PROBS)
    # rows scaled to the label counts (2 each): already integers summing to N = 6
    np.testing.assert_array_equal(result.calibrated_joint, [[2, 0, 0], [1, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(result.issues_per_class, [0, 1, 1])
    # label 1: the one with the largest p0 - p1 (row 3); label 2: largest p1 - p2 (row 5)
    np.testing.assert_array_equal(result.is_issue, [False, False, False, True, False, True])
    np.testing.assert_array_equal(result.suggested_label, [0, 0, 1, 0, 2, 1])
    np.testing.assert_allclose(result.label_issue, 1 - PROBS[np.arange(6), LABELS])
    margin = confident_learning(LABELS, PROBS, rank_by="normalized_margin").label_issue
    np.testing.assert_allclose(margin, [0.15, 0.45, 0.25, 0.70, 0.48, 0.65])
    np.testing.assert_array_equal(result.ranked(), [3, 5])


def _dirichlet_case(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(60, 400)), int(rng.integers(2, 7))
    labels = rng.integers(0, c, n)
    probs = rng.dirichlet(np.full(c, rng.uniform(0.3, 2.0)), n)
    # a signal towards the given label for most rows, so there is something to find
    probs = 0.5 * probs + 0.5 * np.eye(c)[np.where(rng.random(n) < 0.8, labels, rng.integers(0, c, n))]
    return labels, probs


def _rules_coincide(labels, probs):
    """True where prunus and cleanlab must agree: the overall argmax passes its threshold when
    two or more classes do, no probability sits at a threshold, no rounding tie in C̃, and every
    class has at least two examples."""
    t = confident_thresholds(labels, probs)
    passing = probs >= t
    top = probs.argmax(1)
    if not ((passing.sum(1) < 2) | passing[np.arange(len(probs)), top]).all():
        return False
    if np.abs(probs - t).min() < 1e-5 or np.bincount(labels, minlength=probs.shape[1]).min() < 2:
        return False
    joint = confident_joint(labels, probs).astype(float)
    counts = np.bincount(labels, minlength=probs.shape[1])
    rows = joint / joint.sum(1, keepdims=True) * counts[:, None]
    for row in rows / rows.sum() * counts.sum() % 1:  # ties within a row round either way
        rest = np.sort(row[row > 1e-9])
        if (np.diff(rest) < 1e-9).any():
            return False
    return True


def test_matches_cleanlab_prune_by_noise_rate():
    filt = pytest.importorskip("cleanlab.filter")
    from cleanlab.count import compute_confident_joint

    compared = 0
    for seed in range(80):
        labels, probs = _dirichlet_case(seed)
        if not _rules_coincide(labels, probs):
            continue
        ours = confident_learning(labels, probs)
        np.testing.assert_array_equal(ours.calibrated_joint, compute_confident_joint(labels, probs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = filt.find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        np.testing.assert_array_equal(ours.is_issue, theirs, err_msg=f"seed {seed}")
        compared += 1
    assert compared >= 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = filt.find_label_issues(LABELS, PROBS, filter_by="prune_by_noise_rate", n_jobs=1)
    np.testing.assert_array_equal(confident_learning(LABELS, PROBS).is_issue, theirs)


@pytest.mark.parametrize(
    "probs, words",
    [
        (np.full((6, 1), 1.0), "C >= 2"),
        (np.full((5, 3), 1 / 3), "one row per label"),
        (np.full((6, 3), 0.3), "summing to 1"),
        (np.full((6, 3, 1), 1 / 3), "2-D"),
        (np.array([[1.5, -0.5, 0.0]] * 6), "non-negative"),
        (np.array([[np.nan, 0.5, 0.5]] * 6), "finite"),
    ],
)
def test_bad_pred_probs_are_refused(probs, words):
    with pytest.raises(PrunusError, match="pred_probs") as info:
        confident_learning(LABELS, probs)
    assert words in str(info.value)


def test_pred_probs_within_tolerance_and_bad_labels():
    near = PROBS + np.array([5e-5, 0, 0])
    confident_learning(LABELS, near)
    with pytest.raises(PrunusError, match="labels must be integers"):
        confident_learning(np.array([0, 0, 1, 1, 2, 3]), PROBS)
    with pytest.raises(PrunusError, match="rank_by"):
        confident_learning(LABELS, PROBS, rank_by="loss")


def _toy(n=60, classes=3, offset_test=1000):
    """A dataset whose first feature is the example id (so a model can see which ids it met)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = np.concatenate([np.arange(n)[:, None], rng.normal(y[:, None], 1.0, (n, 2))], axis=1)
    test = Dataset("toy", np.arange(12) + offset_test,
                   np.concatenate([np.arange(12)[:, None] + offset_test, rng.normal(0, 1, (12, 2))], 1),
                   np.arange(12) % classes, classes)
    return Dataset("toy", np.arange(n), x, y, classes, test=test)


LOG = []


class RecordingNet(nn.Module):
    """Remembers the ids it trained on; at prediction logs (trained ids, predicted ids)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)
        self.seen = set()

    def forward(self, x):
        ids = x[:, 0].long().tolist()
        if self.training:
            self.seen.update(ids)
        else:
            LOG.append((frozenset(self.seen), ids))
        return self.linear(x[:, 1:])


def test_out_of_fold_probs_never_come_from_a_model_trained_on_the_example():
    data = _toy()
    LOG.clear()
    probs = out_of_fold_probs(data, RecordingNet(), folds=4, seeds=(0, 1), epochs=2,
                              batch_size=16, device="cpu")
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert len(LOG) == 8  # 4 folds x 2 seeds, one prediction batch each
    for s, seed in enumerate((0, 1)):
        fold = fold_assignment(data, 4, seed)
        predicted = []
        for k, (trained, ids) in enumerate(LOG[4 * s: 4 * s + 4]):
            assert not trained & set(ids)
            assert trained == set(data.ids[fold != k].tolist())
            assert sorted(ids) == data.ids[fold == k].tolist()
            predicted += ids
        assert sorted(predicted) == list(range(60))
    # stratified: each fold holds each class's share
    counts = np.array([[np.sum((fold_assignment(data, 4, 0) == k) & (data.y == c)) for c in range(3)]
                       for k in range(4)])
    assert counts.min() >= 5 and counts.max() <= 5


def test_folds_are_checked():
    data = _toy()
    with pytest.raises(PrunusError, match="folds must be an integer from 2 to 20"):
        out_of_fold_probs(data, "mlp", folds=21, epochs=1)
    with pytest.raises(PrunusError, match="folds"):
        find_label_issues(data, folds=1, epochs=1)
    with pytest.raises(PrunusError, match="pred_probs must have shape"):
        find_label_issues(data, pred_probs=np.full((59, 3), 1 / 3))
    with pytest.raises(PrunusError, match="label method"):
        find_label_issues(data, method="nope")


def test_pair_noise_is_exact_and_recorded():
    data = load("digits")
    noisy = add_label_noise(data, 0.2, seed=3, kind="pairs")
    n_flip = len(data) * 2 // 10  # ⌊0.2·N⌋
    changed = noisy.ids[noisy.y != data.y]
    assert len(noisy.flipped_ids) == len(changed) == n_flip
    np.testing.assert_array_equal(noisy.flipped_ids, np.sort(changed))
    rows = data.positions(noisy.flipped_ids)
    np.testing.assert_array_equal(noisy.y[rows], (data.y[rows] + 1) % 10)
    np.testing.assert_array_equal(noisy.clean_y, data.y)
    np.testing.assert_array_equal(noisy.test.y, data.test.y)
    assert noisy.options["noise_kind"] == "pairs"
    again = add_label_noise(data, 0.2, seed=3, kind="pairs")
    np.testing.assert_array_equal(again.y, noisy.y)
    assert again.fingerprint == noisy.fingerprint != data.fingerprint
    # a given map (list or dict); the dict leaves the other classes at (c + 1) mod C
    swap = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    mapped = add_label_noise(data, 0.1, seed=0, kind="pairs", pairs=swap)
    rows = data.positions(mapped.flipped_ids)
    np.testing.assert_array_equal(mapped.y[rows], np.array(swap)[data.y[rows]])
    assert len(rows) == len(data) // 10
    partial = add_label_noise(data, 0.3, seed=1, kind="pairs", pairs={0: 7})
    rows = data.positions(partial.flipped_ids)
    expected = np.where(data.y[rows] == 0, 7, (data.y[rows] + 1) % 10)
    np.testing.assert_array_equal(partial.y[rows], expected)
    # symmetric stays what it was: same draws, same options
    sym = add_label_noise(data, 0.2, seed=3)
    assert "noise_kind" not in sym.options and len(sym.flipped_ids) == n_flip
    for bad, words in [({0: 0}, "another class"), ({0: 10}, r"\[0, 9\]"), ([1, 2], "each of the 10")]:
        with pytest.raises(PrunusError, match=words):
            add_label_noise(data, 0.2, kind="pairs", pairs=bad)
    with pytest.raises(PrunusError, match="noise kind"):
        add_label_noise(data, 0.2, kind="class")


def test_digits_pair_noise_end_to_end(capsys):
    data = add_label_noise(load("digits"), 0.2, seed=0, kind="pairs")
    torch.manual_seed(0)
    probs = out_of_fold_probs(data, "mlp", folds=5, epochs=10, device="cpu")
    table = find_label_issues(data, pred_probs=probs)
    assert list(table.columns) == ["label_issue", "is_issue", "suggested_label"]
    assert table.metadata["method"] == "confident_learning"
    assert table.fingerprint == data.fingerprint
    flagged = table.ids[table.scores("is_issue") == 1]
    hits = len(np.intersect1d(flagged, data.flipped_ids))
    precision, recall = hits / len(flagged), hits / len(data.flipped_ids)
    f1 = 2 * precision * recall / (precision + recall)
    line = f"prunus: flagged {len(flagged)}, precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f}"
    try:
        from cleanlab.filter import find_label_issues as cleanlab_find

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mask = cleanlab_find(data.y, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        theirs = len(np.intersect1d(data.ids[mask], data.flipped_ids))
        p2, r2 = theirs / mask.sum(), theirs / len(data.flipped_ids)
        line += f" | cleanlab: flagged {mask.sum()}, precision {p2:.3f}, recall {r2:.3f}, F1 {2 * p2 * r2 / (p2 + r2):.3f}"
    except ImportError:
        pass
    with capsys.disabled():
        print("\n" + line)
    assert f1 > 0.5  # chance: precision 0.2
    # suggested labels undo the pair flip for most of the true hits
    rows = data.positions(np.intersect1d(flagged, data.flipped_ids))
    suggested = table.aligned(data, "suggested_label")[rows]
    assert np.mean(suggested == data.clean_y[rows]) > 0.8
    # the issue score ranks flipped examples high: AUROC well above 0.5
    from scipy.stats import mannwhitneyu

    score = table.aligned(data)
    flipped = np.isin(data.ids, data.flipped_ids)
    auc = mannwhitneyu(score[flipped], score[~flipped]).statistic / (flipped.sum() * (~flipped).sum())
    assert auc > 0.8


def test_find_label_issues_trains_its_own_proxies(blobs):
    noisy = add_label_noise(blobs, 0.1, seed=0, kind="pairs")
    table = find_label_issues(noisy, folds=3, epochs=3, device="cpu")
    assert len(table) == len(noisy) and table.metadata["folds"] == 3
    assert table.metadata["pred_probs"] == "out_of_fold"
    assert table.metadata["cost"]["train_seconds"] > 0
    assert table.scores("is_issue").sum() == table.metadata["num_issues"]


def test_self_confidence_by_hand_and_as_cleanlab_predicted_neq_given():
    result = self_confidence(LABELS, PROBS)
    np.testing.assert_allclose(result.label_issue, [0.2, 0.6, 0.3, 0.75, 0.48, 0.7])
    # argmax differs from the label: rows 1? no (0.40 is its max), 3 (p0), 5 (p1)
    np.testing.assert_array_equal(result.is_issue, [False, False, False, True, False, True])
    np.testing.assert_array_equal(result.suggested_label, [0, 0, 1, 0, 2, 1])
    filt = pytest.importorskip("cleanlab.filter")
    from cleanlab.count import get_confident_thresholds

    for seed in range(10):
        labels, probs = _dirichlet_case(seed)
        if np.bincount(labels, minlength=probs.shape[1]).min() < 1:
            continue
        np.testing.assert_allclose(confident_thresholds(labels, probs),
                                   get_confident_thresholds(labels, probs), atol=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = filt.find_label_issues(labels, probs, filter_by="predicted_neq_given")
        np.testing.assert_array_equal(self_confidence(labels, probs).is_issue, theirs)


def test_aum_with_threshold_examples_on_a_hand_trajectory():
    # two presentations, three real examples (classes 0, 1) and two moved to the fake class 2
    labels = np.array([0, 1, 0, 2, 2])
    fake = np.array([False, False, False, True, True])
    logits = np.array([
        [[2, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]],
        [[3, 1, 0], [2, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0]],
    ], dtype=float)
    # margins: ex0 1, 2 -> 1.5; ex1 -1, -1 -> -1; ex2 -1, 0 -> -0.5; fake ex3 -1, 1 -> 0; ex4 -1
    found = aum_with_threshold_examples(logits, labels, fake)
    alpha = -1 + 0.99 * (0 - (-1))  # 99th percentile of the fake AUMs [0, -1], interpolated
    assert found.threshold == pytest.approx(alpha)
    np.testing.assert_allclose(found.label_issue[:3], [alpha - 1.5, alpha + 1, alpha + 0.5])
    assert np.isnan(found.label_issue[3:]).all()
    np.testing.assert_array_equal(found.is_issue, [False, True, True, False, False])
    # flagged: the real class with the largest mean logit other than the label
    np.testing.assert_array_equal(found.suggested_label[:3], [0, 0, 1])
    median = aum_with_threshold_examples(logits, labels, fake, percentile=50)
    assert median.threshold == pytest.approx(-0.5)
    np.testing.assert_array_equal(median.is_issue, [False, True, False, False, False])
    with pytest.raises(PrunusError, match="threshold example"):
        aum_with_threshold_examples(logits, labels, np.zeros(5, dtype=bool))
    with pytest.raises(PrunusError, match="percentile"):
        aum_with_threshold_examples(logits, labels, fake, percentile=101)


def test_two_component_split_flags_the_high_mode():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 0.1, 90), rng.normal(5, 0.1, 10)])
    flagged, threshold = two_component_split(scores)
    np.testing.assert_array_equal(flagged, np.arange(100) >= 90)
    assert 4 < threshold == scores[90:].min()
    assert not two_component_split(np.ones(10))[0].any()


def test_every_method_through_find_label_issues(blobs):
    noisy = add_label_noise(blobs, 0.1, seed=0, kind="pairs")
    flipped = np.isin(noisy.ids, noisy.flipped_ids)
    probs = out_of_fold_probs(noisy, folds=3, epochs=4, device="cpu")
    for method in LABEL_METHODS:
        given = probs if method in ("confident_learning", "self_confidence") else None
        table = find_label_issues(noisy, method=method, epochs=4, pred_probs=given, device="cpu")
        assert list(table.columns) == ["label_issue", "is_issue", "suggested_label"], method
        assert table.metadata["method"] == method
        assert table.scores("is_issue").sum() == table.metadata["num_issues"]
        assert table.metadata["dataset"]["flipped_ids"] == noisy.flipped_ids.tolist()
        assert np.isfinite(table.scores()).all()
        issue = table.scores("is_issue") == 1
        suggested = table.scores("suggested_label")
        assert (suggested[issue] != noisy.y[issue]).all() and (suggested[~issue] == noisy.y[~issue]).all()
        if method in ("confident_learning", "self_confidence", "aum"):
            assert issue[flipped].mean() > 0.5, method  # the blobs are well separated
    with pytest.raises(PrunusError, match="pred_probs is used by the methods"):
        find_label_issues(noisy, method="aum", pred_probs=probs)
    with pytest.raises(PrunusError, match="runs must be"):
        find_label_issues(noisy, method="aum", runs=5)
    one = Dataset("one", np.arange(20), np.zeros((20, 2)), np.zeros(20), 2)
    with pytest.raises(PrunusError, match="single class"):
        find_label_issues(one, pred_probs=np.full((20, 2), 0.5))


def test_aum_judges_every_example_with_its_own_label(blobs):
    from prunus.data.labels import aum_issues

    noisy = add_label_noise(blobs, 0.1, seed=1)
    issues, cost = aum_issues(noisy, epochs=3, device="cpu")
    assert np.isfinite(issues.label_issue).all() and cost["train_seconds"] > 0
    np.testing.assert_array_equal(issues.is_issue, issues.label_issue > 0)
    single, _ = aum_issues(noisy, epochs=3, runs=1, device="cpu")
    share = len(noisy) // (noisy.num_classes + 1)
    assert (single.label_issue == 0).sum() >= share  # the threshold examples are not judged


def _assert_flips_exact(data, noisy, rate):
    n_flip = int(Fraction(str(rate)) * len(data))  # ⌊rate·N⌋
    changed = noisy.ids[noisy.y != data.y]
    assert len(noisy.flipped_ids) == len(changed) == n_flip
    np.testing.assert_array_equal(noisy.flipped_ids, np.sort(changed))
    np.testing.assert_array_equal(noisy.clean_y, data.y)
    np.testing.assert_array_equal(noisy.test.y, data.test.y)
    np.testing.assert_array_equal(noisy.test.x, data.test.x)


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_symmetric_noise_is_exact(blobs, rate):
    noisy = add_label_noise(blobs, rate, seed=5)
    _assert_flips_exact(blobs, noisy, rate)
    # the documented draw: rows uniformly without replacement, then a shift in [1, C - 1]
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(len(blobs), size=int(Fraction(str(rate)) * len(blobs)), replace=False))
    shift = rng.integers(1, 3, size=len(rows))
    np.testing.assert_array_equal(noisy.y[rows], (blobs.y[rows] + shift) % 3)
    assert noisy.options["noise"] == rate and noisy.options["noise_seed"] == 5


def test_instance_noise_follows_the_proxy_exactly(blobs):
    rng = np.random.default_rng(0)
    n = len(blobs)
    probs = rng.dirichlet(np.ones(3), n)
    noisy = add_label_noise(blobs, 0.25, seed=7, kind="instance", proxy_probs=probs)
    _assert_flips_exact(blobs, noisy, 0.25)
    # the documented rule, computed independently
    confusion = 1 - probs[np.arange(n), blobs.y]
    keys = np.log(np.random.default_rng(7).random(n)) / np.maximum(confusion, 1e-6)
    rows = np.sort(np.argsort(-keys)[: n // 4])
    np.testing.assert_array_equal(blobs.positions(noisy.flipped_ids), rows)
    masked = probs.copy()
    masked[np.arange(n), blobs.y] = -1
    np.testing.assert_array_equal(noisy.y[rows], masked[rows].argmax(1))
    assert noisy.options["noise_kind"] == "instance" and noisy.options["noise_proxy"] == "given"
    again = add_label_noise(blobs, 0.25, seed=7, kind="instance", proxy_probs=probs)
    assert again.fingerprint == noisy.fingerprint
    # the chance of a flip rises with the confusion: over seeds, confused rows flip more often
    flips = np.zeros(n)
    for seed in range(40):
        flips[blobs.positions(add_label_noise(blobs, 0.25, seed=seed, kind="instance",
                                              proxy_probs=probs).flipped_ids)] += 1
    high, low = confusion > np.quantile(confusion, 0.75), confusion < np.quantile(confusion, 0.25)
    assert flips[high].mean() > 2 * flips[low].mean()
    with pytest.raises(PrunusError, match="proxy_probs must be"):
        add_label_noise(blobs, 0.25, kind="instance", proxy_probs=probs[:10])
    with pytest.raises(PrunusError, match="proxy_probs must be"):
        add_label_noise(blobs, 0.25, kind="instance", proxy_probs=probs * 2)
    with pytest.raises(PrunusError, match="only used with kind='instance'"):
        add_label_noise(blobs, 0.25, kind="pairs", proxy_probs=probs)


def test_instance_noise_with_its_own_proxy_on_bundled_and_user_data():
    torch.set_num_threads(1)
    for name, options in [("digits", {}), ("mnist1d", {"train_size": 600, "test_size": 100})]:
        clean = load(name, **options)
        noisy = load(name, noise=0.2, noise_kind="instance", noise_seed=3, **options)
        _assert_flips_exact(clean, noisy, 0.2)
        assert noisy.options["noise_proxy"] == "mlp" and noisy.options["noise_proxy_epochs"] == 5
        again = load(name, noise=0.2, noise_kind="instance", noise_seed=3, **options)
        np.testing.assert_array_equal(again.y, noisy.y)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 5)).astype(np.float32), np.arange(300) % 4
    user = from_arrays(x, y, test_fraction=0.2)
    noisy = add_label_noise(user, 0.1, seed=0, kind="instance")
    _assert_flips_exact(user, noisy, 0.1)


def test_labels_cli_find_show_and_bad_input(tmp_path, capsys):
    data = ["--dataset", "mnist1d", "-o", "train_size=300", "-o", "test_size=100"]
    out = str(tmp_path / "issues.parquet")
    assert invoke("labels", "find", *data, "--noise", "0.2", "--noise-kind", "pairs",
                  "--folds", "3", "--epochs", "2", "--device", "cpu", "--out", out) == 0
    captured = capsys.readouterr()
    assert "flagged as likely mislabeled" in captured.out
    assert "against the 60 labels flipped" in captured.out
    assert invoke("labels", "show", out, "--top", "3") == 0
    shown = capsys.readouterr().out
    assert "flagged per given label" in shown and "suggested" in shown and "precision" in shown
    probs = tmp_path / "p.npy"
    np.save(probs, np.full((300, 10), 0.2))
    assert invoke("labels", "find", *data, "--pred-probs", str(probs), "--out", out) == 2
    assert "summing to 1" in capsys.readouterr().err
    np.save(probs, np.full((299, 10), 0.1))
    assert invoke("labels", "find", *data, "--pred-probs", str(probs), "--out", out) == 2
    assert "pred_probs must have shape (300, 10)" in capsys.readouterr().err
    assert invoke("labels", "find", *data, "--folds", "200", "--out", out) == 2
    assert "folds must be an integer from 2 to" in capsys.readouterr().err
    assert invoke("labels", "find", *data, "--method", "magic", "--out", out) == 2
    assert "--method must be one of" in capsys.readouterr().err
    one = tmp_path / "one.npz"
    np.savez(one, x=np.zeros((10, 3), dtype=np.float32), y=np.zeros(10, dtype=np.int64))
    assert invoke("labels", "find", "--dataset", str(one), "--out", out) == 2
    assert "single class" in capsys.readouterr().err
    assert invoke("labels", "show", str(tmp_path / "nope.parquet")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
