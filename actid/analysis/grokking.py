"""Grokking modular division (Brown et al. 2022, Fig. D): per-run grokking and LLID-drop statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.analysis.stats import centred_mean, first_crossing, steepest_drop
from actid.schema import LLID, STEP, acc


def grokking_summary(run: pd.DataFrame, grok_threshold: float = 0.5, memorized: float = 0.99,
                     id_column: str = LLID, co_occurrence_intervals: float = 2) -> dict:
    """Grokking statistics of one run (the statistic was fixed before any tuning of the default profile).

    memorization_step: first evaluation with train accuracy >= ``memorized``.
    grok_step: first evaluation with validation accuracy >= ``grok_threshold`` (NaN if never).
    Keys named after ``id_column`` (``llid_drop_step`` for the LLID, ``pid_drop_step`` for the PID, ...):

    <id>_drop_step: end of the steepest decrease of the centred 3-point mean of the validation
        ``id_column`` between consecutive evaluations, searched from the memorization step on (every
        run starts with an early ID spike and dip that is not the grokking drop; a run that never
        memorizes is searched from its second evaluation). NaN when the smoothed ID never decreases
        there, or too few evaluations follow (e.g. a run still in progress).
    lag_steps: <id>_drop_step - grok_step (negative: the ID drops first; NaN if either is NaN).
    co_occurs: |lag_steps| <= ``co_occurrence_intervals`` evaluation intervals (median step spacing).
    co_occurrence_chance: the probability of ``co_occurs`` if the drop's position were uniform over the evaluations
        it was searched among (the null of :func:`actid.verdicts.timing_evidence`; NaN without a grok step).
    <id>_change_after_memorization: relative change of the smoothed ID over that window (last / first - 1): the
        negative control compares it between runs that grok and runs that do not.
    """
    run = run.sort_values(STEP)
    steps = run[STEP].to_numpy(float)
    grok = first_crossing(steps, run[acc("val")].to_numpy(), grok_threshold)
    memorization = first_crossing(steps, run[acc("train")].to_numpy(), memorized)
    smooth = centred_mean(run[id_column].to_numpy())
    start = memorization if np.isfinite(memorization) else steps[min(1, len(steps) - 1)]
    after = (steps >= start) & np.isfinite(smooth)
    drop_step, drop_rate = steepest_drop(steps[after], smooth[after])
    interval = float(np.median(np.diff(steps))) if len(steps) > 1 else float("nan")
    lag = drop_step - grok
    candidates, window = steps[after][1:], smooth[after]  # where a steepest interval can end
    tolerance = co_occurrence_intervals * interval
    chance = (float(np.mean(np.abs(candidates - grok) <= tolerance)) if len(candidates) and np.isfinite(grok)
              else float("nan"))
    change = float(window[-1] / window[0] - 1) if len(window) >= 2 else float("nan")
    return {
        "memorization_step": memorization,
        "grok_step": grok,
        "grokked": bool(np.isfinite(grok)),
        "final_val_acc": float(run[acc("val")].iloc[-1]),
        f"{id_column}_drop_step": drop_step,
        f"{id_column}_drop_per_1k_steps": drop_rate,
        "lag_steps": lag,
        "eval_interval": interval,
        "co_occurs": bool(np.isfinite(lag) and abs(lag) <= tolerance),
        "co_occurrence_chance": chance,
        f"{id_column}_change_after_memorization": change,
        f"{id_column}_start": float(run[id_column].iloc[0]),
        f"{id_column}_final": float(run[id_column].iloc[-1]),
    }
