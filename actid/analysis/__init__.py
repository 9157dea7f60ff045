"""Per-run statistics behind the figures, one module per study, on the shared :mod:`actid.analysis.stats`.

* :mod:`~actid.analysis.regularization`: Brown et al. 2022 Figs. A-C (final rows, over-regularization);
* :mod:`~actid.analysis.grokking`: Brown et al. 2022 Fig. D (grokking and the LLID drop);
* :mod:`~actid.analysis.memorization`: Mehta et al. 2021 (accuracy, alignment, ID);
* :mod:`~actid.analysis.mnist_grokking`: Golechha 2024 (saturation, midpoint grok, measure lags);
* geometry (Stephenson et al. 2021) needs none: its notebook reads the run's rows and ``rewinding.csv``.

The notebooks import from these modules; each notebook's claims go through :class:`actid.claims.Claims`.
"""

from actid._moved import moved

MOVED = {
    "first_crossing": "actid.analysis.stats", "steepest_drop": "actid.analysis.stats",
    "centred_mean": "actid.analysis.stats", "pearson": "actid.analysis.stats", "spearman": "actid.analysis.stats",
    "step_weighted_mean": "actid.analysis.stats", "steepest_log_change": "actid.analysis.stats",
    "grokking_summary": "actid.analysis.grokking",
    "regularizer": "actid.analysis.regularization", "final_rows": "actid.analysis.regularization",
    "over_regularization_threshold": "actid.analysis.regularization",
    "GRADIENT_ALIGNMENT": "actid.analysis.memorization", "memorization_summary": "actid.analysis.memorization",
    "midpoint_grokking": "actid.analysis.mnist_grokking", "measure_lags": "actid.analysis.mnist_grokking",
}
"""Names of the former single ``actid/analysis.py`` (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)
