"""Where an ID estimate can be trusted, read off the calibration of TwoNN, MLE and GRIDE on data of known
dimension (``scripts/calibrate_estimators.py`` writes ``calibration_ranges.json``; docs/estimators.md shows it).

:func:`trust` flags an estimate: ``accurate`` (every calibrated kind and seed within 10% of the truth up to this
value), ``biased`` (inside the calibrated range, where the estimators underestimate: compare such estimates, do
not read them as dimensions) or ``outside`` (beyond the calibrated range, or from fewer points than any calibrated
n: no statement about its accuracy can be made).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

RANGES = Path(__file__).with_name("calibration_ranges.json")
LEVELS = ("accurate", "biased", "outside")


@lru_cache(maxsize=4)
def _ranges(path: str) -> dict:
    return json.loads(Path(path).read_text())["ranges"]


def trust(estimate: float, n: int, estimator: str = "twonn", calibrated: dict | None = None) -> str:
    """``accurate``, ``biased`` or ``outside`` for an ID ``estimate`` from ``n`` points, by the calibration row of
    the largest calibrated n not above ``n``."""
    calibrated = calibrated or _ranges(str(RANGES))
    if estimator not in calibrated:
        raise ValueError(f"no calibration for estimator {estimator!r}; calibrated: {sorted(calibrated)}")
    below = [s for s in sorted(int(k) for k in calibrated[estimator]) if s <= n]
    if not below or not np.isfinite(estimate):
        return "outside"
    row = calibrated[estimator][str(below[-1])]
    return ("accurate" if estimate < row["accurate_below"] else "biased" if estimate < row["calibrated_below"]
            else "outside")


def calibrated_limit(n: int, estimator: str = "twonn", calibrated: dict | None = None) -> float | None:
    """The estimate above which an ID from ``n`` points lies beyond the calibrated range (None below every
    calibrated n): a line to draw on a figure of IDs."""
    calibrated = calibrated or _ranges(str(RANGES))
    below = [s for s in sorted(int(k) for k in calibrated[estimator]) if s <= n]
    return float(calibrated[estimator][str(below[-1])]["calibrated_below"]) if below else None


def worst(levels) -> str | None:
    """The least trustworthy of several flags (None for none)."""
    levels = [level for level in levels if level]
    return max(levels, key=LEVELS.index) if levels else None


def flag(rows, id_column: str, estimator: str = "twonn") -> str | None:
    """The least trustworthy :func:`trust` flag of the IDs in ``rows[id_column]`` (``llid``, ``pid``, ``id/<layer>``,
    or another estimator's ``id_mle/llid``...), each read with the points its layer's estimate used
    (``<measure>_points/<layer>``, recorded by the ID measure: ``id_points`` for ``id`` and its ``id_mle``...).
    None when the rows do not record the points."""
    from actid.schema import ID, columns_of, split_column
    if id_column not in rows:
        return None
    measure = split_column(id_column)[0] if "/" in id_column else ID
    base = measure.removesuffix(f"_{estimator}") if estimator != "twonn" else measure  # id_mle -> id's points
    layers = {k: c for k, c in columns_of(rows.columns, measure).items() if k not in ("llid", "pid")}
    values = rows[id_column].to_numpy(float)
    points = np.full(len(rows), np.nan)
    for layer, col in layers.items():
        counted = f"{base}_points/{layer}"
        if counted in rows:
            same = (col == id_column) | (rows[col].to_numpy(float) == values)
            points = np.where(same & np.isnan(points), rows[counted].to_numpy(float), points)
    known = np.isfinite(values) & np.isfinite(points)
    if not known.any():
        return None
    return worst(trust(v, int(n), estimator) for v, n in zip(values[known], points[known]))
