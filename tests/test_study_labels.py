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
    assert meta["dataset"]["flipped_ids"] == noisy.flipped_ids.tolist()
    # it finds the flipped labels better than chance (20% of the rows are flipped)
    flagged = table.ids[table.scores("is_issue") == 1]
    assert np.isin(flagged, noisy.flipped_ids).mean() > 0.5


def hand_table(dataset, flagged_rows, suggested):
    """A label-issue table over ``dataset`` with the given rows flagged (rows reversed, so the
    arms must align by id)."""
    from prunus.data import ScoreTable

    is_issue = np.zeros(len(dataset))
    is_issue[flagged_rows] = 1.0
    columns = {"label_issue": is_issue * 0.9, "is_issue": is_issue,
               "suggested_label": np.where(is_issue > 0, suggested, dataset.y).astype(float)}
    meta = {"dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint}}
    return ScoreTable(dataset.ids[::-1], dataset.y[::-1],
                      {k: v[::-1] for k, v in columns.items()}, meta)


def test_label_arms_remove_as_many_at_random_and_relabel_exactly_the_flagged(noisy):
    from prunus.study.runs import label_arm_data

    rng = np.random.default_rng(0)
    flagged = np.sort(rng.choice(len(noisy), 37, replace=False))
    suggested = (noisy.y + 1 + rng.integers(0, 2, len(noisy))) % 3
    table = hand_table(noisy, flagged, suggested)
    mask = np.isin(np.arange(len(noisy)), flagged)

    removed = label_arm_data("remove_issues", noisy, table, seed=0)
    np.testing.assert_array_equal(removed.ids, noisy.ids[~mask])
    per_class = np.bincount(noisy.y[mask], minlength=3)
    draws = []
    for seed, stratify in ((0, True), (1, True), (0, False)):
        random = label_arm_data("random", noisy, table, seed=seed, stratify=stratify)
        assert len(random) == len(noisy) - 37 and len(np.unique(random.ids)) == len(random)
        if stratify:
            np.testing.assert_array_equal(noisy.class_counts() - random.class_counts(), per_class)
        draws.append(set(noisy.ids) - set(random.ids))
    assert draws[0] != draws[1] and draws[0] != set(noisy.ids[mask])

    relabelled = label_arm_data("relabel_issues", noisy, table, seed=0)
    np.testing.assert_array_equal(relabelled.ids, noisy.ids)
    changed = relabelled.y != noisy.y
    np.testing.assert_array_equal(changed, mask)  # suggested differs from the label where flagged
    np.testing.assert_array_equal(relabelled.y[mask], suggested[mask])
    np.testing.assert_array_equal(relabelled.flipped_ids,
                                  noisy.ids[relabelled.y != noisy.clean_y])
    np.testing.assert_array_equal(relabelled.x, noisy.x)
    assert relabelled.fingerprint != noisy.fingerprint

    with pytest.raises(PrunusError, match="'is_issue' column"):
        from prunus.data import ScoreTable

        plain = ScoreTable(noisy.ids, noisy.y, {"el2n": np.zeros(len(noisy))})
        label_arm_data("remove_issues", noisy, plain, seed=0)


def labels_study(data, seeds=(0, 1)):
    return {
        "seeds": list(seeds),
        "keep": [],
        "targets": [],
        "datasets": [{"name": str(data), "label": "blobs", "noise": 0.2, "noise_kind": "pairs"}],
        "models": [{"name": "mlp", "options": {"hidden": [32]}}],
        "train": {"epochs": 3, "batch_size": 64},
        "policies": [
            {"score": "label_issue", "select": "remove_issues",
             "proxy": {"epochs": 2, "seeds": 1, "options": {"folds": 3}}},
            {"score": "label_issue", "select": "relabel_issues",
             "proxy": {"epochs": 2, "seeds": 1, "options": {"folds": 3}}},
        ],
        "execution": {"threads": 1},
    }


def blobs_file(folder):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 8))

    def draw(n):
        y = np.arange(n) % 3
        return (centers[y] + rng.normal(0, 1, size=(n, 8))).astype(np.float32), y

    x, y = draw(300)
    x_test, y_test = draw(90)
    np.savez(folder / "blobs.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    return folder / "blobs.npz"


def test_label_policies_are_validated_and_expand_to_the_decision_arms(tmp_path):
    from prunus.study import parse_config
    from prunus.study.grid import expand_grid

    values = labels_study(blobs_file(tmp_path))
    wrong = dict(values, policies=[{"score": "el2n", "select": "remove_issues"}])
    with pytest.raises(PrunusError, match=r"^policies\[0\] select 'remove_issues' needs score = "
                                          r"'label_issue'.*\(got score 'el2n'\)\.$"):
        parse_config(wrong)
    with pytest.raises(PrunusError, match=r"^policies\[0\] keep does not apply to select"):
        parse_config(dict(values, policies=[{"score": "label_issue", "select": "relabel_issues",
                                             "keep": [0.5]}]))
    with pytest.raises(PrunusError, match=r"select must be one of: .*relabel_issues.*remove_issues"):
        parse_config(dict(values, policies=[{"score": "label_issue", "select": "drop"}]))
    with pytest.raises(PrunusError, match=r"noise_kind must be one of .*'instance'"):
        parse_config(dict(values, datasets=[{"name": "digits", "noise_kind": "bogus"}]))

    config = parse_config(values)
    runs, jobs = expand_grid(config, {"blobs": "f"}, {"blobs": 300})
    first = [r for r in runs if r.seed == 0]
    assert [r.policy for r in first] == [
        "full data", "label issues removed", "label issues relabelled",
        "random, as many removed as label issues removed"]
    assert len(jobs) == 1 and all(r.score_key == jobs[0].key for r in first[1:])
    by_policy = {r.policy: r for r in first}
    assert by_policy["label issues removed"].random_baseline == (
        "random, as many removed as label issues removed")
    assert by_policy["label issues relabelled"].random_baseline is None
    assert by_policy["random, as many removed as label issues removed"].baseline
    assert jobs[0].options == {"folds": 3} and jobs[0].epochs == 2


def test_a_tiny_label_noise_study_runs_end_to_end(tmp_path):
    import torch

    from prunus.study import StudyStore, parse_config, run_study
    from prunus.study.report import load_rows
    from prunus.study.stats import summarize

    threads = torch.get_num_threads()
    try:
        result = run_study(parse_config(labels_study(blobs_file(tmp_path))), tmp_path / "out",
                           progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = load_rows(StudyStore(result.out))
    finals = [r for r in rows if r["final"]]
    assert {r["status"] for r in finals} == {"ok"}
    arms = {s.policy: s for s in summarize(rows, [])}
    removed = arms["label issues removed"]
    random = arms["random, as many removed as label issues removed"]
    assert 0.5 < removed.keep < 1 and random.keep == removed.keep  # as many removed
    assert {c.kind for c in removed.comparisons} == {"full", "random"}
    assert [c.kind for c in arms["label issues relabelled"].comparisons] == ["full"]
    assert arms["label issues relabelled"].keep == 1.0
    report = (tmp_path / "out" / "report.html").read_text()
    assert "label issues removed" in report and "label issues relabelled" in report


def test_the_label_noise_example_is_the_decision_on_mnist1d_pair_noise():
    from pathlib import Path

    from prunus.study import load_config
    from prunus.study.grid import study_arms

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "label_noise.toml")
    dataset = config.datasets[0]
    assert (dataset.name, dataset.noise, dataset.noise_kind) == ("mnist1d", 0.2, "pairs")
    assert len(config.seeds) >= 5
    assert [a.label for a in study_arms(config)] == [
        "full data", "label issues removed", "label issues relabelled",
        "random, as many removed as label issues removed"]
