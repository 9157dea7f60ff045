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
# # PID / LLID tracks generalization (Brown et al. 2022, Fig. B)
#
# One panel per data set: validation accuracy after the last epoch against the ratio of the peak ID
# over layers (PID) to the last-layer ID (LLID), for the runs that are **not over-regularized**, with
# Pearson's r. Weight-decay and dropout runs are pooled.
#
# Which runs count as not over-regularized: by default, those at or below the data-driven
# over-regularization threshold of their panel (`actid.analysis.over_regularization_threshold`, the
# rule of Fig. C: the strongest setting whose accuracy is within `tolerance` of the panel's best).
# The paper instead used a fixed cut for both data sets, WD <= 1e-3 and p <= 0.3: set `max_weight_decay`
# and `max_dropout` to use a fixed cut.
#
# Paper: r = 0.92 (CIFAR-100), 0.96 (CIFAR-10).
#
# Output: `accuracy_vs_pid_over_llid.png` and `accuracy_vs_pid_over_llid.json` (DVC metrics).

# %% tags=["parameters"]
runs_dir = "runs/regularization"
out_dir = "figures/regularization"
tolerance = 0.02  # accuracy below the panel's best that still counts as not over-regularized
max_weight_decay = None  # a number: fixed cut instead of the data-driven threshold (paper: 1e-3)
max_dropout = None  # (paper: 0.3)

# %%
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from actid.analysis import final_rows, over_regularization_threshold, pearson
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, PID, acc

VAL_ACC = acc("val")

PAPER_R = {"cifar100": 0.92, "cifar10": 0.96}
fixed_cut = {"weight_decay": max_weight_decay, "dropout": max_dropout}

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = resolve(out_dir)
out.mkdir(parents=True, exist_ok=True)
cuts = {}
for (dataset, reg), runs in final.groupby(["dataset", "regularizer"]):
    cut = fixed_cut[reg]
    cuts[(dataset, reg)] = float(cut) if cut is not None else over_regularization_threshold(
        runs["strength"], runs[VAL_ACC], tolerance)
final["kept"] = [s <= cuts[(d, r)] for d, r, s in zip(final["dataset"], final["regularizer"], final["strength"])]
print("cut per panel (runs at or below are kept):", {f"{d}/{r}": c for (d, r), c in cuts.items()})
final[["dataset", "regularizer", "strength", PID, LLID, "pid_over_llid", VAL_ACC, "kept"]]

# %%
datasets = list(final["dataset"].unique())
fig, axes = plt.subplots(1, len(datasets), figsize=(6.0 * len(datasets), 4.0), squeeze=False)
metrics = {}
for ax, dataset in zip(axes[0], datasets):
    kept = final[(final["dataset"] == dataset) & final["kept"]]
    r, p, n = pearson(kept["pid_over_llid"], kept[VAL_ACC])
    paper = PAPER_R.get(dataset)
    metrics[dataset] = {"r": r, "p": p, "n": n, "paper_r": paper,
                        "sign_agrees_with_paper": None if paper is None or np.isnan(r) else bool(np.sign(r) == np.sign(paper)),
                        "cut": {reg: cuts.get((dataset, reg)) for reg in ("weight_decay", "dropout")}}
    wd, dp = kept[kept["regularizer"] == "weight_decay"], kept[kept["regularizer"] == "dropout"]
    if len(wd):
        sc = ax.scatter(wd["pid_over_llid"], wd[VAL_ACC], c=np.log10(wd["strength"]), cmap="Reds", marker="o",
                        edgecolor="k", linewidth=0.4)
        fig.colorbar(sc, ax=ax, label="log10 weight decay (o)", pad=0.01)
    if len(dp):
        sc = ax.scatter(dp["pid_over_llid"], dp[VAL_ACC], c=dp["strength"], cmap="Oranges", marker="X",
                        edgecolor="k", linewidth=0.4, vmin=0)
        fig.colorbar(sc, ax=ax, label="dropout p (x)", pad=0.01)
    ax.set_title(f"{dataset}: r = {r:.2f}, p = {p:.2g}, n = {n}", fontsize=9)
    ax.set_xlabel("PID / LLID")
    ax.set_ylabel("validation accuracy")
fig.suptitle("PID/LLID vs validation accuracy\n(runs not over-regularized; o weight decay, x dropout)", fontsize=10)
fig.tight_layout()
fig.savefig(out / "accuracy_vs_pid_over_llid.png", dpi=120)

# %%
(out / "accuracy_vs_pid_over_llid.json").write_text(json.dumps(metrics, indent=1))
print(json.dumps(metrics, indent=1))
