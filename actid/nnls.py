"""Exact non-negative least squares for many right-hand sides that share a matrix, batched on CPU or GPU.

``batched_nnls(S, Y)`` solves, for every manifold p and every row y of ``Y[p]``::

    min_{a >= 0} |S[p] a - y|^2          (the dual of the MFTMA anchor-point QP, see actid.measures.geometry)

It is a primal-dual active-set (semi-smooth Newton) method on the dual's normal equations ``G a = S^T y``,
``G = S^T S``. One outer iteration guesses the free set F = {a - g / diag(G) > 0} (g = G a - S^T y, the
gradient) and solves ``G_FF a_F = (S^T y)_F`` with ``a`` zero elsewhere. The linear solves use conjugate
gradients whose only matrix product is ``G[p]`` times all of manifold p's right-hand sides at once, so the whole
batch costs a few batched matmuls per CG step: a per-problem factorization (20 us for a 50 x 50 Cholesky on a
CPU core) would cost more than the whole solve. On well-conditioned problems 3 outer iterations suffice, on
activations of trained networks about 8; each outer iteration only revisits the problems not yet solved.

A problem is solved when its KKT residual ``max_j |min(a_j diag(G)_j, g_j)|`` (zero exactly at the optimum:
a >= 0, g >= 0, a_j g_j = 0) is at most ``tol`` times ``max |S^T y|``; the answer is then exact to that
residual, not to an iteration count. Repeated columns (a manifold with duplicated points) are dropped, which is
exact. Manifolds whose G is still (numerically) singular, e.g. more points than dimensions, and the rare problems
left after ``max_outer`` iterations, go to Lawson-Hanson (scipy.optimize.nnls), which is exact and finite on
rank-deficient problems; every answer is checked again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
                 cg_tol: float = 1e-13) -> tuple[torch.Tensor, NNLSInfo]:
    """``argmin_{a>=0} |S[p] a - Y[p, i]|`` for all p, i.

    S: (P, D, M) float64 (the same matrix for all of Y[p]'s rows); Y: (P, n, D). Returns A: (P, n, M) and an
    :class:`NNLSInfo`. Raises RuntimeError if a solution misses 100 x ``tol`` even after Lawson-Hanson (not seen on
    MFTMA inputs; generic matrices with condition numbers beyond ~1e13 can get there)."""
    if S.ndim != 3 or Y.ndim != 3 or S.shape[0] != Y.shape[0] or S.shape[1] != Y.shape[2]:
        raise ValueError(f"batched_nnls: S must be (P, D, M) and Y (P, n, D); got {tuple(S.shape)} and "
                         f"{tuple(Y.shape)}")
    if not (S.dtype == Y.dtype == torch.float64):
        raise TypeError("batched_nnls needs float64 S and Y (the KKT tolerance is below float32 round-off)")
    P, n, M = S.shape[0], Y.shape[1], S.shape[2]
    chunk = P if S.is_cuda else max(1, CPU_CHUNK_ELEMENTS // max(1, n * M))
    parts = [_solve(S[i:i + chunk], Y[i:i + chunk], tol, max_outer, cg_tol) for i in range(0, P, chunk)]
    A = torch.cat([a for a, _ in parts]) if parts else Y.new_zeros(0, n, M)
    return A, NNLSInfo.combine(info for _, info in parts)


RANK_TOL = 1e-10
"""A manifold whose Gram matrix (duplicates removed) has eigenvalues below this fraction of its largest is treated
as rank-deficient: its multipliers are not unique and the active-set method may cycle, so Lawson-Hanson solves it."""


DUPLICATE_TOL = 1e-10
"""Columns closer than this fraction of the largest column norm count as one point (round-off makes repeated
points of a manifold differ in the last digits once they are expressed in new coordinates)."""


def _distinct_columns(S: torch.Tensor) -> torch.Tensor:
    """(P, M) bool: False for a column that repeats an earlier column of the same matrix. A repeated point adds
    nothing to the cone its manifold spans, so dropping it changes no anchor (by more than the tolerance); keeping
    it would make G singular."""
    cols = S.mT
    dist = torch.cdist(cols, cols, compute_mode="donot_use_mm_for_euclid_dist")  # (P, M, M), no cancellation
    tol = DUPLICATE_TOL * cols.norm(dim=-1).amax(-1)[:, None, None]
    return ~torch.tril(dist <= tol, diagonal=-1).any(-1)


def _solve(S, Y, tol, max_outer, cg_tol):
    """One chunk of manifolds: block principal pivoting with CG solves on full-rank manifolds, Lawson-Hanson on
    rank-deficient ones and on whatever the first leaves unsolved."""
    G = S.mT @ S
    B = Y @ S  # S^T y for every row
    enabled = _distinct_columns(S)
    keep = enabled.unsqueeze(-1) & enabled.unsqueeze(-2)
    scale = torch.diagonal(G, dim1=1, dim2=2).amax(-1).clamp_min(torch.finfo(G.dtype).tiny)
    lam = torch.linalg.eigvalsh(torch.where(keep, G, torch.diag_embed(scale.unsqueeze(-1).expand_as(enabled))))
    full_rank = lam[:, 0] > RANK_TOL * lam[:, -1]
    A = torch.zeros_like(B)
    todo = torch.ones(B.shape[:2], dtype=torch.bool, device=B.device)
    outer = cg_steps = 0
    rows = torch.nonzero(full_rank).flatten()
    if len(rows):
        A[rows], todo[rows], outer, cg_steps = _block_pivoting(G[rows], B[rows], enabled[rows], tol, max_outer, cg_tol)
    n_lh = int(todo.sum())
    for p, i in torch.nonzero(todo).tolist():
        A[p, i] = _lawson_hanson(S[p], Y[p, i], enabled[p], G[p], B[p, i], tol)
    A.clamp_min_(0)  # solved problems have no entry below -tol; Lawson-Hanson's are >= 0
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
