"""One registry shape for every family: register in one place, found everywhere."""

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from helpers import invoke

from prunus.errors import PrunusError
from prunus.registry import (
    DATASETS,
    FAMILIES,
    MODELS,
    NEGATIVES,
    ONLINE,
    SCORES,
    SELECT,
    WEIGHTS,
    Registry,
    import_plugins,
)


@pytest.fixture
def mine():
    """Register a score method 'mine' in ONE place (this decorator) and remove it afterwards."""

    @SCORES.register("mine", needs="outputs", column="mine_score")
    def my_scores(model, dataset, *, batch_size=1024, progress=None):
        """Label parity: a made-up score for the test.

        More text that is not the summary.
        """
        if progress is not None:
            progress(len(dataset))
        return (np.asarray(dataset.y) % 2).astype(np.float64)

    yield my_scores
    SCORES.unregister("mine")


def test_register_records_callable_defaults_and_first_docstring_line():
    reg = Registry("testing")

    @reg.register("alpha", speed=3)
    def alpha():
        """Alpha method.

        Details.
        """

    reg.register("beta", summary="explicit line")(lambda: None)
    assert reg.get("alpha") is alpha and reg["alpha"] is alpha
    assert reg.entry("alpha").defaults == {"speed": 3} and reg.entry("alpha").speed == 3
    assert reg.names() == ("alpha", "beta")
    assert reg.describe() == {"alpha": "Alpha method.", "beta": "explicit line"}
    assert "alpha" in reg and sorted(reg) == ["alpha", "beta"] and len(reg) == 2


def test_unknown_name_is_the_one_sentence_choice_error():
    reg = Registry("testing", field="testing method")
    reg.register("b")(len)
    reg.register("a")(len)
    with pytest.raises(PrunusError) as info:
        reg.get("zzz")
    assert str(info.value) == "testing method must be one of: a, b (got 'zzz')."
    assert reg.get("zzz", None) is None
    with pytest.raises(PrunusError, match=r"^method must be one of: .*el2n.*\(got 'el2m'\)\.$"):
        SCORES.get("el2m")
    for registry in FAMILIES.values():
        with pytest.raises(PrunusError) as info:
            registry.get("no-such-method")
        assert "\n" not in str(info.value) and str(info.value).endswith("(got 'no-such-method').")


def test_builtin_families_are_registries():
    from prunus.data import SCORE_METHODS
    from prunus.data.online import ONLINE_METHODS
    from prunus.models import list_models
    from prunus.weights import WEIGHT_METHODS

    assert set(SCORES.names()) == set(SCORE_METHODS)
    assert ONLINE_METHODS is ONLINE and set(ONLINE) >= {"rs2", "infobatch", "reweight"}
    assert WEIGHT_METHODS is WEIGHTS and "rigl" in WEIGHTS
    assert list_models() == MODELS.describe() and "cnn1d" in MODELS
    from prunus.data import SELECT_POLICIES
    from prunus.datasets import list_datasets
    from prunus.negatives import NEGATIVE_POLICIES

    assert SELECT_POLICIES == SELECT.names() == ("hardest", "easiest", "band", "ccs", "random")
    assert NEGATIVE_POLICIES == NEGATIVES.names() and "mined-margin" in NEGATIVES
    assert [e.name for e in list_datasets()] == sorted(DATASETS) and "mnist1d" in DATASETS
    for registry in FAMILIES.values():
        assert all(registry.describe().values()), registry.family  # one line per method


def test_new_score_method_in_one_place_is_usable_listed_and_accepted(mine, blobs, capsys):
    from prunus.data import score
    from prunus.study import parse_config

    table = score(blobs, model="mlp", method="mine", epochs=0, model_options={"hidden": [8]})
    assert table.metadata["column"] == "mine_score"
    assert table.metadata["description"] == "Label parity: a made-up score for the test."
    np.testing.assert_array_equal(table.columns["mine_score"], blobs.y % 2)

    assert invoke("methods", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["scores"]["mine"] == "Label parity: a made-up score for the test."
    assert set(listing) == {"datasets", "models", "scores", "select", "online", "weights", "negatives"}
    assert listing["datasets"]["digits"].startswith("scikit-learn's 1,797")
    assert set(listing["select"]) == {"hardest", "easiest", "band", "ccs", "random"}
    assert set(listing["negatives"]) >= {"in-batch", "mined-guided"}
    assert all(all(lines.values()) for lines in listing.values())  # one line per method
    assert invoke("methods", "scores") == 0
    assert "mine" in capsys.readouterr().out

    config = parse_config({
        "seeds": [0], "keep": [0.5], "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp"}], "train": {"epochs": 1}, "policies": [{"score": "mine"}],
    })
    assert config.policies[0].score == "mine"


def test_methods_command_rejects_unknown_family(capsys):
    assert invoke("methods", "nope") == 2
    assert ("family must be one of: datasets, models, negatives, online, scores, select, weights "
            "(got 'nope').") in capsys.readouterr().err


def test_bad_score_spec_is_one_sentence(blobs):
    from prunus.data import score

    SCORES.register("odd", needs="telepathy")(lambda model, dataset, **_: None)
    try:
        with pytest.raises(PrunusError, match="needs of score method 'odd' must be one of"):
            score(blobs, model="mlp", method="odd", epochs=0)
    finally:
        SCORES.unregister("odd")


class FakeEntryPoint:
    def __init__(self, name, obj, group):
        self.name, self.obj, self.group, self.value = name, obj, group, f"fake:{name}"

    def load(self):
        return self.obj


def test_entry_points_are_discovered_lazily(monkeypatch, blobs):
    import importlib.metadata

    def ep_scores(model, dataset, *, batch_size=1024, progress=None):
        """Scores from an installed package."""
        return np.arange(len(dataset), dtype=np.float64)

    groups = []

    def fake_entry_points(group=None, **_):
        groups.append(group)
        return [FakeEntryPoint("ep_score", ep_scores, group)] if group == "prunus.scores" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    reg = Registry("scores")
    assert groups == []  # nothing is looked up before the first lookup
    assert reg.get("ep_score") is ep_scores and groups == ["prunus.scores"]
    assert reg.describe() == {"ep_score": "Scores from an installed package."}
    SCORES.reload()
    try:
        from prunus.data import score

        table = score(blobs, model="mlp", method="ep_score", epochs=0, model_options={"hidden": [8]})
        np.testing.assert_array_equal(table.columns["ep_score"], np.arange(len(blobs)))
    finally:
        SCORES.unregister("ep_score")
        SCORES.reload()


def test_broken_entry_point_is_one_sentence(monkeypatch):
    import importlib.metadata

    class Broken(FakeEntryPoint):
        def load(self):
            raise ImportError("no module named 'gone'")

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **_: [Broken("bad", None, group)])
    with pytest.raises(PrunusError, match=r"^entry point 'bad' of group 'prunus.x' .*could not be loaded"):
        Registry("x").names()


PLUGIN = '''
from prunus.registry import SCORES


@SCORES.register("plugged", needs="outputs")
def plugged(model, dataset, *, batch_size=1024, progress=None):
    """A method from a plugin module."""
    return [0.0] * len(dataset)
'''


def test_plugin_modules_register_in_spawned_workers(tmp_path, monkeypatch):
    """``PRUNUS_PLUGINS`` modules are imported by each (spawned) worker on its first lookup."""
    from prunus.study import plugins

    (tmp_path / "my_prunus_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PRUNUS_PLUGINS", "my_prunus_plugin")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        names = pool.submit(plugins.score_methods).result(timeout=120)
    assert "plugged" in names and "el2n" in names
    try:
        import_plugins(["my_prunus_plugin"])  # the same modules, imported here explicitly
        assert SCORES.describe()["plugged"] == "A method from a plugin module."
        with pytest.raises(PrunusError, match="plugin module 'not_a_module_xyz'"):
            import_plugins("not_a_module_xyz")
    finally:
        SCORES.unregister("plugged")
        sys.modules.pop("my_prunus_plugin", None)


RUNTIME_PLUGIN = '''
from prunus.registry import SCORES


@SCORES.register("runtime_score", needs="outputs")
def runtime_score(model, dataset, *, batch_size=1024, progress=None):
    """Registered by an importable module of the user's at run time (not via PRUNUS_PLUGINS)."""
    return [float(i % 7) for i in range(len(dataset))]
'''


def test_methods_registered_at_run_time_reach_study_workers(tmp_path, monkeypatch):
    """A module imported by the user's script registers a method; ``--workers 2`` (spawned
    processes, no PRUNUS_PLUGINS) still runs it, because the pool imports that module."""
    import importlib

    from prunus.study import load_config, run_study
    from prunus.study.toml import to_toml

    (tmp_path / "my_runtime_methods.py").write_text(RUNTIME_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PRUNUS_PLUGINS", raising=False)
    importlib.import_module("my_runtime_methods")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 4)).astype(np.float32), np.arange(120) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:40], y_test=y[:40])
    values = {"name": "rt", "seeds": [0, 1], "keep": [0.5], "sparsity": [], "targets": [],
              "datasets": [{"name": str(tmp_path / "d.npz")}],
              "models": [{"name": "mlp", "options": {"hidden": [8]}}],
              "train": {"epochs": 1, "batch_size": 32},
              "policies": [{"score": "runtime_score", "proxy": {"epochs": 1, "seeds": 1}}],
              "execution": {"threads": 1}}
    (tmp_path / "rt.toml").write_text(to_toml(values))
    try:
        result = run_study(load_config(tmp_path / "rt.toml"), tmp_path / "out", workers=2,
                           progress=False)
    finally:
        SCORES.unregister("runtime_score")
    assert result.failed == 0 and result.failed_score_tables == 0 and result.ran == result.runs
