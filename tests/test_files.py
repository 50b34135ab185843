"""The one atomic-write helper and the early writability check."""

import os
import stat

import pytest
from helpers import invoke

from prunus.errors import PrunusError
from prunus.files import atomic_write, check_writable, default_mode


def test_atomic_write_gives_the_umask_mode_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "sub" / "a.txt", lambda tmp: tmp.write_text("x"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 == default_mode()
    finally:
        os.umask(old)

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "b.txt", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"


def test_check_writable_names_the_flag_and_the_reason(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PrunusError, match=r"--out .* is a file, not a directory"):
        check_writable(tmp_path / "file" / "x.parquet")
    with pytest.raises(PrunusError, match="is a directory"):
        check_writable(tmp_path, "--report")
    assert check_writable(tmp_path / "new" / "x.parquet").parent.is_dir()


@pytest.mark.parametrize("command", [
    ["score", "--dataset", "digits", "--model", "mlp", "--method", "loss", "--epochs", "1"],
    ["prune", "--dataset", "digits", "--model", "mlp", "--epochs", "1"],
])
def test_outputs_are_checked_before_any_work(tmp_path, capsys, command, monkeypatch):
    from prunus.train import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(trainer.Trainer, "fit", no_training)
    (tmp_path / "file").write_text("")
    suffix = ".safetensors" if command[0] == "prune" else ".parquet"
    out = str(tmp_path / "file" / f"x{suffix}")
    assert invoke(*command, "--out", out) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_score_tables_and_masks_get_the_same_mode_as_their_sidecars(tmp_path):
    import numpy as np

    from prunus.data.table import ScoreTable

    old = os.umask(0o022)
    try:
        table = ScoreTable(np.arange(3), np.zeros(3, dtype=np.int64), {"loss": np.ones(3)})
        path = table.write(tmp_path / "t.parquet")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
