"""The statistics behind the verdicts against closed forms and brute force, and the verdict rule on constructed
evidence (actid/verdicts.py)."""

import itertools
import math

import numpy as np
import pytest

from actid.verdicts import (AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTABLE, at_least_tail, correlation_evidence,
                            fisher_interval, holm, judge, mean_band, mean_interval, n_for_correlation,
                            threshold_evidence, timing_evidence, wilson_interval, wilson_intervals)


def test_fisher_interval_of_a_pearson_r_is_tanh_of_z_plus_minus_1_96_over_root_n_minus_3():
    lo, hi = fisher_interval(0.5, 28)
    z, half = math.atanh(0.5), 1.959963984540054 / 5
    assert (lo, hi) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), abs=1e-12)
    assert (lo, hi) == pytest.approx((0.1560, 0.7358), abs=1e-4)
    lo_s, hi_s = fisher_interval(0.5, 28, spearman=True)  # Bonett-Wright: wider by sqrt(1 + r^2 / 2)
    assert hi_s - lo_s > hi - lo
    assert all(math.isnan(v) for v in fisher_interval(0.5, 3))


def test_n_for_correlation_matches_the_textbook_85_for_r_0_3():
    assert n_for_correlation(0.3) == 85
    assert n_for_correlation(-0.3) == 85
    assert n_for_correlation(0.92) == 7


def test_wilson_interval_solves_its_quadratic():
    k, n, z = 5, 13, 1.959963984540054
    p = k / n  # (p - x)^2 = z^2 x (1 - x) / n, solved for x
    a, b, c = 1 + z * z / n, -(2 * p + z * z / n), p * p
    roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    assert wilson_interval(k, n) == pytest.approx(roots, abs=1e-12)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == pytest.approx(1)


def test_poisson_binomial_tail_equals_enumeration():
    q = np.random.default_rng(0).uniform(0.02, 0.5, size=8)
    for k in range(9):
        brute = sum(np.prod([qi if o else 1 - qi for qi, o in zip(q, outcome)])
                    for outcome in itertools.product((0, 1), repeat=8) if sum(outcome) >= k)
        assert at_least_tail(q, k) == pytest.approx(brute, abs=1e-12)


def test_timing_null_holds_its_size_when_the_change_is_placed_at_random():
    """Under the null (each run's change uniform over its window) the test rejects at most 5% of the time."""
    rng = np.random.default_rng(1)
    windows = rng.integers(8, 30, size=13)
    chance = {i: min(5, w) / w for i, w in enumerate(windows)}  # +-2 evaluations around an event inside the window
    rejections = 0
    for _ in range(2000):
        hits = {i: bool(rng.random() < chance[i]) for i in chance}
        rejections += timing_evidence(hits, chance).p < 0.05
    assert rejections / 2000 <= 0.05


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, None, 0.01]) == [0.2, None, 0.02]  # None is not counted in the family


def test_mean_interval_is_students_t():
    lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 4.302652729911275 / math.sqrt(3), 2 + 4.302652729911275 / math.sqrt(3)))


def test_the_figures_bands_are_these_intervals_row_by_row():
    mean, lo, hi = mean_band([[1.0, 2.0, 3.0], [5.0, 5.0, 8.0]])  # steps x seeds
    assert mean.tolist() == [2.0, 6.0]
    assert (lo[0], hi[0]) == pytest.approx(mean_interval([1.0, 2.0, 3.0]))
    assert (lo[1], hi[1]) == pytest.approx(mean_interval([5.0, 5.0, 8.0]))
    assert np.isnan(mean_band([[1.0], [2.0]])[1]).all()  # one seed: no band
    assert wilson_intervals([0.5, 0.9], 50).tolist() == [list(wilson_interval(25, 50)), list(wilson_interval(45, 50))]


CORRELATION = {"id": "c", "test": "correlation", "direction": -1, "paper_effect": 0.8}
THRESHOLD = {"id": "t", "test": "threshold", "direction": "below", "threshold": 0.9}
TIMING = {"id": "d", "test": "timing"}


def test_a_strong_correlation_in_the_paper_direction_agrees_and_the_opposite_contradicts():
    x = np.arange(10.0)
    e = correlation_evidence(x, -x + 0.1 * np.sin(x)).to_dict()
    assert judge(CORRELATION, e, e["p"])[0] == AGREES
    e = correlation_evidence(x, x + 0.1 * np.sin(x)).to_dict()
    assert judge(CORRELATION, e, e["p"])[0] == CONTRADICTS


def test_a_weak_correlation_is_inconclusive_with_the_n_a_paper_sized_effect_needs():
    x = np.arange(7.0)
    e = correlation_evidence(x, np.array([3.0, 1.0, 2.0, 0.5, 2.5, 0.0, 1.5])).to_dict()
    verdict, why = judge(CORRELATION, e, e["p"])
    assert verdict == INCONCLUSIVE and "n = 10" in why  # n for |r| = 0.8 at 80% power


def test_a_verdict_that_one_left_out_seed_flips_is_inconclusive():
    x = np.tile(np.arange(6.0), 2)
    y = np.concatenate([-np.arange(6.0), np.array([1.0, 0, 0.5, -1, 0, -0.5])])  # seed 0 carries the trend
    e = correlation_evidence(x, y, units=[0] * 6 + [1] * 6, seeds=2).to_dict()
    assert e["unit"] == "seed" and len(e["leave_one_out"]) == 2
    verdict, why = judge(CORRELATION, e, e["p"])
    assert verdict == INCONCLUSIVE and "without seed" in why


def test_threshold_verdicts_need_three_seeds_and_an_interval_on_one_side():
    one = threshold_evidence({0: 0.5}, 0.9).to_dict()
    assert judge(THRESHOLD, one, None) == (INCONCLUSIVE, "one value, no interval: needs ≥ 3 seeds")
    three = threshold_evidence({0: 0.50, 1: 0.52, 2: 0.55}, 0.9).to_dict()
    assert judge(THRESHOLD, three, None)[0] == AGREES
    above = threshold_evidence({0: 1.2, 1: 1.25, 2: 1.3}, 0.9).to_dict()
    assert judge(THRESHOLD, above, None)[0] == CONTRADICTS
    straddles = threshold_evidence({0: 0.5, 1: 1.3, 2: 0.9}, 0.9).to_dict()
    assert judge(THRESHOLD, straddles, None)[0] == INCONCLUSIVE
    flips = threshold_evidence({0: 0.2, 1: 0.3, 2: 0.85, 3: 0.88}, 0.9, interval=(0.1, 0.89)).to_dict()
    assert judge(THRESHOLD, flips, None)[0] == AGREES  # every seed left out keeps the mean below 0.9
    flips = threshold_evidence({0: 0.1, 1: 0.95, 2: 0.96}, 0.9, interval=(0.2, 0.8)).to_dict()
    verdict, why = judge(THRESHOLD, flips, None)
    assert verdict == INCONCLUSIVE and why == "would read agrees, but reads contradicts without seed 0"
    two = threshold_evidence({0: 0.50, 1: 0.52}, 0.9, interval=(0.4, 0.6)).to_dict()
    verdict, why = judge(THRESHOLD, two, None)
    assert verdict == INCONCLUSIVE and "2 seed(s)" in why


def test_timing_agrees_only_beyond_chance():
    chance = {i: 0.1 for i in range(12)}
    e = timing_evidence({i: i < 6 for i in range(12)}, chance).to_dict()  # 6 of 12 against 10%
    assert e["p"] < 0.001 and judge(TIMING, e, e["p"])[0] == AGREES
    e = timing_evidence({i: i < 1 for i in range(12)}, chance).to_dict()
    assert judge(TIMING, e, e["p"])[0] == INCONCLUSIVE


def test_a_missing_statistic_is_not_testable_and_a_wrong_kind_is_refused():
    e = correlation_evidence([1, 2], [3, 4]).to_dict()
    assert judge(CORRELATION, e, None)[0] == NOT_TESTABLE
    with pytest.raises(ValueError, match="changing a rule is an amendment"):
        judge(THRESHOLD, correlation_evidence(np.arange(5.0), np.arange(5.0) ** 2).to_dict(), 0.01)


def test_the_examples_behind_accuracies_and_the_error_behind_an_llid_are_read_off_the_rows():
    import pandas as pd

    from actid.analysis.stats import examples_behind, id_error
    accuracies = np.array([953, 961, 945, 958]) / 1000
    assert examples_behind(accuracies) == 1000
    assert examples_behind(accuracies.astype(np.float32)) == 1000  # float32 rows in a CSV
    assert examples_behind([np.nan]) is None
    rows = pd.DataFrame({"id/a": [5.0, 7.0], "id_err/a": [0.1, 0.2], "id/b": [6.0, 3.0], "id_err/b": [0.3, 0.4],
                         "llid": [6.0, 3.0], "pid": [6.0, 7.0]})
    assert id_error(rows, "llid").tolist() == [0.3, 0.4]
    assert id_error(rows, "pid").tolist() == [0.3, 0.2]  # the layer whose ID is the peak, row by row
    assert np.isnan(id_error(rows, "id_mle/llid")).all()


def test_a_missing_value_drops_its_pair_not_the_whole_correlation():
    x, y = np.arange(8.0), -np.arange(8.0) + 0.1 * np.sin(np.arange(8.0))
    y[3] = np.nan
    e = correlation_evidence(x, y)
    assert e.untestable is None and e.n == 7 and e.estimate < -0.99


def test_timing_leave_one_out_uses_each_subsets_own_chance():
    """Chances 0.9, 0.7, 0.7, 0.9 and one hit: the full set is rarer than chance, but without run 3 the subset's
    upper bound (0.79) lies above its own chance (0.77): not a stable contradiction."""
    e = timing_evidence({0: True, 1: False, 2: False, 3: False}, {0: 0.9, 1: 0.7, 2: 0.7, 3: 0.9},
                        tolerance=2).to_dict()
    assert e["tolerance"] == 2 and e["leave_one_out"][3]["null"] == pytest.approx(0.7667, abs=1e-3)
    verdict, why = judge(TIMING, e, e["p"])
    assert verdict == INCONCLUSIVE and why.startswith("would read contradicts")
