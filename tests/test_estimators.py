"""ID estimators: agreement with scikit-dimension, known IDs, and every numerical trap."""

import numpy as np
import pytest
import skdim
import torch

from actid import GRIDE, MLE, TwoNN, fit_estimators, intrinsic_dimension, nearest_neighbors, neighbors
from actid.estimators import subset_two_nn, twonn_linear_fit
from tests.conftest import linear_subspace

MANIFOLDS = ["M1_Sphere", "M3_Nonlinear_4to6", "M5b_Helix2d", "M7_Roll", "M9_Affine", "M10b_Cubic", "Mn1_Nonlinear"]


@pytest.fixture(scope="module")
def benchmark_manifolds():
    return skdim.datasets.BenchmarkManifolds(random_state=0).generate(n=1500)


@pytest.mark.parametrize("name", MANIFOLDS)
def test_twonn_matches_skdim_on_benchmark_manifolds(benchmark_manifolds, name):
    X = benchmark_manifolds[name]
    ours = TwoNN().fit(X).dimension_
    ref = skdim.id.TwoNN().fit(X).dimension_
    assert ours == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("make,d", [("hyperSphere", 2), ("hyperSphere", 5), ("hyperBall", 2), ("hyperBall", 5)])
def test_twonn_matches_skdim_and_truth_on_known_id(make, d):
    X = getattr(skdim.datasets, make)(3000, d, random_state=1)
    X = np.hstack([X, np.zeros((len(X), 30))])  # embed in R^(d+30): exercises the wide-data path
    ours = TwoNN().fit(X).dimension_
    assert ours == pytest.approx(skdim.id.TwoNN().fit(X).dimension_, rel=1e-4)
    assert ours == pytest.approx(d, rel=0.10)


def test_twonn_underestimates_a_10d_ball_as_documented():
    # The estimator's own negative bias at high ID (Facco et al.; ~9.3 at n = 2000 in the reference notes).
    X = skdim.datasets.hyperBall(3000, 10, random_state=1)
    ours = TwoNN().fit(X).dimension_
    assert ours == pytest.approx(skdim.id.TwoNN().fit(X).dimension_, rel=1e-4)
    assert 8.0 < ours < 10.0


@pytest.mark.parametrize("D", [64, 512, 2048])
def test_linear_subspace_id_is_recovered(D):
    X = linear_subspace(5000, 10, D)
    est = TwoNN(n_resamples=5).fit(X)
    assert est.dimension_ == pytest.approx(10, rel=0.10)
    assert 0 < est.error_ < 0.5


def test_mle_matches_skdim_levina_bickel():
    X = skdim.datasets.hyperBall(2000, 6, random_state=2)
    for average, comb in [("inverse", "mle"), ("mean", "mean")]:
        ours = MLE(k=20, average=average).fit(X).dimension_
        ref = skdim.id.MLE().fit(X, n_neighbors=20, comb=comb).dimension_
        assert ours == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("n1", [1, 4])
def test_gride_matches_skdim(n1):
    X = skdim.datasets.hyperSphere(2000, 4, random_state=3)
    est = GRIDE(n1=n1).fit(X)
    ref = skdim.id.GRIDE(n1=n1).fit(X)
    assert est.dimension_ == pytest.approx(ref.dimension_, rel=1e-4)
    assert est.error_ == pytest.approx(ref.error_, rel=1e-3)


def test_estimators_share_one_search_and_one_call_function(subspace10):
    twonn, mle, gride = fit_estimators(subspace10, [TwoNN(), MLE(k=10), GRIDE(n1=2)])
    assert twonn.dimension_ == TwoNN().fit(subspace10).dimension_
    assert mle.dimension_ == MLE(k=10).fit(subspace10).dimension_
    for est in (twonn, mle, gride):
        assert est.dimension_ == pytest.approx(10, rel=0.15)
        assert est.n_used_ == 3000
    assert intrinsic_dimension(subspace10) == twonn.dimension_
    with pytest.raises(ValueError, match="unknown method 'pca'.*twonn"):
        intrinsic_dimension(subspace10, method="pca")


def test_resampling_shortcut_equals_recomputing_each_subset(subspace10):
    nb = nearest_neighbors(subspace10, k=16)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        subset = torch.randperm(nb.n, generator=gen)[:2700]
        r1, r2 = subset_two_nn(nb, subset)
        direct = nearest_neighbors(nb.points[subset], k=2)
        # direct de-duplication sorts rows, so compare the fitted estimates and the sorted ratios
        direct_ratios = direct.distances[:, 1] / direct.distances[:, 0]
        assert torch.allclose(torch.sort(r2 / r1).values, torch.sort(direct_ratios).values,
                              rtol=1e-5)
    est = TwoNN(n_resamples=20, seed=1).fit(subspace10)
    gen = torch.Generator().manual_seed(1)
    scratch = [TwoNN().fit(nb.points[torch.randperm(nb.n, generator=gen)[:2700]]).dimension_ for _ in range(20)]
    assert est.dimension_ == pytest.approx(np.mean(scratch), rel=1e-5)
    assert est.error_ == pytest.approx(np.std(scratch), rel=1e-3)


def test_resampling_falls_back_to_exact_search_when_neighbour_lists_run_out(subspace10):
    nb = nearest_neighbors(subspace10, k=3)  # a subset of 30% leaves most lists with < 2 survivors
    subset = torch.randperm(nb.n, generator=torch.Generator().manual_seed(0))[:900]
    r1, r2 = subset_two_nn(nb, subset)
    direct = torch.cdist(nb.points[subset].double(), nb.points[subset].double())
    direct.fill_diagonal_(float("inf"))
    two = torch.topk(direct, 2, largest=False).values
    assert torch.allclose(r1, two[:, 0], rtol=1e-5) and torch.allclose(r2, two[:, 1], rtol=1e-5)


def test_resamples_at_once_equal_one_by_one(subspace10):
    """The resamples are read off in one batch (some lists run out: k=3, 50% subsets); each equals its own call."""
    nb = nearest_neighbors(subspace10, k=3)
    gen = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.randperm(nb.n, generator=gen)[:1500] for _ in range(4)])
    r1, r2 = subset_two_nn(nb, subsets)
    for row, subset in enumerate(subsets):
        one_r1, one_r2 = subset_two_nn(nb, subset)
        assert torch.equal(r1[row], one_r1) and torch.equal(r2[row], one_r2)
    est = TwoNN(n_resamples=4, subsample_fraction=0.5, seed=0).fit_neighbors(nb)
    assert est.resamples_.tolist() == [twonn_linear_fit((b / a)[b > a]) for a, b in zip(r1, r2)]


def test_same_seed_same_result_on_cpu(subspace10):
    a = TwoNN(n_resamples=10, seed=3).fit(subspace10)
    b = TwoNN(n_resamples=10, seed=3).fit(subspace10)
    assert np.array_equal(a.resamples_, b.resamples_)


# ---- traps -------------------------------------------------------------------------------------

def test_exact_duplicates_are_removed_and_counted(subspace10):
    X = subspace10.clone()
    X[:600] = X[600:1200]  # 20% of rows duplicate other rows
    est = TwoNN().fit(X)
    clean = TwoNN().fit(subspace10[600:])
    assert est.n_duplicates_ == 600
    assert est.dimension_ == clean.dimension_


def test_near_duplicates_below_fp32_resolution_are_dropped_and_counted(subspace10):
    X = subspace10.double().clone()
    X[:100] = X[100:200] + 1e-12  # distinct in fp64, (almost always) identical once cast to fp32
    X[200:300] = X[300:400] * (1 + 1e-7)  # distinct even in fp32, but r1 ~ 1e-6 x median
    est = TwoNN().fit(X)
    # a pair that straddles an fp32 rounding boundary stays distinct and is dropped as a near duplicate
    assert 95 <= est.n_duplicates_ <= 100
    # the 200 members of near-duplicate pairs, plus points whose two nearest neighbours are such a
    # pair and so tie in fp32 (r1 == r2)
    assert 200 <= est.n_dropped_ <= 300 + 2 * (100 - est.n_duplicates_)
    assert est.dimension_ == pytest.approx(TwoNN().fit(subspace10[300:]).dimension_, rel=0.05)


def test_ties_r1_equal_r2_are_dropped_counted_and_warned():
    grid = torch.stack(torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij"), -1).reshape(-1, 2)
    cloud = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0)) * 10 + 100  # far from the grid
    with pytest.warns(UserWarning, match="400 of 2400 points were left out"):
        est = TwoNN().fit(torch.cat([grid, cloud]))
    assert est.n_dropped_ == 400  # every lattice point has r1 == r2
    assert est.dimension_ == pytest.approx(TwoNN().fit(cloud).dimension_, rel=1e-9)


def test_a_pure_lattice_raises_instead_of_returning_a_number():
    grid = torch.stack(torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij"), -1).reshape(-1, 2)
    with pytest.raises(ValueError, match="0 of 900 points are usable.*900 ties"):
        TwoNN().fit(grid)


@pytest.mark.parametrize("offset", [100.0, 1e4])
def test_large_common_offset_does_not_change_the_estimate(offset):
    X = linear_subspace(3000, 10, 512)
    assert TwoNN().fit(X + offset).dimension_ == pytest.approx(TwoNN().fit(X).dimension_, rel=1e-4)


def test_self_distance_is_masked_by_index_not_assumed_zero():
    # Points with a huge norm relative to their spacing: |x|^2 + |y|^2 - 2xy round-off exceeds r1,
    # so "column 0 of the sorted row is self" would be wrong. The estimate must match float64.
    X = linear_subspace(2000, 3, 64, noise=0.0, seed=4).double() * 1e-3 + 1.0
    ref = skdim.id.TwoNN().fit(X.numpy()).dimension_
    assert TwoNN().fit(X).dimension_ == pytest.approx(ref, rel=1e-4)


def test_helix_with_tiny_spacing_is_exact_after_re_ranking():
    t = torch.linspace(0, 40, 3000, dtype=torch.float64)
    X = torch.stack([torch.cos(t), torch.sin(t), 0.05 * t], 1) @ torch.randn(3, 100, dtype=torch.float64,
                                                                           generator=torch.Generator().manual_seed(0))
    ours = TwoNN().fit(X).dimension_
    assert ours == pytest.approx(skdim.id.TwoNN().fit(X.numpy()).dimension_, rel=1e-4)


def test_nan_and_inf_rows_raise_a_clear_error(subspace10):
    X = subspace10.clone()
    X[7, 3] = float("nan")
    X[9, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or Inf \(first: 7, 9\).*isfinite"):
        TwoNN().fit(X)


def test_too_few_points_raise_a_clear_error():
    with pytest.raises(ValueError, match="at least 10 distinct points.*got 8"):
        TwoNN().fit(torch.randn(8, 5))
    X = torch.randn(5, 5).repeat(4, 1)  # 20 rows, 5 distinct
    with pytest.raises(ValueError, match="got 5 .*15 exact duplicates"):
        TwoNN().fit(X)


def test_bad_shapes_and_parameters_raise():
    with pytest.raises(ValueError, match="shape \\(n_points, ...\\)"):
        TwoNN().fit(torch.randn(100))
    with pytest.raises(ValueError, match="discard_fraction"):
        TwoNN(discard_fraction=1.0)
    with pytest.raises(ValueError, match="n1 < n2"):
        GRIDE(n1=3, n2=2)
    with pytest.raises(ValueError, match="k >= 3"):
        MLE(k=2)


def test_higher_rank_input_is_flattened_per_example(subspace10):
    X = subspace10.reshape(3000, 16, 4, 4)
    assert TwoNN().fit(X).dimension_ == TwoNN().fit(subspace10).dimension_


def test_search_projection_is_kept_where_it_certifies_and_stays_exact():
    X = linear_subspace(3000, 10, 1024, noise=0.01)  # low rank: the projection fits
    full = nearest_neighbors(X, k=5, search_dims=0)
    proj = nearest_neighbors(X, k=5, search_dims=64)
    assert proj.projected and not full.projected
    assert proj.n_researched < 30
    assert torch.allclose(full.distances, proj.distances, rtol=1e-6)


def test_search_projection_is_dropped_where_it_would_not_certify():
    X = linear_subspace(3000, 100, 1024, noise=0.3)  # spread spectrum: rank 64 bounds too little
    proj = nearest_neighbors(X, k=5, search_dims=64)
    assert not proj.projected and proj.n_researched == 0
    assert torch.allclose(nearest_neighbors(X, k=5, search_dims=0).distances, proj.distances, rtol=1e-6)
    # too few points for a projection to pay: the full space, whatever the data
    assert not nearest_neighbors(linear_subspace(2000, 10, 1024), k=5, search_dims=64).projected


@pytest.mark.parametrize("d, noise", [(10, 0.01), (100, 0.3)])
def test_gpu_search_rules_stay_exact(monkeypatch, d, noise):
    """The GPU's rules (TF32 candidates, TF32 slack and margin, a TF32 search again before plain fp32),
    run here in fp32 arithmetic: every certified row and every row searched again gives the exact neighbours."""
    X = linear_subspace(3000, d, 1024, noise=noise)
    exact = nearest_neighbors(X, k=16, search_dims=0)
    monkeypatch.setattr("actid.neighbors._uses_tf32", lambda device: True)
    gpu_rules = nearest_neighbors(X, k=16)
    assert gpu_rules.projected == (d == 10) and gpu_rules.n_researched > 0
    assert torch.allclose(exact.distances, gpu_rules.distances, rtol=1e-6)


def _row_by_row(Z, kc, budget):
    return neighbors._candidates(Z, torch.arange(len(Z)), kc, budget)


@pytest.mark.parametrize("case", ["wide", "lattice ties", "narrow tiles", "many tiles"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_symmetric_search_equals_the_row_by_row_search_and_brute_force(monkeypatch, case, k):
    """The search that computes each tile once for its rows and its columns (CPU, wide data) finds the same exact
    neighbour distances as the row-by-row search and as float64 brute force: with a ragged last tile (n not a
    multiple of its 1,024 rows), many exact ties, and tiles narrower than the data (a small block budget)."""
    g = torch.Generator().manual_seed(k)
    block_bytes = None
    if case == "wide":
        X = torch.randn(2500, 300, generator=g)
    elif case == "lattice ties":
        X = torch.randint(0, 3, (3000, 8), generator=g).float()
        monkeypatch.setattr(neighbors, "SYMMETRIC_MIN_WIDTH", 1)
    elif case == "narrow tiles":
        X = linear_subspace(2300, 40, 300, noise=0.05, seed=k)
        block_bytes = 2**16
    else:  # tiles whose rows and columns already have candidates: only the entries below them are read
        X = torch.randn(4096, 40, generator=g)
    grouped = []
    group = neighbors._group_by_column
    monkeypatch.setattr(neighbors, "_group_by_column", lambda *a: grouped.append(1) or group(*a))
    ours = nearest_neighbors(X, k=k, block_bytes=block_bytes)
    assert grouped or case != "many tiles"  # the below-the-bound paths ran
    with monkeypatch.context() as m:
        m.setattr(neighbors, "_candidates_all", _row_by_row)
        rows = nearest_neighbors(X, k=k, block_bytes=block_bytes)
    assert torch.equal(ours.distances, rows.distances)
    if case != "lattice ties":  # the tiles' own candidates certify every row: no row needed the search again
        assert ours.n_researched == 0
    d = torch.cdist(ours.points.double(), ours.points.double()).fill_diagonal_(float("inf"))
    truth = d.topk(k, dim=1, largest=False).values
    assert torch.allclose(ours.distances, truth, rtol=1e-5, atol=1e-6)
