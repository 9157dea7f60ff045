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
# # Grokking and the last-layer ID (Brown et al. 2022, Fig. D)
#
# A 2-layer transformer learns modular division. It memorizes the training equations first and
# generalizes ("groks") much later; the paper reports that the validation-set **LLID** (TwoNN ID of
# the last block's MLP output on the validation equations) drops at the same time.
#
# Input: the raw runs written by `python -m actid.sweep grokking` (stage `grokking` of `dvc.yaml`).
# Output: `grokking.png` (one panel per run: validation LLID and validation accuracy against steps),
# `summary.csv` (per-run statistics) and `metrics.json` (the summary DVC tracks).
#
# "p" in the paper's panel titles is the **train fraction** (an inference; see the reproduction notes).

# %% tags=["parameters"]
runs_dir = "runs/grokking"  # relative to the repository root, or absolute
out_dir = "figures/grokking"
grok_threshold = 0.5  # validation accuracy that counts as generalized
id_column = "llid"  # or "pid", or "id/blocks.0.mlp", ...

# %%
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from actid.analysis import grokking_summary
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import STEP, acc as accuracy_of

VAL_ACC, TRAIN_ACC = accuracy_of("val"), accuracy_of("train")

runs = load_runs(resolve(runs_dir))
out = resolve(out_dir)
out.mkdir(parents=True, exist_ok=True)
print(f"{runs['run'].nunique()} runs, {len(runs)} evaluation rows from {resolve(runs_dir)}")

# %%
summary = pd.DataFrame({name: grokking_summary(run, grok_threshold, id_column=id_column)
                        for name, run in runs.groupby("run")}).T
config = runs.groupby("run")[["train_fraction", "weight_decay", "optimizer"]].first()
summary = config.join(summary).sort_values(["train_fraction", "weight_decay"])
summary.to_csv(out / "summary.csv")
summary

# %%
fractions = sorted(runs["train_fraction"].unique())
decays = sorted(runs["weight_decay"].unique())
fig, axes = plt.subplots(len(fractions), len(decays), figsize=(3.4 * len(decays), 2.7 * len(fractions)),
                         squeeze=False, sharex=True)
twins = {}
for name, run in runs.groupby("run"):  # one line per run; runs differing only by seed share a panel
    frac, wd = run["train_fraction"].iloc[0], run["weight_decay"].iloc[0]
    ax = axes[fractions.index(frac)][decays.index(wd)]
    acc = twins.setdefault(id(ax), ax.twinx())
    run = run.sort_values(STEP)
    stats = summary.loc[name]
    ax.plot(run[STEP], run[id_column], color="tab:green", lw=1.3)
    acc.plot(run[STEP], run[VAL_ACC], color="tab:blue" if stats["grokked"] else "tab:red", lw=1.3)
    acc.plot(run[STEP], run[TRAIN_ACC], color="gray", lw=0.7, ls="--")
    if stats["grokked"]:
        ax.axvline(stats["grok_step"], color="tab:blue", ls=":", lw=1)
    ax.axvline(stats["llid_drop_step"], color="tab:green", ls=":", lw=1)
    ax.set_title(f"p: {frac}, WD: {wd:g}", fontsize=9)
    ax.set_ylabel(f"validation {id_column}", color="tab:green", fontsize=8)
    acc.set_ylim(-0.02, 1.02)
    acc.set_ylabel("accuracy", fontsize=8)
for ax in axes[-1]:
    ax.set_xlabel("training step")
fig.suptitle(f"Validation {id_column} (green) and validation accuracy (blue: groks; red: never reaches "
             f"{grok_threshold:.0%})\ndotted: steepest {id_column} drop after memorization (green), val acc crossing {grok_threshold:.0%} (blue); train acc dashed", fontsize=9)
fig.tight_layout()
fig.savefig(out / "grokking.png", dpi=120)

# %%
grokked = summary[summary["grokked"]]
metrics = {
    "n_runs": int(len(summary)),
    "n_grokked": int(len(grokked)),
    "median_lag_steps": float(np.median(grokked["lag_steps"])) if len(grokked) else None,
    "median_abs_lag_steps": float(np.median(np.abs(grokked["lag_steps"]))) if len(grokked) else None,
    "runs": {name: {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                    for k, v in row.items() if k in ("grok_step", "llid_drop_step", "lag_steps", "final_val_acc")}
             for name, row in summary.iterrows()},
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
print(json.dumps({k: v for k, v in metrics.items() if k != "runs"}, indent=1))
