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
    mu = mu.double().flatten()
    return twonn_linear_fits(mu[None], [mu.numel()], discard_fraction)[0]


def twonn_linear_fits(mu: torch.Tensor, counts: list[int], discard_fraction: float = 0.1) -> list[float]:
    """:func:`twonn_linear_fit` of each row of ``mu`` (R, m), whose first ``counts[r]`` entries are its ratios (the
    rest is ignored), in one pass of a few kernels: the resamples of the paper's protocol at once."""
    n_keep = [int(n * (1 - discard_fraction)) for n in counts]
    if min(n_keep) < 2:
        raise ValueError(f"only {min(n_keep)} ratios left for the TwoNN fit; use more points or a smaller "
                         "discard_fraction")
    positions = torch.arange(mu.shape[1], device=mu.device)
    ratios = torch.where(positions < torch.tensor(counts, device=mu.device)[:, None], mu.double(), math.inf)
    width = max(n_keep)
    x = torch.log(torch.sort(ratios, dim=1).values[:, :width])
    i = torch.arange(1, width + 1, dtype=torch.float64, device=mu.device)
    n = torch.tensor(counts, dtype=torch.float64, device=mu.device)[:, None]
    used = positions[:width] < torch.tensor(n_keep, device=mu.device)[:, None]
    y = -torch.log1p(-torch.where(used, i / n, 0.0))  # 0 where unused (where i / n may reach 1)
    x = torch.where(used, x, 0.0)
    return ((x * y).sum(dim=1) / (x * x).sum(dim=1)).tolist()


def _near_duplicate_mask(r1: torch.Tensor) -> torch.Tensor:
    """Near duplicates among nearest distances r1, per row of the last dimension (one row per subset)."""
    return r1 <= NEAR_DUPLICATE_RTOL * torch.median(r1, dim=-1, keepdim=True).values


def _check_dropped(name: str, n_dropped: int, n: int) -> None:
    if n_dropped > DROP_WARN_FRACTION * n:
        warnings.warn(f"{name}: {n_dropped} of {n} points were left out of the fit (near duplicates or r1 == r2 ties); "
                      "the data may be discretized or collapsed, so treat the estimate with care", stacklevel=3)


def _require_usable(name: str, n_used: int, n: int, n_near_dup: int, tie: str) -> None:
    """Every estimator's check of the points left for its fit: too few is an error naming why, many dropped a
    warning (TwoNN, MLE and GRIDE say the same thing in the same words)."""
    if n_used < MIN_FIT_POINTS:
        raise ValueError(f"{name}: only {n_used} of {n} points are usable after dropping {n_near_dup} near duplicates "
                         f"and {n - n_used - n_near_dup} ties ({tie}); the data look discretized (a lattice) or "
                         f"collapsed onto few values, where {name} is undefined. Add jitter below the data's "
                         "resolution only if that is what you mean to measure.")
    _check_dropped(name, n - n_used, n)


class Estimator:
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


class TwoNN(Estimator):
    """TwoNN (Facco et al. 2017), linear-fit form, as computed by Brown et al. 2022's code.

    With ``n_resamples > 0`` it follows the paper's protocol: the estimate is the mean over
    ``n_resamples`` random subsets of ``subsample_fraction`` of the points, each with neighbours
    found *within* its subset, and ``error_`` is their standard deviation. One search of
    ``resample_neighbors`` neighbours on the full set serves every subset: a point's two nearest
    neighbours within a subset are the first two of its full-set list that survive; the rare
    point whose list runs out is searched exactly. All subsets are read off and fitted at once
    (:func:`subset_two_nn`, :func:`twonn_linear_fits`). Without resampling, ``error_`` is the
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
            (self.dimension_,), (self.n_used_,), (self.n_dropped_,) = self._fit_r12(nb.distances[None, :, 0],
                                                                                    nb.distances[None, :, 1])
            self.error_ = self.dimension_ / math.sqrt(self.n_used_)
            self.resamples_ = np.array([self.dimension_])
            return self
        gen = torch.Generator().manual_seed(self.seed)
        m = round(self.subsample_fraction * nb.n)
        subsets = torch.stack([torch.randperm(nb.n, generator=gen)[:m] for _ in range(self.n_resamples)])
        estimates, used, dropped = self._fit_r12(*subset_two_nn(nb, subsets.to(nb.indices.device)))
        self.resamples_ = np.array(estimates)
        self.dimension_ = float(self.resamples_.mean())
        self.error_ = float(self.resamples_.std(ddof=0))
        self.n_used_ = int(round(np.mean(used)))
        self.n_dropped_ = int(round(np.mean(dropped)))
        return self

    def _fit_r12(self, r1: torch.Tensor, r2: torch.Tensor) -> tuple[list[float], list[int], list[int]]:
        """Estimates, points used and points dropped of each row of (R, m) distances r1, r2 (one row per subset)."""
        near_dup = _near_duplicate_mask(r1)
        keep = ~near_dup & (r2 > r1)
        used, n_near = torch.stack([keep.sum(dim=1), near_dup.sum(dim=1)]).tolist()
        m = r1.shape[1]
        for n_used, n_near_dup in zip(used, n_near):
            _require_usable("TwoNN", n_used, m, n_near_dup, "r1 == r2")
        # each row's kept ratios first (a stable sort of the keep mask), then the rest, which the fit ignores
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
        mu = (r2 / r1).gather(1, order)
        dropped = [m - n for n in used]
        return twonn_linear_fits(mu, used, self.discard_fraction), used, dropped


@torch.no_grad()
def subset_two_nn(nb: Neighbors, subsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances r1, r2 of each point of a subset to its two nearest neighbours within that subset; ``subsets`` is
    (m,) indices of one subset or (R, m) of R subsets at once (the resamples), and r1, r2 have its shape.

    Reads them off the full-set neighbour list; points with fewer than two surviving listed
    neighbours are searched exactly among their subset's points.
    """
    batch = subsets.reshape(-1, subsets.shape[-1])
    n_sets, m = batch.shape
    inside = torch.zeros(n_sets, nb.n, dtype=torch.bool, device=nb.indices.device)
    inside.scatter_(1, batch, True)
    surv = inside.gather(1, nb.indices[batch].reshape(n_sets, -1)).reshape(n_sets, m, -1)  # listed and in the subset
    rank = surv.cumsum(dim=2)
    first = ((rank == 1) & surv).int().argmax(dim=2, keepdim=True)
    second = ((rank == 2) & surv).int().argmax(dim=2, keepdim=True)
    dist = nb.distances[batch]
    r1 = dist.gather(2, first).squeeze(2)
    r2 = dist.gather(2, second).squeeze(2)
    short = torch.nonzero(rank[:, :, -1] < 2)
    for s in short[:, 0].unique().tolist():
        rows = short[short[:, 0] == s, 1]
        pts = nb.points[batch[s]]
        exact = torch.cdist(pts[rows].double(), pts.double())
        exact[torch.arange(len(rows)), rows] = float("inf")
        two = torch.topk(exact, 2, dim=1, largest=False).values
        r1[s, rows], r2[s, rows] = two[:, 0], two[:, 1]
    return r1.reshape(subsets.shape), r2.reshape(subsets.shape)


class MLE(Estimator):
    """Levina-Bickel maximum-likelihood ID from k neighbours (Levina & Bickel 2005).

    Local estimate m(x) = [ (1/(k-1)) sum_{j<k} log(r_k / r_j) ]^-1; the global estimate
    inverts the mean of their inverses (``average='inverse'``, MacKay-Ghahramani; the default, as
    scikit-dimension's ``MLE``) or averages them (``average='mean'``, Levina-Bickel). ``error_`` is the standard
    error of the mean of the local estimates.
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
        _require_usable("MLE", self.n_used_, nb.n, int((~keep).sum()), f"all {self.k} neighbours equidistant")
        local = 1.0 / inv
        self.local_dimension_ = local
        self.dimension_ = float(local.mean() if self.average == "mean" else 1.0 / inv.mean())
        self.error_ = float(local.std() / math.sqrt(self.n_used_))
        return self


class GRIDE(Estimator):
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
        near_dup = _near_duplicate_mask(r[:, 0])
        keep = ~near_dup & (r[:, self.n2 - 1] > r[:, self.n1 - 1])
        _require_usable("GRIDE", int(keep.sum()), nb.n, int(near_dup.sum()), f"r{self.n1} == r{self.n2}")
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
