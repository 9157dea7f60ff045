"""Benchmark: one layer of MFTMA manifold geometry, actid's batched solver against the reference's per-t QP loop.

The layer: P = 100 manifolds of M = 50 Gaussian points in N = 5000 dimensions, kappa = 0, n_t = 200 (the reference
README's example). Both sides start from the same prepared points and Gaussian samples (actid's steps 1-3, timed
once, with and without the center-subspace removal), then compute every manifold's capacity, radius and dimension:

* actid: ``manifold_quantities`` (all 20,000 QPs as one batched NNLS, then the anchors and the averages over t in
  one compiled pass);
* peer: the reference's ``each_manifold_analysis_D1`` written again in numpy: per t the max-projection point, and
  where a constraint binds one cvxopt QP (tolerances 1e-12, as the reference sets them), then the same averages.

It checks the two agree (per-manifold capacity, radius, dimension to 1e-6 relative) and prints medians of
``--repeats`` runs of actid before the peer and as many after it (the peer, ~20-30 s per run, runs
``--peer-repeats`` times in between: both sides are timed in the same minutes of a shared, noisy machine).
actid's first call, which compiles its numba loops (once per installation) or loads them from the cache, is timed
apart and not in the medians.
The center-subspace search (part of the preparation) is also timed on its own.

A second case has strongly correlated centres (each manifold shifted along 3 shared random directions), where the
center-subspace removal must find K = 3. Its K and mean capacity must equal :data:`CORRELATED_REFERENCE`, the values
of the code as of 2026-12-07 (385359f), so that a faster subspace search (fewer restarts, an earlier exit) that
changes the answer fails here instead of passing unnoticed.

    python benchmarks/bench_geometry.py [--device cuda] [--repeats 5] [--peer-repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from actid.measures.center_subspace import common_center_subspace
from actid.measures.geometry import manifold_quantities, prepare_manifolds


def reference_manifold(S: np.ndarray, T: np.ndarray, kappa: float) -> tuple[float, float, float]:
    """Capacity, radius, dimension of one manifold, the reference's way (S: (D+1, M), T: (n_t, D+1))."""
    from cvxopt import matrix, solvers
    solvers.options.update(show_progress=False, maxiters=1000000, abstol=1e-12, reltol=1e-12, feastol=1e-12)
    D1, M = S.shape
    D = D1 - 1
    anchors = np.empty_like(T)
    P_, G, h = matrix(np.identity(D1)), matrix(S.T.copy()), matrix(-kappa * np.ones(M))
    for i, t in enumerate(T):
        best = S[:, np.argmax(t[:D] @ S[:D])]
        if t @ best + kappa < 0:
            anchors[i] = best
            continue
        out = solvers.qp(P_, matrix(-t.reshape(-1, 1)), G, h)
        v, z = np.array(out["x"])[:, 0], np.array(out["z"])[:, 0]
        anchors[i] = best if np.linalg.norm(v - t) < 1e-8 else (t - v) / z.sum()
    margin = np.maximum((T * anchors).sum(1) + kappa, 0)
    sq = (anchors**2).sum(1)
    capacity = 1 / np.mean(np.where(sq > 0, margin**2 / np.where(sq > 0, sq, 1), 0))
    spread = anchors - anchors.mean(0)
    radius = np.sqrt(np.mean(((spread[:, :D] / anchors[:, -1:]) ** 2).sum(1)))
    t_hat = T[:, :D] / np.linalg.norm(T[:, :D], axis=1, keepdims=True)
    s_hat = anchors[:, :D] / np.sqrt((anchors[:, :D] ** 2).sum(1, keepdims=True) + 1e-12)
    return capacity, radius, D * np.mean((t_hat * s_hat).sum(1)) ** 2


CORRELATED_REFERENCE = {"K": 3, "capacity": 0.0397414908194551}
"""K and 1 / mean(1 / capacity) of the correlated case, from ``manifold_capacity`` at 385359f (2026-12-07)."""


def correlated_manifolds(P: int, M: int, N: int) -> torch.Tensor:
    """Gaussian manifolds whose centres share 3 random directions (weights ~ N(0, 0.1^2) per manifold)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(P, M, N, generator=g, dtype=torch.float64)
    common = torch.randn(3, N, generator=g, dtype=torch.float64)
    weights = torch.randn(P, 3, generator=g, dtype=torch.float64)
    return X + (0.1 * weights @ common)[:, None, :]


def seconds(fn, repeats: int) -> tuple[list[float], object]:
    """The wall times of ``repeats`` calls, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-repeats", type=int, default=1)
    args = parser.parse_args()
    P, M, N, n_t, kappa = 100, 50, 5000, 200, 0.0
    X = torch.randn(P, M, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(args.device)
    print(f"P = {P} manifolds x M = {M} points, N = {N}, n_t = {n_t}, kappa = {kappa}; {torch.get_num_threads()} "
          f"threads, device {args.device}; medians of {args.repeats} (actid) and {args.peer_repeats} (peer) runs\n")
    start = time.perf_counter()
    (_, S, T), = prepare_manifolds(X, n_t, 0).groups
    manifold_quantities(S, T, kappa)
    print(f"first call (numba compiles its loops, or loads them from its cache): {time.perf_counter() - start:.1f} s\n")
    rows = []
    cases = [("independent", X, True), ("independent", X, False),
             ("correlated", correlated_manifolds(P, M, N).to(args.device), True)]
    for case, data, removal in cases:
        centers = data.mean(1) - data.mean((0, 1))

        def actid_runs():
            """actid's preparation, search and anchors, ``repeats`` times each: run before and after the loop,
            so that both sides are timed in the same minutes of a shared machine."""
            prep, prepared = seconds(lambda: prepare_manifolds(data, n_t, 0, center_subspace=removal), args.repeats)
            search = seconds(lambda: common_center_subspace(centers - centers.mean(0)), args.repeats)[0] if removal \
                else [0.0]
            (_, S, T), = prepared.groups
            anchors, result = seconds(lambda: manifold_quantities(S, T, kappa), args.repeats)
            return prep, search, anchors, prepared, S, T, result

        prep_1, search_1, ours_1, prepared, S, T, _ = actid_runs()
        S_np, T_np = S.cpu().numpy(), T.cpu().numpy()
        peer_times, peer = seconds(lambda: np.array([reference_manifold(S_np[p], T_np[p], kappa) for p in range(P)]),
                                   args.peer_repeats)
        prep_2, search_2, ours_2, _, _, _, (cap, rad, dim, info) = actid_runs()
        prep_s, search_s, ours_s = (statistics.median(a + b) for a, b in
                                    [(prep_1, prep_2), (search_1, search_2), (ours_1, ours_2)])
        peer_s = statistics.median(peer_times)
        ours_np = torch.stack([cap, rad, dim], 1).cpu().numpy()
        worst = float(np.max(np.abs(ours_np / peer - 1)))
        assert worst < 1e-6, f"actid and the cvxopt loop disagree: {worst:.2e} relative"
        rows.append((case, removal, prep_s, search_s, ours_s, peer_s, worst, info, prepared.K,
                     float(1 / np.mean(1 / ours_np[:, 0])), float(ours_np[:, 1].mean()), float(ours_np[:, 2].mean())))
    print("| centres | center-subspace removal | preparation (shared) | of which the search | anchors + averages: "
          "actid | cvxopt loop | layer: actid | layer: cvxopt loop | ratio (layer) | ratio (anchors) | largest "
          "relative difference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, removal, prep_s, search_s, ours_s, peer_s, worst, *_ in rows:
        print(f"| {case} | {'yes' if removal else 'no'} | {prep_s:.3f} s | {search_s:.3f} s | {ours_s:.3f} s | "
              f"{peer_s:.1f} s | "
              f"{prep_s + ours_s:.3f} s | {prep_s + peer_s:.1f} s | {(prep_s + peer_s) / (prep_s + ours_s):.0f}x | "
              f"{peer_s / ours_s:.0f}x | {worst:.1e} |")
    for case, removal, *_, info, K, capacity, radius, dimension in rows:
        print(f"\n{case}, removal {'yes' if removal else 'no'}: K = {K}, capacity {capacity:.4f}, radius {radius:.3f}, "
              f"dimension {dimension:.2f} (reference README: 0.04, 1.48, 36.17); solver: {info.outer_iterations} "
              f"active-set iterations, {info.lawson_hanson} by Lawson-Hanson, "
              f"KKT residual {info.kkt_residual:.1e}")
    K, capacity = next((r[-4], r[-3]) for r in rows if r[0] == "correlated")
    ref = CORRELATED_REFERENCE
    assert K == ref["K"] and abs(capacity / ref["capacity"] - 1) < 1e-6, (
        f"correlated centres: K = {K}, capacity {capacity!r}; the code of 385359f gave K = {ref['K']}, capacity "
        f"{ref['capacity']!r}: the center-subspace search no longer finds the same subspace")
    print(f"\ncorrelated centres: K = {K} and capacity {capacity:.10f} equal the reference of 385359f")


if __name__ == "__main__":
    main()
