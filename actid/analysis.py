"""Per-run summaries used by the figure notebooks (kept here so they are tested and reusable)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.schema import LLID, PID, STEP, acc

VAL_ACC, TRAIN_ACC = acc("val"), acc("train")


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


def grokking_summary(run: pd.DataFrame, grok_threshold: float = 0.5, memorized: float = 0.99,
                     id_column: str = LLID, co_occurrence_intervals: float = 2) -> dict:
    """Grokking statistics of one run (the statistic was fixed before any tuning of the default profile).

    memorization_step: first evaluation with train accuracy >= ``memorized``.
    grok_step: first evaluation with validation accuracy >= ``grok_threshold`` (NaN if never).
    llid_drop_step: end of the steepest decrease of the centred 3-point mean of the validation
        ``id_column`` between consecutive evaluations, searched from the memorization step on (every
        run starts with an early ID spike and dip that is not the grokking drop; a run that never
        memorizes is searched from its second evaluation). NaN when the smoothed ID never decreases
        there, or too few evaluations follow (e.g. a run still in progress).
    lag_steps: llid_drop_step - grok_step (negative: the ID drops first; NaN if either is NaN).
    co_occurs: |lag_steps| <= ``co_occurrence_intervals`` evaluation intervals (median step spacing).
    """
    run = run.sort_values(STEP)
    steps = run[STEP].to_numpy(float)
    grok = first_crossing(steps, run[VAL_ACC].to_numpy(), grok_threshold)
    memorization = first_crossing(steps, run[TRAIN_ACC].to_numpy(), memorized)
    smooth = centred_mean(run[id_column].to_numpy())
    start = memorization if np.isfinite(memorization) else steps[min(1, len(steps) - 1)]
    after = (steps >= start) & np.isfinite(smooth)
    drop_step, drop_rate = steepest_drop(steps[after], smooth[after])
    interval = float(np.median(np.diff(steps))) if len(steps) > 1 else float("nan")
    lag = drop_step - grok
    return {
        "memorization_step": memorization,
        "grok_step": grok,
        "grokked": bool(np.isfinite(grok)),
        "final_val_acc": float(run[VAL_ACC].iloc[-1]),
        "llid_drop_step": drop_step,
        "llid_drop_per_1k_steps": drop_rate,
        "lag_steps": lag,
        "eval_interval": interval,
        "co_occurs": bool(np.isfinite(lag) and abs(lag) <= co_occurrence_intervals * interval),
        "llid_start": float(run[id_column].iloc[0]),
        "llid_final": float(run[id_column].iloc[-1]),
    }


# --- Regularization sweeps (Figs. A-C) ---------------------------------------------------------

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


def over_regularization_threshold(strength, accuracy, tolerance: float = 0.02) -> float:
    """The strongest setting whose accuracy is still within ``tolerance`` (absolute) of the best.

    Runs stronger than this are over-regularized. The rule uses accuracy only, so whether the PID
    falls beyond the threshold (the paper's Fig. C claim) is a finding, not a consequence of the rule."""
    strength, accuracy = np.asarray(strength, float), np.asarray(accuracy, float)
    if len(strength) == 0:
        raise ValueError("over_regularization_threshold needs at least one run")
    return float(strength[accuracy >= accuracy.max() - tolerance].max())



def step_weighted_mean(steps: np.ndarray, values: np.ndarray) -> float:
    """The time average of a curve over training, ∫ value d(step) / span, by the trapezoid rule over the
    evaluations where it is defined (NaN with fewer than two)."""
    ok = np.isfinite(values)
    if ok.sum() < 2:
        return float("nan")
    s, v = steps[ok], values[ok]
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))


GRADIENT_ALIGNMENT = {"W1": "gradient_alignment/fc1.weight", "W2": "gradient_alignment/fc2.weight",
                      "logits": "gradient_alignment/logits"}
"""The gradient-alignment columns of a memorization run (actid.experiments.memorization)."""


def memorization_summary(run: pd.DataFrame) -> dict:
    """Per-run statistics of a memorization run (one run's rows, any order).

    Final train/validation accuracy, the best validation accuracy over the evaluations, each gradient alignment
    (W1, W2, logits) **averaged over all evaluations** (Mehta et al.'s Fig. 1b statistic, fixed before tuning;
    evaluations where it is undefined, all gradients zero, are skipped) and, beside it, averaged over training
    steps (:func:`step_weighted_mean`: log-spaced evaluations put most of the plain mean in the first epochs), the
    final representation alignment (training probe and validation) and the final hidden-layer ID (LLID)."""
    run = run.sort_values(STEP)
    last = run.iloc[-1]
    summary = {"final_train_acc": float(last[acc("train")]), "final_val_acc": float(last[acc("val")]),
               "best_val_acc": float(run[acc("val")].max())}
    steps = run[STEP].to_numpy(float)
    for key, column in GRADIENT_ALIGNMENT.items():
        values = run[column].to_numpy(float) if column in run else np.full(len(run), np.nan)
        summary[f"mean_gradient_alignment_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        summary[f"step_weighted_gradient_alignment_{key}"] = step_weighted_mean(steps, values)
    finals = {"final_representation_alignment_train": "representation_alignment/hidden",
              "final_representation_alignment_val": "representation_alignment_val/hidden",
              "final_relative_gradient_norm_W1": "relative_gradient_norm/fc1.weight", "final_llid": LLID}
    for name, column in finals.items():
        summary[name] = float(last[column]) if column in run else float("nan")
    return summary


# --- Grokking on MNIST (Golechha 2024) -------------------------------------------------------------

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
    steps, train, val = run[STEP].to_numpy(float), run[TRAIN_ACC].to_numpy(), run[VAL_ACC].to_numpy()
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


def measure_lags(run: pd.DataFrame, columns: list[str], grok: dict) -> dict[str, dict]:
    """For each column: where it changes most steeply (per log-step) from the saturation step on, and the lag
    from the grok step, in steps and in evaluations (negative: the measure moves first).

    A steepest interval at either edge of that window (the first interval after saturation, or the last of the
    run) only says the fastest change may lie outside it: its lag is NaN and ``at_edge`` True."""
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
        out[column] = {"change_step": step, "rate_per_log_step": rate, "at_edge": at_edge,
                       "lag_steps": step - grok["grok_step"] if found else float("nan"),
                       "lag_evaluations": index - grok["grok_index"] if found else float("nan")}
    return out
