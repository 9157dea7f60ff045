"""The intrinsic dimension as a torchmetrics ``Metric``: accumulate activations over batches and processes, fit once.

::

    from actid.integrations.metric import IntrinsicDimension
    metric = IntrinsicDimension("twonn")              # or "mle" / "gride", with params={...}
    for x in loader:
        metric.update(model.features(x))              # (batch, ...) rows; each example is one point
    metric.compute()                                  # = actid.TwoNN().fit(all rows).dimension_

Under DDP the rows of every process are gathered in rank order (torchmetrics' ``cat``), so the estimate equals the
estimator fitted on the concatenation of rank 0's rows, then rank 1's, and so on. ``compute`` runs actid's exact
neighbour search with the estimator's own duplicate and input checks; ``metric.result_`` is the fitted estimator
(its ``error_``, ``n_used_``, ``n_duplicates_``).

``max_points`` caps memory with a reservoir: every row gets a pseudo-random key from (seed, rank, its index in that
rank's stream), and the metric keeps the ``max_points`` rows with the smallest keys. Those rows are a uniform sample
of the rows seen, the same however the stream was cut into batches, and merging ranks keeps the smallest keys of
the union, so the gathered sample is a uniform sample of every process's rows.
"""

from __future__ import annotations

import numpy as np
import torch

from actid.estimators import GRIDE, MLE, TwoNN
from actid.integrations import require

torchmetrics = require("torchmetrics", "lightning")
from torchmetrics.utilities.data import dim_zero_cat  # noqa: E402

ESTIMATORS = {"twonn": TwoNN, "mle": MLE, "gride": GRIDE}

_MASK = (1 << 64) - 1


_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """splitmix64's finalizer on a Python integer (64 bits)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


def stream_keys(seed: int, rank: int, start: int, count: int) -> torch.Tensor:
    """Reservoir keys of rows ``start .. start + count - 1`` of ``rank``'s stream, as non-negative int64: splitmix64
    of the row's index in a stream whose start is itself a hash of (seed, rank), so that the keys depend on the row's
    position only (batches may be cut anywhere) and the streams of different seeds and ranks are unrelated."""
    base = _mix64((_mix64((seed * _GOLDEN + 1) & _MASK) ^ (rank * 0xD1B54A32D192ED03 & _MASK)) & _MASK)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
        z = np.arange(start, start + count, dtype=np.uint64) * np.uint64(_GOLDEN) + np.uint64(base)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64))


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _smallest_keys(points: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows with the smallest keys, in their original order."""
    keep = torch.topk(keys, k, largest=False).indices.sort().values
    return points[keep], keys[keep]


class IntrinsicDimension(torchmetrics.Metric):
    """ID of the rows passed to :meth:`update` (each example one point, flattened), by ``estimator``.

    Args:
        estimator: ``"twonn"``, ``"mle"`` or ``"gride"`` (:mod:`actid.estimators`).
        params: the estimator's parameters, e.g. ``{"n_resamples": 20}`` for TwoNN or ``{"k": 20}`` for MLE.
        max_points: keep at most this many rows (a uniform reservoir sample, see the module docstring); None keeps
            every row.
        seed: the reservoir's seed.
        **kwargs: the keyword options of a torchmetrics Metric (its process group, compute on CPU, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, estimator: str = "twonn", params: dict | None = None, max_points: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is not one of {sorted(ESTIMATORS)}")
        if max_points is not None and (not isinstance(max_points, int) or max_points < 10):
            raise ValueError(f"max_points must be an integer >= 10 (or None for every row), got {max_points!r}")
        self.estimator, self.params = estimator, dict(params or {})
        ESTIMATORS[estimator](**self.params)  # bad parameters fail here, not after an epoch of updates
        self.max_points, self.seed = max_points, seed
        self.add_state("points", default=[], dist_reduce_fx="cat")
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("seen", default=torch.tensor(0), dist_reduce_fx="sum")
        self.result_ = None

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (batch first; the other dimensions are flattened)."""
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise TypeError(f"update takes a tensor of shape (batch, ...), got {type(x).__name__}")
        rows = x.detach().reshape(len(x), -1)
        if self.points and rows.shape[1] != self.points[0].shape[1]:
            raise ValueError(f"update got rows of {rows.shape[1]} features after rows of {self.points[0].shape[1]}; "
                             "every row must come from the same layer")
        start = int(self.seen)
        self.seen += len(rows)
        if self.max_points is None:
            self.points.append(rows)
            return
        keys = stream_keys(self.seed, _rank(), start, len(rows)).to(rows.device)
        points = torch.cat([*self.points, rows]) if self.points else rows
        keys = torch.cat([*self.keys, keys]) if self.keys else keys
        if len(points) > self.max_points:
            points, keys = _smallest_keys(points, keys, self.max_points)
        self.points, self.keys = [points], [keys]

    def forward(self, x: torch.Tensor) -> None:
        """Only :meth:`update`: the ID of one batch is not a useful number (and a batch may hold too few points to
        estimate one). Log the metric object at the end of an epoch, or call :meth:`compute`."""
        self.update(x)

    def compute(self) -> torch.Tensor:
        """Fit the estimator on every process's rows (gathered in rank order); return its dimension."""
        if isinstance(self.points, list) and not self.points:
            raise ValueError("IntrinsicDimension.compute before any update: there are no rows to measure")
        points = dim_zero_cat(self.points)
        if self.max_points is not None and len(points) > self.max_points:
            points, _ = _smallest_keys(points, dim_zero_cat(self.keys), self.max_points)
        self.result_ = ESTIMATORS[self.estimator](**self.params).fit(points)
        return torch.tensor(self.result_.dimension_, dtype=torch.float64)
