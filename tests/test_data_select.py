"""Static selection: exact counts, class shares, policies and CCS bin filling, checked against
direct computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunus.counts import fraction_count
from prunus.data import SELECT_POLICIES, ScoreTable, select
from prunus.data.select import TieWarning, ccs_bin_counts, class_quotas, tie_keys
from prunus.errors import PrunusError


def make_table(scores, labels=None, ids=None, direction="higher_is_harder") -> ScoreTable:
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    ids = np.arange(100, 100 + n) if ids is None else np.asarray(ids)
    return ScoreTable(ids, labels, {"s": scores}, {"directions": {"s": direction}})


@st.composite
def tables(draw):
    n = draw(st.integers(2, 300))
    classes = draw(st.integers(1, 6))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    scores = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n))
    ids = draw(st.permutations(range(3 * n)))[:n]
    return make_table(scores, labels, ids)


@settings(max_examples=100, deadline=None)
@given(table=tables(), fraction=st.floats(0.0, 1.0), policy=st.sampled_from(SELECT_POLICIES),
       stratify=st.booleans(), seed=st.integers(0, 3))
def test_exact_counts_and_class_shares(table, fraction, policy, stratify, seed):
    n = len(table)
    if fraction == 0.0 or fraction_count(fraction, n) < 1:
        with pytest.raises(PrunusError, match="keep"):
            select(table, fraction, policy)
        return
    k = fraction_count(fraction, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TieWarning)  # drawn scores may tie a lot
        ids = select(table, fraction, policy, stratify=stratify, seed=seed)
    assert len(ids) == k
    assert len(np.unique(ids)) == k and np.isin(ids, table.ids).all()
    assert np.all(np.diff(ids) > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TieWarning)
        again = select(table, fraction, policy, stratify=stratify, seed=seed)
    np.testing.assert_array_equal(ids, again)
    if stratify:
        kept = np.isin(table.ids, ids)
        for c in np.unique(table.labels):
            in_class = table.labels == c
            share = k * in_class.sum() / n
            assert abs(kept[in_class].sum() - share) < 1.0  # floor or ceil of the exact share


def test_largest_remainder_rule():
    # shares that are whole numbers stay as they are.
    np.testing.assert_array_equal(class_quotas(np.array([6, 3, 1]), 10), [6, 3, 1])
    # budget 5 over [3, 3, 3]: shares 5/3 each → floors 1,1,1, two more: ties → lower index first.
    np.testing.assert_array_equal(class_quotas(np.array([3, 3, 3]), 5), [2, 2, 1])
    # budget 4 over [5, 3, 2]: shares 2.0, 1.2, 0.8 → floors 2,1,0, one more to remainder 0.8.
    np.testing.assert_array_equal(class_quotas(np.array([5, 3, 2]), 4), [2, 1, 1])
    # equal remainders, unequal classes: budget 3 over [4, 4, 2] → 1.2,1.2,0.6 → floors 1,1,0, +1 to 0.6.
    np.testing.assert_array_equal(class_quotas(np.array([4, 4, 2]), 3), [1, 1, 1])


def test_hardest_easiest_band_by_hand():
    scores = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]  # ids 100..109
    table = make_table(scores)
    # hardness ranking (ids): 101(.9) 106(.8) 104(.7) 108(.6) 103(.5) 107(.4) 100(.3) 105(.2) 102(.1) 109(0)
    np.testing.assert_array_equal(select(table, 0.3, "hardest"), [101, 104, 106])
    np.testing.assert_array_equal(select(table, 0.3, "easiest"), [102, 105, 109])
    # centred band of 4: skip ⌊0.3·10⌋ = 3 hardest, keep the next 4.
    np.testing.assert_array_equal(select(table, 0.4, "band"), [100, 103, 107, 108])
    np.testing.assert_array_equal(select(table, 0.2, "band", skip_hardest=0.1), [104, 106])
    with pytest.raises(PrunusError, match="skip_hardest"):
        select(table, 0.5, "band", skip_hardest=0.6)


def test_lower_is_harder_and_ties_broken_at_random():
    table = make_table([1.0, -2.0, 0.0, -2.0, 3.0], direction="lower_is_harder")
    np.testing.assert_array_equal(select(table, 0.4, "hardest"), [101, 103])  # no tie at the cut
    np.testing.assert_array_equal(select(table, 0.2, "easiest"), [104])
    # one of the two tied hardest (-2.0) is kept: which one depends on the seed, not on the id
    with pytest.warns(TieWarning):
        picks = {int(select(table, 0.2, "hardest", seed=seed)[0]) for seed in range(20)}
    assert picks == {101, 103}


def test_random_tie_break_by_hand():
    # ids 100..119: 4 clear scores, then 16 examples tied at 0
    scores = np.array([9.0, 8.0, 7.0, 6.0] + [0.0] * 16)
    table = make_table(scores)
    clear = {100, 101, 102, 103}
    with pytest.warns(TieWarning):
        a = select(table, 0.5, "hardest", seed=0)
    assert len(a) == 10 and clear <= set(a.tolist())  # non-tied examples: decided by score
    # the 6 tied ones kept are those with the lowest keys among the tied ones
    tied_ids = table.ids[4:]
    expected = tied_ids[np.argsort(tie_keys(tied_ids, 0), kind="stable")[:6]]
    np.testing.assert_array_equal(np.setdiff1d(a, list(clear)), np.sort(expected))
    with pytest.warns(TieWarning):
        same = select(table, 0.5, "hardest", seed=0)
    with pytest.warns(TieWarning):
        other = select(table, 0.5, "hardest", seed=1)
    np.testing.assert_array_equal(a, same)  # same seed → same selection
    assert not np.array_equal(a, other) and clear <= set(other.tolist())  # different seed → different
    # row order of the table does not matter, only (seed, id)
    order = np.random.default_rng(0).permutation(20)
    shuffled = make_table(scores[order], ids=table.ids[order])
    with pytest.warns(TieWarning):
        np.testing.assert_array_equal(select(shuffled, 0.5, "hardest", seed=0), a)
    # easiest and band also draw among the tied, never past a clearer example
    with pytest.warns(TieWarning):
        easy = select(table, 0.25, "easiest", seed=3)
    assert not clear & set(easy.tolist()) and len(easy) == 5


def test_mostly_zero_score_hardest_half_is_not_the_first_half_of_the_file():
    n = 1000
    scores = np.zeros(n)
    scores[np.random.default_rng(1).choice(n, 80, replace=False)] = np.arange(1, 81)  # 92% are 0
    table = make_table(scores, ids=np.arange(n))
    with pytest.warns(TieWarning, match=r"420 of the 500 examples kept by 'hardest' \(84%\)"):
        ids = select(table, 0.5, "hardest", stratify=False)
    assert len(ids) == 500 and np.isin(np.flatnonzero(scores > 0), ids).all()
    tied_kept = np.setdiff1d(ids, np.flatnonzero(scores > 0))
    assert 150 < (tied_kept < 500).sum() < 270  # about half from each half of the file, not all


def test_tie_warning_threshold():
    # 10 examples kept; boundary ties decide 1 of them (10%): no warning; 2 (20%): warning
    base = np.arange(20, 0, -1, dtype=float)  # distinct, ids 100..119 hardest first
    one = base.copy()
    one[9] = one[10]  # ranks 9 and 10 tie across the cut: 1 kept decided by the tie
    with warnings.catch_warnings():
        warnings.simplefilter("error", TieWarning)
        assert len(select(make_table(one), 0.5, "hardest")) == 10
        assert len(select(make_table(np.zeros(20)), 1.0, "hardest")) == 20  # all kept: no tie decides
    two = base.copy()
    two[8:11] = two[10]  # ranks 8, 9, 10 tie: 2 kept decided by the tie
    with pytest.warns(TieWarning, match="2 of the 10"):
        select(make_table(two), 0.5, "hardest")
    assert issubclass(TieWarning, UserWarning)


def test_rounding_goes_through_fraction_count():
    from prunus.weights.allocation import layer_counts

    # 0.29·100 = 28.999… in binary floating point: still 29 kept
    assert len(select(make_table(np.arange(100.0)), 0.29, "hardest")) == 29
    # band skip and ccs drop use the same rule: 0.29·100 skipped is 29
    band = select(make_table(np.arange(100.0)), 0.1, "band", skip_hardest=0.29, stratify=False)
    np.testing.assert_array_equal(band - 100, np.arange(61, 71))
    # a minimum density rounds up as written: 0.07·100 is 7 weights, not 8 (7.000…01)
    counts = layer_counts([(10, 10), (10, 90)], 0.93, "uniform", min_density=0.07)
    assert counts[0] == 7 and sum(counts) == 70


def test_stratified_hardest_keeps_the_top_of_each_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    scores = rng.normal(size=100) + labels  # class 2 is hardest overall
    table = make_table(scores, labels)
    ids = select(table, 0.2, "hardest")
    for c, quota in zip(range(3), [10, 6, 4]):
        rows = np.flatnonzero(labels == c)
        top = table.ids[rows[np.argsort(-scores[rows])[:quota]]]
        np.testing.assert_array_equal(np.sort(top), np.intersect1d(ids, table.ids[rows]))
    plain = select(table, 0.2, "hardest", stratify=False)
    np.testing.assert_array_equal(plain, np.sort(table.ids[np.argsort(-scores)[:20]]))


def test_ccs_bin_counts_by_hand():
    # sizes sorted [1, 3, 10]: 1 → min(1, 9//3) = 1; 3 → min(3, 8//2) = 3; 10 → min(10, 5) = 5.
    np.testing.assert_array_equal(ccs_bin_counts(np.array([1, 10, 3]), 9), [1, 5, 3])
    np.testing.assert_array_equal(ccs_bin_counts(np.array([4, 4, 4]), 6), [2, 2, 2])
    np.testing.assert_array_equal(ccs_bin_counts(np.array([0, 2, 7]), 8), [0, 2, 6])
    np.testing.assert_array_equal(ccs_bin_counts(np.array([2, 2]), 9), [2, 2])


def test_ccs_drops_the_hardest_and_fills_bins_evenly():
    scores = np.arange(100, dtype=float)  # ids 100..199, hardness = score
    table = make_table(scores)
    ids, weights = select(table, 0.3, "ccs", beta=0.1, bins=3, seed=1, return_weights=True)
    kept = ids - 100
    assert kept.max() < 90  # the hardest 10% are dropped
    # the remaining 0..89 split into equal-width bins [0, 29.67), [29.67, 59.33), [59.33, 89]
    np.testing.assert_array_equal(np.bincount(np.digitize(kept, [29.67, 59.34]), minlength=3), [10, 10, 10])
    np.testing.assert_allclose(weights, 1.0)
    # a sparse bin is used up and its leftover goes to the others.
    skewed = np.concatenate([[0.0, 1.0], np.linspace(60, 100, 98)])
    ids, weights = select(make_table(skewed), 0.4, "ccs", beta=0.0, bins=2, return_weights=True)
    kept = skewed[ids - 100]
    assert (kept < 50).sum() == 2 and (kept >= 50).sum() == 38
    low, high = weights[kept < 50], weights[kept >= 50]
    np.testing.assert_allclose(high / low[0], (98 / 38) / (2 / 2))  # inverse inclusion probability


def test_ccs_with_budget_beyond_the_cut_keeps_fewer_dropped():
    table = make_table(np.arange(10.0))
    ids = select(table, 0.95, "ccs", beta=0.5, stratify=False)
    assert len(ids) == 9 and 109 not in ids  # only one example can be dropped


def test_random_is_seeded_and_stratified():
    labels = np.repeat([0, 1], [80, 20])
    table = make_table(np.zeros(100), labels)
    a = select(table, 0.5, "random", seed=1)
    np.testing.assert_array_equal(a, select(table, 0.5, "random", seed=1))
    assert not np.array_equal(a, select(table, 0.5, "random", seed=2))
    assert np.isin(table.ids[labels == 1], a).sum() == 10


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_fraction_outside_the_unit_interval_is_an_error(fraction):
    with pytest.raises(PrunusError, match="keep must"):
        select(make_table(np.arange(10.0)), fraction)


def test_bad_policy_and_parameters():
    table = make_table(np.arange(10.0))
    with pytest.raises(PrunusError, match="policy must be one of: band, ccs, easiest, hardest, random"):
        select(table, 0.5, "middle")
    with pytest.raises(PrunusError, match="beta"):
        select(table, 0.5, "ccs", beta=1.0)
    with pytest.raises(PrunusError, match="bins"):
        select(table, 0.5, "ccs", bins=0)
    with pytest.raises(PrunusError, match="column must be one of"):
        select(table, 0.5, column="el2n")
    with pytest.raises(PrunusError, match="NaN"):
        select(make_table([0.0, np.nan]), 0.5)
