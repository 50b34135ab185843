"""Every reader of user files turns a corrupted, truncated, empty or foreign file into one
PrunusError sentence naming the file (never a raw parser error, never an unpickled object)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from helpers import invoke

from prunus.errors import PrunusError

RANDOM = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))


def check(exc_info, path) -> str:
    """The error is one line and names the file."""
    message = str(exc_info.value)
    assert type(exc_info.value).__module__.startswith("prunus")
    assert "\n" not in message, message
    assert os.path.basename(str(path)) in message, message
    assert "Traceback" not in message
    return message


def truncated(path, out):
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


# --------------------------------------------------------------------------- valid files


def arrays(n: int = 40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype(np.float32), np.arange(n) % 2


def valid_npz(path):
    x, y = arrays()
    np.savez(path, x=x, y=y)
    return path


def valid_parquet(path, label: str = "label"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = arrays()
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], label: y}), path)
    return path


def valid_csv(path):
    x, y = arrays()
    lines = ["a,b,label"] + [f"{a},{b},{c}" for (a, b, _), c in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def valid_scores(path):
    from prunus.data import ScoreTable

    ScoreTable(np.arange(10), np.arange(10) % 2, {"loss": np.linspace(0, 1, 10)}).write(path)
    return path


def valid_selection(path, metadata: bytes | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prunus.data.table import SELECTION_KEY

    table = pa.table({"id": pa.array(np.arange(5))})
    table = table.replace_schema_metadata({SELECTION_KEY: metadata or b'{"dataset": {}}'})
    pq.write_table(table, path)
    return path


def small_model(inputs: int = 4):
    from torch import nn

    return nn.Sequential(nn.Linear(inputs, 3), nn.ReLU(), nn.Linear(3, 2))


def valid_weights(path):
    import torch

    from prunus.weights import masks

    model = small_model()
    masks.apply(model, {"0.weight": torch.rand(3, 4) > 0.5})
    masks.save(model, path)
    return path


# --------------------------------------------------------------------------- bad inputs

def bad_files(tmp_path, suffix: str, valid) -> dict[str, object]:
    """Empty, truncated, random bytes, and a valid file of another format."""
    good = valid(tmp_path / f"good{suffix}")
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    noise = tmp_path / f"random{suffix}"
    noise.write_bytes(RANDOM)
    text = tmp_path / f"text{suffix}"
    text.write_text("a,b,label\n1,2,0\n")
    latin = tmp_path / f"latin1{suffix}"
    latin.write_bytes("a,b,label\n1,2,\xe9t\xe9\n".encode("latin-1"))
    pickled = tmp_path / f"pickled{suffix}"
    pickled.write_bytes(pickle.dumps({"x": [1, 2]}))
    return {"empty": empty, "truncated": truncated(good, tmp_path / f"half{suffix}"),
            "random": noise, "csv text": text, "latin-1 text": latin, "a pickle": pickled}


def dataset_bad_files(tmp_path):
    """Every bad dataset file: the generic ones for each format, plus format-specific ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for suffix, valid in ((".npz", valid_npz), (".parquet", valid_parquet)):
        folder = tmp_path / suffix.strip(".")
        folder.mkdir()
        for kind, path in bad_files(folder, suffix, valid).items():
            out[f"{suffix} {kind}"] = path
    csv = tmp_path / "csv"
    csv.mkdir()
    out[".csv empty"] = csv / "empty.csv"
    out[".csv empty"].write_bytes(b"")
    out[".csv random"] = csv / "random.csv"
    out[".csv random"].write_bytes(RANDOM)
    out[".csv parquet renamed"] = valid_parquet(csv / "renamed.csv")
    out[".csv ragged"] = csv / "ragged.csv"
    out[".csv ragged"].write_text("a,b,label\n1,2,0\n3,1\n4,5,6,7\n")
    out[".csv header only"] = csv / "header.csv"
    out[".csv header only"].write_text("a,b,label\n")
    out[".csv text features"] = csv / "words.csv"
    out[".csv text features"].write_text("a,label\nx,0\ny,1\n")
    x, y = arrays()
    out[".npz missing y"] = tmp_path / "no_y.npz"
    np.savez(out[".npz missing y"], x=x)
    out[".npz object array"] = tmp_path / "objects.npz"
    np.savez(out[".npz object array"], x=x, y=np.array([object()] * len(y), dtype=object))
    out[".npz npy renamed"] = tmp_path / "single.npz"
    with open(out[".npz npy renamed"], "wb") as handle:
        np.save(handle, x)
    out[".npz ragged y"] = tmp_path / "shape.npz"
    np.savez(out[".npz ragged y"], x=x, y=np.zeros((len(y), 2)))
    out[".npz empty zip"] = tmp_path / "emptyzip.npz"
    import zipfile

    with zipfile.ZipFile(out[".npz empty zip"], "w"):
        pass
    out[".npz text member"] = tmp_path / "member.npz"
    with zipfile.ZipFile(out[".npz text member"], "w") as archive:
        archive.writestr("x.npy", b"not an array")
        archive.writestr("y.npy", b"not an array")
    out[".parquet no label"] = valid_parquet(tmp_path / "nolabel.parquet", label="target")
    out[".parquet no rows"] = tmp_path / "norows.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float32()), "label": pa.array([], pa.int64())}),
                   out[".parquet no rows"])
    out[".parquet null labels"] = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "label": [0, None, 1]}),
                   out[".parquet null labels"])
    out[".parquet struct only"] = tmp_path / "struct.parquet"
    pq.write_table(pa.table({"a": [{"u": 1}, {"u": 2}], "label": [0, 1]}),
                   out[".parquet struct only"])
    out[".json unknown type"] = tmp_path / "data.json"
    out[".json unknown type"].write_text("{}")
    return out


DATASET_KINDS = [
    *(f"{s} {k}" for s in (".npz", ".parquet")
      for k in ("empty", "truncated", "random", "csv text", "latin-1 text", "a pickle")),
    ".csv empty", ".csv random", ".csv parquet renamed", ".csv ragged", ".csv header only",
    ".csv text features", ".npz missing y", ".npz object array", ".npz npy renamed",
    ".npz ragged y", ".npz empty zip", ".npz text member", ".parquet no label",
    ".parquet no rows", ".parquet null labels", ".parquet struct only", ".json unknown type",
]


@pytest.fixture(scope="module")
def dataset_files(tmp_path_factory):
    return dataset_bad_files(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_bad_dataset_file_is_one_sentence(dataset_files, kind, monkeypatch):
    from prunus.datasets import load

    path = dataset_files[kind]
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a) or None)
    with pytest.raises(PrunusError) as info:
        load(str(path))
    message = check(info, path)
    assert not unpickled
    if kind == ".npz object array":
        assert "unpickl" in message
    if kind == ".parquet no label":
        assert "label" in message and "target" in message
    if kind == ".npz missing y":
        assert "x and y" in message


def test_dataset_file_that_is_valid_still_loads(tmp_path):
    from prunus.datasets import load

    for path in (valid_npz(tmp_path / "a.npz"), valid_parquet(tmp_path / "a.parquet"),
                 valid_csv(tmp_path / "a.csv")):
        assert len(load(str(path))) > 0
    upper = tmp_path / "upper.NPZ"
    upper.write_bytes((tmp_path / "a.npz").read_bytes())
    assert len(load(str(upper))) > 0


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    x, y = arrays(20)
    data = datasets.Dataset.from_dict({"a": x[:, 0].tolist(), "label": y.tolist()})
    out = {}

    def saved(name, dict_=False):
        path = root / name
        (datasets.DatasetDict({"train": data}) if dict_ else data).save_to_disk(str(path))
        return path

    path = saved("garbage_info")
    (path / "dataset_info.json").write_text("{not json")
    out["garbage dataset_info.json"] = path
    path = saved("garbage_state")
    (path / "state.json").write_bytes(RANDOM)
    out["garbage state.json"] = path
    path = saved("truncated_arrow")
    for arrow in path.glob("*.arrow"):
        truncated(arrow, arrow)
    out["truncated arrow file"] = path
    path = saved("no_arrow")
    for arrow in path.glob("*.arrow"):
        arrow.unlink()
    out["missing arrow file"] = path
    path = saved("garbage_dict", dict_=True)
    (path / "dataset_dict.json").write_text("[1, 2")
    out["garbage dataset_dict.json"] = path
    path = root / "only_info"
    path.mkdir()
    (path / "dataset_info.json").write_text("{}")
    out["dataset_info.json only"] = path
    return out


HF_KINDS = ["garbage dataset_info.json", "garbage state.json", "truncated arrow file",
            "missing arrow file", "garbage dataset_dict.json", "dataset_info.json only"]


@pytest.mark.parametrize("kind", HF_KINDS)
def test_bad_hugging_face_directory_is_one_sentence(hf_dirs, kind):
    from prunus.datasets import load

    with pytest.raises(PrunusError) as info:
        load(str(hf_dirs[kind]))
    check(info, hf_dirs[kind])


# --------------------------------------------------------------------------- score tables, selections


def parquet_bad_files(tmp_path, valid):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = bad_files(tmp_path, ".parquet", valid)
    out["plain parquet"] = valid_parquet(tmp_path / "plain.parquet")
    out["csv renamed"] = valid_csv(tmp_path / "renamed.parquet")
    garbage = tmp_path / "garbage_meta.parquet"
    pq.write_table(pa.table({"id": [1, 2], "label": [0, 1], "s": [0.1, 0.2]}).replace_schema_metadata(
        {b"prunus.score_table": b"{oops", b"prunus.selection": b"{oops"}), garbage)
    out["garbage metadata"] = garbage
    listed = tmp_path / "list_meta.parquet"
    pq.write_table(pa.table({"id": [1, 2], "label": [0, 1], "s": [0.1, 0.2]}).replace_schema_metadata(
        {b"prunus.score_table": b"[1]", b"prunus.selection": b"[1]"}), listed)
    out["metadata not an object"] = listed
    dup = tmp_path / "dup_ids.parquet"
    pq.write_table(pa.table({"id": [1, 1], "label": [0, 1], "s": [0.1, 0.2]}).replace_schema_metadata(
        {b"prunus.score_table": b"{}", b"prunus.selection": b"{}"}), dup)
    out["repeated ids"] = dup
    words = tmp_path / "words.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "label": [0, 1], "s": ["x", "y"]}).replace_schema_metadata(
        {b"prunus.score_table": b"{}", b"prunus.selection": b"{}"}), words)
    out["text columns"] = words
    nulls = tmp_path / "null_ids.parquet"
    pq.write_table(pa.table({"id": [1, None], "label": [0, 1], "s": [0.1, 0.2]}).replace_schema_metadata(
        {b"prunus.score_table": b"{}", b"prunus.selection": b"{}"}), nulls)
    out["missing ids"] = nulls
    return out


TABLE_KINDS = ["empty", "truncated", "random", "csv text", "latin-1 text", "a pickle",
               "plain parquet", "csv renamed", "garbage metadata", "metadata not an object",
               "repeated ids", "text columns", "missing ids"]


@pytest.fixture(scope="module")
def score_files(tmp_path_factory):
    return parquet_bad_files(tmp_path_factory.mktemp("scores"), valid_scores)


@pytest.fixture(scope="module")
def selection_files(tmp_path_factory):
    return parquet_bad_files(tmp_path_factory.mktemp("selections"), valid_selection)


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_bad_score_table_is_one_sentence(score_files, kind):
    from prunus.data import ScoreTable

    with pytest.raises(PrunusError) as info:
        ScoreTable.read(score_files[kind])
    check(info, score_files[kind])


SELECTION_KINDS = [k for k in TABLE_KINDS if k != "repeated ids"]  # repeats are allowed there


@pytest.mark.parametrize("kind", SELECTION_KINDS)
def test_bad_selection_is_one_sentence(selection_files, kind):
    from prunus.data.table import read_selection

    with pytest.raises(PrunusError) as info:
        read_selection(selection_files[kind])
    check(info, selection_files[kind])


def test_valid_score_table_and_selection_still_read(tmp_path):
    from prunus.data import ScoreTable
    from prunus.data.table import read_selection

    assert len(ScoreTable.read(valid_scores(tmp_path / "s.parquet"))) == 10
    assert read_selection(valid_selection(tmp_path / "sel.parquet")).tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- masks (safetensors)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    from prunus.weights import masks

    root = tmp_path_factory.mktemp("weights")
    out = bad_files(root, ".safetensors", valid_weights)
    other = small_model(inputs=5)  # same names, other shapes
    masks.save(other, root / "other_shapes.safetensors")
    out["other shapes"] = root / "other_shapes.safetensors"
    from torch import nn

    masks.save(nn.Sequential(nn.Conv1d(1, 2, 3)), root / "conv.safetensors")
    out["other architecture"] = root / "conv.safetensors"
    state = {k: v.clone() for k, v in small_model().state_dict().items()}
    state["0.weight_mask"] = torch.ones(2, 2, dtype=torch.uint8)
    save_file(state, str(root / "bad_mask.safetensors"))
    out["mask of the wrong shape"] = root / "bad_mask.safetensors"
    header = json.dumps({"0.weight": {"dtype": "F32", "shape": [3, 4],
                                      "data_offsets": [0, 1000]}}).encode()
    lying = root / "lying.safetensors"
    lying.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    out["header past the end"] = lying
    return out


WEIGHT_KINDS = ["empty", "truncated", "random", "csv text", "latin-1 text", "a pickle",
                "other shapes", "other architecture", "mask of the wrong shape",
                "header past the end"]


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_bad_weights_file_is_one_sentence(weight_files, kind):
    import torch

    from prunus.weights import masks

    model = small_model()
    masks.apply(model, {"0.weight": torch.ones(3, 4, dtype=torch.bool)})
    before = {k: v.clone() for k, v in masks.plain_state(model).items()}
    with pytest.raises(PrunusError) as info:
        masks.load(model, weight_files[kind])
    check(info, weight_files[kind])
    after = masks.plain_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # left as it was
    assert set(masks.masks_of(model)) == {"0.weight"}


def test_valid_weights_still_load(tmp_path):
    from prunus.weights import masks

    model = masks.load(small_model(), valid_weights(tmp_path / "w.safetensors"))
    assert set(masks.masks_of(model)) == {"0.weight"}


# --------------------------------------------------------------------------- study stores


def study_store(tmp_path, kind):
    """A study directory with one bad file; returns (store, the bad file, the reader)."""
    from prunus.study import StudyStore

    store = StudyStore(tmp_path / "study")
    store.root.mkdir()
    store.runs_dir.mkdir()
    store.scores_dir.mkdir()
    store.config_path.write_text("[train]\nepochs = 1\n")
    reader = store.read_config
    bad = store.config_path
    if kind.startswith("config"):
        content = {"config garbage": RANDOM, "config empty": b"",
                   "config not toml": b"a = = 1\n[[[", "config latin-1": "x = '\xe9'".encode("latin-1"),
                   "config foreign toml": b"[tool.poetry]\nname = 'x'\n",
                   "config wrong types": b"datasets = 3\n"}[kind]
        bad.write_bytes(content)
    elif kind.startswith("run "):
        bad = store.run_path("r1")
        if kind == "run foreign parquet":
            valid_parquet(bad)
        else:
            bad.write_bytes({"run empty": b"", "run random": RANDOM}[kind])
        reader = store.consolidate
    elif kind.startswith("runs.parquet"):
        bad = store.runs_path
        if kind == "runs.parquet foreign":
            valid_parquet(bad)
        else:
            bad.write_bytes(RANDOM)
        reader = store.read_runs
    else:
        bad = store.score_meta_path("k")
        bad.write_bytes({"score meta garbage": b"{oops", "score meta list": b"[1, 2]",
                         "score meta latin-1": "{\"a\": \"\xe9\"}".encode("latin-1"),
                         "score meta empty": b""}[kind])
        reader = store.score_metas
    return store, bad, reader


STORE_KINDS = ["config garbage", "config empty", "config not toml", "config latin-1",
               "config foreign toml", "config wrong types", "run empty", "run random",
               "run foreign parquet", "runs.parquet random", "runs.parquet foreign",
               "score meta garbage", "score meta list", "score meta latin-1", "score meta empty"]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_bad_study_store_file_is_one_sentence(tmp_path, kind):
    store, bad, reader = study_store(tmp_path, kind)
    with pytest.raises(PrunusError) as info:
        reader()
    check(info, bad)
    if kind.startswith("score meta"):
        with pytest.raises(PrunusError):
            store.read_score_meta("k")
    if kind.startswith("config"):
        assert store.read_versions() == {}


# --------------------------------------------------------------------------- the CLI


def cli_cases(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "s").mkdir()
    files = dataset_bad_files(tmp_path / "d")
    store, bad_config, _ = study_store(tmp_path / "s", "config garbage")
    scores = tmp_path / "scores.parquet"
    scores.write_bytes(RANDOM)
    selection = tmp_path / "selection.parquet"
    valid_parquet(selection)
    good = valid_npz(tmp_path / "good.npz")
    return [
        (("train", "--dataset", str(files[".npz truncated"]), "--epochs", "1"), files[".npz truncated"]),
        (("train", "--dataset", str(files[".npz object array"]), "--epochs", "1"),
         files[".npz object array"]),
        (("train", "--dataset", str(files[".parquet random"]), "--epochs", "1"),
         files[".parquet random"]),
        (("train", "--dataset", str(files[".csv random"]), "--epochs", "1"), files[".csv random"]),
        (("train", "--dataset", str(files[".json unknown type"]), "--epochs", "1"),
         files[".json unknown type"]),
        (("train", "--dataset", str(good), "--model", "mlp", "--epochs", "1",
          "--subset", str(selection)), selection),
        (("scores", "show", str(scores)), scores),
        (("report", str(store.root)), bad_config),
    ]


def test_bad_files_through_the_cli_exit_2_with_one_sentence(tmp_path, capsys):
    cases = cli_cases(tmp_path)
    for args, bad in cases:
        capsys.readouterr()
        assert invoke(*args) == 2, args
        err = capsys.readouterr().err
        assert "Traceback" not in err and os.path.basename(str(bad)) in " ".join(err.split()), err
