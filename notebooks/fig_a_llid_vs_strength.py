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
# # Regularization lowers the last-layer ID (Brown et al. 2022, Fig. A)
#
# One panel per data set and regularizer: the validation-set **LLID** (TwoNN ID of the pooled features
# that feed the classifier) after the last epoch of each run, against the regularization strength on a
# linear axis (weight decay runs have no dropout; dropout runs have weight decay 0), with Pearson's r
# over all runs of the panel. Over-regularized runs (the rule of Fig. C) are drawn hollow.
#
# Paper (CIFAR ResNet-18, 200 epochs): r = -0.88 (CIFAR-100, WD), -0.87 (CIFAR-100, dropout),
# -0.77 (CIFAR-10, WD), -0.99 (CIFAR-10, dropout).
#
# Input: the runs of `python -m actid.sweep regularization` (stage `regularization`).
# Output: `llid_vs_strength.png` and `llid_vs_strength.json` (r, p and n per panel; DVC metrics).

# %% tags=["parameters"]
runs_dir = "runs/regularization"  # relative to the repository root, or absolute
out_dir = "figures/regularization"
tolerance = 0.02  # only for the markers: runs beyond the over-regularization threshold (Fig. C rule) are hollow

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

PAPER_R = {("cifar100", "weight_decay"): -0.88, ("cifar100", "dropout"): -0.87,
           ("cifar10", "weight_decay"): -0.77, ("cifar10", "dropout"): -0.99}
STYLE = {"weight_decay": dict(marker="o", color="tab:red", label="weight decay"),
         "dropout": dict(marker="X", color="tab:orange", label="dropout p")}

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = resolve(out_dir)
out.mkdir(parents=True, exist_ok=True)
print(f"{len(final)} runs ({(~final['finished']).sum()} unfinished) from {resolve(runs_dir)}")
final[["dataset", "regularizer", "strength", LLID, PID, VAL_ACC, "finished"]]

# %%
panels = [(d, r) for d in final["dataset"].unique() for r in ("weight_decay", "dropout")
          if ((final["dataset"] == d) & (final["regularizer"] == r)).any()]
fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
metrics = {}
for ax, (dataset, reg) in zip(axes[0], panels):
    runs = final[(final["dataset"] == dataset) & (final["regularizer"] == reg)]
    r, p, n = pearson(runs["strength"], runs[LLID])
    paper = PAPER_R.get((dataset, reg))
    metrics[f"{dataset}/{reg}"] = {"r": r, "p": p, "n": n, "paper_r": paper,
                                   "sign_agrees_with_paper": None if paper is None or np.isnan(r) else bool(np.sign(r) == np.sign(paper))}
    over = runs["strength"] > over_regularization_threshold(runs["strength"], runs[VAL_ACC], tolerance)
    ax.scatter(runs.loc[~over, "strength"], runs.loc[~over, LLID], **STYLE[reg])
    ax.scatter(runs.loc[over, "strength"], runs.loc[over, LLID], marker=STYLE[reg]["marker"], s=40,
               facecolors="none", edgecolors=STYLE[reg]["color"])
    ax.set_title(f"{dataset}, {STYLE[reg]['label']}\nr = {r:.2f}, p = {p:.2g}, n = {n}", fontsize=9)
    ax.set_xlabel(STYLE[reg]["label"])
    ax.set_ylabel("validation LLID")
fig.suptitle("Regularization decreases the last-layer ID (hollow: over-regularized, see Fig. C; r uses all runs)",
             fontsize=10)
fig.tight_layout()
fig.savefig(out / "llid_vs_strength.png", dpi=120)

# %%
(out / "llid_vs_strength.json").write_text(json.dumps(metrics, indent=1))
print(json.dumps(metrics, indent=1))
