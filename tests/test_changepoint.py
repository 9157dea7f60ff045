"""The change-point estimator every lens is timed with, validated on synthetic series whose change is known, and the
events it is timed against, on constructed accuracy curves."""

import numpy as np
import pandas as pd
import pytest

from actid.analysis.changepoint import ChangePoint
from actid.analysis.events import run_events, strength_event

LINEAR = np.arange(0, 3000, 100.0)  # 30 evaluations, evenly spaced
LOG = np.unique(np.round(np.geomspace(1, 10_000, 30)))  # 30 log-spaced evaluation steps


def step_series(rng, n, at, jump=1.0, noise=0.3):
    return np.where(np.arange(n) < at, 0.0, jump) + noise * rng.normal(size=n)


def sigmoid_series(rng, n, centre, width=1.5, noise=0.2):
    return 1 / (1 + np.exp(-(np.arange(n) - centre + 0.5) / width)) + noise * rng.normal(size=n)


@pytest.mark.parametrize("steps", [LINEAR, LOG], ids=["linear", "log"])
def test_a_known_step_is_recovered_within_one_evaluation_with_a_small_null_p(steps):
    rng = np.random.default_rng(0)
    n = len(steps)
    errors, ps = [], []
    for _ in range(40):
        fit = ChangePoint(n_boot=199, n_perm=199, seed=1).fit(steps, step_series(rng, n, at=12))
        errors.append(abs(fit.index_ - 12))
        ps.append(fit.p_value_)
        assert fit.step_ == steps[fit.index_]
    assert np.median(errors) == 0 and np.quantile(errors, 0.9) <= 1
    assert max(ps) <= 0.01


def test_a_sigmoid_transition_is_placed_at_its_midpoint_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    errors, covered = [], []
    for _ in range(40):
        fit = ChangePoint(n_boot=299, n_perm=99, seed=3).fit(LINEAR, sigmoid_series(rng, len(LINEAR), centre=17))
        errors.append(fit.index_ - 17)
        lo, hi = fit.index_interval_
        covered.append(lo <= 17 <= hi)
    assert abs(np.median(errors)) <= 0.5 and np.quantile(np.abs(errors), 0.9) <= 2
    assert np.mean(covered) >= 0.85  # the nominal 95% interval


def test_the_permutation_null_holds_its_level_on_pure_noise():
    rng = np.random.default_rng(4)
    ps = np.array([ChangePoint(n_boot=1, n_perm=199, seed=i).fit(LINEAR, rng.normal(size=len(LINEAR))).p_value_
                   for i in range(200)])
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10


def test_missing_values_are_dropped_and_bad_input_is_refused():
    rng = np.random.default_rng(5)
    values = step_series(rng, 30, at=12)
    values[[3, 20]] = np.nan
    fit = ChangePoint(n_boot=9, n_perm=9).fit(LINEAR, values)
    assert fit.n_ == 28 and fit.step_ == 1200.0  # the step of the first evaluation after the change
    flat = ChangePoint().fit(LINEAR, np.ones(30))
    assert np.isnan(flat.step_) and flat.p_value_ == 1.0
    with pytest.raises(ValueError, match="increase strictly"):
        ChangePoint().fit(LINEAR[::-1], values)
    with pytest.raises(ValueError, match="one length"):
        ChangePoint().fit(LINEAR, values[:-1])


def curves(train, val, steps=None):
    steps = np.arange(len(train)) * 100 if steps is None else steps
    return pd.DataFrame({"step": steps, "train_acc": train, "val_acc": val})


def test_events_of_each_study_on_constructed_curves():
    train = [0.1, 0.5, 0.9, 0.995, 1, 1, 1, 1, 1, 1]
    grok = curves(train, [0.01, 0.01, 0.01, 0.01, 0.02, 0.1, 0.6, 0.9, 1, 1])
    assert run_events("grokking", grok) == {"memorization": {"step": 300.0, "index": 3.0},
                                           "generalization": {"step": 600.0, "index": 6.0}}
    # MNIST grokking: halfway from 0.6 (at memorization) to 0.9 (final) is 0.75
    mnist = curves(train, [0.2, 0.5, 0.6, 0.6, 0.62, 0.7, 0.8, 0.88, 0.9, 0.9])
    assert run_events("mnist_grokking", mnist)["generalization"] == {"step": 600.0, "index": 6.0}
    # the sigma sweep: halfway from the first value 0.1 to the maximum 0.9 is 0.5
    sweep = curves(train, [0.1, 0.3, 0.55, 0.8, 0.9, 0.85, 0.8, 0.8, 0.8, 0.8])
    assert run_events("memorization", sweep)["generalization"] == {"step": 200.0, "index": 2.0}
    permuted = curves(train, [0.1, 0.4, 0.7, 0.75, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert run_events("geometry", permuted)["peak_test"] == {"step": 300.0, "index": 3.0}
    never = run_events("grokking", curves([0.1] * 10, [0.01] * 10))
    assert all(np.isnan(e["step"]) and np.isnan(e["index"]) for e in never.values())
    with pytest.raises(ValueError, match="strength_event"):
        run_events("regularization", grok)


def test_the_strength_event_is_the_over_regularization_threshold():
    event = strength_event([1e-2, 1e-4, 1e-3, 1e-1], [0.90, 0.95, 0.94, 0.5])
    assert event == {"strength": 1e-3, "index": 1.0}
