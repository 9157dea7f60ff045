"""Grokking on MNIST (Golechha 2024): train saturation, the midpoint grok step, and when each measure moves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.analysis.stats import first_crossing, steepest_log_change
from actid.schema import STEP, acc


def midpoint_grokking(run: pd.DataFrame, saturated: float = 0.99, min_gain: float = 0.1) -> dict:
    """Train saturation and grokking of one run (statistics fixed before the default profile was tuned).

    saturation_step: first evaluation with train accuracy >= ``saturated``.
    grok_step: first evaluation from saturation on whose validation accuracy reaches the midpoint between its
        value at the saturation step and its final value.
    delay_steps: grok_step - saturation_step.
    grokked: the final validation accuracy exceeds its value at saturation by at least ``min_gain``.
    steps_after_saturation: how much of the run follows saturation (a delay cannot be longer).
    NaNs (and grokked False) when training accuracy never saturates or the last validation accuracy is missing."""
    run = run.sort_values(STEP)
    steps, train, val = run[STEP].to_numpy(float), run[acc("train")].to_numpy(), run[acc("val")].to_numpy()
    saturation = first_crossing(steps, train, saturated)
    out = {"saturation_step": saturation, "val_acc_at_saturation": float("nan"), "final_val_acc": float(val[-1]),
           "grok_step": float("nan"), "grok_index": float("nan"), "delay_steps": float("nan"), "grokked": False,
           "steps_after_saturation": float(steps[-1] - saturation)}
    if not (np.isfinite(saturation) and np.isfinite(val[-1])):
        return out
    start = int(np.nonzero(steps == saturation)[0][0])
    at_saturation = float(val[start])
    midpoint = (at_saturation + val[-1]) / 2
    index = start + int(np.nonzero(val[start:] >= midpoint)[0][0])  # the last evaluation always qualifies
    out.update(val_acc_at_saturation=at_saturation, grok_step=float(steps[index]), grok_index=float(index),
               delay_steps=float(steps[index] - saturation), grokked=bool(val[-1] - at_saturation >= min_gain))
    return out


def measure_lags(run: pd.DataFrame, columns: list[str], grok: dict,
                 tolerance_evaluations: float = 2) -> dict[str, dict]:
    """For each column: where it changes most steeply (per log-step) from the saturation step on, and the lag
    from the grok step, in steps and in evaluations (negative: the measure moves first).

    A steepest interval at either edge of that window (the first interval after saturation, or the last of the
    run) only says the fastest change may lie outside it: its lag is NaN and ``at_edge`` True. ``chance``: the
    probability that |lag| <= ``tolerance_evaluations`` if the steepest interval were uniform over the window's
    inner intervals (the null of :func:`actid.verdicts.timing_evidence`)."""
    run = run.sort_values(STEP)
    steps = run[STEP].to_numpy(float)
    start = grok["saturation_step"] if np.isfinite(grok["saturation_step"]) else 0.0
    out = {}
    for column in columns:
        values = run[column].to_numpy(float) if column in run else np.full(len(run), np.nan)
        values = np.where(steps >= start, values, np.nan)
        step, index, rate = steepest_log_change(steps, values)
        defined = np.nonzero(np.isfinite(values) & (steps > 0))[0]
        at_edge = bool(index >= 0 and (index == defined[1] or index == defined[-1]))
        found = np.isfinite(step) and np.isfinite(grok["grok_step"]) and not at_edge
        inner = defined[2:-1]  # interval ends that are not at an edge
        chance = (float(np.mean(np.abs(inner - grok["grok_index"]) <= tolerance_evaluations))
                  if len(inner) and np.isfinite(grok["grok_index"]) else float("nan"))
        out[column] = {"change_step": step, "rate_per_log_step": rate, "at_edge": at_edge,
                       "lag_steps": step - grok["grok_step"] if found else float("nan"),
                       "lag_evaluations": index - grok["grok_index"] if found else float("nan"), "chance": chance}
    return out
