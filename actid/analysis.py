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



GRADIENT_ALIGNMENT = {"W1": "gradient_alignment/fc1.weight", "W2": "gradient_alignment/fc2.weight",
                      "logits": "gradient_alignment/logits"}
"""The gradient-alignment columns of a memorization run (actid.experiments.memorization)."""


def memorization_summary(run: pd.DataFrame) -> dict:
    """Per-run statistics of a memorization run (one run's rows, any order).

    Final train/validation accuracy, the best validation accuracy over the evaluations, each gradient alignment
    (W1, W2, logits) **averaged over all evaluations** (Mehta et al.'s Fig. 1b statistic, fixed before tuning),
    the final representation alignment (training probe and validation) and the final hidden-layer ID (LLID)."""
    run = run.sort_values(STEP)
    last = run.iloc[-1]
    summary = {"final_train_acc": float(last[acc("train")]), "final_val_acc": float(last[acc("val")]),
               "best_val_acc": float(run[acc("val")].max())}
    for key, column in GRADIENT_ALIGNMENT.items():
        summary[f"mean_gradient_alignment_{key}"] = float(run[column].mean()) if column in run else float("nan")
    finals = {"final_representation_alignment_train": "representation_alignment/hidden",
              "final_representation_alignment_val": "representation_alignment_val/hidden",
              "final_relative_gradient_norm_W1": "relative_gradient_norm/fc1.weight", "final_llid": LLID}
    for name, column in finals.items():
        summary[name] = float(last[column]) if column in run else float("nan")
    return summary
