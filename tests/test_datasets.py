"""prunus.datasets: stable ids, fingerprints, label noise, MNIST-1D (against the mnist1d
package), the on-disk cache, the bundled real datasets, the adapters and bad input."""

import copy
import importlib
import time
import types
from dataclasses import replace

import numpy as np
import pytest

from prunus.datasets import Dataset, from_arrays, from_path, from_torch, load
from prunus.datasets import mnist1d as m1d
from prunus.errors import PrunusError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory for this test only."""
    monkeypatch.setenv("PRUNUS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_arrays(n=60, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    return x, y


# --------------------------------------------------------------------------- ids and fingerprints


def test_ids_stable_across_loads(cache):
    a, b = load("digits"), load("digits")
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.test.ids, b.test.ids)
    assert a.fingerprint == b.fingerprint
    # ids are the row positions of the source: both splits together are 0..N-1, no overlap
    assert np.array_equal(np.sort(np.concatenate([a.ids, a.test.ids])), np.arange(1797))

    small = load("mnist1d", train_size=1000, test_size=200, seed=4)
    large = load("mnist1d", train_size=2500, test_size=200, seed=4)
    assert np.array_equal(small.ids, np.arange(1000))
    assert np.array_equal(small.test.ids, m1d.TEST_ID_OFFSET + np.arange(200))
    # a training example keeps its id *and* its values when train_size grows
    assert np.array_equal(large.ids[:1000], small.ids)
    assert np.array_equal(large.x[:1000], small.x)
    assert np.array_equal(large.y[:1000], small.y)
    # the test split does not depend on train_size at all
    assert np.array_equal(large.test.x, small.test.x)
    assert np.array_equal(large.test.y, small.test.y)


def test_fingerprint_changes_with_one_label_value_or_id(blobs):
    base = blobs.fingerprint
    y = blobs.y.copy()
    y[7] = (y[7] + 1) % blobs.num_classes
    x = blobs.x.copy()
    x[3, 2] += 1e-3
    ids = blobs.ids.copy()
    ids[5] = 999_999
    test_y = blobs.test.y.copy()
    test_y[0] = (test_y[0] + 1) % 3
    changed = [
        replace(blobs, y=y, _fingerprint=None),
        replace(blobs, x=x, _fingerprint=None),
        replace(blobs, ids=ids, _fingerprint=None),
        replace(blobs, test=replace(blobs.test, y=test_y, _fingerprint=None), _fingerprint=None),
    ]
    prints = [d.fingerprint for d in changed]
    assert base not in prints and len(set(prints)) == len(prints)
    assert replace(blobs, _fingerprint=None).fingerprint == base  # same content, same print


# --------------------------------------------------------------------------- label noise


def test_noise_injection_is_exact_and_seeded():
    clean = load("digits")
    noisy = load("digits", noise=0.1, noise_seed=3)
    n = len(clean)
    assert len(noisy.flipped_ids) == n // 10  # ⌊0.1·N⌋
    assert len(np.unique(noisy.flipped_ids)) == len(noisy.flipped_ids)
    changed = noisy.ids[noisy.y != clean.y]
    assert np.array_equal(np.sort(changed), noisy.flipped_ids)  # flipped ⇔ label differs
    assert np.array_equal(noisy.clean_y, clean.y)
    assert np.array_equal(noisy.x, clean.x) and np.array_equal(noisy.ids, clean.ids)
    # the test split is untouched
    assert noisy.test.fingerprint == clean.test.fingerprint
    assert np.array_equal(noisy.test.y, clean.test.y)
    # flips land on every other class, not on one (symmetric noise)
    rows = noisy.positions(noisy.flipped_ids)
    shift = (noisy.y[rows] - clean.y[rows]) % 10
    assert set(np.unique(shift)) == set(range(1, 10))
    # deterministic per seed, different across seeds
    again = load("digits", noise=0.1, noise_seed=3)
    other = load("digits", noise=0.1, noise_seed=4)
    assert np.array_equal(again.flipped_ids, noisy.flipped_ids)
    assert np.array_equal(again.y, noisy.y) and again.fingerprint == noisy.fingerprint
    assert not np.array_equal(other.flipped_ids, noisy.flipped_ids)
    # a subset keeps exactly the flipped ids it contains
    sub = noisy.subset(noisy.ids[:300])
    assert np.array_equal(sub.flipped_ids, np.intersect1d(noisy.flipped_ids, noisy.ids[:300]))


# --------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_shape_balance_and_seeds(cache):
    d = load("mnist1d", train_size=4000, test_size=1000, seed=0)
    assert d.x.shape == (4000, 1, 40) and d.x.dtype == np.float32
    assert d.test.x.shape == (1000, 1, 40) and d.num_classes == 10
    assert np.array_equal(d.class_counts(), np.full(10, 400))
    assert np.array_equal(d.test.class_counts(), np.full(10, 100))
    # any prefix is balanced within one example per class
    assert np.ptp(np.bincount(d.y[:1234], minlength=10)) <= 1
    # standardised by the fixed reference draw: close to (0, 1) for any seed
    assert abs(float(d.x.mean())) < 0.05 and abs(float(d.x.std()) - 1) < 0.05
    same = load("mnist1d", train_size=4000, test_size=1000, seed=0, cache=False)
    other = load("mnist1d", train_size=4000, test_size=1000, seed=1, cache=False)
    assert same.fingerprint == d.fingerprint
    assert np.array_equal(same.x, d.x) and np.array_equal(same.test.x, d.test.x)
    assert not np.allclose(other.x, d.x) and not np.allclose(other.test.x, d.test.x)
    assert not np.array_equal(other.y, d.y)


class _Recorder:
    """Stands in for ``np.random`` inside mnist1d.transform and logs every draw it makes."""

    def __init__(self):
        self.log = []

    def __getattr__(self, name):
        real = getattr(np.random, name)

        def draw(*args, **kwargs):
            out = real(*args, **kwargs)
            self.log.append((name, out))
            return out

        return draw


def test_mnist1d_transform_equals_package_given_the_same_draws(monkeypatch):
    """The vectorised transform reproduces the package's per-example ``transform`` exactly
    when fed the random numbers that the package itself drew."""
    pkg_transform = importlib.import_module("mnist1d.transform")
    pkg_data = importlib.import_module("mnist1d.data")
    recorder = _Recorder()
    proxy = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    proxy.random = recorder
    monkeypatch.setattr(pkg_transform, "np", proxy)

    np.random.seed(11)
    templates, args = pkg_data.get_templates(), pkg_data.get_dataset_args()
    labels = np.random.permutation(np.arange(300) % 10)
    expected, draws = [], []
    for label in labels:
        recorder.log.clear()
        x, _ = pkg_transform.transform(templates["x"][label], templates["t"], args)
        expected.append(x)
        draws.append(recorder.log[:])
    assert [name for name, _ in draws[0]] == ["rand", "rand", "choice", "randn", "randn", "rand"]

    recipe = m1d._recipe()
    width = recipe.pad_high - recipe.pad_low + 1
    given = m1d.Draws(
        labels=labels,
        padding=np.array([recipe.pad_low + int(d[0][1] * width) for d in draws]),
        scale=np.array([d[1][1] for d in draws]),
        shift=np.array([d[2][1] for d in draws]),
        corr_noise=np.stack([d[3][1] for d in draws]),
        iid_noise=np.stack([d[4][1] for d in draws]),
        shear=np.array([d[5][1] for d in draws]),
    )
    got = m1d.transform_templates(recipe, given)
    np.testing.assert_allclose(got, np.stack(expected), rtol=0, atol=1e-12)


def _ridge_classifier(x, y, lam=1.0):
    features = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(10)[y]
    gram = features.T @ features + lam * np.eye(features.shape[1])
    weights = np.linalg.solve(gram, features.T @ targets)
    return lambda z: np.argmax(np.hstack([z, np.ones((len(z), 1))]) @ weights, axis=1)


def _distribution_gaps(x, y, px, py):
    """The checks below that fail when ``(x, y)`` is compared with the package's ``(px, py)``.

    Tolerances (package 2,000 examples, ours 10,000): per-position means within 5 standard
    errors; per-position std within 8% (about 5 standard errors of a std ratio); std of first
    and of second differences, pooled over positions, within 2.5% (correct draws stay within
    1%); class-conditional means within 5.5 standard errors (400 comparisons); a linear
    classifier trained on ours scores within 4 points on the package's data and on ours."""
    gaps = []
    se = np.sqrt(px.var(0) / len(px) + x.var(0) / len(x))
    if np.max(np.abs(px.mean(0) - x.mean(0)) / se) >= 5:
        gaps.append("mean")
    std_ratio = x.std(0) / px.std(0)
    if not (0.92 < std_ratio.min() and std_ratio.max() < 1.08):
        gaps.append("std")
    for order in (1, 2):  # pooled over positions: how rough the signals are
        rough_ratio = np.diff(x, order, axis=1).std() / np.diff(px, order, axis=1).std()
        if abs(rough_ratio - 1) >= 0.025:
            gaps.append(f"roughness {order}")
    for label in range(10):
        a, b = px[py == label], x[y == label]
        se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        if np.max(np.abs(a.mean(0) - b.mean(0)) / se) >= 5.5:
            gaps.append(f"class {label} mean")
    split = len(x) * 4 // 5
    predict = _ridge_classifier(x[:split], y[:split])
    ours = np.mean(predict(x[split:]) == y[split:])
    theirs = np.mean(predict(px) == py)
    if not (ours > 0.2 and abs(ours - theirs) < 0.04):
        gaps.append("classifier")
    return gaps


def test_mnist1d_matches_package_in_distribution():
    """Our draws against the package's own ``make_dataset`` (2,000 examples: its loop is slow).
    As a control, breaking one step of the recipe must fail the same checks."""
    pkg_data = importlib.import_module("mnist1d.data")
    args = pkg_data.get_dataset_args()
    args.num_samples, args.seed = 2000, 5
    package = pkg_data.make_dataset(args)
    px = np.concatenate([package["x"], package["x_test"]])
    py = np.concatenate([package["y"], package["y_test"]])

    raw, y = m1d.generate_signals(10_000, seed=9)
    mean, std = m1d.standardisation()
    x = (raw - mean) / std
    assert px.shape[1] == x.shape[1] == 40
    assert np.array_equal(np.bincount(py, minlength=10), np.bincount(y[:2000], minlength=10))
    assert _distribution_gaps(x, y, px, py) == []

    recipe = m1d._recipe()
    for field, factor in [
        ("shear_scale", 0.0),
        ("shear_scale", 1.5),
        ("corr_noise_scale", 0.0),
        ("corr_noise_scale", 1.5),
        ("iid_noise_scale", 2.0),
        ("max_translation", 0.5),
    ]:
        broken = copy.copy(recipe)
        setattr(broken, field, type(getattr(recipe, field))(getattr(recipe, field) * factor))
        raw, y = m1d._draw(broken, 10_000, 9, m1d.TRAIN)
        x = (raw - raw.mean()) / raw.std()  # standardised on itself, as the package does
        assert _distribution_gaps(x, y, px, py), (field, factor)


def test_mnist1d_cache_hit_is_fast_and_identical(cache):
    start = time.perf_counter()
    first = load("mnist1d", train_size=20_000, test_size=1000, seed=2)
    generated = time.perf_counter() - start
    files = sorted((cache / "datasets").iterdir())
    assert [f.suffix for f in files] == [".npz", ".json"]  # the cache, its check; no temporary
    start = time.perf_counter()
    again = load("mnist1d", train_size=20_000, test_size=1000, seed=2)
    cached = time.perf_counter() - start
    assert cached < 1.0 and cached < generated
    assert again.fingerprint == first.fingerprint
    for name in ("ids", "x", "y"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
        assert np.array_equal(getattr(again.test, name), getattr(first.test, name))
    # other options, other file; a damaged file is regenerated, not trusted
    load("mnist1d", train_size=1000, test_size=1000, seed=2)
    assert len(list((cache / "datasets").iterdir())) == 4
    files[0].write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="rebuil"):
        again = load("mnist1d", train_size=20_000, test_size=1000, seed=2)
    assert again.fingerprint == first.fingerprint
    # same size, other bytes (a swapped or bit-flipped file) is caught by the digest too
    data = bytearray(files[0].read_bytes())
    data[-100] ^= 0xFF
    files[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuil"):
        assert np.array_equal(load("mnist1d", train_size=20_000, test_size=1000, seed=2).x,
                              first.x)


def test_mnist1d_without_cache_writes_nothing(cache):
    load("mnist1d", train_size=500, test_size=100, cache=False)
    assert not cache.exists()


# --------------------------------------------------------------------------- real bundled data


def test_digits_and_mnist5k_shapes_and_labels():
    digits = load("digits")
    assert digits.x.shape[1:] == (1, 8, 8) and len(digits) + len(digits.test) == 1797
    assert 0.0 <= digits.x.min() and digits.x.max() <= 1.0
    mnist = load("mnist5k")
    assert mnist.x.shape[1:] == (1, 28, 28) and len(mnist) + len(mnist.test) == 5000
    assert 0.0 <= mnist.x.min() and mnist.x.max() <= 1.0 and mnist.x.max() > 0.9
    for d in (digits, mnist):
        assert d.num_classes == 10
        assert set(np.unique(d.y)) == set(range(10)) == set(np.unique(d.test.y))
        # stratified 20% test split: each class within one example of 20%
        total = d.class_counts() + d.test.class_counts()
        assert np.all(np.abs(d.test.class_counts() - 0.2 * total) <= 1)


# --------------------------------------------------------------------------- adapters


def test_from_arrays_split_and_given_test():
    x, y = small_arrays(100)
    d = from_arrays(x, y, seed=1)
    # ⌊0.2·100⌋ = 20 held out, classes 34/33/33 by largest remainder: 6.8, 6.6, 6.6 → 7, 7, 6
    assert len(d) + len(d.test) == 100 and np.array_equal(d.test.class_counts(), [7, 7, 6])
    assert np.array_equal(np.sort(np.concatenate([d.ids, d.test.ids])), np.arange(100))
    rows = d.positions(d.ids)
    assert np.array_equal(d.x[rows], x[d.ids]) and np.array_equal(d.y, y[d.ids])
    assert from_arrays(x, y, seed=1).fingerprint == d.fingerprint
    assert from_arrays(x, y, seed=2).fingerprint != d.fingerprint

    given = from_arrays(x[:80], y[:80], ids=np.arange(80) + 10, x_test=x[80:], y_test=y[80:])
    assert np.array_equal(given.ids, np.arange(10, 90))
    assert np.array_equal(given.test.ids, np.arange(90, 110))
    assert np.array_equal(given.test.x, x[80:])

    named = from_arrays(x, np.array(["cat", "ant", "bee"])[y])
    assert named.options["classes"] == ["ant", "bee", "cat"]
    assert np.array_equal(named.y, np.array([2, 0, 1])[y[named.ids]])


def test_npz_parquet_csv_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    x, y = small_arrays(90)
    np.savez(tmp_path / "d.npz", x=x[:70], y=y[:70], x_test=x[70:], y_test=y[70:])
    npz = load(str(tmp_path / "d.npz"))
    assert np.array_equal(npz.x, x[:70]) and np.array_equal(npz.test.y, y[70:])
    assert np.array_equal(npz.test.ids, np.arange(70, 90))

    names = np.array(["no", "maybe", "yes"])[y]
    table = pa.table(
        {"id": np.arange(90) + 1000, "a": x[:, 0], "b": x[:, 1], "note": ["t"] * 90, "label": names}
    )
    pq.write_table(table, tmp_path / "d.parquet")
    pa_csv.write_csv(table, tmp_path / "d.csv")
    parquet = load(str(tmp_path / "d.parquet"), seed=3, features=["a", "b"])
    csv = from_path(tmp_path / "d.csv", seed=3, features=["a", "b"])
    assert parquet.fingerprint == csv.fingerprint
    assert parquet.input_shape == (2,) and parquet.options["classes"] == ["maybe", "no", "yes"]
    rows = parquet.ids - 1000
    np.testing.assert_array_equal(parquet.x, x[rows][:, :2])
    assert np.array_equal(np.array(["maybe", "no", "yes"])[parquet.y], names[rows])
    only_a = load(str(tmp_path / "d.parquet"), features=["a"], id="id")
    assert only_a.input_shape == (1,)

    # a column of fixed-length lists becomes one multi-dimensional feature
    pq.write_table(pa.table({"v": [list(r) for r in x], "y": y}), tmp_path / "lists.parquet")
    lists = load(str(tmp_path / "lists.parquet"), label="y")
    assert lists.input_shape == (4,)
    np.testing.assert_array_equal(lists.x, x[lists.ids])


def test_hugging_face_directory_round_trip(tmp_path):
    hf = pytest.importorskip("datasets")
    x, y = small_arrays(80)
    train = hf.Dataset.from_dict({"pixels": x[:60].tolist(), "label": y[:60]})
    train = train.cast_column("label", hf.ClassLabel(names=["a", "b", "c"]))
    test = hf.Dataset.from_dict({"pixels": x[60:].tolist(), "label": y[60:]})
    test = test.cast_column("label", hf.ClassLabel(names=["a", "b", "c"]))
    hf.DatasetDict(train=train, test=test).save_to_disk(str(tmp_path / "dd"))
    train.save_to_disk(str(tmp_path / "single"))

    d = load(str(tmp_path / "dd"))
    assert d.options["classes"] == ["a", "b", "c"] and d.num_classes == 3
    np.testing.assert_array_equal(d.x, x[:60])
    np.testing.assert_array_equal(d.test.x, x[60:])
    assert np.array_equal(d.y, y[:60]) and np.array_equal(d.test.ids, np.arange(60, 80))
    single = load(str(tmp_path / "single"), seed=1)
    assert single.fingerprint == from_arrays(x[:60], y[:60], seed=1).fingerprint


def test_from_torch_round_trip():
    import torch
    from torch.utils.data import TensorDataset

    x, y = small_arrays(50)
    train = TensorDataset(torch.tensor(x[:40]).reshape(40, 1, 4), torch.tensor(y[:40]))
    test = TensorDataset(torch.tensor(x[40:]).reshape(10, 1, 4), torch.tensor(y[40:]))
    d = from_torch(train, test=test, batch_size=16)
    assert d.input_shape == (1, 4) and d.num_classes == 3
    np.testing.assert_array_equal(d.x.reshape(40, 4), x[:40])
    assert np.array_equal(d.ids, np.arange(40)) and np.array_equal(d.test.ids, np.arange(40, 50))

    class Pairs(torch.utils.data.Dataset):  # items of numpy arrays and python ints
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return x[i], int(y[i])

    split = from_torch(Pairs(), seed=0)
    assert split.fingerprint == from_arrays(x, y, seed=0).fingerprint


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda x, y: from_arrays(x, np.zeros(len(y), int)), "single class"),
        (lambda x, y: from_arrays(x, y[:, None]), "1-D"),
        (lambda x, y: from_arrays(x, np.eye(3)[y]), "1-D"),
        (lambda x, y: from_arrays(x, y[:-1]), "labels for"),
        (lambda x, y: from_arrays(np.where(x > 2, np.nan, x), y), "NaN"),
        (lambda x, y: from_arrays(x, np.where(y == 1, np.nan, y)), "NaN"),
        (lambda x, y: from_arrays(x, y - 1), ">= 0"),
        (lambda x, y: from_arrays(x[:0], y[:0]), "empty"),
        (lambda x, y: from_arrays(x, y, ids=np.zeros(len(y), int)), "unique"),
        (lambda x, y: from_arrays(x, y, test_fraction=1.5), "test_fraction"),
        (lambda x, y: from_arrays(x, y, x_test=x), "both"),
        (lambda x, y: load("mnist1d", size=10), "train_size"),
        (lambda x, y: load("mnist1d", train_size=-5), "train_size"),
        (lambda x, y: load("mnist1d", train_size="many"), "train_size"),
        (lambda x, y: load("no-such-dataset"), "digits"),
        (lambda x, y: load("missing.parquet"), "does not exist"),
        (lambda x, y: from_torch([(1.0, 0), (2.0, 1, 5)]), "pairs"),
    ],
)
def test_bad_input_is_one_clear_error(make, words):
    x, y = small_arrays(30)
    with pytest.raises(PrunusError, match=words) as info:
        make(x, y)
    assert "\n" not in str(info.value)


def test_bad_files_are_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = small_arrays(30)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}] * 30, dtype=object), y=y)
    np.savez(tmp_path / "keys.npz", features=x, y=y)
    pq.write_table(pa.table({"a": x[:, 0], "label": np.ones(30, int)}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"a": x[:, 0], "target": y}), tmp_path / "nolabel.parquet")
    (tmp_path / "plain").mkdir()
    cases = [
        ("objects.npz", {}, "unpickling"),
        ("keys.npz", {}, "named x and y"),
        ("one.parquet", {}, "single class"),
        ("nolabel.parquet", {}, "label column"),
        ("nolabel.parquet", {"label": "target", "colour": 1}, "option"),
        ("plain", {}, "save_to_disk"),
    ]
    for name, options, words in cases:
        with pytest.raises(PrunusError, match=words):
            load(str(tmp_path / name), **options)
    assert isinstance(load(str(tmp_path / "nolabel.parquet"), label="target"), Dataset)
