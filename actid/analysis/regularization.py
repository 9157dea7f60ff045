"""Regularization sweeps (Brown et al. 2022, Figs. A-C): one row per run, its regularizer and strength, and the
over-regularization threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.schema import LLID, PID, STEP


def regularizer(weight_decay: float, dropout: float) -> str:
    """The sweep a run belongs to: 'weight_decay' (WD > 0, no dropout), 'dropout' (WD 0; p = 0 is
    the dropout sweep's unregularized end) or 'both' (neither sweep; left out of the figures)."""
    if weight_decay > 0:
        return "weight_decay" if dropout == 0 else "both"
    return "dropout"


def final_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last evaluation, with ``regularizer`` and ``strength`` (WD or p) columns.

    Unfinished runs are kept but flagged (``finished`` False) so a figure can say it is partial."""
    last = runs.sort_values(STEP).groupby("run").tail(1).copy()
    last["regularizer"] = [regularizer(w, p) for w, p in zip(last["weight_decay"], last["dropout"])]
    last["strength"] = np.where(last["regularizer"] == "weight_decay", last["weight_decay"], last["dropout"])
    last["pid_over_llid"] = last[PID] / last[LLID]
    return last.set_index("run").sort_values(["dataset", "regularizer", "strength"])


def over_regularization_threshold(strength, accuracy, tolerance: float = 0.02) -> float:
    """The strongest setting whose accuracy is still within ``tolerance`` (absolute) of the best.

    Runs stronger than this are over-regularized. The rule uses accuracy only, so whether the PID
    falls beyond the threshold (the paper's Fig. C claim) is a finding, not a consequence of the rule."""
    strength, accuracy = np.asarray(strength, float), np.asarray(accuracy, float)
    if len(strength) == 0:
        raise ValueError("over_regularization_threshold needs at least one run")
    return float(strength[accuracy >= accuracy.max() - tolerance].max())
