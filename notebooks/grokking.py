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
# # Fig. D: validation LLID and accuracy during grokking (Brown et al. 2022)
#
# A 2-layer transformer learns modular division. It memorizes the training equations first and
# generalizes ("groks") much later; the paper reports that the validation-set **LLID** (TwoNN ID of
# the last block's MLP output on the validation equations) drops at the same time.
#
# The statistic (fixed before the default profile was tuned): the **lag** from the grok step (first
# evaluation with validation accuracy >= `grok_threshold`) to the steepest decrease of the centred
# 3-point mean of the validation LLID after training accuracy first reaches 0.99. The drop
# **co-occurs** with grokking when |lag| <= `co_occurrence_intervals` evaluation intervals
# (`actid.analysis.grokking_summary`).
#
# Input: the raw runs written by `python -m actid.sweep grokking` (stage `train@grokking` of `dvc.yaml`).
# Output, in `out_dir`: `grokking.png`/`.pdf` (one panel per train fraction and weight decay (WD), one line
# style per seed), `summary.csv` (per-run statistics) and `metrics.json` (the summary DVC tracks).
# With `out_dir = None` (opening the notebook in JupyterLab) they go to the scratch folder
# `build/figures/grokking`; the DVC stage writes `figures/grokking`.
#
# "p" in the paper's panel titles is the **train fraction** (an inference: see `docs/reproduction.md`).

# %% tags=["parameters"]
runs_dir = "runs/grokking"  # relative to the repository root, or absolute
out_dir = None  # None: build/figures/grokking (scratch); the DVC stage passes figures/grokking
grok_threshold = 0.5  # validation accuracy that counts as generalized
co_occurrence_intervals = 2  # |lag| within this many evaluation intervals counts as co-occurring
id_column = "llid"  # or "pid", or "id/blocks.0.mlp", ...

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.grokking import grokking_summary
from actid.analysis.stats import id_error
from actid.calibration import flag
from actid.claims import Claims, profile_label
from actid.io import write_csv, write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import STEP
from actid.schema import acc as accuracy_of
from actid.verdicts import mean_band, sensitivity, timing_evidence

VAL_ACC, TRAIN_ACC = accuracy_of("val"), accuracy_of("train")
plotting.use_style()
id_label = {"llid": "LLID", "pid": "PID"}.get(id_column, id_column)
train_column = f"id_train/{id_column}" if id_column in ("llid", "pid") else id_column.replace("id/", "id_train/", 1)

# %%
runs = load_runs(resolve(runs_dir))
out = plotting.output_dir(out_dir, "grokking")
print(f"{runs['run'].nunique()} runs, {len(runs)} evaluation rows from {resolve(runs_dir)}")

# %%
summary = pd.DataFrame({name: grokking_summary(run, grok_threshold, id_column=id_column,
                                               co_occurrence_intervals=co_occurrence_intervals)
                        for name, run in runs.groupby("run")}).T
config = runs.groupby("run")[["train_fraction", "weight_decay", "optimizer", "seed", "finished"]].first()
summary = config.join(summary).sort_values(["train_fraction", "weight_decay", "seed"])
write_csv(summary, out / "summary.csv")
summary

# %%
fractions = sorted(runs["train_fraction"].unique())
decays = sorted(runs["weight_decay"].unique())
seeds = sorted(runs["seed"].unique())
style_of_seed = {s: plotting.SEED_LINESTYLES[i % len(plotting.SEED_LINESTYLES)] for i, s in enumerate(seeds)}
id_color, acc_color = plotting.COLORS["id"], plotting.COLORS["val_acc"]
fig, axes = plt.subplots(len(fractions), len(decays), figsize=(max(3.6 * len(decays), 7.0), 3.1 * len(fractions) + 1.2),
                         squeeze=False, sharex=True)
twins = {ax: ax.twinx() for ax in axes.flat}  # one accuracy axis per panel
for (frac, wd), panel in summary.groupby(["train_fraction", "weight_decay"]):
    ax = axes[fractions.index(frac)][decays.index(wd)]
    acc_ax = twins[ax]
    for name, stats in panel.iterrows():
        run = runs[runs["run"] == name].sort_values(STEP)
        ls = style_of_seed[stats["seed"]]
        ax.plot(run[STEP], run[id_column], color=id_color, ls=ls, lw=1.4)
        err = id_error(run, id_column)  # TwoNN's resampling error: a band of ± one error
        ax.fill_between(run[STEP], run[id_column] - err, run[id_column] + err, color=id_color, alpha=0.2, lw=0)
        if train_column in run:  # the same ID on training examples: does it drop without generalizing?
            ax.plot(run[STEP], run[train_column], color=plotting.COLORS["id_train"], ls=ls, lw=1.1)
        acc_ax.plot(run[STEP], run[VAL_ACC], color=acc_color, ls=ls, lw=1.4)
        acc_ax.plot(run[STEP], run[TRAIN_ACC], color=plotting.COLORS["train_acc"], ls=ls, lw=0.8)
        if stats["grokked"]:
            acc_ax.plot(stats["grok_step"], grok_threshold, "^", color=acc_color, ms=8, mec="black", mew=0.6)
        drop = run[run[STEP] == stats[f"{id_column}_drop_step"]]
        ax.plot(drop[STEP], drop[id_column], "v", color=id_color, ms=8, mec="black", mew=0.6)
        if not stats["finished"]:
            ax.scatter(run[STEP].iloc[-1:], run[id_column].iloc[-1:], **plotting.UNFINISHED)
    if len(panel) >= 2:  # the seed mean with a 95% t-band over seeds, at the evaluation steps all seeds share
        curves = runs[runs["run"].isin(panel.index)].pivot_table(index=STEP, columns="run", values=id_column).dropna()
        mean, lo, hi = mean_band(curves)
        ax.fill_between(curves.index, lo, hi, color="black", alpha=0.12, lw=0)
        ax.plot(curves.index, mean, color="black", lw=1.0)
    grokked = panel[panel["grokked"]]
    lag_text = " / ".join(f"{lag:+.0f}" if np.isfinite(lag) else "no drop" for lag in grokked["lag_steps"])
    detail = ("grok step " + " / ".join(f"{s:.0f}" for s in grokked["grok_step"])
              + ("\n" if len(grokked) > 2 else "; ") + "lag " + lag_text  # three seeds: two lines
              if len(grokked) else f"val acc never reaches {grok_threshold:.0%}")
    ax.set_title(f"train fraction {frac:g}, WD {wd:g}\n{detail}")
    ax.tick_params(axis="y", colors=id_color)
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.tick_params(axis="y", colors=acc_color)
    acc_ax.grid(False)
for ax in axes[-1]:
    ax.set_xlabel("training step")
for ax in axes[:, 0]:
    ax.set_ylabel(f"validation {id_label}", color=id_color)
for ax in axes[:, -1]:
    twins[ax].set_ylabel("accuracy", color=acc_color)
handles = [Line2D([], [], color=id_color, label=f"validation {id_label} (left axis; band: ± TwoNN resampling error)"),
           *([Line2D([], [], color=plotting.COLORS["id_train"], lw=1.1, label=f"training-set {id_label} (left axis)")]
             if train_column in runs else []),
           Line2D([], [], color=acc_color, label="validation accuracy (right axis)"),
           Line2D([], [], color=plotting.COLORS["train_acc"], lw=0.8, label="train accuracy (right axis)"),
           Line2D([], [], marker="^", color=acc_color, mec="black", ls="none", ms=8,
                  label=f"grok step: validation accuracy reaches {grok_threshold:.0%}"),
           Line2D([], [], marker="v", color=id_color, mec="black", ls="none", ms=8,
                  label=f"steepest drop of the 3-point mean {id_label} after\nmemorization, on the raw curve "
                        "(lag: from grok step)")]
if len(seeds) > 1:
    handles += [Line2D([], [], color="black", ls=style_of_seed[s], label=f"seed {s}") for s in seeds]
    handles.append(Line2D([], [], color="black", lw=1.0, label=f"seed mean of the validation {id_label}, band: 95% "
                                                                "t-interval over seeds"))
if not summary["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=2)
n_grokked, n_co = int(summary["grokked"].sum()), int(summary["co_occurs"].sum())
fig.suptitle(f"Validation {id_label} and accuracy against training step\n{n_grokked}/{len(summary)} runs grok; "
             f"{id_label} drop within {co_occurrence_intervals:g} evaluations of the grok step: {n_co}/{n_grokked}")
plotting.save_figure(fig, out, "grokking")

# %%
grokked = summary[summary["grokked"]]
lags = grokked["lag_steps"].astype(float).dropna()
metrics = {
    "n_runs": int(len(summary)),
    "n_grokked": int(len(grokked)),
    "n_unfinished": int((~summary["finished"].astype(bool)).sum()),
    "n_co_occurring": int(summary["co_occurs"].sum()),
    "median_lag_steps": float(np.median(lags)) if len(lags) else None,  # grokking runs with an LLID drop
    "median_abs_lag_steps": float(np.median(np.abs(lags))) if len(lags) else None,
    "runs": {name: {k: v for k, v in row.items()
                    if k in ("grok_step", f"{id_column}_drop_step", "lag_steps", "co_occurs", "co_occurrence_chance",
                             f"{id_column}_change_after_memorization", "final_val_acc")}
             for name, row in summary.iterrows()},
}
claims = Claims("D", profile_label(runs))
# the evidence: which grokking runs' drop co-occurs, against the chance of it under uniform timing (a null)
timed = grokked[np.isfinite(grokked["co_occurrence_chance"].astype(float))]
evidence = timing_evidence(dict(timed["co_occurs"]), dict(timed["co_occurrence_chance"].astype(float)),
                           seeds=int(runs["seed"].nunique()), tolerance=co_occurrence_intervals)
change = f"{id_column}_change_after_memorization"
never = summary[~summary["grokked"].astype(bool)]
control = (f"; control: the smoothed {id_label} changes by a median {grokked[change].astype(float).median():+.0%} "
           f"after memorization in the {len(grokked)} grokking runs and {never[change].astype(float).median():+.0%} "
           f"in the {len(never)} that never grok" if len(never) and len(grokked) else "")
if train_column in runs and len(grokked):  # the training-set ID over the same window, in the grokking runs
    train_change = np.median([grokking_summary(run, grok_threshold, id_column=train_column)[
        f"{train_column}_change_after_memorization"] for name, run in runs.groupby("run") if name in grokked.index])
    control += f"; training-set {id_label} {train_change:+.0%} in the grokking runs"
metrics["negative_control"] = {"grokking_median_change": float(grokked[change].astype(float).median()),
                               "non_grokking_median_change": float(never[change].astype(float).median()),
                               "n_non_grokking": int(len(never))} if len(never) and len(grokked) else None


def timing_with(column: str):
    """The co-occurrence evidence with the ID in ``column`` (another estimator's), over the same grokking runs."""
    stats = {name: grokking_summary(run, grok_threshold, id_column=column,
                                    co_occurrence_intervals=co_occurrence_intervals)
             for name, run in runs.groupby("run") if name in set(timed.index)}
    return timing_evidence({n: s["co_occurs"] for n, s in stats.items()},
                           {n: s["co_occurrence_chance"] for n, s in stats.items()}, seeds=int(runs["seed"].nunique()),
                           tolerance=co_occurrence_intervals)


claims.add(
    f"the validation {id_label} drops when the model groks", "drop at the accuracy jump (read from the figure)",
    (f"{n_co} of {n_grokked} grokking runs: steepest drop within {co_occurrence_intervals:g} evaluations of the "
     f"{grok_threshold:.0%} crossing (median lag {metrics['median_lag_steps']:+.0f} steps over the {len(lags)} "
     f"with an {id_label} drop after memorization)" if len(lags) else
     f"{n_grokked} grokking runs, none with an {id_label} drop after memorization" if n_grokked else "no run groks")
    + control,
    rule="brown_d", evidence=evidence,
    sensitivity=sensitivity(lambda c: timing_with(c[id_column]), runs.columns, [id_column]),
    id_trust=flag(runs[runs["run"].isin(timed.index)], id_column))
metrics["claims"] = claims.rows
write_json(out / "metrics.json", metrics)
print({k: v for k, v in metrics.items() if k != "runs"})
