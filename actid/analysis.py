"""Per-run summaries used by the figure notebooks (kept here so they are tested and reusable)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """First step at which ``values`` reaches ``threshold`` (NaN if never)."""
    hit = np.nonzero(values >= threshold)[0]
    return float(steps[hit[0]]) if len(hit) else float("nan")


def steepest_drop(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(step, rate) of the steepest decrease of ``values`` per step between consecutive points.

    The step reported is the end of the steepest interval; rate is the change per 1000 steps."""
    rate = np.diff(values) / np.diff(steps) * 1000
    i = int(np.argmin(rate))
    return float(steps[i + 1]), float(rate[i])


def grokking_summary(run: pd.DataFrame, grok_threshold: float = 0.5, memorized: float = 0.99,
                     id_column: str = "llid") -> dict:
    """Grokking statistics of one run (rows sorted by step).

    memorization_step: first step with train accuracy >= ``memorized``.
    grok_step: first step with validation accuracy >= ``grok_threshold`` (NaN if never).
    llid_drop_step: end of the steepest decrease of the validation ``id_column`` per step, searched
        from the memorization step on (every run starts with an early ID spike and dip that is
        not the grokking drop; a run that never memorizes is searched from its second point).
    lag_steps: llid_drop_step - grok_step (negative: the ID drops first).
    """
    run = run.sort_values("step")
    steps = run["step"].to_numpy(float)
    grok = first_crossing(steps, run["val_acc"].to_numpy(), grok_threshold)
    memorization = first_crossing(steps, run["train_acc"].to_numpy(), memorized)
    after = steps >= (memorization if np.isfinite(memorization) else steps[1])
    if after.sum() < 2:
        after[-2:] = True
    drop_step, drop_rate = steepest_drop(steps[after], run[id_column].to_numpy()[after])
    return {
        "memorization_step": memorization,
        "grok_step": grok,
        "grokked": bool(np.isfinite(grok)),
        "final_val_acc": float(run["val_acc"].iloc[-1]),
        "llid_drop_step": drop_step,
        "llid_drop_per_1k_steps": drop_rate,
        "lag_steps": drop_step - grok,
        "llid_start": float(run[id_column].iloc[0]),
        "llid_final": float(run[id_column].iloc[-1]),
    }
