"""The events every lens is timed against, defined once per study from the accuracy curves.

* ``memorization``: the first evaluation with training accuracy >= 0.99 (every study that trains to fit its data).
* ``generalization``: where validation accuracy rises halfway. Modular grokking: its first crossing of 0.5 (the
  paper's grokking; chance there is 1/97). MNIST grokking: the first evaluation from memorization on that reaches
  the midpoint between its value at memorization and its final value (the study's own grok step,
  :func:`actid.analysis.mnist_grokking.midpoint_grokking`). The sigma sweep, where validation accuracy rises with
  the training accuracy and may fall again: its first crossing of the midpoint between its first value and its
  maximum.
* ``peak_test``: the evaluation of the highest validation accuracy, for the permuted-label runs of the geometry
  study (their test accuracy rises, then falls as the permuted labels are memorized).
* For the regularization sweeps the event lies on the strength axis: the over-regularization threshold
  (:func:`actid.analysis.regularization.over_regularization_threshold`), found by :func:`strength_event`.

Each event is a step (NaN where the run never reaches it) and the index of that evaluation in the run, so that a
lens's change point (:class:`actid.analysis.changepoint.ChangePoint`) gives a lag in steps and in evaluations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from actid.analysis.mnist_grokking import midpoint_grokking
from actid.analysis.regularization import over_regularization_threshold
from actid.analysis.stats import first_crossing
from actid.schema import STEP, acc

MEMORIZED = 0.99
GROKKED = 0.5

STUDY_EVENTS = {
    "grokking": ("memorization", "generalization"),
    "mnist_grokking": ("memorization", "generalization"),
    "memorization": ("memorization", "generalization"),
    "geometry": ("memorization", "peak_test"),
    "regularization": ("over_regularization",),
}
"""The events of each study, in the order they are drawn."""


def _index(steps: np.ndarray, step: float) -> float:
    return float(np.nonzero(steps == step)[0][0]) if np.isfinite(step) else float("nan")


def run_events(study: str, run: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{event: {"step": s, "index": i}}`` of one run of ``study`` (NaN where not reached)."""
    if study not in STUDY_EVENTS or study == "regularization":
        raise ValueError(f"no per-run events for study {study!r}; studies with them: "
                         f"{sorted(set(STUDY_EVENTS) - {'regularization'})} (regularization: strength_event)")
    run = run.sort_values(STEP)
    steps = run[STEP].to_numpy(float)
    train, val = run[acc("train")].to_numpy(float), run[acc("val")].to_numpy(float)
    found = {"memorization": first_crossing(steps, train, MEMORIZED)}
    if study == "grokking":
        found["generalization"] = first_crossing(steps, val, GROKKED)
    elif study == "mnist_grokking":
        found["generalization"] = midpoint_grokking(run, saturated=MEMORIZED)["grok_step"]
    elif study == "memorization":
        finite = val[np.isfinite(val)]
        found["generalization"] = (first_crossing(steps, val, (finite[0] + finite.max()) / 2) if len(finite)
                                   else float("nan"))
    else:  # geometry: the permuted-label runs' test accuracy peaks, then falls
        found["peak_test"] = float(steps[int(np.nanargmax(val))]) if np.isfinite(val).any() else float("nan")
    return {name: {"step": float(step), "index": _index(steps, step)} for name, step in found.items()}


def strength_event(strength, accuracy, tolerance: float = 0.02) -> dict[str, float]:
    """The regularization sweeps' event: the over-regularization threshold on the strength axis, and its index
    among the sorted strengths."""
    strength, accuracy = np.asarray(strength, float), np.asarray(accuracy, float)
    order = np.argsort(strength)
    threshold = over_regularization_threshold(strength, accuracy, tolerance)
    return {"strength": threshold, "index": float(np.nonzero(strength[order] == threshold)[0][0])}
