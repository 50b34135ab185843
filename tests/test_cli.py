import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import invoke
from typer.testing import CliRunner

from prunus import cli

runner = CliRunner()


def test_help_lists_commands():
    cli._register_families()
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "datasets" in result.output


def test_datasets_list_and_show(capsys):
    assert invoke("datasets", "list") == 0
    out = capsys.readouterr().out
    assert "digits" in out and "mnist5k" in out and "mnist1d" in out
    assert invoke("datasets", "show", "digits") == 0
    assert "fingerprint" in capsys.readouterr().out


def test_train_json_on_digits(capsys):
    code = invoke("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--json")
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"][0]["accuracy"] > 0.5
    assert result["epochs"][0]["examples_forwarded"] == result["dataset"]["train"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "nope"], "dataset must be one of"),
        (["train", "--dataset", "digits", "--model", "vgg99"], "model must be one of"),
        (["train", "--dataset", "digits", "--optimizer", "adagrad"], "train.optimizer"),
        (["train", "--dataset", "digits", "--noise", "1.5"], "noise"),
        (["datasets", "show", "digits", "-o", "colour=red"], "option of dataset"),
        (["datasets", "show", "digits", "-o", "oops"], "name=value"),
        (["train", "--dataset", "digits", "--keep", "0.5"], "--keep applies only with --online"),
        (["train", "--dataset", "digits", "--subset", "missing.parquet"], "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args, message, capsys):
    assert invoke(*args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_one_class_file_is_rejected(tmp_path, capsys):
    path = tmp_path / "one.npz"
    np.savez(path, x=np.zeros((10, 3), dtype=np.float32), y=np.zeros(10, dtype=np.int64))
    assert invoke("datasets", "show", str(path)) == 2
    assert "single class" in capsys.readouterr().err


def test_console_script_exit_status():
    proc = subprocess.run(
        [sys.executable, "-m", "prunus.cli", "train", "--dataset", "nope"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "dataset must be one of" in proc.stderr and "Traceback" not in proc.stderr


def test_package_exports_match_its_lazy_names():
    import prunus

    assert set(prunus.__all__) == prunus._SUBMODULES | set(prunus._SHORTCUTS) | {"__version__"}


def test_train_on_a_selection_and_refuse_one_made_on_other_data(tmp_path, capsys):
    data = ["--dataset", "mnist1d", "-o", "train_size=400", "-o", "test_size=100"]
    scores, keep = str(tmp_path / "s.parquet"), str(tmp_path / "k.parquet")
    assert invoke("score", *data, "--model", "mlp", "--method", "loss", "--seeds", "1",
                  "--epochs", "1", "--out", scores) == 0
    assert invoke("select", scores, "--keep", "0.3", "--out", keep) == 0
    capsys.readouterr()
    assert invoke("train", *data, "--model", "mlp", "--epochs", "1", "--subset", keep,
                  "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"]["train"] == 120
    assert result["epochs"][0]["examples_backpropagated"] == 120
    other = ["--dataset", "mnist1d", "-o", "train_size=500", "-o", "test_size=100"]
    assert invoke("train", *other, "--model", "mlp", "--epochs", "1", "--subset", keep) == 2
    assert "made on other data" in capsys.readouterr().err
    assert invoke("train", *data, "--epochs", "1", "--subset", scores) == 2
    assert "is not a prunus selection" in capsys.readouterr().err


def test_help_does_not_import_torch():
    """`prunus --help` stays fast: every family's commands register without torch."""
    code = ("import sys; from prunus import cli; cli._register_families(); "
            "print(sorted(m for m in ('torch', 'transformers', 'pyarrow', 'duckdb') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["prunus.weights", "prunus.study", "prunus.data"])
def test_lazy_package_names_are_never_shadowed_by_their_submodules(package):
    import importlib
    import inspect
    import pkgutil

    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")  # rebinds any colliding attribute
    for name in module.__all__:
        assert not inspect.ismodule(getattr(module, name)), f"{package}.{name} is a module"


def test_evaluate_a_saved_sparse_model_matches_what_prune_reported(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    data = ["--dataset", "mnist1d", "-o", "train_size=400", "-o", "test_size=150"]
    assert invoke("prune", *data, "--model", "mlp", "--method", "magnitude", "--sparsity",
                  "0.8", "--epochs", "1", "--out", out, "--json") == 0
    pruned = json.loads(capsys.readouterr().out)
    assert invoke("evaluate", out, "--json") == 0  # dataset, options and model from the file
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pruned["accuracy"]
    assert evaluated["sparsity"] == pytest.approx(pruned["achieved_sparsity"])
    (tmp_path / "junk.safetensors").write_text("junk")
    assert invoke("evaluate", str(tmp_path / "junk.safetensors")) == 2
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_pair_noise_from_the_command_line(capsys):
    code = invoke("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                  "--noise", "0.2", "--noise-kind", "pairs", "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["dataset"]
    assert summary["flipped"] == summary["train"] * 2 // 10  # ⌊0.2·N⌋
    assert invoke("train", "--dataset", "digits", "--noise", "0.2", "--noise-kind", "odd") == 2
    assert "noise kind must be one of" in capsys.readouterr().err


def test_labels_find_writes_a_table_and_measures_itself_on_injected_noise(tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "issues.parquet"
    assert invoke("labels", "find", "--dataset", "digits", "--noise", "0.2", "--noise-kind",
                  "pairs", "--epochs", "3", "--folds", "3", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "against the 287 labels flipped: precision" in printed  # ⌊0.2·1438⌋
    table = pq.read_table(out)
    assert {"id", "label_issue", "is_issue", "suggested_label"} <= set(table.column_names)
    assert invoke("labels", "find", "--dataset", "digits", "--out", str(tmp_path / "x.csv")) == 2


def test_datasets_show_a_hugging_face_directory(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    rows = {"f1": [float(i % 7) for i in range(40)], "f2": [float(i % 5) for i in range(40)],
            "label": [i % 2 for i in range(40)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf"))
    assert invoke("datasets", "show", str(tmp_path / "hf")) == 0
    out = capsys.readouterr().out
    assert "fingerprint" in out and "class counts" in out
