"""The common subspace of class centers: step 2 of MFTMA (:mod:`actid.measures.geometry`), the reference's ``fun_FA``.

For K = 1, 2, ... it looks for the K-dimensional subspace V of the centers' span that minimises the summed squared
cosines between the residual centers ``x_i - V V^T x_i``: a small non-convex problem on the Stiefel manifold, solved
from ``n_reps`` random starts by Riemannian L-BFGS. The restarts run a few hundred iterations each on arrays of a
few thousand entries, so in numpy the time went into the ~100 array operations per iteration (~1 ms), not into
arithmetic. Here one restart is one compiled loop (:mod:`actid.compiled`), restarts side by side in threads: the
same iterates to round-off, 6x less time on 2 cores (0.08 s instead of 0.45 s for 100 centers in R^5000).

The compiled code stores the K frame vectors as rows (``Vt``: (K, r)), so that the three products of P x r x K
multiply-adds per cost evaluation are contiguous BLAS calls.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange

from actid.compiled import dot, jit, jit_parallel, match_torch_threads


def center_correlation(centers: torch.Tensor) -> float:
    """Mean |cosine| over pairs of distinct rows of ``centers`` (already centred on their mean)."""
    unit = centers / centers.norm(dim=1, keepdim=True).clamp_min(torch.finfo(centers.dtype).tiny)
    P = len(centers)
    return float(((unit @ unit.T).abs().sum() - P) / (P * (P - 1)))


@jit
def _residual_cost(X, XT, C, CC, Vt, grad_t, c, sc, C_sc, cM, Hc):
    """Summed squared cosines between the residual centers ``X - X V V^T``, and its Euclidean gradient in V written
    into ``grad_t`` ((K, r), transposed like ``Vt``). X: (P, r); XT = X^T; C = X X^T; CC = C * C; the other
    arguments are (K, P) work space.

    With the residual Gram E = C - c c^T (c = X V), e = diag E and s = 1 / e: F = 1/2 s^T (E * E) s and
    dF/dV = -2 X^T H c with H c = s (E (s c)) - s^2 ((E * E) s) c. Neither needs the P x P matrix E:
    E y = C y - c (c^T y), and (E * E) s = (C * C) s - 2 rowsum(c * C (s c)) + rowsum((c M) * c) with M = c^T diag(s) c
    (K x K): 3 P r K + P^2 (K + 1) multiply-adds."""
    K, P = Vt.shape[0], X.shape[0]
    np.dot(Vt, XT, c)  # (K, P): c^T; the three products of P x r x K go to BLAS
    s = np.empty(P)
    for p in range(P):
        e = C[p, p]
        for k in range(K):
            e -= c[k, p] * c[k, p]
        s[p] = 1.0 / e
    for k in range(K):  # row k is s * c[:, k]
        for p in range(P):
            sc[k, p] = s[p] * c[k, p]
    np.dot(sc, C, C_sc)  # (C (s c))^T; C is symmetric
    M = np.dot(c, sc.T)  # c^T diag(s) c, symmetric
    np.dot(M, c, cM)  # (c M)^T
    EEs = np.dot(s, CC)  # (E * E) s, completed below
    for k in range(K):
        for p in range(P):
            EEs[p] += (cM[k, p] - 2.0 * C_sc[k, p]) * c[k, p]
    cost = 0.0
    for p in range(P):  # (H c)^T
        cost += s[p] * EEs[p]
        for k in range(K):
            Hc[k, p] = -2.0 * (s[p] * (C_sc[k, p] - cM[k, p]) - s[p] * s[p] * EEs[p] * c[k, p])
    np.dot(Hc, X, grad_t)
    return cost / 2.0


@jit
def _tangent(Vt, Zt, KK, out):
    """The tangent part ``Z - V V^T Z`` of Z at the frame V (both transposed: (K, r)), into ``out``; KK: (K, K) work
    space. V^T grad is symmetric for this cost, so this is the Riemannian gradient of a Euclidean one."""
    np.dot(Zt, Vt.T, KK)
    np.dot(KK, Vt, out)
    for k in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[k, j] = Zt[k, j] - out[k, j]


@jit
def _retract(Zt, out):
    """The QR retraction into ``out``: the rows of ``Zt`` orthonormalised in order (Gram-Schmidt, each row twice),
    i.e. the Q of a QR factorisation with a positive diagonal in R: the frame nearest-in-order to Z, with no column
    sign flips (which would wreck the L-BFGS memory)."""
    for k in range(Zt.shape[0]):
        v = out[k]
        v[:] = Zt[k]
        for _ in range(2):
            for a in range(k):
                w = dot(out[a], v)
                for j in range(v.size):
                    v[j] -= w * out[a, j]
        norm = np.sqrt(dot(v, v))
        for j in range(v.size):
            v[j] = v[j] / norm


@jit
def _add_multiple(a, x, y):
    """y += a x in place (the roundings of ``y += a * x``, without its temporary)."""
    for k in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[k, j] += a * x[k, j]


@jit
def _lbfgs(X, XT, C, CC, Vt, gtol, max_iter, memory):
    """One restart: Riemannian L-BFGS from the frame ``Vt`` (QR retraction, memory carried to the new point by
    tangent projection, Armijo backtracking from the unit step). Stops when the Riemannian gradient norm is at most
    ``gtol``, when no decrease above the cost's round-off is left, or after ``max_iter`` iterations. Every array is
    allocated before the first iteration: thousands of iterations on arrays of a few hundred entries spent a tenth
    of their time allocating temporaries."""
    K, r = Vt.shape
    P = X.shape[0]
    work = np.empty((4, K, P))  # the cost's work space
    c, sc, C_sc, Hc = work[0], work[1], work[2], work[3]
    cM, KK = np.empty((K, P)), np.empty((K, K))
    Vt = Vt.copy()
    V_new, trial, grad = np.empty((K, r)), np.empty((K, r)), np.empty((K, r))
    xi, xi_new = np.empty((K, r)), np.empty((K, r))
    q, direction, s, y = np.empty((K, r)), np.empty((K, r)), np.empty((K, r)), np.empty((K, r))
    cost = _residual_cost(X, XT, C, CC, Vt, grad, c, sc, C_sc, cM, Hc)
    _tangent(Vt, grad, KK, xi)
    S = np.zeros((memory, K, r))  # steps and gradient changes, newest last; empty slots are zero
    Y = np.zeros((memory, K, r))
    rho = np.zeros(memory)  # 1 / <s, y> (0 for empty slots: they contribute nothing)
    alphas = np.zeros(memory)
    active = np.sqrt(dot(xi, xi)) > gtol
    for _ in range(max_iter):
        if not active:
            break
        q[:] = xi
        for i in range(memory - 1, -1, -1):  # two-loop recursion
            alphas[i] = rho[i] * dot(S[i], q)
            _add_multiple(-alphas[i], Y[i], q)
        yy = dot(Y[memory - 1], Y[memory - 1])
        if yy > 0:
            q *= 1.0 / max(rho[memory - 1] * yy, 1e-300)
        else:  # no memory yet: a unit-length first step
            q *= 1.0 / max(np.sqrt(dot(xi, xi)), 1e-300)
        for i in range(memory):
            _add_multiple(alphas[i] - rho[i] * dot(Y[i], q), S[i], q)
        _tangent(Vt, q, KK, direction)
        direction *= -1.0
        slope = dot(xi, direction)
        if slope >= 0:  # a stale memory: fall back to the gradient
            direction[:] = xi
            direction *= -1.0
            slope = -dot(xi, xi)
        step = 1.0
        while True:  # backtracking
            for k in range(K):
                for j in range(r):
                    trial[k, j] = Vt[k, j] + step * direction[k, j]
            _retract(trial, V_new)
            cost_new = _residual_cost(X, XT, C, CC, V_new, grad, c, sc, C_sc, cM, Hc)
            ok = cost_new <= cost + 1e-4 * step * slope
            # a decrease below the cost's round-off cannot be certified: the restart has converged
            if ok or not (-step * slope > 1e-15 * abs(cost)):
                break
            step /= 2
        if not ok:
            break
        _tangent(V_new, grad, KK, xi_new)
        trial[:] = V_new
        trial -= Vt
        _tangent(V_new, trial, KK, s)
        _tangent(V_new, xi, KK, y)
        for k in range(K):
            for j in range(r):
                y[k, j] = xi_new[k, j] - y[k, j]
        sy = dot(s, y)
        if sy > 0:  # curvature information; otherwise keep the old memory
            # shifted, newest last (a ring would move pairs to other rows of the products below, which BLAS rounds
            # differently by row)
            S[:-1], Y[:-1], rho[:-1] = S[1:].copy(), Y[1:].copy(), rho[1:].copy()
            S[memory - 1], Y[memory - 1], rho[memory - 1] = s, y, 1.0 / sy
            for pairs in (S.reshape(memory * K, r), Y.reshape(memory * K, r)):  # views of all slots at once
                pairs -= (pairs @ V_new.T) @ V_new  # the memory moves to the new point's tangent space
        Vt, V_new = V_new, Vt
        xi, xi_new = xi_new, xi
        cost = cost_new
        active = np.sqrt(dot(xi, xi)) > gtol
    return Vt


@jit_parallel
def _restarts(X, XT, C, CC, Vt, out, gtol, max_iter, memory):
    """:func:`_lbfgs` for each restart Vt[i] ((R, K, r)), into ``out``, in parallel (each restart alone)."""
    for i in prange(Vt.shape[0]):
        out[i] = _lbfgs(X, XT, C, CC, Vt[i], gtol, max_iter, memory)


def fit_subspace(X: np.ndarray, V: np.ndarray, gtol: float = 1e-6, max_iter: int = 300, memory: int = 5) -> np.ndarray:
    """Minimise the residual-cosine cost over orthonormal frames V ((R, r, K): R restarts) for centers X ((P, r),
    float64). A restart stops when its Riemannian gradient norm is at most ``gtol`` (pymanopt's default), when no
    decrease above the cost's round-off is left, or after ``max_iter`` iterations. L-BFGS, not steepest descent: the
    centers of real data make the problem ill-conditioned, where gradient steps need thousands of iterations.
    Restarts that converge take under 200 iterations; the rest crawl, and running them to pymanopt's cap of 1000
    instead of 300 changed no capacity, radius or dimension in the 6th digit on the cases we measured (random points,
    correlated centers, MNIST digits), at 2-3x the time."""
    X = np.ascontiguousarray(X)
    XT = np.ascontiguousarray(X.T)
    C = X @ XT
    Vt = np.ascontiguousarray(np.swapaxes(V, -1, -2))
    out = np.empty_like(Vt)
    match_torch_threads()
    _restarts(X, XT, C, C * C, Vt, out, gtol, max_iter, memory)
    return np.swapaxes(out, -1, -2)


def residual_cost(X: np.ndarray, V: np.ndarray) -> tuple[float, np.ndarray]:
    """The search's cost and its Euclidean gradient (r, K) at one frame V ((r, K)) for centers X ((P, r))."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    C = X @ X.T
    K, P = V.shape[1], len(X)
    grad_t = np.empty((K, V.shape[0]))
    cost = _residual_cost(X, np.ascontiguousarray(X.T), C, C * C, np.ascontiguousarray(V.T), grad_t,
                          *(np.empty((K, P)) for _ in range(5)))
    return cost, grad_t.T


def _orthonormal(Z: np.ndarray) -> np.ndarray:
    """Starting frames: the Q of a QR factorisation of each Z (R, r, K), with a positive diagonal in R."""
    Q, R = np.linalg.qr(Z)
    sign = np.sign(np.diagonal(R, axis1=-2, axis2=-1))
    return Q * np.where(sign == 0, 1, sign)[..., None, :]


def common_center_subspace(centers: torch.Tensor, n_reps: int = 10,
                           seed: int = 0) -> tuple[torch.Tensor, int, list[float]]:
    """The common subspace of the (mean-removed) class centers: an (N, K) orthonormal basis, K, and the mean residual
    |cosine| for each K tried.

    For K = 1, 2, ...: ``n_reps`` restarts, each the previous K's subspace plus a random combination of the centers,
    optimised on the Stiefel manifold; the restart whose smallest residual-to-center norm ratio is largest is kept.
    The search stops after the mean |cosine| has risen 3 times in a row, and at K = P - 2."""
    P = len(centers)
    gen = torch.Generator().manual_seed(seed)
    lam, U = torch.linalg.eigh(centers @ centers.T)  # coordinates of the centers in their own span
    keep = lam > lam.max() * 1e-12
    lam, U = lam[keep], U[:, keep]
    X = U * lam.sqrt()  # (P, r): X X^T = centers centers^T
    to_basis = U / lam.sqrt()  # centers^T to_basis: an (N, r) orthonormal basis of their span (up to round-off
    # amplified by small eigenvalues); only the chosen frame is taken to R^N, at the end
    explained = torch.cumsum(lam.flip(0) / lam.sum(), 0)
    n_below = int((explained < 0.95).sum())
    max_K = min(max(n_below - 1, 0) + 11, P - 2, X.shape[1] - 1)
    X = X.cpu().numpy()  # (P, r): the search runs on the CPU (small arrays)
    norms = np.linalg.norm(X, axis=1)
    V_prev = np.zeros((X.shape[1], 0))
    kept, costs = [], []
    for K in range(1, max_K + 1):
        s = torch.randn(n_reps, P, generator=gen, dtype=torch.float64).numpy()
        V0 = np.concatenate([(s @ X)[..., None], np.broadcast_to(V_prev, (n_reps, *V_prev.shape))], axis=2)
        V = fit_subspace(X, _orthonormal(V0))
        residual = X - (X @ V) @ np.swapaxes(V, -1, -2)  # (R, P, r)
        stability = (np.linalg.norm(residual, axis=2) / norms).min(1)
        V_prev = V[int(np.argmax(stability))]
        kept.append(V_prev)
        costs.append(center_correlation(torch.from_numpy(X - X @ V_prev @ V_prev.T)))
        if K > 4 and costs[-1] > costs[-2] > costs[-3] > costs[-4]:
            break
    if not costs:
        return centers.new_zeros(centers.shape[1], 0), 0, []
    best = int(np.argmin(costs))
    chosen = torch.from_numpy(kept[best]).to(to_basis)
    return torch.linalg.qr(centers.T @ (to_basis @ chosen)).Q, best + 1, costs  # re-orthonormalised: see above
