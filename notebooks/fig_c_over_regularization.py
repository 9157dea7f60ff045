# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   language_info:
#     codemirror_mode:
#       name: ipython
#       version: 3
#     file_extension: .py
#     mimetype: text/x-python
#     name: python
#     nbconvert_exporter: python
#     pygments_lexer: ipython3
#     version: 3.11.7
# ---

# %% [markdown]
# # Fig. C: peak ID and accuracy against regularization strength (Brown et al. 2022)
#
# Rows: data sets. Columns: weight decay (log axis) and dropout (linear axis). y: the validation-set
# peak ID over layers (PID) at the last evaluation; colour: validation accuracy.
#
# **The vertical line (over-regularization threshold) is found from the data, not placed by eye:** it is
# the strongest setting of the panel whose validation accuracy is still within `tolerance` (absolute)
# of the panel's best run (`actid.analysis.over_regularization_threshold`). Runs to its right are
# over-regularized. The rule looks at accuracy only, so whether the PID falls to the right of the line
# is a finding: `pid_over_regularized_vs_rest` in the metrics is the median PID of the over-regularized
# runs divided by that of the others (< 1: the PID falls with accuracy, as the paper reports). The
# claims table counts it as a collapse when the ratio is below `collapse_ratio` (0.9, fixed before tuning).
#
# Paper (lines placed by eye): CIFAR-100 WD 1e-3, dropout 0.25; CIFAR-10 WD 5e-4, dropout 0.35.
#
# Output, in `out_dir`: `pid_vs_strength.png`/`.pdf` and `pid_vs_strength.json` (DVC metrics).
# `out_dir = None` writes to the scratch folder `build/figures/regularization`.

# %% tags=["parameters"]
runs_dir = "runs/regularization"
out_dir = None  # None: build/figures/regularization (scratch); the DVC stage passes figures/regularization
tolerance = 0.02  # accuracy below the panel's best that still counts as not over-regularized
collapse_ratio = 0.9  # the PID "collapses" when the median beyond the threshold is below this fraction of the rest

# %%
import matplotlib.pyplot as plt
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.regularization import final_rows, over_regularization_threshold
from actid.analysis.stats import id_error
from actid.calibration import flag
from actid.claims import Claims, profile_label
from actid.io import write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, PID, acc
from actid.verdicts import bootstrap_ratio_of_medians, not_testable, sensitivity, threshold_evidence

VAL_ACC = acc("val")
plotting.use_style()

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = plotting.output_dir(out_dir, "regularization")
datasets = list(final["dataset"].unique())
final[["dataset", "regularizer", "strength", PID, LLID, VAL_ACC, "finished"]]

# %%
def collapse_evidence(runs, threshold: float, pid_column: str):
    """The ratio of median PIDs beyond / at or below the threshold: per seed with a t-interval over seeds, or, with
    one seed, a bootstrap interval over the runs."""
    over = runs["strength"] > threshold
    if not over.any():
        return not_testable("threshold", "no run beyond the threshold")
    if runs["seed"].nunique() == 1:
        return threshold_evidence(
            {int(runs["seed"].iloc[0]): runs.loc[over, pid_column].median() / runs.loc[~over, pid_column].median()},
            collapse_ratio, n=len(runs), method="bootstrap over runs",
            interval=bootstrap_ratio_of_medians(runs.loc[over, pid_column], runs.loc[~over, pid_column]))
    return threshold_evidence({s: g.loc[g["strength"] > threshold, pid_column].median()
                               / g.loc[g["strength"] <= threshold, pid_column].median()
                               for s, g in runs.groupby("seed")}, collapse_ratio, n=len(runs))


accuracy_norm = Normalize(final[VAL_ACC].min(), final[VAL_ACC].max())  # one colour scale for all panels
fig, axes = plt.subplots(len(datasets), 2, figsize=(10.0, 3.8 * len(datasets) + 0.8), squeeze=False)
metrics, claims = {}, Claims("C", profile_label(final))
for row, dataset in zip(axes, datasets):
    for ax, reg in zip(row, ("weight_decay", "dropout")):
        runs = final[(final["dataset"] == dataset) & (final["regularizer"] == reg)]
        if runs.empty:
            ax.set_visible(False)
            continue
        threshold = over_regularization_threshold(runs["strength"], runs[VAL_ACC], tolerance)
        over = runs["strength"] > threshold
        ratio = (runs.loc[over, PID].median() / runs.loc[~over, PID].median()) if over.any() else None
        metrics[f"{dataset}/{reg}"] = {
            "threshold": threshold, "best_val_acc": float(runs[VAL_ACC].max()), "tolerance": tolerance,
            "n_runs": int(len(runs)), "n_over_regularized": int(over.sum()),
            "n_unfinished": int((~runs["finished"]).sum()),
            "median_pid_rest": float(runs.loc[~over, PID].median()),
            "median_pid_over_regularized": float(runs.loc[over, PID].median()) if over.any() else None,
            "pid_over_regularized_vs_rest": float(ratio) if ratio is not None else None,
            "median_val_acc_over_regularized": float(runs.loc[over, VAL_ACC].median()) if over.any() else None,
        }
        claims.add(
            f"beyond the over-regularization threshold the PID collapses ({plotting.LABELS[reg].removesuffix(' p')})",
            "PID falls right of the line (lines by eye)",
            (f"median PID beyond / at or below: {ratio:.2f} (threshold {threshold:g}, {int(over.sum())} beyond; "
             f"collapse: < {collapse_ratio:g}) ({dataset})")
            if ratio is not None else f"no run beyond the threshold ({dataset})",
            rule=f"brown_c_{reg}", evidence=collapse_evidence(runs, threshold, PID),
            sensitivity=sensitivity(lambda c: collapse_evidence(runs, threshold, c[PID]), runs.columns, [PID]),
            id_trust=flag(runs, PID))
        ax.axvline(threshold, color=plotting.COLORS["threshold"], lw=1.4, zorder=1)
        ax.errorbar(runs["strength"], runs[PID], yerr=id_error(runs, PID), fmt="none", ecolor="0.4", lw=0.9, zorder=2)
        ax.scatter(runs["strength"], runs[PID], c=runs[VAL_ACC], cmap="viridis", norm=accuracy_norm,
                   edgecolor="black", linewidth=0.4, marker=plotting.MARKERS[reg], s=60, zorder=3)
        unfinished = runs[~runs["finished"]]
        ax.scatter(unfinished["strength"], unfinished[PID], **plotting.UNFINISHED)
        if reg == "weight_decay":
            ax.set_xscale("log")
        ax.set_xlabel(plotting.LABELS[reg])
        ax.set_ylabel("validation PID")
        ratio_text = f"{ratio:.2f}" if ratio is not None else "n/a"
        ax.set_title(f"{dataset}, {plotting.LABELS[reg]}: threshold {threshold:g}\n"
                     f"median PID beyond / at or below it: {ratio_text}")
fig.colorbar(plt.cm.ScalarMappable(norm=accuracy_norm, cmap="viridis"), ax=axes.ravel().tolist(),
             label="validation accuracy", shrink=0.9)
handles = [Line2D([], [], color=plotting.COLORS["threshold"], lw=1.4,
                  label=f"over-regularization threshold: strongest setting within {tolerance:g} of the best accuracy"),
           Line2D([], [], color="0.4", lw=0.9, marker="|", ms=10, label="± TwoNN resampling error of the PID")]
if not final["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=1)
fig.suptitle("Validation PID at the last evaluation against regularization strength")
plotting.save_figure(fig, out, "pid_vs_strength")

# %%
write_json(out / "pid_vs_strength.json", {**metrics, "claims": claims.rows})
metrics
