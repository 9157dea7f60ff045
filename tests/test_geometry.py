"""Manifold geometry (MFTMA): the exact batched anchor solver against cvxopt (the reference's QP solver) and
Lawson-Hanson, the reference numbers on random manifolds, Cover's capacity of points, mean-field against simulated
capacity, layers with fewer features than points, the center subspace, and the measure in a training loop."""

import numpy as np
import pytest
import torch

from actid.measures.center_subspace import fit_subspace, residual_cost
from actid.measures.geometry import (ManifoldGeometryMeasure, anchor_points, center_correlation, common_center_subspace,
                                     manifold_capacity, manifold_quantities, prepare_manifolds, simulated_capacity,
                                     standard_normal)
from actid.nnls import batched_nnls, kkt_residual


def cvxopt_anchor(S: np.ndarray, t: np.ndarray, kappa: float):
    """The reference's way: v* = argmin 1/2 |v|^2 - t.v s.t. S^T v <= -kappa (cvxopt), anchor (t - v*) / sum(z),
    or the max-projection point when |v* - t| < 1e-8. Returns the anchor and the multipliers z."""
    pytest.importorskip("cvxopt")  # a test dependency (pip install -e ".[dev]")
    from cvxopt import matrix, solvers
    solvers.options.update(show_progress=False, abstol=1e-12, reltol=1e-12, feastol=1e-12, maxiters=1000)
    D1, M = S.shape
    out = solvers.qp(matrix(np.eye(D1)), matrix(-t.reshape(-1, 1)), matrix(S.T.copy()), matrix(-kappa * np.ones(M)))
    v, z = np.array(out["x"])[:, 0], np.array(out["z"])[:, 0]
    if np.linalg.norm(v - t) < 1e-8:
        return S[:, np.argmax(t[:-1] @ S[:-1])], np.zeros(M)
    return (t - v) / z.sum(), z


def random_problem(rng, rank_deficient=False):
    D = int(rng.integers(2, 12))
    M = int(rng.integers(D + 2, 3 * D + 3)) if rank_deficient else int(rng.integers(1, D + 2))
    S = np.vstack([rng.standard_normal((D, M)) * rng.uniform(0.3, 3), np.ones((1, M))])
    return S, rng.standard_normal(D + 1), float(rng.choice([0.0, 0.3]))


def test_anchor_points_and_active_sets_equal_cvxopts_on_150_random_problems():
    rng = np.random.default_rng(0)
    binding = 0
    for _ in range(150):
        S, t, kappa = random_problem(rng)
        anchor, alpha, _ = anchor_points(torch.from_numpy(S)[None], torch.from_numpy(t)[None, None], kappa)
        ref_anchor, z = cvxopt_anchor(S, t, kappa)
        np.testing.assert_allclose(anchor[0, 0].numpy(), ref_anchor, atol=1e-6)
        ours = set(np.flatnonzero(alpha[0, 0].numpy() > 1e-6))
        assert ours == set(np.flatnonzero(z > 1e-6))
        binding += len(ours) > 0
    assert binding > 100  # most problems have binding constraints: the comparison is not about the easy case


def test_rank_deficient_problems_n_le_m_give_cvxopts_anchor():
    """More points than dimensions (a narrow layer): multipliers are not unique, the anchor is."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        S, t, kappa = random_problem(rng, rank_deficient=True)
        anchor, _, info = anchor_points(torch.from_numpy(S)[None], torch.from_numpy(t)[None, None], kappa)
        np.testing.assert_allclose(anchor[0, 0].numpy(), cvxopt_anchor(S, t, kappa)[0], atol=1e-6)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_batched_nnls_equals_lawson_hanson_including_ill_conditioned_batches(method):
    """Both ways of solving the equality problems (per-problem Cholesky, the CPU default; batched CG, the GPU one)."""
    from scipy.optimize import nnls
    g = torch.Generator().manual_seed(0)
    for cond in (1.0, 1e4):
        P, M, n = 6, 20, 40
        U = torch.linalg.qr(torch.randn(P, M + 1, M + 1, generator=g, dtype=torch.float64)).Q
        W = torch.linalg.qr(torch.randn(P, M, M, generator=g, dtype=torch.float64)).Q
        sv = torch.logspace(0, -np.log10(cond), M, dtype=torch.float64)
        S = U[:, :, :M] @ torch.diag_embed(sv) @ W
        Y = torch.randn(P, n, M + 1, generator=g, dtype=torch.float64)
        A, info = batched_nnls(S, Y, method=method)
        assert info.kkt_residual <= 1e-9 and float(kkt_residual(S.mT @ S, Y @ S, A).max()) <= 1e-9
        for p in range(P):
            for i in range(0, n, 7):
                ref, _ = nnls(S[p].numpy(), Y[p, i].numpy())
                np.testing.assert_allclose((S[p] @ A[p, i]).numpy(), S[p].numpy() @ ref, atol=1e-8)


def test_rank_deficient_problems_where_scipys_lawson_hanson_is_not_optimal_are_solved_exactly():
    """scipy's nnls (1.17) returns a non-optimal point on some rank-deficient matrices (these seeds: 11 x 20 of rank
    9); actid checks each Lawson-Hanson answer and solves such a problem again by BVLS, which cvxopt's QP confirms."""
    from scipy.optimize import nnls
    problems = []
    for seed in (810, 1666, 3523):
        rng = np.random.default_rng(seed)
        problems.append((rng.standard_normal((11, 9)) @ rng.standard_normal((9, 20)), rng.standard_normal(11)))
    S = torch.tensor(np.stack([s for s, _ in problems]))
    Y = torch.tensor(np.stack([y for _, y in problems]))[:, None, :]
    G, B = S.mT @ S, Y @ S
    scipy_a = torch.tensor(np.stack([nnls(s, y, maxiter=1000)[0] for s, y in problems]))[:, None, :]
    assert (kkt_residual(G, B, scipy_a) > 1e-2).all()  # the failure this guards against (fixed in scipy? drop it)
    A, info = batched_nnls(S, Y)
    assert info.lawson_hanson == 3 and info.kkt_residual < 1e-12
    for p, (s, y) in enumerate(problems):  # the same minimum as a QP solver: min 1/2 a^T G a - b^T a, a >= 0
        cvxopt = pytest.importorskip("cvxopt")
        cvxopt.solvers.options["show_progress"] = False
        g, b = s.T @ s, s.T @ y
        sol = cvxopt.solvers.qp(cvxopt.matrix(g), cvxopt.matrix(-b), cvxopt.matrix(-np.eye(20)),
                                cvxopt.matrix(np.zeros(20)))
        ref = np.array(sol["x"]).ravel()
        assert np.linalg.norm(s @ A[p, 0].numpy() - y) == pytest.approx(np.linalg.norm(s @ ref - y), abs=1e-6)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_a_batch_mixing_full_rank_and_rank_deficient_manifolds_is_solved_exactly(method):
    """Each manifold of one batch goes its own way: full-rank ones to the active-set method, rank-deficient ones
    (more points than dimensions) to Lawson-Hanson; every answer is optimal."""
    g = torch.Generator().manual_seed(4)
    S = torch.randn(4, 9, 15, generator=g, dtype=torch.float64)  # 15 points in 9 dimensions: rank-deficient
    S[1::2, :, 8:] = 0  # manifolds 1 and 3: 8 points and 7 copies of a 9th (6 dropped): full rank
    S[:, -1] = 1
    Y = torch.randn(4, 10, 9, generator=g, dtype=torch.float64)
    A, info = batched_nnls(S, Y, method=method)
    assert info.lawson_hanson == 20 and info.kkt_residual <= 1e-10  # the 2 x 10 problems of manifolds 0 and 2
    assert float(kkt_residual(S.mT @ S, Y @ S, A).max()) <= 1e-10


def test_points_equal_up_to_round_off_count_as_one_and_close_points_as_two():
    """A point repeated with round-off (1e-14 relative) is dropped; a point 1e-7 away is a point of its own."""
    from actid.nnls import _distinct_columns
    S = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    S = torch.cat([S, S[:, :, :1] * (1 + 1e-14), S[:, :, 1:2] + 1e-7], dim=2)
    assert _distinct_columns(S, S.mT @ S).tolist() == [[True] * 4 + [False, True]]


def test_the_eigenvalue_free_rank_check_decides_as_the_eigenvalues_do():
    """The Cholesky bounds only settle clear cases: over condition numbers from 1 to 1e14, with disabled columns,
    the verdicts equal those of the eigenvalues (smallest above RANK_TOL times the largest)."""
    from actid.nnls import RANK_TOL, _full_rank
    g = torch.Generator().manual_seed(6)
    Q = torch.linalg.qr(torch.randn(60, 20, 20, generator=g, dtype=torch.float64)).Q
    spectra = torch.stack([torch.logspace(0, -c, 20, dtype=torch.float64) for c in np.linspace(0, 14, 60)])
    G = Q @ torch.diag_embed(spectra) @ Q.mT
    enabled = torch.ones(60, 20, dtype=torch.bool)
    enabled[::7, 3] = False
    lam = [torch.linalg.eigvalsh(G[p][enabled[p]][:, enabled[p]]) for p in range(60)]  # on the enabled columns
    expected = torch.tensor([bool(v[0] > RANK_TOL * v[-1]) for v in lam])
    assert 20 < int(expected.sum()) < 60  # both verdicts occur
    assert torch.equal(_full_rank(G, enabled), expected)


def test_batched_nnls_refuses_bad_shapes_and_float32():
    with pytest.raises(ValueError, match=r"S must be \(P, D, M\)"):
        batched_nnls(torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 5, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        batched_nnls(torch.zeros(2, 3, 4), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="method must be 'direct'"):
        batched_nnls(torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 5, 3, dtype=torch.float64), method="lu")


def test_the_direct_and_cg_solvers_give_the_same_anchors_on_a_layer():
    """The per-problem Cholesky solver (CPU) and the batched CG one (GPU) are two routes to one optimum."""
    X = torch.randn(8, 20, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (_, S, T), = prepare_manifolds(X, 50, 0, center_subspace=False).groups
    direct, info_direct = batched_nnls(S, T, method="direct")
    cg, info_cg = batched_nnls(S, T, method="cg")
    assert info_direct.lawson_hanson == info_cg.lawson_hanson == 0 and info_direct.cg_steps == 0 < info_cg.cg_steps
    assert max(info_direct.kkt_residual, info_cg.kkt_residual) <= 1e-10
    torch.testing.assert_close(direct, cg, atol=1e-8, rtol=0)


def test_capacity_radius_and_dimension_are_the_averages_over_t_of_the_anchors():
    """The compiled pass that averages over the samples, against step 5's formulas written out in torch on the
    anchors it returns (with a margin, so that the kappa terms count)."""
    X = torch.randn(7, 15, 60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (_, S, T), = prepare_manifolds(X, 80, 0).groups
    kappa, D = 0.2, S.shape[1] - 1
    capacity, radius, dimension, _ = manifold_quantities(S, T, kappa)
    anchors, _, _ = anchor_points(S, T, kappa)
    margin = ((T * anchors).sum(-1) + kappa).clamp_min(0)
    expected_capacity = 1 / (margin.square() / anchors.square().sum(-1)).mean(1)
    perp = anchors[..., :D]
    expected_radius = (perp - perp.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt()
    cos = (T[..., :D] * perp).sum(-1) / (T[..., :D].norm(dim=-1) * (perp.square().sum(-1) + 1e-12).sqrt())
    for ours, expected in [(capacity, expected_capacity), (radius, expected_radius),
                           (dimension, D * cos.mean(1).square())]:
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


def test_gaussian_samples_are_torch_randns_to_round_off():
    """The vectorised Box-Muller gives torch.randn's numbers (float64, CPU) for sizes below, at and between blocks of
    16, and leaves the generator where torch.randn leaves it."""
    for shape in [(3, 5), (1, 16), (2, 3, 7), (7, 20, 14), (31,)]:
        ours_gen, torch_gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        ours = standard_normal(shape, ours_gen)
        expected = torch.randn(shape, generator=torch_gen, dtype=torch.float64)
        torch.testing.assert_close(ours, expected, rtol=0, atol=4e-15)
        assert torch.equal(torch.rand(3, generator=ours_gen), torch.rand(3, generator=torch_gen))


def test_reference_numbers_on_100_gaussian_manifolds():
    """The reference README: 100 manifolds of 50 N(0,1) points in N = 5000, kappa 0, n_t 200 -> capacity 0.04,
    radius 1.48, dimension 36.17, center correlation 0.00 (its formula gives ~0.014), K = 1."""
    results = []
    for seed in range(3):
        X = torch.randn(100, 50, 5000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        results.append(manifold_capacity(X, kappa=0.0, n_t=200, seed=seed))
    radius = np.mean([r.radius for r in results])
    dimension = np.mean([r.dimension for r in results])
    capacity = np.mean([r.capacity for r in results])
    assert abs(radius / 1.48 - 1) < 0.05 and abs(dimension / 36.17 - 1) < 0.05
    assert 0.038 <= capacity <= 0.042
    assert all(r.K == 1 for r in results) and all(abs(r.center_correlation) < 0.02 for r in results)


def test_isolated_points_have_covers_capacity_two():
    X = torch.randn(60, 1, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = manifold_capacity(X, n_t=2000, n_reps=2)
    assert abs(result.capacity / 2 - 1) < 0.05
    assert torch.allclose(result.radii, torch.zeros(60, dtype=torch.float64))


def segments(P, N, R, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(P, N, generator=g, dtype=torch.float64), dim=1)
    u = torch.nn.functional.normalize(torch.randn(P, N, generator=g, dtype=torch.float64), dim=1)
    return torch.stack([c + R * u, c - R * u], 1)


def clouds(P, M, N, R, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(P, N, generator=g, dtype=torch.float64), dim=1)
    return c.unsqueeze(1) + R * torch.randn(P, M, N, generator=g, dtype=torch.float64) / N**0.5


@pytest.mark.parametrize("name, X", [("segments", segments(40, 200, 1.0, 0)), ("clouds", clouds(40, 10, 200, 0.5, 2))])
def test_mean_field_capacity_matches_simulated_capacity(name, X):
    mean_field = manifold_capacity(X, n_t=1000).capacity
    simulated = simulated_capacity(X, n_trials=25)
    assert abs(mean_field / simulated - 1) < 0.10, (name, mean_field, simulated)


def test_simulated_capacity_of_points_is_two_and_refuses_inseparable_data():
    gen = torch.Generator().manual_seed(0)  # the data fixed too: a test that depends on the tests before it is flaky
    points = torch.randn(40, 1, 120, generator=gen, dtype=torch.float64)
    assert abs(simulated_capacity(points, n_trials=15) / 2 - 1) < 0.1
    with pytest.raises(ValueError, match="not linearly separable even in all 3 dimensions"):
        simulated_capacity(torch.randn(20, 5, 3, generator=gen, dtype=torch.float64), n_trials=3)
    # few manifolds: a dichotomy with one label for all is never drawn (it is never separable about the global mean)
    assert simulated_capacity(torch.randn(4, 5, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                              n_trials=10) > 0.2


def test_narrow_layer_with_fewer_features_than_points():
    """10 classes of 50 points in 10 features (a logits layer): D = N, anchors exact (Lawson-Hanson), numbers finite."""
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(10, 1, 10, generator=g, dtype=torch.float64)
    result = manifold_capacity(centers + torch.randn(10, 50, 10, generator=g, dtype=torch.float64), n_reps=2)
    assert result.solver.lawson_hanson > 0 and result.solver.kkt_residual <= 1e-9
    assert torch.isfinite(result.capacities).all() and (result.capacities > 0).all()
    assert (result.dimensions <= 10).all() and np.isfinite(result.radius)


def test_fixed_seed_gives_identical_numbers_and_another_seed_other_samples():
    X = clouds(8, 12, 40, 1.0, 0)
    a, b, c = (manifold_capacity(X, n_t=100, seed=s, n_reps=2) for s in (0, 0, 1))
    assert (a.capacity, a.radius, a.dimension) == (b.capacity, b.radius, b.dimension)
    assert a.capacity != c.capacity


def test_unequal_manifold_sizes_are_solved_group_by_group():
    X = clouds(6, 12, 40, 1.0, 0)
    ragged = [x[: 6 + i] for i, x in enumerate(X)]
    result = manifold_capacity(ragged, n_t=100, n_reps=2)
    assert result.capacities.shape == (6,) and torch.isfinite(result.capacities).all()


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 2"):
        manifold_capacity([torch.randn(5, 3)])
    with pytest.raises(ValueError, match="manifolds\\[1\\] has 4 features"):
        manifold_capacity([torch.randn(5, 3), torch.randn(5, 4)])
    with pytest.raises(ValueError, match=r"manifolds \[1\] have NaN or infinite entries"):
        manifold_capacity([torch.randn(5, 3), torch.full((5, 3), float("nan"))])
    with pytest.raises(ValueError, match="n_t must be a positive integer"):
        manifold_capacity([torch.randn(5, 3), torch.randn(5, 3)], n_t=0)
    same = torch.randn(5, 8)
    with pytest.raises(ValueError, match="center coincides with the global mean"):
        manifold_capacity([same, same.clone()], center_subspace=False)


def test_common_center_subspace_finds_a_planted_shared_direction():
    g = torch.Generator().manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(300, generator=g, dtype=torch.float64), dim=0)
    centers = (torch.randn(30, 300, generator=g, dtype=torch.float64)
               + 100 * torch.randn(30, 1, generator=g, dtype=torch.float64) * shared)
    centers = centers - centers.mean(0)
    assert center_correlation(centers) > 0.7  # the shared direction dominates the centers' cosines
    V, K, costs = common_center_subspace(centers, n_reps=3)
    assert K == 1 and float((V.T @ shared).norm()) > 0.99
    assert costs[0] == min(costs) and costs[0] < 0.1  # what is left is as uncorrelated as random vectors


def test_center_subspace_basis_is_orthonormal_for_ill_conditioned_centers():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(500, 19, generator=g, dtype=torch.float64)).Q
    W = torch.linalg.qr(torch.randn(20, 19, generator=g, dtype=torch.float64)).Q
    sv = torch.cat([torch.ones(16, dtype=torch.float64), torch.tensor([1.02e-6, 1.01e-6, 1e-6], dtype=torch.float64)])
    centers = ((W - W.mean(0)) * sv) @ U.T
    V, K, _ = common_center_subspace(centers - centers.mean(0), n_reps=2)
    torch.testing.assert_close(V.T @ V, torch.eye(K, dtype=torch.float64), atol=1e-12, rtol=0)


def test_repeated_points_are_dropped_without_changing_the_anchor():
    rng = np.random.default_rng(3)
    for _ in range(20):
        S, t, kappa = random_problem(rng)
        if S.shape[1] < 2:
            continue
        doubled = np.hstack([S, S[:, :2]])  # two points repeated: G is singular
        anchor, _, info = anchor_points(torch.from_numpy(doubled)[None], torch.from_numpy(t)[None, None], kappa)
        assert info.lawson_hanson == 0  # the active-set method still solves it
        np.testing.assert_allclose(anchor[0, 0].numpy(), cvxopt_anchor(S, t, kappa)[0], atol=1e-6)


def test_residual_cost_and_gradient_equal_autograd_of_the_direct_formula():
    """The search's cost avoids the (R, P, P) residual Gram; here it is formed: F = 1/2 sum E^2 / (e e^T), E the Gram
    of the residual centers X - X V V^T and e its diagonal, differentiated by autograd."""
    X = torch.randn(12, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for K in (1, 3):
        V = torch.linalg.qr(torch.randn(2, 11, K, dtype=torch.float64)).Q.requires_grad_()
        residual = X - (X @ V) @ V.mT
        E = residual @ residual.mT
        e = torch.diagonal(E, dim1=1, dim2=2)
        direct = (E.square() / (e.unsqueeze(-1) * e.unsqueeze(-2))).sum((1, 2)) / 2
        auto, = torch.autograd.grad(direct.sum(), V)
        for r in range(2):
            cost, grad = residual_cost(X.numpy(), V[r].detach().numpy())
            np.testing.assert_allclose(cost, direct[r].detach().numpy(), rtol=1e-12)
            # the Euclidean gradients agree on the tangent space (the cost depends on V V^T only through orthonormal V)
            Vr = V[r].detach().numpy()
            tangent = lambda Z: Z - Vr @ (Vr.T @ Z)  # noqa: E731
            np.testing.assert_allclose(tangent(grad), tangent(auto[r].numpy()), rtol=1e-9, atol=1e-12)


def test_compiled_solvers_give_the_same_bits_with_one_thread_or_two():
    """Restarts of the subspace search, anchor problems and the averages over a manifold's samples are each computed
    by one thread alone (actid.compiled): the number of threads cannot change a bit."""
    X = np.random.default_rng(0).standard_normal((30, 29))
    V0 = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 29, 2))).Q
    pts = torch.randn(6, 12, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (_, S, T), = prepare_manifolds(pts, 30, 0, center_subspace=False).groups
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((fit_subspace(X, V0), batched_nnls(S, T)[0], torch.stack(manifold_quantities(S, T, 0)[:3])))
    finally:
        torch.set_num_threads(before)
    (V1, A1, Q1), (V2, A2, Q2) = results
    assert np.array_equal(V1, V2) and torch.equal(A1, A2) and torch.equal(Q1, Q2)
    np.testing.assert_allclose(np.swapaxes(V1, 1, 2) @ V1, np.broadcast_to(np.eye(2), (5, 2, 2)), atol=1e-12)


def test_measure_refuses_bad_parameters():
    with pytest.raises(ValueError, match="n_t must be an integer >= 1"):
        ManifoldGeometryMeasure(n_t=0)
    with pytest.raises(ValueError, match="n_reps"):
        ManifoldGeometryMeasure(n_reps=0)


def test_measure_records_nan_for_a_dead_layer_and_numbers_for_a_live_one():
    from actid.measures import Evaluation
    labels = torch.arange(4).repeat_interleave(6)
    live = torch.randn(24, 12, generator=torch.Generator().manual_seed(0)) + 3 * torch.eye(12)[labels]
    ev = Evaluation(model=torch.nn.Identity(), step=7, probes={"p": (live, labels)},
                    activations={"p": {"dead": torch.zeros(24, 12), "live": live}})
    measure = ManifoldGeometryMeasure(probe="p", layers=["dead", "live"], n_t=50, n_reps=2, seed=0)
    with pytest.warns(UserWarning, match="layer 'dead' at step 7"):
        out = measure(ev)
    assert np.isnan(out["capacity/dead"]) and np.isnan(out["center_corr/dead"])
    assert out["capacity/live"] > 0 and 0 <= out["center_corr/live"] <= 1
    named = ManifoldGeometryMeasure(name="restored", probe="p", layers=["live"], n_t=50, n_reps=2, seed=0)(ev)
    assert set(named) == {f"restored.{k}/live" for k in ("capacity", "radius", "dimension", "center_corr")}
