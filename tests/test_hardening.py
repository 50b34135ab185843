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


# -- tabular feature columns: never dropped silently, standardize, scale warning ------------------


def _table(tmp_path, n: int = 60):
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(0)
    columns = {
        "a": rng.normal(size=n),
        "b": rng.normal(size=n) * 10.0 + 3.0,
        "color": np.array(["red", "blue", "green"])[rng.integers(3, size=n)],
        "label": np.array(["no", "yes"])[np.arange(n) % 2],
    }
    path = tmp_path / "t.csv"
    pa_csv.write_csv(pa.table(columns), path)
    return path, columns


def test_text_feature_columns_are_refused_or_one_hot_encoded_never_dropped(tmp_path, capsys):
    from helpers import invoke

    from prunus.datasets import load

    path, columns = _table(tmp_path)
    with pytest.raises(PrunusError, match=r"t.csv: column\(s\) 'color' are not numeric.*features.*encode=onehot"):
        load(str(path))
    assert invoke("datasets", "show", str(path)) == 2
    assert "'color' are not numeric" in capsys.readouterr().err
    with pytest.raises(PrunusError, match=r"feature column 'color' must hold numbers.*encode=onehot"):
        load(str(path), features=["a", "color"])
    with pytest.raises(PrunusError, match="encode option of t.csv must be one of: none, onehot"):
        load(str(path), encode="ordinal")

    numeric = load(str(path), features=["a", "b"], seed=1)
    assert numeric.input_shape == (2,)
    encoded = load(str(path), encode="onehot", seed=1)
    assert encoded.options["encoded"] == {"color": ["blue", "green", "red"]}
    rows = encoded.ids
    one_hot = (columns["color"][rows][:, None] == np.array(["blue", "green", "red"])).astype(np.float32)
    want = np.concatenate([columns["a"][rows, None], columns["b"][rows, None], one_hot], axis=1)
    np.testing.assert_allclose(encoded.x, want.astype(np.float32))
    assert np.array_equal(encoded.ids, numeric.ids)


def test_standardize_uses_training_statistics_and_scale_warning(tmp_path):
    import warnings

    from prunus.datasets import from_arrays, load

    path, columns = _table(tmp_path)
    raw = load(str(path), features=["a", "b"], seed=2)
    scaled = load(str(path), features=["a", "b"], seed=2, standardize=True)
    mean, std = raw.x.astype(np.float64).mean(axis=0), raw.x.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(scaled.x, (raw.x - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled.test.x, (raw.test.x - mean) / std, rtol=1e-5, atol=1e-6)
    assert scaled.options["standardize"] is True and scaled.fingerprint != raw.fingerprint
    with pytest.raises(PrunusError, match="standardize must be true or false"):
        load(str(path), features=["a", "b"], standardize="yes")

    x = np.stack([columns["a"], columns["a"] * 5000.0, np.ones(60)], axis=1)  # constant: ignored
    labels = np.arange(60) % 2
    given = {"x": x[:40], "y": labels[:40], "x_test": x[40:], "y_test": labels[40:]}
    np.savez(tmp_path / "wide.npz", **given)
    with pytest.warns(UserWarning, match=r"scales differ by 5000x.*standardize=true"):
        load(_parquet(tmp_path, x, labels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = from_arrays(**given, standardize=True)  # constants are only centred
        load(_parquet(tmp_path, x, labels), standardize=True)
    np.testing.assert_allclose(kept.x[:, 2], 0.0)
    np.testing.assert_allclose(kept.test.x[:, 1] * x[:40, 1].std() + x[:40, 1].mean(), x[40:, 1], rtol=1e-4)
    assert load(str(tmp_path / "wide.npz"), standardize=True).fingerprint == kept.fingerprint


def _parquet(tmp_path, x: np.ndarray, y: np.ndarray) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"small": x[:, 0], "large": x[:, 1], "label": y}), path)
    return str(path)


# -- class names in outputs when labels were strings ----------------------------------------------


def test_class_names_reach_datasets_show_score_tables_and_labels_show(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from helpers import invoke

    from prunus.data.table import ScoreTable
    from prunus.datasets import load

    rng = np.random.default_rng(1)
    y = np.arange(90) % 3
    names = np.array(["cat", "ant", "bee"])  # sorted: ant=0, bee=1, cat=2
    x = rng.normal(size=(90, 2)) + y[:, None]
    path = tmp_path / "animals.csv"
    pa_csv.write_csv(pa.table({"f0": x[:, 0], "f1": x[:, 1], "label": names[y]}), path)

    assert invoke("datasets", "show", str(path)) == 0
    assert "['ant', 'bee', 'cat']" in capsys.readouterr().out
    data = load(str(path))
    assert data.summary()["class_names"] == ["ant", "bee", "cat"]

    probs = np.full((len(data), 3), 0.02)
    probs[np.arange(len(data)), data.y] = 0.96
    probs[:6] = 0.02
    probs[np.arange(6), (data.y[:6] + 1) % 3] = 0.96  # six examples the "model" disagrees with
    np.save(tmp_path / "probs.npy", probs)
    out = tmp_path / "issues.parquet"
    assert invoke("labels", "find", "--dataset", str(path), "--pred-probs", str(tmp_path / "probs.npy"),
                  "--out", str(out), "--json") == 0
    capsys.readouterr()
    table = ScoreTable.read(out)
    assert table.metadata["dataset"]["options"]["classes"] == ["ant", "bee", "cat"]
    assert invoke("labels", "show", str(out), "--top", "6") == 0
    shown = capsys.readouterr().out
    first = int(data.y[0])
    assert f"{first} ({['ant', 'bee', 'cat'][first]})" in shown
    assert f"{(first + 1) % 3} ({['ant', 'bee', 'cat'][(first + 1) % 3]})" in shown


# -- structured channel removal from the CLI ------------------------------------------------------


def test_prune_pattern_channels_shrinks_the_model_and_evaluate_reads_it(tmp_path, capsys):
    import json

    from helpers import invoke

    out = str(tmp_path / "small.safetensors")
    data = ["--dataset", "mnist1d", "-o", "train_size=300", "-o", "test_size=120", "--model", "mlp"]
    assert invoke("prune", *data, "--pattern", "channels", "--sparsity", "0.5", "--epochs", "1",
                  "-s", "finetune=1", "--out", out, "--json") == 0
    got = json.loads(capsys.readouterr().out)
    # mlp 40 -> 256 -> 256 -> 10 with half of each hidden layer's neurons removed, by hand:
    assert [r["after"] for r in got["layers"][:-1]] == [[128, 40], [128, 128], [10, 128]]
    assert got["params"] == (40 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
    assert got["params_dense"] == (40 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert got["forward_flops"] < 0.3 * got["forward_flops_dense"]
    assert invoke("evaluate", out, "--json") == 0  # full shapes, removed channels are zeros
    evaluated = json.loads(capsys.readouterr().out)
    assert abs(evaluated["accuracy"] - got["accuracy"]) <= 1 / 120 + 1e-9
    assert invoke("prune", *data, "--pattern", "channels", "--method", "rigl") == 2
    assert "--method (with --pattern channels) must be one of: l1, l2, random, taylor" in capsys.readouterr().err
    assert invoke("prune", *data, "--pattern", "chanels") == 2
    assert "--pattern must be unstructured, N:M such as 2:4, or channels" in capsys.readouterr().err


# -- cached artefacts verified on every reuse -----------------------------------------------------


def _swap(source, target) -> None:
    """Put another cache's file and check record where ``target``'s belong."""
    from prunus.files import CHECK_SUFFIX

    for suffix in ("", CHECK_SUFFIX):
        target.with_name(target.name + suffix).write_bytes(source.with_name(source.name + suffix).read_bytes())


def test_cached_corpus_documents_are_verified_on_reuse(tmp_path, monkeypatch):
    from prunus.text import corpus

    monkeypatch.setenv("PRUNUS_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for i in range(2):
        path = tmp_path / f"m{i}.py"
        path.write_text(f"def f{i}(x):\n    return x + {i}\n\n\nclass C{i}:\n    pass\n" + "y = 1\n" * 30)
        files.append((f"m{i}", path))
    fresh = corpus.extract_documents(files, chunk_chars=80)
    cache_file = corpus._cache_file(files, chunk_chars=80)
    assert cache_file.exists() and corpus.extract_documents(files, chunk_chars=80) == fresh

    cache_file.write_bytes(cache_file.read_bytes()[:-40])  # truncated
    with pytest.warns(UserWarning, match="bytes changed since it was written.*rebuilding"):
        assert corpus.extract_documents(files, chunk_chars=80) == fresh
    corpus.extract_documents(files[:1], chunk_chars=80)
    _swap(corpus._cache_file(files[:1], chunk_chars=80), cache_file)  # another corpus's cache
    with pytest.warns(UserWarning, match="it was made for 'stdlib-documents-"):
        assert corpus.extract_documents(files, chunk_chars=80) == fresh
    cache_file.with_name(cache_file.name + ".check.json").unlink()
    with pytest.warns(UserWarning, match="no readable check record"):
        assert corpus.extract_documents(files, chunk_chars=80) == fresh
    assert corpus.extract_documents(files, chunk_chars=80) == fresh  # rebuilt: a clean hit again


def test_cached_embeddings_are_verified_on_reuse(tmp_path):
    import warnings

    from prunus.negatives import embeddings as emb

    class Encoder:
        calls = 0

        def encode(self, texts):
            Encoder.calls += 1
            return np.array([[len(t), t.count("a") + 1.0] for t in texts])

    model, texts = Encoder(), ["a", "banana", "cherry"]
    want = emb.embed(model, texts, cache=tmp_path, model_key="m1")
    emb.clear_memory_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(emb.embed(model, texts, cache=tmp_path, model_key="m1"), want)
    assert Encoder.calls == 1
    cached = next(tmp_path.glob("*.npy"))
    np.save(cached, np.zeros_like(want))  # a valid .npy of the right shape, but not these rows
    emb.clear_memory_cache()
    with pytest.warns(UserWarning, match="bytes changed"):
        assert np.array_equal(emb.embed(model, texts, cache=tmp_path, model_key="m1"), want)
    assert Encoder.calls == 2
    other = emb.embed(model, texts[:2], cache=tmp_path, model_key="m1")
    _swap(tmp_path / f"{emb.texts_fingerprint(texts[:2], 'm1|document')}.npy", cached)
    emb.clear_memory_cache()
    with pytest.warns(UserWarning, match="it was made for"):
        again = emb.embed(model, texts, cache=tmp_path, model_key="m1")
    assert np.array_equal(again, want) and len(other) == 2


def test_cached_tokenizer_is_verified_on_reuse(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from prunus.text.corpus import TextSplit
    from prunus.text.tokenizer import tokenizer_cache_path, train_tokenizer

    monkeypatch.setenv("PRUNUS_CACHE_DIR", str(tmp_path))
    texts = [f"def f{i}(x):\n    return x * {i} + 'abc'\n" for i in range(40)]
    split = TextSplit(np.arange(40), texts, ["m"] * 40)
    first = train_tokenizer(split, vocab_size=300)
    assert train_tokenizer(split, vocab_size=300).init_kwargs["prunus_cache"] == "hit"
    path = tokenizer_cache_path(split.fingerprint, 300)
    path.write_text(path.read_text().replace('"abc"', '"abd"', 1) + " ")
    with pytest.warns(UserWarning, match="bytes changed"):
        rebuilt = train_tokenizer(split, vocab_size=300)
    assert rebuilt.init_kwargs["prunus_cache"] == "miss" and rebuilt.get_vocab() == first.get_vocab()
