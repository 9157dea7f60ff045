"""The representation lenses users of representation tools expect: debiased linear CKA (and its drift between
evaluations), effective rank (RankMe) and neural collapse NC1, each against a closed form and an independent
implementation written here."""

import numpy as np
import pandas as pd
import pytest
import torch

from actid.experiments.grokking import build
from actid.measures import debiased_cka, effective_rank, nc1
from actid.train import train

TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32, "steps": 24,
        "eval_every": 8, "optimizer": "adamw", "device": "cpu",
        "measures": {"cka_drift": {}, "effective_rank": {}, "nc1": {}}}


def u_centred(A: np.ndarray) -> np.ndarray:
    """Szekely & Rizzo's U-centring (of a matrix with a zero diagonal, as their distance matrices have): the
    unbiased distance-covariance route to the same HSIC estimate."""
    n = len(A)
    A = A - np.diag(np.diag(A))
    U = (A - A.sum(0, keepdims=True) / (n - 2) - A.sum(1, keepdims=True) / (n - 2)
         + A.sum() / ((n - 1) * (n - 2)))
    np.fill_diagonal(U, 0)
    return U


def cka_by_u_centring(x: np.ndarray, y: np.ndarray) -> float:
    K, L = u_centred(x @ x.T), u_centred(y @ y.T)
    return float((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()))


def test_debiased_cka_equals_the_u_centred_estimator_and_is_one_under_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7))
    y = np.tanh(x @ rng.normal(size=(7, 11))) + 0.3 * rng.normal(size=(60, 11))  # related, another width
    assert debiased_cka(x, y) == pytest.approx(cka_by_u_centring(x, y), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    assert debiased_cka(x, 3.5 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_of_unrelated_representations_is_near_zero_where_the_plug_in_cka_is_not():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 1000)), rng.normal(size=(100, 1000))  # many features against few examples
    xc, yc = x - x.mean(0), y - y.mean(0)
    plug_in = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert plug_in > 0.5  # the bias the debiased estimator removes
    assert abs(debiased_cka(x, y)) < 0.05


def test_debiased_cka_refuses_mismatched_or_too_few_examples():
    with pytest.raises(ValueError, match="same examples"):
        debiased_cka(np.ones((10, 3)), np.ones((9, 3)))
    with pytest.raises(ValueError, match="at least 4"):
        debiased_cka(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="no variance"):
        debiased_cka(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3)))


def test_effective_rank_of_k_equal_singular_values_is_k_and_matches_an_eigenvalue_route():
    rng = np.random.default_rng(2)
    q1, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    q2, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    for k in (1, 3, 12):
        s = np.zeros((40, 12))
        s[np.arange(k), np.arange(k)] = 2.0
        assert effective_rank(q1 @ s @ q2) == pytest.approx(k, rel=1e-10)
    x = rng.normal(size=(50, 8)) * np.array([5, 3, 2, 1, 1, 0.5, 0.1, 0.01])
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(x.T @ x), 0, None))
    p = sv / sv.sum()
    assert effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert effective_rank(x + 7.0, center=True) == pytest.approx(effective_rank(x - x.mean(0)), rel=1e-9)
    with pytest.raises(ValueError, match="all zero"):
        effective_rank(np.zeros((5, 3)))


def nc1_by_definition(h: np.ndarray, labels: np.ndarray) -> float:
    """Papyan et al.'s NC1 with explicit covariance matrices and numpy's pseudo-inverse."""
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(0) for c in classes])
    sigma_w = sum((h[labels == c] - m).T @ (h[labels == c] - m) for c, m in zip(classes, means)) / len(h)
    centred = means - means.mean(0)
    sigma_b = centred.T @ centred / len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / len(classes))


def test_nc1_matches_the_definition_a_closed_form_and_is_zero_for_collapsed_classes():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), [10, 15, 20, 25])  # unbalanced classes
    h = rng.normal(size=(70, 9)) + 3 * rng.normal(size=(4, 9))[labels]
    assert nc1(h, labels) == pytest.approx(nc1_by_definition(h, labels), rel=1e-8)
    q, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    assert nc1(0.1 * h @ q, labels) == pytest.approx(nc1(h, labels), rel=1e-9)  # rotation and scale
    # closed form: two classes at -a and +a on axis 0, each point a +-s step on axis 1: Sigma_B = a^2 on axis 0,
    # Sigma_W = s^2 on axis 1 only, so tr(Sigma_W Sigma_B^+) = 0; a step of s on axis 0 instead gives s^2 / a^2 / 2
    a, s = 2.0, 0.5
    two = np.array([[-a, s], [-a, -s], [a, s], [a, -s]])
    assert nc1(two, [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-15)
    two_along = np.array([[-a + s, 0], [-a - s, 0], [a + s, 0], [a - s, 0]])
    assert nc1(two_along, [0, 0, 1, 1]) == pytest.approx(s**2 / a**2 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc1(h, np.zeros(70))
    with pytest.raises(ValueError, match="same mean"):
        nc1(np.tile([[1.0, 2.0], [3.0, 4.0]], (2, 1)), [0, 0, 1, 1])


def test_cka_drift_is_recorded_per_evaluation_and_a_resumed_run_measures_the_same_drift(tmp_path):
    full = train(*build(TINY), tmp_path / "full", progress=False)
    drift = full["cka_drift/blocks.1.mlp"]
    assert np.isnan(drift.iloc[0]) and drift.iloc[1:].between(-0.1, 1.0).all()
    assert full["effective_rank/blocks.1.mlp"].between(1, 32).all() and full["nc1/blocks.1.mlp"].gt(0).all()
    partial = train(*build(TINY), tmp_path / "resumed", progress=False, stop_after=8)
    assert partial["step"].tolist() == [0, 8]
    torch.manual_seed(999)
    resumed = train(*build(TINY), tmp_path / "resumed", progress=False)  # the drift at 16 needs the state at 8
    pd.testing.assert_frame_equal(full, resumed)


def test_a_profile_adds_lenses_to_a_study_s_own_measures_and_a_bad_lens_is_refused_before_any_run():
    from actid.pipeline.grid import InvalidSweep, resolve_grid
    params = {"memorization": {"tiny": {"fixed": {"epochs": 1, "lenses": {"nc1": {"probe": "val"},
                                                                           "effective_rank": {"every": 2}}},
                                        "grid": {"init_std": [0.1]}}}}
    _, (config,) = resolve_grid("memorization", params, "tiny")
    assert {"gradient_alignment", "id", "nc1", "effective_rank"} <= set(config["measures"])  # its own kept
    assert config["measures"]["effective_rank"]["every"] == 2 and "lenses" not in config
    params["memorization"]["tiny"]["fixed"]["lenses"] = {"nc1": {"probe": "nowhere"}}
    with pytest.raises(InvalidSweep, match="nowhere"):
        resolve_grid("memorization", params, "tiny")


def test_the_lens_race_notebook_times_every_lens_against_the_events(tmp_path, run_notebook):
    from actid.pipeline.local import run_sweep
    tiny = {"train_images": 100, "hidden_units": 32, "batch_size": 10, "epochs": 3, "eval_log_points": 10,
            "lenses": {"nc1": {}, "effective_rank": {}, "cka_drift": {}},
            "lens_probes": {"train": {"split": "train", "per_class": 5}}}  # replaces the study's 100 per class
    params = {"memorization": {"tiny": {"fixed": tiny, "grid": {"activation": ["sin"], "init_std": [0.1],
                                                               "seed": [0, 1, 2]}}}}
    run_sweep("memorization", params, tmp_path / "runs" / "memorization", "tiny")
    conditions = {"memorization": {"where": {"activation": "sin", "init_std": 0.1}, "layer": "hidden",
                                   "event": "memorization"}}
    done = run_notebook("lens_race", tmp_path / "race.ipynb", runs_dir=tmp_path / "runs", out_dir=tmp_path / "fig",
                        n_boot=49, n_perm=49, conditions=conditions)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    points = pd.read_csv(tmp_path / "fig" / "change_points.csv")
    lenses = set(points["lens"])
    assert {"LLID", "NC1", "effective rank", "CKA drift", "grad. alignment", "repr. alignment"} <= lenses
    assert points.groupby(["lens", "event"])["seed"].nunique().eq(3).all()  # every seed of the condition
    assert np.isfinite(points.loc[points["lens"] == "NC1", "change_step"]).all()
    race = pd.read_csv(tmp_path / "fig" / "race.csv")
    assert set(race["event"]) == {"memorization", "generalization"} and race["main_event"].any()
    for stem in ("lags", "curves"):
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 10_000
