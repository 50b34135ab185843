"""Every family in one registry: datasets, select and negatives policies, discovered score
modules, weight ``needs``, ``prunus score --method-option`` and a light CLI start-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke
from torch import nn

from prunus.errors import PrunusError
from prunus.registry import DATASETS, SCORES, SELECT, WEIGHTS, Registry

SRC = str(Path(__file__).resolve().parents[1] / "src")

PLUGIN = '''
import numpy as np

from prunus.registry import SCORES


@SCORES.register("parity", needs="outputs")
def parity_scores(model, dataset, *, batch_size=1024, progress=None, modulus=2, offset=0.0):
    """Label modulo ``modulus`` plus ``offset``: a made-up score from a plugin module."""
    return (np.asarray(dataset.y) % modulus + offset).astype(np.float64)
'''


def _run(args, env_extra, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(cwd)]), **env_extra}
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_score_method_in_one_new_module_is_used_by_prunus_score_with_method_options(tmp_path):
    (tmp_path / "parity_plugin.py").write_text(PLUGIN)
    out = tmp_path / "parity.parquet"
    env = {"PRUNUS_PLUGINS": "parity_plugin"}
    done = _run(["-m", "prunus.cli", "score", "--dataset", "digits", "--model", "mlp",
                 "--method", "parity", "--epochs", "0", "--out", str(out), "--json",
                 "--method-option", "modulus=3", "--method-option", "offset=0.5"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)
    assert metadata["method"] == "parity" and metadata["settings"]["method_options"] == {
        "modulus": 3, "offset": 0.5}
    from prunus.data import ScoreTable
    from prunus.datasets import load

    table = ScoreTable.read(out)
    y = load("digits").y
    np.testing.assert_array_equal(table.columns["parity"], y % 3 + 0.5)



def test_unknown_method_option_is_one_sentence_before_any_work(tmp_path, monkeypatch, capsys):
    from prunus.registry import import_plugins

    (tmp_path / "parity_plugin_b.py").write_text(PLUGIN.replace('"parity"', '"parity_b"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    import_plugins(["parity_plugin_b"])
    try:
        code = invoke("score", "--dataset", "digits", "--method", "parity_b", "--out",
                      str(tmp_path / "bad.parquet"), "--method-option", "modulo=3")
        assert code == 2
        assert ("--method-option 'modulo' is not a setting of score method 'parity_b'; allowed: "
                "modulus, offset.") in capsys.readouterr().err
    finally:
        SCORES.unregister("parity_b")
        sys.modules.pop("parity_plugin_b", None)
    assert not (tmp_path / "bad.parquet").exists()


def test_method_options_go_to_score_arguments_or_the_method():
    from prunus.data.cli import split_method_options

    assert split_method_options("uncertainty", {"kind": "margin"}) == ({"kind": "margin"}, {})
    assert split_method_options("prototypes", {"k": 4, "iterations": 5}) == (
        {"clusters": 4}, {"iterations": 5})
    assert split_method_options("prototypes", {"clusters": 4}) == ({"clusters": 4}, {})
    assert split_method_options("dynamic_uncertainty", {"window": 3}) == ({"window": 3}, {})
    for method, key in (("grand_last_layer", "last_layer"), ("el2n", "batch_size"),
                        ("kcenter", "seed"), ("label_issue", "epochs")):
        with pytest.raises(PrunusError, match=f"--method-option {key!r} is not a setting"):
            split_method_options(method, {key: 1})
    assert split_method_options("grand", {"last_layer": True}) == ({}, {"last_layer": True})


def test_modules_of_a_package_are_discovered(tmp_path, monkeypatch):
    """A built-in score method is ONE new file: every module of the package registers itself."""
    package = tmp_path / "fake_scores_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(
            "from test_registry_families import FAKE\n"
            f"FAKE.register({name!r})(lambda: None)\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert FAKE.names() == ("alpha", "beta")
    for name in ("fake_scores_pkg", "fake_scores_pkg.alpha", "fake_scores_pkg.beta"):
        sys.modules.pop(name, None)
    assert SCORES.packages == ("prunus.data.scores",)


FAKE = Registry("fake", packages=("fake_scores_pkg",))


def test_registered_select_policy_is_used_by_select_and_accepted_by_a_study():
    from prunus.data import ScoreTable, select
    from prunus.study import parse_config

    @SELECT.register("evens")
    def evens(hardness, ranking, quota, rng, *, beta=0.1):
        """Even positions first (a made-up policy for the test)."""
        order = np.concatenate([np.arange(0, len(hardness), 2), np.arange(1, len(hardness), 2)])
        return order[:quota], np.full(quota, beta), 0

    try:
        table = ScoreTable(np.arange(20) + 100, np.zeros(20, dtype=np.int64),
                           {"score": np.linspace(0, 1, 20)})
        ids, weights = select(table, 0.25, "evens", beta=0.3, return_weights=True)
        np.testing.assert_array_equal(ids, [100, 102, 104, 106, 108])
        np.testing.assert_allclose(weights, 1.0)  # normalised to mean 1
        config = parse_config({
            "seeds": [0], "keep": [0.5], "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp"}], "train": {"epochs": 1},
            "policies": [{"score": "el2n", "select": "evens"}],
        })
        assert config.policies[0].select == "evens"
    finally:
        SELECT.unregister("evens")
    with pytest.raises(PrunusError, match=r"^policy must be one of: band, ccs, easiest, hardest, "
                                          r"random \(got 'evens'\)\.$"):
        select(table, 0.25, "evens")


def test_registered_dataset_loads_lists_and_checks_options(capsys):
    from prunus.datasets import Dataset, load, register

    @register("tiny_pairs", "two points per class (a made-up dataset for the test)")
    def tiny(*, size: int = 4) -> Dataset:
        x = np.arange(size * 2, dtype=np.float32).reshape(size, 2)
        return Dataset("tiny_pairs", np.arange(size), x, np.arange(size) % 2, 2)

    try:
        assert DATASETS.entry("tiny_pairs").options() == {"size": 4}
        assert len(load("tiny_pairs", size=6)) == 6
        with pytest.raises(PrunusError, match="option of dataset 'tiny_pairs' must be one of: size"):
            load("tiny_pairs", rows=6)
        assert invoke("methods", "datasets", "--json") == 0
        listing = json.loads(capsys.readouterr().out)
        assert listing == {"datasets": DATASETS.describe()}
        assert listing["datasets"]["tiny_pairs"] == "two points per class (a made-up dataset for the test)"
    finally:
        DATASETS.unregister("tiny_pairs")
    with pytest.raises(PrunusError, match=r"^dataset must be one of: a path to .*mnist1d.*\(got 'tiny_pairs'\)\.$"):
        load("tiny_pairs")


def test_weight_registrations_say_what_their_criterion_reads():
    needs = {name: WEIGHTS.entry(name).defaults.get("needs") for name in WEIGHTS}
    assert {n for n, v in needs.items() if v == "data"} == {"gradient", "snip", "grasp"}
    assert needs["synflow"] == "input_shape" and needs["magnitude"] is None and needs["rigl"] is None


def test_bridge_refuses_by_what_the_method_needs_and_synflow_needs_only_a_shape():
    from prunus.integrations._bridge import PolicyRunner
    from prunus.weights import get_sparsifier, masks_of

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    plan = {"epochs": 1, "batch_size": 4, "total_steps": 4, "num_examples": 16}
    with pytest.raises(PrunusError, match=r"^weight method 'synflow' is data-free but needs the "
                                          r"model's input shape"):
        PolicyRunner([get_sparsifier("synflow", sparsity=0.5)]).start(model(), **plan)
    with pytest.raises(PrunusError, match=r"^weight method 'snip' scores on data: pass scoring_data="):
        PolicyRunner([get_sparsifier("snip", sparsity=0.5)]).start(model(), **plan)
    PolicyRunner([get_sparsifier("magnitude", sparsity=0.5)]).start(model(), **plan)  # needs nothing

    # SynFlow reads only the shape: any batch of that shape gives the same masks
    masks = []
    for fill in (0.0, 7.0):
        net = model()
        batch = (torch.full((2, 8), fill), torch.zeros(2, dtype=torch.int64))
        PolicyRunner([get_sparsifier("synflow", sparsity=0.5, iterations=2)],
                     scoring_data=batch).start(net, **plan)
        masks.append({k: v.clone() for k, v in masks_of(net).items()})
        assert sum(int((~m).sum()) for m in masks[-1].values()) == (8 * 16 + 16 * 2) // 2
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_cli_start_up_imports_neither_numpy_nor_torch():
    code = ("import sys, prunus.cli; prunus.cli._register_families(); "
            "print(sorted(m for m in ('numpy', 'torch', 'pandas', 'pyarrow', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
