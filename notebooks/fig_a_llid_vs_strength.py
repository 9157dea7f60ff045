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
# # Fig. A: last-layer ID against regularization strength (Brown et al. 2022)
#
# One panel per data set and regularizer: the validation-set **LLID** (TwoNN ID of the pooled features
# that feed the classifier) at the last evaluation of each run, against the regularization strength on a
# linear axis (weight decay runs have no dropout; dropout runs have weight decay 0), with Pearson's r
# over all runs of the panel and a least-squares line with its 95% bootstrap band. Over-regularized runs
# (the rule of Fig. C) are drawn hollow.
#
# The paper reports that regularization lowers the LLID: r = -0.88 (CIFAR-100, WD), -0.87 (CIFAR-100,
# dropout), -0.77 (CIFAR-10, WD), -0.99 (CIFAR-10, dropout), ResNet-18 trained for 200 epochs.
#
# Input: the runs of `python -m actid.sweep regularization` (stage `train@regularization`).
# Output, in `out_dir`: `llid_vs_strength.png`/`.pdf` and `llid_vs_strength.json` (r, p and n per panel;
# DVC metrics). `out_dir = None` writes to the scratch folder `build/figures/regularization`.

# %% tags=["parameters"]
runs_dir = "runs/regularization"  # relative to the repository root, or absolute
out_dir = None  # None: build/figures/regularization (scratch); the DVC stage passes figures/regularization
tolerance = 0.02  # only for the markers: runs beyond the over-regularization threshold (Fig. C rule) are hollow

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.regularization import final_rows, over_regularization_threshold
from actid.analysis.stats import id_error, pearson
from actid.calibration import flag
from actid.claims import Claims, profile_label
from actid.io import write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, PID, acc
from actid.verdicts import correlation_evidence, sensitivity

VAL_ACC = acc("val")
PAPER_R = {("cifar100", "weight_decay"): -0.88, ("cifar100", "dropout"): -0.87,
           ("cifar10", "weight_decay"): -0.77, ("cifar10", "dropout"): -0.99}
PAPER_TEXT = {reg: ", ".join(f"r = {PAPER_R[(d, reg)]:.2f} ({name})"
                             for d, name in [("cifar100", "CIFAR-100"), ("cifar10", "CIFAR-10")])
              for reg in ("weight_decay", "dropout")}
plotting.use_style()

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = plotting.output_dir(out_dir, "regularization")
print(f"{len(final)} runs ({(~final['finished']).sum()} unfinished) from {resolve(runs_dir)}")
final[["dataset", "regularizer", "strength", LLID, PID, VAL_ACC, "finished"]]

# %%
panels = [(d, r) for d in final["dataset"].unique() for r in ("weight_decay", "dropout")
          if ((final["dataset"] == d) & (final["regularizer"] == r)).any()]
fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0 * len(panels), 6.0), 4.0), squeeze=False)
metrics, claims = {}, Claims("A", profile_label(final))
for ax, (dataset, reg) in zip(axes[0], panels):
    runs = final[(final["dataset"] == dataset) & (final["regularizer"] == reg)]
    r, p, n = pearson(runs["strength"], runs[LLID])
    paper = PAPER_R.get((dataset, reg))
    sign_agrees = None if paper is None or np.isnan(r) else bool(np.sign(r) == np.sign(paper))
    metrics[f"{dataset}/{reg}"] = {"r": r, "p": p, "n": n, "paper_r": paper,
                                   "n_unfinished": int((~runs["finished"]).sum()),
                                   "sign_agrees_with_paper": sign_agrees}
    claims.add(f"{plotting.LABELS[reg].removesuffix(' p')} lowers the validation LLID", PAPER_TEXT[reg],
               f"r = {r:.2f}, p = {p:.2g}, n = {n} ({dataset})", rule=f"brown_a_{reg}",
               evidence=correlation_evidence(runs["strength"], runs[LLID], units=runs["seed"],
                                                 seeds=runs["seed"].nunique()),
               sensitivity=sensitivity(
                   lambda c: correlation_evidence(runs["strength"], runs[c[LLID]], units=runs["seed"],
                                                  seeds=runs["seed"].nunique()), runs.columns,
                   [LLID]), id_trust=flag(runs, LLID))
    color, marker = plotting.COLORS[reg], plotting.MARKERS[reg]
    if n >= 3:
        sns.regplot(x=runs["strength"].to_numpy(), y=runs[LLID].to_numpy(), ax=ax, scatter=False, color=color,
                    ci=95, n_boot=1000, seed=0, line_kws={"lw": 1.2})
    over = runs["strength"] > over_regularization_threshold(runs["strength"], runs[VAL_ACC], tolerance)
    ax.scatter(runs.loc[~over, "strength"], runs.loc[~over, LLID], marker=marker, color=color, s=50,
               edgecolor="black", linewidth=0.4, zorder=3)
    ax.scatter(runs.loc[over, "strength"], runs.loc[over, LLID], marker=marker, s=50, facecolors="none",
               edgecolors=color, linewidths=1.4, zorder=3)
    ax.errorbar(runs["strength"], runs[LLID], yerr=id_error(runs, LLID), fmt="none", ecolor=color, lw=0.9, zorder=2)
    unfinished = runs[~runs["finished"]]
    ax.scatter(unfinished["strength"], unfinished[LLID], **plotting.UNFINISHED)
    ax.set_title(f"{dataset}, {plotting.LABELS[reg]}\nPearson r = {r:.2f} (p = {p:.2g}, n = {n})")
    ax.set_xlabel(plotting.LABELS[reg])
    ax.set_ylabel("validation LLID")
handles = [Line2D([], [], marker="o", color="0.4", mec="black", mew=0.4, ls="none", ms=7, label="run"),
           Line2D([], [], marker="o", mfc="none", mec="0.4", mew=1.4, ls="none", ms=7,
                  label=f"over-regularized run (accuracy > {tolerance:g} below the best; Fig. C)"),
           Line2D([], [], color="0.4", lw=1.2, label="least-squares line, 95% bootstrap band (all runs)"),
           Line2D([], [], color="0.4", lw=0.9, marker="|", ms=10, label="± TwoNN resampling error of the LLID")]
if not final["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=2)
fig.suptitle("Validation LLID at the last evaluation against regularization strength")
plotting.save_figure(fig, out, "llid_vs_strength")

# %%
write_json(out / "llid_vs_strength.json", {**metrics, "claims": claims.rows})
metrics
