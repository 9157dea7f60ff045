# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Over-regularization collapses PID and accuracy (Brown et al. 2022, Fig. C)
#
# Rows: data sets. Columns: weight decay (log axis) and dropout (linear axis). y: the validation-set
# peak ID over layers (PID) after the last epoch; colour: validation accuracy.
#
# **The red line (over-regularization threshold) is found from the data, not placed by eye:** it is
# the strongest setting of the panel whose validation accuracy is still within `tolerance` (absolute)
# of the panel's best run (`actid.analysis.over_regularization_threshold`). Runs to its right are
# over-regularized. The rule looks at accuracy only, so whether the PID falls to the right of the line
# is a finding: `pid_over_regularized_vs_rest` in the metrics is the median PID of the over-regularized
# runs divided by that of the others (< 1: the PID falls with accuracy, as the paper reports).
#
# Paper (placed by eye): CIFAR-100 WD 1e-3, dropout 0.25; CIFAR-10 WD 5e-4, dropout 0.35.
#
# Output: `pid_vs_strength.png` and `pid_vs_strength.json` (DVC metrics).

# %% tags=["parameters"]
runs_dir = "runs/regularization"
out_dir = "figures/regularization"
tolerance = 0.02  # accuracy below the panel's best that still counts as not over-regularized

# %%
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from actid.analysis import final_rows, over_regularization_threshold
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, PID, acc

VAL_ACC = acc("val")

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = resolve(out_dir)
out.mkdir(parents=True, exist_ok=True)
datasets = list(final["dataset"].unique())
final[["dataset", "regularizer", "strength", PID, LLID, VAL_ACC, "finished"]]

# %%
LABEL = {"weight_decay": "weight decay", "dropout": "dropout p"}
fig, axes = plt.subplots(len(datasets), 2, figsize=(8.4, 3.2 * len(datasets)), squeeze=False)
metrics = {}
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
            "median_pid_rest": float(runs.loc[~over, PID].median()),
            "median_pid_over_regularized": float(runs.loc[over, PID].median()) if over.any() else None,
            "pid_over_regularized_vs_rest": float(ratio) if ratio is not None else None,
            "median_val_acc_over_regularized": float(runs.loc[over, VAL_ACC].median()) if over.any() else None,
        }
        sc = ax.scatter(runs["strength"], runs[PID], c=runs[VAL_ACC], cmap="viridis", edgecolor="k", linewidth=0.4,
                        marker="o" if reg == "weight_decay" else "X", s=45)
        fig.colorbar(sc, ax=ax, label="validation accuracy")
        ax.axvline(threshold, color="red", lw=1.2)
        if reg == "weight_decay":
            ax.set_xscale("log")
        ax.set_xlabel(LABEL[reg])
        ax.set_ylabel("validation PID")
        ax.set_title(f"{dataset}, {LABEL[reg]}: threshold {threshold:g}", fontsize=9)
fig.suptitle(f"PID vs regularization; red: strongest setting within {tolerance:g} of the best accuracy", fontsize=10)
fig.tight_layout()
fig.savefig(out / "pid_vs_strength.png", dpi=120)

# %%
(out / "pid_vs_strength.json").write_text(json.dumps(metrics, indent=1))
print(json.dumps(metrics, indent=1))
