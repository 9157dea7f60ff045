"""Geometry of class manifolds: mean-field manifold capacity, radius and dimension (MFTMA), and simulated capacity.

Replica mean-field theory of manifold classification (Chung, Lee & Sompolinsky, PRX 2018; Cohen et al. 2020) asks
how many manifolds per neuron a linear readout can separate when each class is a cloud of points (its manifold)
rather than one point. Stephenson et al. (ICLR 2021) read memorization off these numbers layer by layer. For P
manifolds of M points each, ``manifold_capacity`` follows the reference analysis (schung039/neural_manifolds_replicaMFT)
step for step, with an exact batched solver in place of one cvxopt QP per sample:

1. Subtract the global mean of all points. The *center correlation* is the mean |cosine| between pairs of class
   centers (after subtracting the mean center), measured before step 2.
2. Remove the centers' common low-rank structure: for K = 1, 2, ... find the K-dimensional subspace V (a point on the
   Stiefel manifold; Riemannian L-BFGS, compiled, in :mod:`actid.measures.center_subspace`) that minimises the
   summed squared cosines of the residual centers; keep the K whose residual centers have the smallest mean
   |cosine| (K is at most P - 2, so residuals stay nonzero); project every point onto V's orthogonal complement.
   ``center_subspace=False`` skips this step.
3. Per manifold: subtract its mean and divide by that mean's norm; express the points in D = min(N, M)
   coordinates (an orthonormal basis of their span, as the reference's QR does) and append a constant coordinate 1:
   points s_j in R^(D+1).
4. Per manifold and per Gaussian sample t ~ N(0, I_{D+1}) (``n_t`` of them, fixed by ``seed``): the anchor point
   s~(t) is found from the QP  v* = argmin |v - t|^2  s.t.  s_j . v <= -kappa;  s~ = (t - v*) / (t - v*)_last, a
   convex combination of the points (the max-projection point when no constraint binds). Its dual is a non-negative
   least-squares problem, ``min_{a>=0} |S a - (t + kappa e_last)|`` (S = [s_1 ... s_M]), solved for all t and
   all manifolds at once by :func:`actid.nnls.batched_nnls` to a KKT residual of 1e-10.
5. capacity  1/alpha_M = < [t . s~ + kappa]_+^2 / |s~|^2 >_t,
   radius    R_M = sqrt < |s~_perp - <s~_perp>|^2 >_t  (perp: the first D coordinates; center norm 1),
   dimension D_M = D < cos(t_perp, s~_perp) >_t^2   (the square of the mean cosine, as in the reference).
   Across manifolds, capacity is the harmonic mean and radius and dimension the arithmetic means.

Layers with N <= M (fewer features than points per class, e.g. 10 logits and 50 examples): the reference assumes
M < N. Here D = min(N, M) as in the reference (the points span at most N dimensions, and the sampled t live there);
the QP then has more constraints than dimensions, its dual multipliers are not unique, but the anchor point is
(it is determined by v*): those duals are solved by Lawson-Hanson, which is exact on rank-deficient problems.
For wide layers the reference first projects onto 5000 random directions; this implementation works with Gram
matrices (cost linear in N) and needs no projection.

``simulated_capacity`` is the independent check: the smallest number of random projections at which randomly
labelled manifolds become linearly separable, found by bisection per trial; capacity = P / its median.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actid import schema
from actid.compiled import dot, in_threads, jit
from actid.config import flag, integer, param, real
from actid.measures.center_subspace import center_correlation, common_center_subspace
from actid.measures.base import Evaluation, Measure, as_real_tensor, register
from actid.nnls import NNLSInfo, batched_nnls

ROUNDOFF = 1e-13
"""Eigenvalues of a Gram matrix below this fraction of its largest are round-off and set to zero."""

PAIR = 2
"""Manifolds centred and multiplied together in :func:`prepare_manifolds` (the Gram matrices of a pair, one thread
each, are the same bits as one at a time)."""

INTERIOR = 1e-8
"""|t - v*| below this counts as "no constraint binds" (the reference's eps): the anchor is the max-projection point."""

TINY = float(np.finfo(np.float64).tiny)
"""The smallest normal float64: a floor for denominators that can only be zero by underflow."""


class UndefinedGeometry(ValueError):
    """A manifold's center coincides with the global mean (e.g. a dead layer): its capacity is not defined."""


@dataclass(frozen=True)
class ManifoldGeometry:
    """The MFTMA summary of a set of manifolds (see the module docstring for the definitions)."""

    capacity: float  # harmonic mean of the per-manifold capacities
    radius: float  # arithmetic mean
    dimension: float  # arithmetic mean
    center_correlation: float  # mean |cos| between centers, before the center subspace is removed
    K: int  # dimension of the removed common center subspace (0: none)
    capacities: torch.Tensor  # (P,) per manifold
    radii: torch.Tensor
    dimensions: torch.Tensor
    solver: NNLSInfo  # how the anchor QPs were solved


def _as_manifolds(manifolds) -> list[torch.Tensor]:
    if isinstance(manifolds, (torch.Tensor, np.ndarray)) and manifolds.ndim == 3:
        manifolds = list(manifolds)
    if not isinstance(manifolds, Sequence) or len(manifolds) < 2:
        raise ValueError("manifolds must be a list of at least 2 (M_i x N) arrays, one per class")
    out = [as_real_tensor(x, f"manifolds[{i}]") for i, x in enumerate(manifolds)]
    for i, x in enumerate(out):
        if x.ndim != 2 or len(x) < 1:
            raise ValueError(f"manifolds[{i}] must be a non-empty (M_i x N) array of points, got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != out[0].shape[1]:
            raise ValueError(f"manifolds[{i}] has {x.shape[1]} features but manifolds[0] has {out[0].shape[1]}; "
                             "every manifold must live in the same space")
    return out


def anchor_points(S: torch.Tensor, T: torch.Tensor, kappa: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, NNLSInfo]:
    """Anchor points s~(t) of manifolds S (P, D+1, M; last row ones) for samples T (P, n_t, D+1): (P, n_t, D+1),
    with the QP's multipliers (P, n_t, M) (zero for samples where no constraint binds) and the solver's report.

    v* = argmin |v - t|^2 s.t. s_j . v <= -kappa has the dual min_{a>=0} |S a - (t + kappa e_last)|^2 (expand the
    Lagrangian; the last coordinate of every s_j is 1), v* = t - S a and s~ = S a / sum(a)."""
    anchors, alpha, info, _ = _anchors_and_averages(S, T, kappa)
    return anchors, alpha, info


def manifold_quantities(S: torch.Tensor, T: torch.Tensor, kappa: float):
    """Per-manifold capacity, radius and dimension from points S (P, D+1, M) and samples T (P, n_t, D+1)."""
    _, _, info, (capacity, radius, dimension) = _anchors_and_averages(S, T, kappa)
    return capacity, radius, dimension, info


def _anchors_and_averages(S, T, kappa):
    """Anchor points, multipliers, the solver's report and (capacity, radius, dimension) per manifold. The QPs are
    solved on S's device; the anchors and averages over t are one compiled pass on the CPU (one pass over the
    samples instead of a dozen array operations over all of them)."""
    Y = T
    if kappa:
        Y = T.clone()
        Y[..., -1] += kappa
    alpha, info = batched_nnls(S, Y)
    S_t, T_, alpha_ = (x.cpu().contiguous().numpy() for x in (S.mT, T, alpha))
    anchors, interior = np.empty_like(T_), np.zeros(T_.shape[:2], dtype=np.bool_)
    averages = np.empty((3, len(S_t)))
    in_threads(lambda start, stop: _anchor_pass(S_t, T_, alpha_, float(kappa), anchors, interior, averages, start,
                                                stop), len(S_t))
    if interior.any():  # no constraint binds: the max-projection point, with no multipliers
        alpha[torch.from_numpy(interior).to(alpha.device)] = 0
    capacity, radius, dimension = torch.from_numpy(averages).to(S.device)
    return torch.from_numpy(anchors).to(S.device), alpha, info, (capacity, radius, dimension)


@jit
def _anchor_pass(S_t, T, alpha, kappa, anchors, interior, averages, start, stop):
    """For manifolds start:stop (points S_t: (P, M, D+1), multipliers alpha: (P, n_t, M)), the anchors
    s~ = u / u_last with u = S alpha = t - v* (the point of largest projection on t where |u| < INTERIOR: no
    constraint binds; its last coordinate is 1) into ``anchors`` and ``interior``, and capacity, radius and
    dimension (the module docstring's step 5) into ``averages[:, p]``."""
    M, D = S_t.shape[1], S_t.shape[2] - 1
    n_t = T.shape[1]
    mean, spread, U = np.empty(D), np.empty(D), np.empty((n_t, D + 1))
    for p in range(start, stop):
        inv_capacity, cos_sum = 0.0, 0.0
        mean[:] = 0.0
        for r in range(0, n_t, 64):  # row i: S a = t - v* for sample i, in blocks of 64 samples: products this
            np.dot(alpha[p, r:r + 64], S_t[p], U[r:r + 64])  # small run in this thread, not in OpenBLAS's threads
        for i in range(n_t):
            t, a, u = T[p, i], anchors[p, i], U[i]
            if np.sqrt(dot(u, u)) < INTERIOR:
                interior[p, i] = True
                best, largest = 0, -np.inf
                for j in range(M):
                    projection = dot(t[:D], S_t[p, j, :D])
                    if projection > largest:
                        best, largest = j, projection
                a[:] = S_t[p, best]
            else:
                last = max(u[D], TINY)
                for d in range(D + 1):
                    a[d] = u[d] / last
            margin = max(dot(t, a) + kappa, 0.0)
            sq = dot(a, a)
            if sq > 0:
                inv_capacity += margin * margin / max(sq, TINY)
            perp_sq = dot(a[:D], a[:D])
            cos_sum += dot(t[:D], a[:D]) / (np.sqrt(dot(t[:D], t[:D])) * np.sqrt(perp_sq + 1e-12))
            for d in range(D):
                mean[d] += a[d]
        mean /= n_t
        spread[:] = 0.0  # summed squared deviations per coordinate
        for i in range(n_t):
            a = anchors[p, i]
            for d in range(D):
                spread[d] += (a[d] - mean[d]) ** 2
        averages[0, p] = 1.0 / (inv_capacity / n_t)
        averages[1, p] = np.sqrt(spread.sum() / n_t)
        averages[2, p] = D * (cos_sum / n_t) ** 2


def standard_normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, dtype=torch.float64)`` on the CPU, to round-off (its last bit can
    differ), in half the time: the same Box-Muller transform of the same uniforms (blocks of 16: cosines in the
    first 8, sines in the last 8; a partial last block redrawn), with vectorised log, cos and sin where torch
    evaluates them one number at a time for float64."""
    n = math.prod(shape)
    if n < 16:  # torch draws these one by one, another way
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    u = torch.rand(n + 16 if n % 16 else n, generator=generator, dtype=torch.float64)
    full = n - n % 16
    out = _box_muller(u[:full].view(-1, 16)).view(-1)
    if n % 16:  # torch redraws the last 16 numbers from 16 more uniforms
        out = torch.cat([out[:n - 16], _box_muller(u[n:].view(1, 16)).view(-1)])
    return out.view(shape)


def _box_muller(u: torch.Tensor) -> torch.Tensor:
    """Rows of 16 uniforms u in [0, 1) to rows of 16 standard normals: r cos(theta), then r sin(theta), with
    r = sqrt(-2 log(1 - u[:, :8])) and theta = 2 pi u[:, 8:]."""
    radius = torch.log(1 - u[:, :8]).mul_(-2).sqrt_()
    theta = u[:, 8:] * (2 * math.pi)
    return torch.cat([torch.cos(theta).mul_(radius), torch.sin(theta).mul_(radius)], 1)


@dataclass(frozen=True)
class PreparedManifolds:
    """Steps 1-3 of the analysis: the points s_j of each manifold and its Gaussian samples, grouped by manifold
    size. ``groups``: (indices of the manifolds, S (p, D+1, M), T (p, n_t, D+1))."""

    groups: list[tuple[list[int], torch.Tensor, torch.Tensor]]
    center_correlation: float
    K: int


def prepare_manifolds(manifolds, n_t: int = 200, seed: int = 0, *, center_subspace: bool = True, n_reps: int = 10,
                      device=None) -> PreparedManifolds:
    """Global mean removal, center correlation, center-subspace removal, per-manifold normalisation and the
    (D+1)-dimensional points, with ``n_t`` Gaussian samples per manifold drawn from ``seed``."""
    X = _as_manifolds(manifolds)
    if not isinstance(n_t, int) or n_t < 1:
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    device = torch.device(device) if device is not None else X[0].device
    P, N = len(X), X[0].shape[1]
    # Only the centers see the global mean and the center subspace V directly: a manifold's centred points are
    # (x - mean) (I - V V^T) whatever the origin, so each manifold is centred once and V enters its Gram matrix.
    means = torch.stack([x.to(device=device, dtype=torch.float64).mean(0) for x in X])
    if not bool(torch.isfinite(means.sum())):  # a NaN or inf entry spoils its mean (and the sum, which can also
        bad = torch.nonzero(~torch.isfinite(means).all(1)).flatten().tolist()  # overflow: then nothing is bad)
        if bad:
            raise ValueError(f"manifolds {bad} have NaN or infinite entries")
    sizes = torch.tensor([len(x) for x in X], dtype=torch.float64, device=device)
    centers = means - (sizes @ means) / sizes.sum()  # minus the global mean of all points
    rho = center_correlation(centers - centers.mean(0))
    K = 0
    V = centers.new_zeros(N, 0)
    if center_subspace and P >= 3:
        V, K, _ = common_center_subspace(centers - centers.mean(0), n_reps=n_reps, seed=seed)
    centers = centers - (centers @ V) @ V.T
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for M in sorted({len(x) for x in X}):  # manifolds of equal size are solved together
        idx = [i for i, x in enumerate(X) if len(x) == M]
        norm = centers[idx].norm(dim=-1)
        f64 = torch.finfo(torch.float64)
        degenerate = norm <= f64.eps * means[idx].norm(dim=-1).clamp_min(f64.tiny) * 1e3
        if bool(degenerate.any()):
            bad = [idx[j] for j in torch.nonzero(degenerate).flatten().tolist()]
            raise UndefinedGeometry(f"manifolds {bad}: the center coincides with the global mean (or lies in the "
                                    "removed center subspace), so capacity is undefined; check for duplicated or "
                                    "constant classes")
        D = min(N, M)
        if N > M:  # an orthonormal basis of the points' span, as the reference's QR: coordinates from the Gram
            gram = torch.empty(len(idx), M, M, dtype=torch.float64, device=device)
            centred = torch.empty(PAIR, M, N, dtype=torch.float64, device=device)
            for j in range(0, len(idx), PAIR):  # a pair at a time: its centred copy stays in the cache, and the
                pair = idx[j:j + PAIR]  # batched product gives each thread one manifold (1.3x faster than one mm)
                for c, i in zip(centred, pair):
                    torch.sub(X[i].to(device=device, dtype=torch.float64), means[i], out=c)
                c = centred[:len(pair)]
                torch.bmm(c, c.mT, out=gram[j:j + len(pair)])
                if K:
                    along = (c.view(-1, N) @ V).view(len(pair), M, K)
                    gram[j:j + len(pair)].baddbmm_(along, along.mT, alpha=-1)
            gram /= norm.square()[:, None, None]
            # one call, not split over threads: LAPACK's eigenvectors of 13-24-point manifolds changed in the last
            # bits with the threads it ran on (seen in the geometry stage), and every sample t lives in their basis
            lam, U = torch.linalg.eigh(gram)
            # eigenvalues at round-off level are zero (their square roots would be 1e-8-sized noise coordinates)
            lam = torch.where(lam > ROUNDOFF * lam[:, -1:], lam, 0)
            coords = (U * lam.sqrt().unsqueeze(1)).mT  # (p, M, M), coords^T coords = Gram
        else:
            pts = torch.stack([X[i].to(device=device, dtype=torch.float64) for i in idx]) - means[idx].unsqueeze(1)
            coords = ((pts - (pts @ V) @ V.T) / norm[:, None, None]).mT  # (p, N, M)
        S = torch.cat([coords, torch.ones_like(coords[:, :1])], dim=1)
        T = standard_normal((len(idx), n_t, D + 1), gen).to(device)
        groups.append((idx, S, T))
    return PreparedManifolds(groups, rho, K)


def manifold_capacity(manifolds, kappa: float = 0.0, n_t: int = 200, seed: int = 0, *, center_subspace: bool = True,
                      n_reps: int = 10, device=None) -> ManifoldGeometry:
    """MFTMA capacity, radius, dimension, center correlation and K of class manifolds.

    ``manifolds``: a list of (M_i x N) arrays (one per class; rows are points, e.g. flattened activations), or a
    (P, M, N) array. ``kappa``: the margin. ``n_t``: Gaussian samples per manifold, drawn from ``seed`` (the same
    samples for the same shapes, so curves over training are smooth). ``center_subspace``: remove the centers'
    common subspace first (``n_reps`` restarts per K). ``device``: where to compute (default: the first
    manifold's). Everything runs in float64."""
    if not np.isfinite(kappa):
        raise ValueError(f"kappa must be finite, got {kappa!r}")
    prepared = prepare_manifolds(manifolds, n_t, seed, center_subspace=center_subspace, n_reps=n_reps, device=device)
    results, infos = {}, []
    for idx, S, T in prepared.groups:
        cap, rad, dim, info = manifold_quantities(S, T, float(kappa))
        infos.append(info)
        results.update({i: (cap[j], rad[j], dim[j]) for j, i in enumerate(idx)})
    caps, radii, dims = (torch.stack(v).cpu() for v in zip(*(results[i] for i in sorted(results))))
    info = NNLSInfo.combine(infos)
    return ManifoldGeometry(capacity=float(1 / (1 / caps).mean()), radius=float(radii.mean()),
                            dimension=float(dims.mean()), center_correlation=prepared.center_correlation,
                            K=prepared.K, capacities=caps, radii=radii, dimensions=dims, solver=info)


def _separable(points: np.ndarray, signs: np.ndarray) -> bool:
    """Whether some w separates the points through the origin (sign_i w . x_i > 0 for all i): the largest margin t
    with |w|_inf <= 1 is positive. Rows are scaled to unit norm first (it does not change separability and keeps
    the LP well-conditioned)."""
    from scipy.optimize import linprog

    rows = signs[:, None] * points / np.linalg.norm(points, axis=1, keepdims=True).clip(1e-300)
    n = points.shape[1]
    cost = np.zeros(n + 1)
    cost[-1] = -1.0  # maximise t
    result = linprog(cost, A_ub=np.hstack([-rows, np.ones((len(rows), 1))]), b_ub=np.zeros(len(rows)),
                     bounds=[(-1, 1)] * n + [(None, 1)], method="highs")
    if result.status != 0:
        raise RuntimeError(f"separability LP failed: {result.message}")
    return -result.fun > 1e-9


def simulated_capacity(manifolds, n_trials: int = 40, seed: int = 0) -> float:
    """Capacity measured by brute force, the check on the mean-field value (margin 0): P / n_c.

    Per trial: random labels +-1 for the P manifolds (both labels present; after the global mean is removed, as
    in :func:`manifold_capacity`) and a random Gaussian projection R^N -> R^n; separability only grows with n (the
    projections are nested: the first n columns of one matrix), so bisection finds the smallest separable n. n_c is
    the median over trials: the dimension at which half of the random dichotomies are separable."""
    X = [x.double().cpu().numpy() for x in _as_manifolds(manifolds)]
    origin = np.concatenate(X).mean(0)
    X = [x - origin for x in X]
    P, N = len(X), X[0].shape[1]
    points = np.concatenate(X)
    owner = np.repeat(np.arange(P), [len(x) for x in X])
    rng = np.random.default_rng(seed)
    width = min(N, len(points))  # k points in general position are separable in k dimensions
    smallest = []
    for _ in range(n_trials):
        labels = rng.choice([-1.0, 1.0], size=P)
        while abs(labels.sum()) == P:  # one label for all: never separable through the (removed) global mean
            labels = rng.choice([-1.0, 1.0], size=P)
        signs = labels[owner]
        projected = points @ rng.standard_normal((N, width))
        if not _separable(projected, signs):
            smallest.append(np.inf)  # not separable even at full width (legitimate near capacity P / N)
            continue
        lo, hi = 0, width  # lo: not separable (n = 0), hi: separable
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _separable(projected[:, :mid], signs) else (mid, hi)
        smallest.append(hi)
    if not np.isfinite(np.median(smallest)):
        raise ValueError(f"most random dichotomies of these manifolds are not linearly separable even in all "
                         f"{width} dimensions: the capacity is below P / {width}; use fewer manifolds or more features")
    return P / float(np.median(smallest))


@register
@dataclass(kw_only=True)
class ManifoldGeometryMeasure(Measure):
    """MFTMA geometry of each layer's class manifolds on the probe: ``capacity/<layer>``, ``radius/<layer>``,
    ``dimension/<layer>``, ``center_corr/<layer>`` (prefixed ``<name>.`` when the measure is given a name of
    its own, so several probes can be measured side by side).

    Every class of the probe is one manifold, so give it a class-balanced probe (``per_class: 50``, say). A layer
    whose class centers coincide with the global mean (a dead layer) gets NaN, with a warning. The
    Gaussian samples are fixed by ``seed`` (the same at every evaluation). It costs about a second per layer on a
    CPU for 10 classes x 50 points, more for many classes (the center-subspace search grows with P): run it every
    few evaluations (``every``, default 5; the first and last evaluations always run)."""

    kind = "manifold_geometry"
    needs = "activations"
    every: int = param(5, integer(1))
    kappa: float = param(0.0, real(0))
    n_t: int = param(200, integer(1))
    n_reps: int = param(10, integer(1))
    center_subspace: bool = param(True, flag())
    seed: int | None = param(None, integer(0, optional=True))

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        acts, labels = ev.activations[self.probe], ev.probes[self.probe][1]
        prefix = "" if self.name == self.kind else f"{self.name}."
        out = {}
        for layer in self.layer_names(ev.id_layers):
            x = acts[layer].reshape(len(labels), -1)
            classes = labels.unique()
            if len(classes) < 2:
                raise ValueError(f"measure {self.name!r}: probe {self.probe!r} has {len(classes)} class(es); "
                                 "manifold geometry needs at least 2")
            try:
                geometry = manifold_capacity([x[labels == c] for c in classes], kappa=self.kappa, n_t=self.n_t,
                                             seed=self.seed or 0, center_subspace=self.center_subspace,
                                             n_reps=self.n_reps)
                values = (geometry.capacity, geometry.radius, geometry.dimension, geometry.center_correlation)
            except UndefinedGeometry as err:  # e.g. a layer dead at this step: record NaN, keep training
                warnings.warn(f"measure {self.name!r}, layer {layer!r} at step {ev.step}: {err}; recorded as NaN")
                values = (float("nan"),) * 4
            for key, value in zip(("capacity", "radius", "dimension", "center_corr"), values):
                out[schema.column(f"{prefix}{key}", layer)] = value
        return out
