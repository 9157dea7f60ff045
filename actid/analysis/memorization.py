"""Extreme memorization (Mehta et al. 2021): per-run accuracy, alignment and ID statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.analysis.stats import id_error, step_weighted_mean
from actid.schema import LLID, STEP, acc, column

GRADIENT_ALIGNMENT = {"W1": column("gradient_alignment", "fc1.weight"),
                      "W2": column("gradient_alignment", "fc2.weight"),
                      "logits": column("gradient_alignment", "logits")}
"""The gradient-alignment columns of a memorization run: the measures of :mod:`actid.experiments.memorization` on
the two weights of :class:`actid.models.mlp.TwoLayerMLP` (``fc1``, ``fc2``) and on its logits."""
FINAL_COLUMNS = {"final_representation_alignment_train": column("representation_alignment", "hidden"),
                 "final_representation_alignment_val": column("representation_alignment_val", "hidden"),
                 "final_relative_gradient_norm_W1": column("relative_gradient_norm", "fc1.weight"), "final_llid": LLID}
"""The summary's final values and their columns (the hidden layer of TwoLayerMLP is ``hidden``)."""


def memorization_summary(run: pd.DataFrame) -> dict:
    """Per-run statistics of a memorization run (one run's rows, any order).

    Final train/validation accuracy, the best validation accuracy over the evaluations, each gradient alignment
    (W1, W2, logits) **averaged over all evaluations** (Mehta et al.'s Fig. 1b statistic, fixed before tuning;
    evaluations where it is undefined, all gradients zero, are skipped) and, beside it, averaged over training
    steps (:func:`step_weighted_mean`: log-spaced evaluations put most of the plain mean in the first epochs), the
    final representation alignment (training probe and validation) and the final hidden-layer ID (LLID) with its
    resampling error."""
    run = run.sort_values(STEP)
    last = run.iloc[-1]
    summary = {"final_train_acc": float(last[acc("train")]), "final_val_acc": float(last[acc("val")]),
               "best_val_acc": float(run[acc("val")].max())}
    steps = run[STEP].to_numpy(float)
    for key, col in GRADIENT_ALIGNMENT.items():
        values = run[col].to_numpy(float) if col in run else np.full(len(run), np.nan)
        defined = np.isfinite(values).any()
        summary[f"mean_gradient_alignment_{key}"] = float(np.nanmean(values)) if defined else float("nan")
        summary[f"step_weighted_gradient_alignment_{key}"] = step_weighted_mean(steps, values)
    for name, col in FINAL_COLUMNS.items():
        summary[name] = float(last[col]) if col in run else float("nan")
    summary["final_llid_err"] = float(id_error(run.iloc[-1:], LLID)[0])  # TwoNN's resampling error
    return summary
