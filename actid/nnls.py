"""Exact non-negative least squares for many right-hand sides that share a matrix, batched on CPU or GPU.

``batched_nnls(S, Y)`` solves, for every manifold p and every row y of ``Y[p]``::

    min_{a >= 0} |S[p] a - y|^2          (the dual of the MFTMA anchor-point QP, see actid.measures.geometry)

It is a primal-dual active-set method (block principal pivoting, Kim & Park 2011) on the dual's normal equations
``G a = S^T y``, ``G = S^T S``. One outer iteration guesses the free set F and solves ``G_FF a_F = (S^T y)_F`` with
``a`` zero elsewhere, then swaps the variables that violate feasibility. How the equality problems are solved
depends on the device (``method``):

* ``"direct"`` (the CPU default): each problem on its own, in a compiled loop (numba) run in threads over problems:
  a Cholesky factorization of ``G_FF`` (a 25 x 25 one costs ~1 us there), and on the last free set up to two
  steps of iterative refinement, exact to round-off. 2x faster on 2 CPU cores than the batched CG below.
* ``"cg"`` (the GPU default): conjugate gradients whose only matrix product is ``G[p]`` times all of manifold p's
  right-hand sides at once, so the whole batch costs a few batched matmuls per CG step; each outer iteration only
  revisits the problems not yet solved.

On well-conditioned problems 3 outer iterations suffice, on activations of trained networks about 8. A problem is
solved when its KKT residual ``max_j |min(a_j diag(G)_j, g_j)|`` (zero exactly at the optimum: a >= 0, g >= 0,
a_j g_j = 0) is at most ``tol`` times ``max |S^T y|``; the answer is then exact to that residual, not to an iteration
count. Repeated columns (a manifold with duplicated points) are dropped, which is exact. Manifolds whose G is still
(numerically) singular, e.g. more points than dimensions, and the rare problems left unsolved, go to Lawson-Hanson
(scipy.optimize.nnls), which is exact and finite on rank-deficient problems; every answer is checked again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actid.compiled import in_threads, jit


@dataclass(frozen=True)
class NNLSInfo:
    """How a batch was solved: outer (active-set) iterations, CG steps, problems finished by Lawson-Hanson,
    and the largest relative KKT residual of the returned solutions."""

    outer_iterations: int
    cg_steps: int
    lawson_hanson: int
    kkt_residual: float

    @classmethod
    def combine(cls, infos) -> "NNLSInfo":
        """One report for batches solved separately (the worst iteration count and residual, summed work)."""
        infos = list(infos)
        return cls(max((i.outer_iterations for i in infos), default=0), sum(i.cg_steps for i in infos),
                   sum(i.lawson_hanson for i in infos), max((i.kkt_residual for i in infos), default=0.0))


def kkt_residual(G: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Per problem ``max_j |min(a_j G_jj, g_j)|`` relative to ``max_j |b_j|``; (P, n). Zero exactly at the NNLS
    optimum of ``min_{a>=0} 1/2 a^T G a - b^T a``."""
    d = torch.diagonal(G, dim1=1, dim2=2).unsqueeze(1)
    g = torch.bmm(A, G) - B
    scale = B.abs().amax(-1).clamp_min(torch.finfo(B.dtype).tiny)
    return torch.minimum(A * d, g).abs().amax(-1) / scale


def _masked_cg(G, B, free, A, tol, max_steps):
    """Solve ``G_FF a_F = b_F`` (a = 0 off F) for every row by Jacobi-preconditioned CG from ``A``.

    G: (P, M, M); B, A: (P, n, M); free: (P, n, M) bool. G is symmetric, so ``x @ G`` is G x for row vectors.
    Stops when every row's preconditioned residual is ``tol`` times its right-hand side's. Entries of the
    residual off F are never used (the preconditioner is zero there), which saves a mask per step."""
    w = free / torch.diagonal(G, dim1=1, dim2=2).clamp_min(torch.finfo(G.dtype).tiny).unsqueeze(1)
    x = A * free
    r = B - torch.bmm(x, G)
    z = r * w
    p = z.clone()
    rz = torch.linalg.vecdot(r, z).unsqueeze(-1)
    target = tol**2 * torch.linalg.vecdot(B, B * w).unsqueeze(-1)
    zero = torch.zeros((), dtype=G.dtype, device=G.device)
    steps = 0
    while steps < max_steps and not bool((rz <= target).all()):
        steps += 1
        Gp = torch.bmm(p, G)
        pGp = torch.linalg.vecdot(p, Gp).unsqueeze(-1)
        step = torch.where(pGp > 0, rz / pGp, zero)
        x.addcmul_(step, p)
        r.addcmul_(step, Gp, value=-1)
        z = torch.mul(r, w)
        rz_new = torch.linalg.vecdot(r, z).unsqueeze(-1)
        p = z.addcmul_(torch.where(rz > 0, rz_new / rz, zero), p)
        rz = rz_new
    return x, steps


CPU_CHUNK_ELEMENTS = 60_000
"""On a CPU, manifolds are solved a few at a time so that each CG vector (n x M per manifold) stays in the
cache: measured 2x faster than the whole batch at once (P = 100, n = 200, M = 50)."""


def batched_nnls(S: torch.Tensor, Y: torch.Tensor, *, tol: float = 1e-10, max_outer: int = 30,
                 cg_tol: float = 1e-13, method: str | None = None) -> tuple[torch.Tensor, NNLSInfo]:
    """``argmin_{a>=0} |S[p] a - Y[p, i]|`` for all p, i.

    S: (P, D, M) float64 (the same matrix for all of Y[p]'s rows); Y: (P, n, D). ``method``: ``"direct"`` (compiled
    per-problem Cholesky; the default on a CPU) or ``"cg"`` (batched conjugate gradients; the default on a GPU); both
    return the optimum to ``tol``. Returns A: (P, n, M) and an :class:`NNLSInfo`. Raises RuntimeError if a solution
    misses 100 x ``tol`` even after Lawson-Hanson (not seen on MFTMA inputs; generic matrices with condition numbers
    beyond ~1e13 can get there)."""
    if S.ndim != 3 or Y.ndim != 3 or S.shape[0] != Y.shape[0] or S.shape[1] != Y.shape[2]:
        raise ValueError(f"batched_nnls: S must be (P, D, M) and Y (P, n, D); got {tuple(S.shape)} and "
                         f"{tuple(Y.shape)}")
    if not (S.dtype == Y.dtype == torch.float64):
        raise TypeError("batched_nnls needs float64 S and Y (the KKT tolerance is below float32 round-off)")
    method = method or ("cg" if S.is_cuda else "direct")
    if method not in ("direct", "cg") or (method == "direct" and S.is_cuda):
        raise ValueError(f"batched_nnls: method must be 'direct' (CPU) or 'cg', got {method!r} on {S.device.type}")
    P, n, M = S.shape[0], Y.shape[1], S.shape[2]
    chunk = P if S.is_cuda or method == "direct" else max(1, CPU_CHUNK_ELEMENTS // max(1, n * M))
    parts = [_solve(S[i:i + chunk], Y[i:i + chunk], tol, max_outer, cg_tol, method) for i in range(0, P, chunk)]
    if not parts:
        A = Y.new_zeros(0, n, M)
    elif len(parts) == 1:  # the usual case on a CPU: no copy
        A = parts[0][0]
    else:
        A = torch.cat([a for a, _ in parts])
    return A, NNLSInfo.combine(info for _, info in parts)


RANK_TOL = 1e-10
"""A manifold whose Gram matrix (duplicates removed) has eigenvalues below this fraction of its largest is treated
as rank-deficient: its multipliers are not unique and the active-set method may cycle, so Lawson-Hanson solves it."""


DUPLICATE_TOL = 1e-10
"""Columns closer than this fraction of the largest column norm count as one point (round-off makes repeated
points of a manifold differ in the last digits once they are expressed in new coordinates)."""


CANDIDATE_TOL = 1e-8
"""Pairs of columns whose squared distance computed from the Gram matrix is below this fraction of the largest
squared column norm are compared exactly (the Gram-based distance carries round-off of ~1e-15 of that norm, far
below this and far above DUPLICATE_TOL squared, so no repeated pair is missed)."""


def _distinct_columns(S: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """(P, M) bool: False for a column that repeats an earlier column of the same matrix (G = S^T S). A repeated
    point adds nothing to the cone its manifold spans, so dropping it changes no anchor (by more than the
    tolerance); keeping it would make G singular. Candidate pairs come from G; each is then measured directly, as
    |s_i - s_j| without cancellation."""
    sq = torch.diagonal(G, dim1=1, dim2=2)
    largest = sq.amax(-1)
    near = torch.tril(sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * G <= CANDIDATE_TOL * largest[:, None, None], -1)
    distinct = torch.ones(sq.shape, dtype=torch.bool, device=S.device)
    p, i, j = torch.nonzero(near, as_tuple=True)  # column i > j
    chunk = max(1, 2**22 // S.shape[1])  # pairs at a time (32 MB), for manifolds of many near-identical points
    for start in range(0, len(p), chunk):
        pc, ic, jc = p[start:start + chunk], i[start:start + chunk], j[start:start + chunk]
        repeated = (S[pc, :, ic] - S[pc, :, jc]).norm(dim=-1) <= DUPLICATE_TOL * largest[pc].sqrt()
        distinct[pc[repeated], ic[repeated]] = False
    return distinct


def _full_rank(G: torch.Tensor, enabled: torch.Tensor) -> torch.Tensor:
    """(P,) bool: whether each G, restricted to its enabled columns, has all eigenvalues above RANK_TOL times its
    largest. Most manifolds are far from that line, and a Cholesky factorization G = L L^T shows it at a third of
    the cost of the eigenvalues: lambda_min >= 1 / |L^-1|_F^2 and lambda_max <= trace(G), bounds within a factor M
    of the truth. Only the manifolds these bounds cannot place (a failed factorization, or a condition number
    beyond ~RANK_TOL^-1 / M^2) get their eigenvalues computed."""
    keep = enabled.unsqueeze(-1) & enabled.unsqueeze(-2)
    scale = torch.diagonal(G, dim1=1, dim2=2).amax(-1).clamp_min(torch.finfo(G.dtype).tiny)
    H = torch.where(keep, G, torch.diag_embed(scale.unsqueeze(-1).expand_as(enabled)))
    L, failed = torch.linalg.cholesky_ex(H)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    inverse = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    trace = torch.diagonal(H, dim1=1, dim2=2).sum(-1)
    full = (failed == 0) & (inverse.square().sum((1, 2)) * trace * RANK_TOL < 1)  # NaN compares False
    unsure = torch.nonzero(~full).flatten()
    if len(unsure):
        lam = torch.linalg.eigvalsh(H[unsure])
        full[unsure] = lam[:, 0] > RANK_TOL * lam[:, -1]
    return full


def _solve(S, Y, tol, max_outer, cg_tol, method):
    """One chunk of manifolds: block principal pivoting with CG solves on full-rank manifolds, Lawson-Hanson on
    rank-deficient ones and on whatever the first leaves unsolved."""
    G = S.mT @ S
    B = Y @ S  # S^T y for every row
    enabled = _distinct_columns(S, G)
    full_rank = _full_rank(G, enabled)
    outer = cg_steps = 0
    if method == "direct":  # rank-deficient manifolds are left unsolved (todo) for Lawson-Hanson
        A, todo, checked, outer = _block_pivoting_direct(G, B, enabled, full_rank, tol, max_outer)
    else:
        A = torch.zeros_like(B)
        todo = torch.ones(B.shape[:2], dtype=torch.bool, device=B.device)
        rows = torch.nonzero(full_rank).flatten()
        if len(rows):
            A[rows], todo[rows], outer, cg_steps = _block_pivoting(G[rows], B[rows], enabled[rows], tol, max_outer,
                                                                   cg_tol)
        A.clamp_min_(0)  # solved problems have no entry below -tol
    n_lh = int(todo.sum())
    for p, i in torch.nonzero(todo).tolist():
        A[p, i] = _lawson_hanson(S[p], Y[p, i], enabled[p], G[p], B[p, i], tol)
    if method == "direct":  # each answer's residual was measured in the solver; Lawson-Hanson's are measured here
        if n_lh:
            checked[todo] = kkt_residual(G, B, A)[todo]
        residual = float(checked.max()) if A.numel() else 0.0
    else:
        residual = float(kkt_residual(G, B, A).max()) if A.numel() else 0.0
    if residual > tol * 100:
        raise RuntimeError(f"batched_nnls: KKT residual {residual:.3g} after {outer} active-set iterations and "
                           f"Lawson-Hanson on {n_lh} problems; the problems may be too ill-conditioned for float64")
    return A, NNLSInfo(outer, cg_steps, n_lh, residual)


def _lawson_hanson(S, y, columns, G, b, tol):
    """One problem by scipy's Lawson-Hanson (``nnls``), on the ``columns`` enabled; checked, since scipy's solver can
    return a point that is not optimal on a rank-deficient S (seen with scipy 1.17: about 1 in 600 random 11 x 20
    matrices of rank 9, and on an MFTMA manifold of the default profile). Such a problem is solved again by bounded
    variable least squares (``lsq_linear``, method ``bvls``), which is exact on them."""
    from scipy.optimize import lsq_linear, nnls

    s, target = S[:, columns].cpu().numpy(), y.cpu().numpy()
    a = torch.zeros_like(b)
    a[columns] = torch.from_numpy(np.asarray(nnls(s, target, maxiter=50 * S.shape[-1])[0])).to(a)
    if float(kkt_residual(G[None], b[None, None], a[None, None])) > tol * 100:
        a[columns] = torch.from_numpy(lsq_linear(s, target, bounds=(0, np.inf), method="bvls", tol=1e-15).x).to(a)
    return a


def _block_pivoting(G, B, enabled, tol, max_outer, cg_tol):
    """Block principal pivoting (Kim & Park 2011) on manifolds with positive definite G (disabled columns stay 0).
    Returns A, the still-unsolved problems, the outer iterations and the CG steps."""
    A = torch.zeros_like(B)
    outer = cg_steps = 0
    d = torch.diagonal(G, dim1=1, dim2=2).unsqueeze(1)
    eps = tol * B.abs().amax(-1, keepdim=True)  # per problem: how negative counts as infeasible
    allowed = enabled.unsqueeze(1)
    free = (B > eps) & allowed  # the free set of a = 0: where the gradient -b points inwards
    best = torch.full(B.shape[:2], G.shape[-1] + 1, dtype=torch.int32, device=B.device)  # fewest infeasible so far
    backup = torch.full_like(best, 3)  # full exchanges allowed without progress before single ones
    todo = torch.ones(B.shape[:2], dtype=torch.bool, device=B.device)
    max_cg = 3 * G.shape[-1] + 20
    while bool(todo.any()) and outer < max_outer:
        outer += 1
        # the unsolved problems: manifolds with any, and per manifold its unsolved rows first (padding is
        # solved problems, whose results are not written back)
        everything = bool(todo.all())
        rows = torch.nonzero(todo.any(1)).flatten()
        cols = torch.argsort((~todo[rows]).to(torch.int8), dim=1, stable=True)[:, :int(todo.sum(1).max())]

        def take(t):
            if everything:
                return t
            return torch.gather(t[rows], 1, cols.view(*cols.shape, *[1] * (t.ndim - 2)).expand(-1, -1, *t.shape[2:]))

        Gs = G[rows]  # per manifold (small); per-problem state goes through take()
        Bs, F, E = take(B), take(free), take(eps)
        X, steps = _masked_cg(Gs, Bs, F, take(A), cg_tol, max_cg)
        cg_steps += steps
        g = torch.bmm(X, Gs) - Bs
        infeasible = torch.where(F, X * d[rows] < -E, g < -E) & allowed[rows]
        n_inf = infeasible.sum(-1, dtype=torch.int32)
        solved = (n_inf == 0) & (kkt_residual(Gs, Bs, X.clamp_min(0)) <= tol)
        fewer, bk = n_inf < take(best), take(backup)
        exchange_all = fewer | (bk > 0)
        last = infeasible.shape[-1] - 1 - torch.argmax(infeasible.flip(-1).to(torch.int8), dim=-1, keepdim=True)
        single = torch.zeros_like(infeasible).scatter_(-1, last, True) & infeasible  # Murty's rule: finite
        F = F ^ torch.where(exchange_all.unsqueeze(-1), infeasible, single)
        new_best = torch.where(fewer, n_inf, take(best))
        new_backup = torch.where(fewer, 3, torch.where(bk > 0, bk - 1, bk))
        if everything:
            A, free, best, backup, todo = X, F, new_best, new_backup, ~solved
            continue
        write = take(todo)
        for state, value in ((A, X), (free, F), (best, new_best), (backup, new_backup), (todo, ~solved)):
            index = cols.view(*cols.shape, *[1] * (state.ndim - 2)).expand(-1, -1, *state.shape[2:])
            mask = write.view(*write.shape, *[1] * (state.ndim - 2))
            state[rows] = state[rows].scatter(1, index, torch.where(mask, value, take(state)))
    return A, todo, outer, cg_steps


def _block_pivoting_direct(G, B, enabled, full_rank, tol, max_outer):
    """:func:`_block_pivoting` with each problem's equality problems solved by Cholesky, one problem at a time in
    compiled code (:mod:`actid.compiled`; problems side by side in threads), on the manifolds marked ``full_rank``
    (the others stay zero and unsolved). Returns A, the still-unsolved problems, the relative KKT residual of each
    solved one and the most outer iterations."""
    A = np.zeros(tuple(B.shape))
    solved = np.zeros(tuple(B.shape[:2]), dtype=np.bool_)
    residual = np.zeros(tuple(B.shape[:2]))
    outer = np.zeros(tuple(B.shape[:2]), dtype=np.int64)
    G, B, enabled = G.contiguous().numpy(), B.contiguous().numpy(), enabled.contiguous().numpy()
    full_rank = full_rank.numpy()
    in_threads(lambda start, stop: _pivot_each(G, B, enabled, full_rank, tol, max_outer, A, solved, residual, outer,
                                               start, stop), B.shape[0] * B.shape[1])
    return torch.from_numpy(A), torch.from_numpy(~solved), torch.from_numpy(residual), int(outer.max(initial=0))


@jit
def _factor_and_solve(G, b, free, x, L, idx, rhs):
    """x_F = G_FF^{-1} b_F and x = 0 off F, by the Cholesky factorization G_FF = L L^T (L kept for refinement);
    returns F, or -1 if G_FF is not numerically positive definite. Column by column, four entries at a time: the
    entries of one column are independent dot products, which the CPU overlaps (measured 1.6x faster than row by
    row, where each entry waits for the one before it)."""
    F = 0
    for j in range(G.shape[0]):
        x[j] = 0.0
        if free[j]:
            idx[F] = j
            F += 1
    for j in range(F):
        Lj, cj = L[j], idx[j]
        s = G[cj, cj]
        for k in range(j):
            s -= Lj[k] * Lj[k]
        if not s > 0:
            return -1
        d = np.sqrt(s)
        Lj[j] = d
        i = j + 1
        while i + 4 <= F:  # four entries of the column at once, each still summed in order of k
            L0, L1, L2, L3 = L[i], L[i + 1], L[i + 2], L[i + 3]
            s0, s1, s2, s3 = G[idx[i], cj], G[idx[i + 1], cj], G[idx[i + 2], cj], G[idx[i + 3], cj]
            for k in range(j):
                w = Lj[k]
                s0 -= L0[k] * w
                s1 -= L1[k] * w
                s2 -= L2[k] * w
                s3 -= L3[k] * w
            L0[j], L1[j], L2[j], L3[j] = s0 / d, s1 / d, s2 / d, s3 / d
            i += 4
        for i in range(i, F):
            Li = L[i]
            s = G[idx[i], cj]
            for k in range(j):
                s -= Li[k] * Lj[k]
            Li[j] = s / d
    for a in range(F):
        rhs[a] = b[idx[a]]
    _cholesky_solve(L, rhs, F)
    for a in range(F):
        x[idx[a]] = rhs[a]
    return F


@jit
def _cholesky_solve(L, y, F):
    """y[:F] <- (L L^T)^{-1} y[:F] for the lower triangular L, both triangles by columns (independent updates)."""
    for c in range(F):  # L z = y
        y[c] /= L[c, c]
        w = y[c]
        for k in range(c + 1, F):
            y[k] -= L[k, c] * w
    for k in range(F - 1, -1, -1):  # L^T x = z
        y[k] /= L[k, k]
        w = y[k]
        for c in range(k):
            y[c] -= w * L[k, c]


@jit
def _largest_magnitude(v, n):
    """max |v[:n]|, without the temporary array of ``np.abs(v[:n]).max()``."""
    out = 0.0
    for j in range(n):
        out = max(out, abs(v[j]))
    return out


@jit
def _gradient(G, b, x, g):
    """g = G x - b (G symmetric)."""
    M = G.shape[0]
    g[:] = -b
    for f in range(M):
        if x[f] != 0.0:
            for j in range(M):
                g[j] += x[f] * G[f, j]


@jit
def _pivot_each(G, B, enabled, full_rank, tol, max_outer, A, solved, residual, outer, start, stop):
    """Block principal pivoting for the problems (p, i) = divmod(task, n), task in start:stop, each alone (those of
    manifolds marked ``full_rank``; the rest are left unsolved), writing
    A[p, i], solved[p, i], residual[p, i] (its relative KKT residual) and outer[p, i]. The same
    rules as :func:`_block_pivoting`: start from F = {b > eps}; swap every infeasible variable while their number
    falls (or for 3 more iterations), else only the last (Murty's rule); solved when no variable is infeasible and
    the KKT residual of the clamped answer is at most tol * max |b|."""
    P, n, M = B.shape
    L = np.empty((M, M))  # work space, reused by every problem
    idx = np.empty(M, np.int64)
    rhs, g, clamped = np.empty(M), np.empty(M), np.empty(M)
    free, infeasible = np.empty(M, np.bool_), np.empty(M, np.bool_)
    for task in range(start, stop):
        p, i = task // n, task % n
        if not full_rank[p]:
            continue
        Gp, b, x = G[p], B[p, i], A[p, i]
        scale = max(_largest_magnitude(b, M), 1e-300)
        eps = tol * scale
        for j in range(M):
            free[j] = enabled[p, j] and b[j] > eps
        best, backup = M + 1, 3
        while outer[p, i] < max_outer:
            outer[p, i] += 1
            F = _factor_and_solve(Gp, b, free, x, L, idx, rhs)
            if F < 0:
                break  # left for Lawson-Hanson
            _gradient(Gp, b, x, g)
            n_infeasible, last = 0, -1
            for j in range(M):
                infeasible[j] = enabled[p, j] and (x[j] * Gp[j, j] < -eps if free[j] else g[j] < -eps)
                if infeasible[j]:
                    n_infeasible += 1
                    last = j
            if n_infeasible == 0:
                for _ in range(2):  # iterative refinement on the final free set: the residual of G_FF x_F = b_F is -g_F
                    for a in range(F):
                        rhs[a] = -g[idx[a]]
                    if F == 0 or _largest_magnitude(rhs, F) <= 1e-3 * eps:
                        break
                    _cholesky_solve(L, rhs, F)
                    for a in range(F):
                        x[idx[a]] += rhs[a]
                    _gradient(Gp, b, x, g)
                negative = False
                for j in range(M):
                    clamped[j] = max(x[j], 0.0)
                    negative |= x[j] < 0.0
                if negative:  # otherwise g is already G x - b for x = clamped
                    _gradient(Gp, b, clamped, g)
                kkt = 0.0
                for j in range(M):
                    kkt = max(kkt, abs(min(clamped[j] * Gp[j, j], g[j])))
                if kkt <= eps:
                    x[:] = clamped
                    solved[p, i] = True
                    residual[p, i] = kkt / scale
                break  # solved; or not to tol on this free set, which another pass would repeat: Lawson-Hanson
            elif n_infeasible < best or backup > 0:
                backup = 3 if n_infeasible < best else backup - 1
                best = min(best, n_infeasible)
                for j in range(M):
                    free[j] ^= infeasible[j]
            else:
                free[last] = not free[last]
