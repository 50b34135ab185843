"""The one rounding rule, the one largest-remainder apportionment and the one atomic directory
write, each by hand and at every call site that used to round its own way."""

import itertools
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from prunus.counts import apportion, fraction_count, proportional_shares
from prunus.errors import PrunusError
from prunus.files import TEMP_PREFIX, atomic_directory


def test_fraction_count_floor_ceil_and_at_least():
    assert fraction_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996
    assert fraction_count(0.07, 100, up=True) == 7  # 0.07 * 100 == 7.000000000000001
    assert fraction_count(0.15, 10) == 1  # round() would give 2
    assert fraction_count(0.01, 10) == 0
    assert fraction_count(0.01, 10, at_least=1) == 1
    assert fraction_count(0.5, 10, at_least=1) == 5


def test_apportion_by_hand_with_ties():
    assert apportion(10, [6, 3, 1]) == [6, 3, 1]  # whole shares stay
    assert apportion(5, [3, 3, 3]) == [2, 2, 1]  # 5/3 each: equal shares, lower index first
    assert apportion(4, [5, 3, 2]) == [2, 1, 1]  # 2.0, 1.2, 0.8: the one left to 0.8
    # equal remainders (0.5, 0.5), unequal shares: the larger share first
    assert apportion(2, [1, 3]) == [0, 2]
    assert apportion(2, [3, 1]) == [2, 0]
    # 7 over (1, 1, 2, 2, 1): shares 1, 1, 2, 2, 1 exactly — nothing to round
    assert apportion(7, [1, 1, 2, 2, 1]) == [1, 1, 2, 2, 1]
    # 3 over (1, 2, 2, 1): 0.5, 1, 1, 0.5 → floors 0, 1, 1, 0, one left: equal shares, index 0
    assert apportion(3, [1, 2, 2, 1]) == [1, 1, 1, 0]
    # floats are the decimals they are written as: 0.1 + 0.2 is not 0.30000000000000004 here
    assert apportion(3, [0.1, 0.2]) == [1, 2]


def test_apportion_bounds_move_shares_exactly():
    # a cap of 1 on item 0 moves its share to the others: 9 over 2.5, 2.5 → 4.5, 4.5 → (5, 4)
    assert apportion(10, [5, 2.5, 2.5], upper=[1, 10, 10]) == [1, 5, 4]
    # a floor of 4 on item 2 (share 1) takes from the others
    assert apportion(10, [1, 1, 0.2], lower=[0, 0, 4]) == [3, 3, 4]
    shares = proportional_shares(10, [5, 2.5, 2.5], upper=[1, 10, 10])
    assert shares == [1, Fraction(9, 2), Fraction(9, 2)] and sum(shares) == 10
    assert apportion(6, [1, 2], lower=[2, 4], upper=[2, 4]) == [2, 4]  # fully pinned
    with pytest.raises(PrunusError, match="outside the bounds"):
        apportion(11, [1, 1], upper=[5, 5])
    with pytest.raises(PrunusError, match="outside the bounds"):
        apportion(1, [1, 1], lower=[1, 1])
    with pytest.raises(PrunusError, match="positive weights"):
        apportion(2, [1, 0])


def _independent_shares(total, weights, lower, upper):
    """Clip-and-rescale (the textbook capped proportional split), in Fractions."""
    fixed: dict[int, Fraction] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        left = total - sum(fixed.values())
        eps = left / sum(Fraction(weights[i]) for i in free)
        over = {i: Fraction(upper[i]) for i in free if eps * weights[i] > upper[i]}
        under = {i: Fraction(lower[i]) for i in free if eps * weights[i] < lower[i]}
        if not over and not under:
            return [fixed.get(i, eps * weights[i]) for i in range(len(weights))]
        fixed.update(over if over else under)  # caps first, re-check the floors after


def test_apportion_totals_exact_and_within_a_unit_on_many_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 7))
        weights = [int(w) for w in rng.integers(1, 50, size=k)]
        upper = [int(u) for u in rng.integers(1, 40, size=k)]
        lower = [int(rng.integers(0, u + 1)) // 2 for u in upper]
        total = int(rng.integers(sum(lower), sum(upper) + 1))
        counts = apportion(total, weights, lower, upper)
        assert sum(counts) == total
        assert all(lo <= c <= hi for c, lo, hi in zip(counts, lower, upper))
        shares = proportional_shares(total, weights, lower, upper)
        assert sum(shares) == total
        if len(set(lower)) == 1 and lower[0] == 0:  # the textbook split needs no floors
            assert shares == _independent_shares(total, weights, lower, upper)
        assert all(abs(c - q) < 1 for c, q in zip(counts, shares))
        # Hamilton: no unit can move from one item to another and bring both nearer their shares
        for i, j in itertools.permutations(range(k), 2):
            if counts[i] > lower[i] and counts[j] < upper[j]:
                assert (counts[i] - shares[i]) - (counts[j] - shares[j]) <= 1


def test_class_quotas_and_layer_counts_share_the_rule():
    from prunus.data.select import class_quotas
    from prunus.weights.allocation import layer_counts

    # the same tie on both sides: equal remainders go to the larger share
    np.testing.assert_array_equal(class_quotas(np.array([1, 3]), 2), [0, 2])
    # layers of 10 and 30 weights at sparsity 0.95: 2 kept, shares 0.5 and 1.5 → (0, 2)
    assert layer_counts([(10,), (30,)], 0.95) == [0, 2]  # the old rule (earlier first): [1, 1]


def test_noise_flips_floor_of_rate_times_n():
    from prunus.datasets import add_label_noise, from_arrays

    x = np.zeros((30, 2), dtype=np.float32)
    data = from_arrays(x, np.arange(30) % 3, x_test=x[:3], y_test=np.arange(3))
    for kind, extra in (("symmetric", {}), ("instance", {"proxy_probs": np.full((30, 3), 1 / 3)})):
        noisy = add_label_noise(data, 0.05, seed=0, kind=kind, **extra)
        assert len(noisy.flipped_ids) == 1  # ⌊0.05·30⌋ = 1 (round(1.5) would be 2)


def test_stratified_split_holds_out_floor_of_the_fraction_in_all():
    from prunus.datasets.adapters import stratified_split

    y = np.repeat([0, 1, 2], 3)
    train, test = stratified_split(y, 0.5, seed=0)
    # ⌊0.5·9⌋ = 4 in all, shares 1.5 each → (2, 1, 1); per-class round(1.5) held out 6
    assert len(test) == 4 and sorted(np.bincount(y[test]).tolist()) == [1, 1, 2]
    assert np.bincount(y[test]).tolist() == [2, 1, 1]
    assert sorted([*train, *test]) == list(range(9))


def test_drop_and_regrow_drops_floor_of_the_decimal():
    from prunus.weights.dst import drop_and_regrow

    weight = torch.arange(1.0, 101.0)
    mask = torch.ones(100, dtype=torch.bool)
    new, grown = drop_and_regrow(weight, mask, 0.29, torch.zeros(100))
    assert int(grown.sum()) == 29  # int(0.29 * 100) would be 28
    assert int(new.sum()) == 100


def test_rho_loss_holdout_is_floor_of_the_fraction():
    from prunus.data.online import get_online
    from prunus.datasets import from_arrays
    from prunus.train.trainer import Trainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    data = from_arrays(x, np.arange(10) % 2, x_test=x[:2], y_test=np.arange(2))
    policy = get_online("rho_loss", keep=0.5, holdout_fraction=0.15, irreducible_epochs=1)
    Trainer(torch.nn.Linear(4, 2), data, callbacks=[policy], epochs=1, batch_size=4, device="cpu").fit()
    assert len(policy.holdout_rows) == 1  # ⌊0.15·10⌋ (round(1.5) held out 2)


# --------------------------------------------------------------------------- atomic directories


def _write(files):
    def write(tmp):
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return write


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_atomic_directory_writes_replaces_and_gives_umask_modes(tmp_path):
    target = tmp_path / "out" / "model"
    atomic_directory(target, _write({"a.txt": "one", "sub/b.txt": "two"}))
    assert (target / "a.txt").read_text() == "one" and (target / "sub" / "b.txt").read_text() == "two"
    old_mask = os.umask(0o027)
    try:
        def private(tmp):  # files made 0600 (as mkstemp does) still end with the umask's mode
            (tmp / "c.txt").write_text("three")
            os.chmod(tmp / "c.txt", 0o600)
        atomic_directory(target, private)
    finally:
        os.umask(old_mask)
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # replaced whole, not merged
    assert (target / "c.txt").stat().st_mode & 0o777 == 0o640
    assert target.stat().st_mode & 0o777 == 0o750
    assert _leftovers(target.parent) == []


def test_atomic_directory_failure_half_way_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "model"
    atomic_directory(target, _write({"a.txt": "old"}))

    def half(tmp):
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_directory(target, half)
    assert [p.name for p in target.iterdir()] == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []

    renames = []
    real = os.rename

    def failing_second_rename(src, dst):  # moving the new directory in fails (e.g. EXDEV)
        renames.append((src, dst))
        if len(renames) == 2:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(PrunusError, match="could not write"):
        atomic_directory(target, _write({"a.txt": "new"}))
    monkeypatch.undo()
    assert (target / "a.txt").read_text() == "old"  # moved back
    assert _leftovers(tmp_path) == []

    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunusError, match="is a file"):
        atomic_directory(tmp_path / "file", _write({}))


def test_save_tokenizer_is_one_atomic_directory(tmp_path):
    from prunus.text.tokenizer import save_tokenizer

    class Tokenizer:
        def save_pretrained(self, directory):
            (tmp_path / "seen").write_text(directory)
            with open(os.path.join(directory, "tokenizer.json"), "w") as handle:
                handle.write("{}")

    target = tmp_path / "tok"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert save_tokenizer(Tokenizer(), target) == target
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer.json"]
    assert (tmp_path / "seen").read_text() != str(target)  # written elsewhere, then renamed
    assert _leftovers(tmp_path) == []
