"""The label-noise decision: the registered ``label_issue`` score and the study arms that
remove flagged examples, remove as many at random, or relabel them."""

import numpy as np
import pytest

from prunus.data import score
from prunus.data.labels import confident_learning, find_label_issues, out_of_fold_probs
from prunus.datasets import add_label_noise
from prunus.errors import PrunusError
from prunus.registry import SCORES

TINY = {"hidden": [32]}


@pytest.fixture
def noisy(blobs):
    return add_label_noise(blobs, 0.2, seed=1, kind="pairs")


@pytest.fixture
def table(noisy):
    return score(noisy, "mlp", "label_issue", epochs=3, folds=3, seeds=[0, 1], batch_size=64,
                 model_options=TINY, device="cpu")


def test_label_issue_score_is_confident_learning_on_the_same_probabilities(noisy, table):
    assert "label_issue" in SCORES
    probs = out_of_fold_probs(noisy, "mlp", folds=3, seeds=[0, 1], epochs=3, batch_size=64,
                              model_options=TINY, device="cpu")
    expected = confident_learning(noisy.y, probs)
    assert list(table.columns) == ["label_issue", "is_issue", "suggested_label"]
    np.testing.assert_allclose(table.scores(), 1 - probs[np.arange(len(noisy)), noisy.y])
    np.testing.assert_allclose(table.scores(), expected.label_issue)
    np.testing.assert_array_equal(table.scores("is_issue"), expected.is_issue)
    np.testing.assert_array_equal(table.scores("suggested_label"), expected.suggested_label)
    given = find_label_issues(noisy, pred_probs=probs)
    np.testing.assert_array_equal(table.scores("is_issue"), given.scores("is_issue"))
    meta = table.metadata
    assert meta["method"] == "label_issue" and meta["settings"]["folds"] == 3
    assert meta["num_issues"] == expected.num_issues > 0
    assert meta["cost"]["train_seconds"] > 0 and meta["cost"]["flops"] > 0
    assert meta["epochs"] == meta["full_epochs"] == 3
    # it finds the flipped labels better than chance (20% of the rows are flipped)
    flagged = table.ids[table.scores("is_issue") == 1]
    assert np.isin(flagged, noisy.flipped_ids).mean() > 0.5
