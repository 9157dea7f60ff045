"""Statistics the studies share: crossings and steepest changes of a curve, time averages, correlations.

Every function takes plain arrays (one run's steps and values) and returns numbers, NaN where a statistic is undefined
(a curve that never crosses, too few points, a constant), never an exception for a short run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """First step at which ``values`` reaches ``threshold`` (NaN if never)."""
    hit = np.nonzero(values >= threshold)[0]
    return float(steps[hit[0]]) if len(hit) else float("nan")


def steepest_drop(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(step, rate) of the steepest decrease of ``values`` per step between consecutive points.

    The step reported is the end of the steepest interval; rate is the change per 1000 steps.
    (NaN, NaN) when there is no decrease at all (fewer than two points, or values that only rise)."""
    if len(steps) < 2:
        return float("nan"), float("nan")
    rate = np.diff(values) / np.diff(steps) * 1000
    i = int(np.argmin(rate))
    if not rate[i] < 0:
        return float("nan"), float("nan")
    return float(steps[i + 1]), float(rate[i])


def centred_mean(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Centred moving mean over ``width`` points; NaN where the window does not fit (the ends)."""
    return pd.Series(values, dtype=float).rolling(width, center=True).mean().to_numpy()


def _correlation(test, x, y) -> tuple[float, float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), len(x)
    statistic, p = test(x, y)
    return float(statistic), float(p), len(x)


def pearson(x, y) -> tuple[float, float, int]:
    """(r, two-sided p, n) of Pearson's correlation; NaNs where it is undefined (n < 3 or a constant)."""
    from scipy import stats
    return _correlation(stats.pearsonr, x, y)


def spearman(x, y) -> tuple[float, float, int]:
    """(ρ, two-sided p, n) of Spearman's rank correlation; NaNs where it is undefined (n < 3 or a constant)."""
    from scipy import stats
    return _correlation(stats.spearmanr, x, y)


def step_weighted_mean(steps: np.ndarray, values: np.ndarray) -> float:
    """The time average of a curve over training, ∫ value d(step) / span, by the trapezoid rule over the
    evaluations where it is defined (NaN with fewer than two)."""
    ok = np.isfinite(values)
    if ok.sum() < 2:
        return float("nan")
    s, v = steps[ok], values[ok]
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))


def steepest_log_change(steps: np.ndarray, values: np.ndarray) -> tuple[float, int, float]:
    """(step, index, rate) of the steepest change of ``values`` per unit of log(step) between consecutive
    evaluations (either direction): the end of that interval, its row index, and the signed change per e-fold of
    steps. Rows with NaN values (a measure not due at that evaluation) or step 0 are skipped; (NaN, -1, NaN) with
    fewer than two rows left."""
    keep = np.isfinite(values) & (steps > 0)
    index = np.nonzero(keep)[0]
    if len(index) < 2:
        return float("nan"), -1, float("nan")
    rate = np.diff(values[index]) / np.diff(np.log(steps[index]))
    i = int(np.argmax(np.abs(rate)))
    return float(steps[index[i + 1]]), int(index[i + 1]), float(rate[i])


def id_error(rows: pd.DataFrame, id_column: str) -> np.ndarray:
    """The estimator's resampling error (TwoNN's ``error_``) behind each value of an ID column: ``id_err/<layer>``
    for ``id/<layer>``; for the LLID and PID, that of the layer whose ID the value is, row by row. NaN where no
    error was recorded (another estimator, or runs from before the error was kept)."""
    from actid.schema import ID, ID_ERR, column, columns_of
    out = np.full(len(rows), np.nan)
    if id_column not in rows:
        return out
    values = rows[id_column].to_numpy(float)
    for layer, id_col in columns_of(rows.columns, ID).items():
        err_col = column(ID_ERR, layer)
        if err_col in rows:
            same = (rows[id_col].to_numpy(float) == values) & np.isnan(out)
            out[same] = rows[err_col].to_numpy(float)[same]
    return out


def examples_behind(accuracies, limit: int = 100_000) -> int | None:
    """The number of examples a set of accuracies was computed on, inferred from the accuracies themselves: each is
    k/n, so the smallest n <= ``limit`` with every accuracy × n an integer (to float32 precision). None when no n
    fits or there is no finite value. It can come out smaller than the true n (a divisor of it), which only widens
    an interval built on it."""
    values = np.asarray(accuracies, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    n = np.arange(1, limit + 1, dtype=float)[:, None]
    counts = values[None, :] * n
    fits = np.all(np.abs(counts - np.round(counts)) <= 1e-6 * n, axis=1)
    return int(n[np.argmax(fits), 0]) if fits.any() else None
