"""Intrinsic-dimension estimators on k-NN distances (TwoNN, Levina-Bickel MLE, GRIDE).

Each estimator is a small class in the scikit-dimension style::

    est = TwoNN().fit(X)
    est.dimension_, est.error_, est.n_used_

``fit`` runs one exact neighbour search (:func:`actid.neighbors.nearest_neighbors`);
``fit_neighbors`` reuses one, so several estimators can share a search
(:func:`fit_estimators`). All fits are computed in float64.

Data hygiene, applied the same way by every estimator (counts are reported, never hidden):

* exact duplicate rows are removed before the search (``n_duplicates_``);
* points whose nearest distance is within ``1e-5 x median`` of zero (near duplicates that
  fp32 cannot resolve) and TwoNN points with a tie ``r1 == r2`` are left out of the fit
  (``n_dropped_``), as in the official code (which drops ``r1 == 0`` and ``r1 == r2``);
* NaN/Inf rows and fewer than 10 distinct points raise ``ValueError``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import brentq

from actid.neighbors import Neighbors, nearest_neighbors

NEAR_DUPLICATE_RTOL = 1e-5
"""A nearest distance below this fraction of the median nearest distance counts as a duplicate."""

MIN_FIT_POINTS = 10
"""Fewer usable points than this after filtering raise an error instead of returning a number."""

DROP_WARN_FRACTION = 0.1
"""Warn when more than this fraction of points is left out of a fit."""


def twonn_linear_fit(mu: torch.Tensor, discard_fraction: float = 0.1) -> float:
    """TwoNN least-squares fit of -log(1 - F) = d log(mu) through the origin (Facco et al. 2017).

    Sorts mu ascending, uses the empirical CDF F_i = i/N, keeps the int(N (1 - discard_fraction))
    smallest ratios (scikit-dimension's convention, = the paper's code for N >= 20).
    """
    mu = torch.sort(mu.double()).values
    n = mu.numel()
    n_keep = int(n * (1 - discard_fraction))
    if n_keep < 2:
        raise ValueError(f"only {n_keep} ratios left for the TwoNN fit; use more points or a smaller discard_fraction")
    x = torch.log(mu[:n_keep])
    i = torch.arange(1, n_keep + 1, dtype=torch.float64, device=mu.device)
    y = -torch.log1p(-i / n)
    return float((x * y).sum() / (x * x).sum())


def _near_duplicate_mask(r1: torch.Tensor) -> torch.Tensor:
    return r1 <= NEAR_DUPLICATE_RTOL * torch.median(r1)


def _check_dropped(name: str, n_dropped: int, n: int) -> None:
    if n_dropped > DROP_WARN_FRACTION * n:
        warnings.warn(f"{name}: {n_dropped} of {n} points were left out of the fit (near duplicates or r1 == r2 ties); "
                      "the data may be discretized or collapsed, so treat the estimate with care", stacklevel=3)


class _Estimator:
    """Shared plumbing: neighbour search, result attributes."""

    name = "estimator"
    dimension_: float
    error_: float
    n_used_: int
    n_duplicates_: int
    n_dropped_: int

    def neighbors_needed(self) -> int:
        raise NotImplementedError

    def fit(self, X, device=None):
        """Estimate the ID of the rows of X (n_points x features; higher-rank input is flattened)."""
        return self.fit_neighbors(nearest_neighbors(X, k=self.neighbors_needed(), device=device))

    def fit_neighbors(self, nb: Neighbors):
        raise NotImplementedError

    def as_dict(self) -> dict:
        """Result as a flat dict (for metrics tables)."""
        return {"dimension": self.dimension_, "error": self.error_, "n_used": self.n_used_,
                "n_duplicates": self.n_duplicates_, "n_dropped": self.n_dropped_}

    def __repr__(self) -> str:
        fitted = f", dimension_={self.dimension_:.4g}" if hasattr(self, "dimension_") else ""
        return f"{type(self).__name__}({self._params()}{fitted})"

    def _params(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))


class TwoNN(_Estimator):
    """TwoNN (Facco et al. 2017), linear-fit form, as computed by Brown et al. 2022's code.

    With ``n_resamples > 0`` it follows the paper's protocol: the estimate is the mean over
    ``n_resamples`` random subsets of ``subsample_fraction`` of the points, each with neighbours
    found *within* its subset, and ``error_`` is their standard deviation. One search of
    ``resample_neighbors`` neighbours on the full set serves every subset: a point's two nearest
    neighbours within a subset are the first two of its full-set list that survive; the rare
    point whose list runs out is searched exactly. Without resampling, ``error_`` is the
    asymptotic standard error d / sqrt(n).

    Args:
        discard_fraction: share of the largest ratios left out of the fit (0.1 in the paper).
        n_resamples: 0 for a single fit on all points; 20 for the paper's protocol.
        subsample_fraction: share of points in each resample (0.9 in the paper).
        seed: seed of the resampling generator.
        resample_neighbors: length of the shared neighbour list used by resampling.
    """

    name = "twonn"

    def __init__(self, discard_fraction: float = 0.1, n_resamples: int = 0, subsample_fraction: float = 0.9,
                 seed: int = 0, resample_neighbors: int = 16):
        if not 0 <= discard_fraction < 1:
            raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
        if not 0 < subsample_fraction <= 1:
            raise ValueError(f"subsample_fraction must be in (0, 1], got {subsample_fraction}")
        self.discard_fraction = discard_fraction
        self.n_resamples = n_resamples
        self.subsample_fraction = subsample_fraction
        self.seed = seed
        self.resample_neighbors = resample_neighbors

    def neighbors_needed(self) -> int:
        return self.resample_neighbors if self.n_resamples else 2

    def fit_neighbors(self, nb: Neighbors):
        self.n_duplicates_ = nb.n_duplicates
        if not self.n_resamples:
            self.dimension_, self.n_used_, self.n_dropped_ = self._fit_r12(nb.distances[:, 0], nb.distances[:, 1])
            self.error_ = self.dimension_ / math.sqrt(self.n_used_)
            self.resamples_ = np.array([self.dimension_])
            return self
        gen = torch.Generator().manual_seed(self.seed)
        m = round(self.subsample_fraction * nb.n)
        estimates, used, dropped = [], [], []
        for _ in range(self.n_resamples):
            subset = torch.randperm(nb.n, generator=gen)[:m].to(nb.indices.device)
            r1, r2 = subset_two_nn(nb, subset)
            d, n_used, n_dropped = self._fit_r12(r1, r2)
            estimates.append(d)
            used.append(n_used)
            dropped.append(n_dropped)
        self.resamples_ = np.array(estimates)
        self.dimension_ = float(self.resamples_.mean())
        self.error_ = float(self.resamples_.std(ddof=0))
        self.n_used_ = int(round(np.mean(used)))
        self.n_dropped_ = int(round(np.mean(dropped)))
        return self

    def _fit_r12(self, r1: torch.Tensor, r2: torch.Tensor) -> tuple[float, int, int]:
        near_dup = _near_duplicate_mask(r1)
        keep = ~near_dup & (r2 > r1)
        n_dropped = int((~keep).sum())
        if int(keep.sum()) < MIN_FIT_POINTS:
            raise ValueError(f"TwoNN: only {int(keep.sum())} of {r1.numel()} points are usable after dropping "
                             f"{int(near_dup.sum())} near duplicates and {n_dropped - int(near_dup.sum())} ties "
                             "(r1 == r2); the data look discretized (a lattice) or collapsed onto few values, "
                             "where TwoNN is undefined. Add jitter below the data's resolution only if that is "
                             "what you mean to measure.")
        _check_dropped("TwoNN", n_dropped, r1.numel())
        mu = r2[keep] / r1[keep]
        return twonn_linear_fit(mu, self.discard_fraction), int(keep.sum()), n_dropped


@torch.no_grad()
def subset_two_nn(nb: Neighbors, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances r1, r2 of each point of ``subset`` to its two nearest neighbours within ``subset``.

    Reads them off the full-set neighbour list; points with fewer than two surviving listed
    neighbours are searched exactly among the subset's points.
    """
    inside = torch.zeros(nb.n, dtype=torch.bool, device=nb.indices.device)
    inside[subset] = True
    surv = inside[nb.indices[subset]]  # (m, k): which listed neighbours are in the subset
    rank = surv.cumsum(dim=1)
    first = ((rank == 1) & surv).int().argmax(dim=1, keepdim=True)
    second = ((rank == 2) & surv).int().argmax(dim=1, keepdim=True)
    dist = nb.distances[subset]
    r1 = dist.gather(1, first).squeeze(1)
    r2 = dist.gather(1, second).squeeze(1)
    short = torch.nonzero(rank[:, -1] < 2).flatten()
    if len(short):
        pts = nb.points[subset]
        exact = torch.cdist(pts[short].double(), pts.double())
        exact[torch.arange(len(short)), short] = float("inf")
        two = torch.topk(exact, 2, dim=1, largest=False).values
        r1[short], r2[short] = two[:, 0], two[:, 1]
    return r1, r2


class MLE(_Estimator):
    """Levina-Bickel maximum-likelihood ID from k neighbours (Levina & Bickel 2005).

    Local estimate m(x) = [ (1/(k-1)) sum_{j<k} log(r_k / r_j) ]^-1; the global estimate
    inverts the mean of their inverses (``average='inverse'``, MacKay-Ghahramani; the default, as
    scikit-dimension's ``MLE``) or averages them (``average='mean'``, Levina-Bickel). ``error_`` is the standard error of
    the mean of the local estimates.
    """

    name = "mle"

    def __init__(self, k: int = 20, average: str = "inverse"):
        if k < 3:
            raise ValueError(f"MLE needs k >= 3 neighbours, got {k}")
        if average not in ("mean", "inverse"):
            raise ValueError(f"average must be 'mean' or 'inverse', got {average!r}")
        self.k = k
        self.average = average

    def neighbors_needed(self) -> int:
        return self.k

    def fit_neighbors(self, nb: Neighbors):
        r = nb.distances[:, : self.k]
        keep = ~_near_duplicate_mask(r[:, 0])
        logs = torch.log(r[keep, -1:] / r[keep, :-1]).sum(dim=1)
        keep_ties = logs > 0  # all k neighbours equidistant: the local estimate is infinite
        inv = logs[keep_ties] / (self.k - 1)  # 1 / m(x)
        self.n_duplicates_ = nb.n_duplicates
        self.n_used_ = int(inv.numel())
        self.n_dropped_ = nb.n - self.n_used_
        _check_dropped("MLE", self.n_dropped_, nb.n)
        local = 1.0 / inv
        self.local_dimension_ = local
        self.dimension_ = float(local.mean() if self.average == "mean" else 1.0 / inv.mean())
        self.error_ = float(local.std() / math.sqrt(self.n_used_))
        return self


class GRIDE(_Estimator):
    """Generalized ratios ID estimator (Denti et al. 2022), maximum likelihood on mu = r_{n2} / r_{n1}.

    Under local homogeneity mu has density d (mu^d - 1)^(n2-n1-1) / (B(n2-n1, n1) mu^((n2-1) d + 1)).
    ``n1 = 1, n2 = 2`` gives the unbiased TwoNN maximum-likelihood estimate (N - 1) / sum(log mu);
    larger n1 probes larger scales and is less sensitive to noise. Conventions follow DADApy and
    scikit-dimension: (N - 1) log d in the likelihood, ratios above q50 + 20 (q95 - q50) dropped as
    outliers. ``error_`` is 1 / sqrt(observed Fisher information).
    """

    name = "gride"

    def __init__(self, n1: int = 1, n2: int | None = None):
        n2 = 2 * n1 if n2 is None else n2
        if not 1 <= n1 < n2:
            raise ValueError(f"GRIDE needs 1 <= n1 < n2, got n1={n1}, n2={n2}")
        self.n1 = n1
        self.n2 = n2

    def neighbors_needed(self) -> int:
        return self.n2

    def fit_neighbors(self, nb: Neighbors):
        r = nb.distances
        keep = ~_near_duplicate_mask(r[:, 0]) & (r[:, self.n2 - 1] > r[:, self.n1 - 1])
        mu = (r[keep, self.n2 - 1] / r[keep, self.n1 - 1]).cpu().numpy()
        q50, q95 = np.percentile(mu, [50, 95])
        log_mu = np.log(mu[mu < q50 + 20 * (q95 - q50)])
        n, extra = len(log_mu), self.n2 - self.n1 - 1

        def score(d: float) -> float:  # derivative of the log-likelihood in d; decreasing
            return (n - 1) / d + extra * np.sum(log_mu / -np.expm1(-d * log_mu)) - (self.n2 - 1) * log_mu.sum()

        hi = 1.0
        while score(hi) > 0:
            hi *= 2
        d = brentq(score, 1e-8, hi, xtol=1e-12, rtol=1e-12)
        info = n / d**2 + extra * np.sum((log_mu / (2 * np.sinh(d * log_mu / 2))) ** 2)
        self.dimension_, self.error_ = float(d), float(1 / math.sqrt(info))
        self.n_duplicates_ = nb.n_duplicates
        self.n_used_ = n
        self.n_dropped_ = nb.n - n
        _check_dropped("GRIDE", self.n_dropped_, nb.n)
        return self


ESTIMATORS = {cls.name: cls for cls in (TwoNN, MLE, GRIDE)}


def fit_estimators(X, estimators, device=None) -> list:
    """Fit several estimators on one shared neighbour search (k = the largest any of them needs)."""
    nb = nearest_neighbors(X, k=max(e.neighbors_needed() for e in estimators), device=device)
    return [e.fit_neighbors(nb) for e in estimators]


def intrinsic_dimension(X, method: str = "twonn", device=None, **params) -> float:
    """One-call ID estimate of the rows of X, e.g. ``intrinsic_dimension(acts, n_resamples=20)``.

    ``method`` is one of 'twonn', 'mle', 'gride'; ``params`` go to the estimator's constructor.
    Use the estimator classes directly for the error and point counts.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[method](**params).fit(X, device=device).dimension_
