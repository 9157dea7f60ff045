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
# # Fig. B: validation accuracy against PID / LLID (Brown et al. 2022)
#
# One panel per data set: validation accuracy at the last evaluation against the ratio of the peak ID
# over layers (PID) to the last-layer ID (LLID), for the runs that are **not over-regularized**, with
# Pearson's r and a least-squares line with its 95% bootstrap band. Weight-decay and dropout runs are
# pooled; colour shades give the strength within each regularizer.
#
# Which runs count as not over-regularized: by default, those at or below the data-driven
# over-regularization threshold of their panel (`actid.analysis.over_regularization_threshold`, the
# rule of Fig. C: the strongest setting whose accuracy is within `tolerance` of the panel's best).
# The paper instead used a fixed cut for both data sets, WD <= 1e-3 and p <= 0.3: set `max_weight_decay`
# and `max_dropout` to use a fixed cut.
#
# The paper reports that a higher PID/LLID goes with higher accuracy: r = 0.92 (CIFAR-100), 0.96 (CIFAR-10).
#
# Output, in `out_dir`: `accuracy_vs_pid_over_llid.png`/`.pdf` and `accuracy_vs_pid_over_llid.json`
# (DVC metrics). `out_dir = None` writes to the scratch folder `build/figures/regularization`.

# %% tags=["parameters"]
runs_dir = "runs/regularization"
out_dir = None  # None: build/figures/regularization (scratch); the DVC stage passes figures/regularization
tolerance = 0.02  # accuracy below the panel's best that still counts as not over-regularized
max_weight_decay = None  # a number: fixed cut instead of the data-driven threshold (paper: 1e-3)
max_dropout = None  # (paper: 0.3)

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.regularization import final_rows, over_regularization_threshold
from actid.analysis.stats import examples_behind, id_error, pearson
from actid.calibration import flag, worst
from actid.claims import Claims, profile_label
from actid.io import write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, PID, acc
from actid.verdicts import correlation_evidence, sensitivity, wilson_intervals

VAL_ACC = acc("val")
PAPER_R = {"cifar100": 0.92, "cifar10": 0.96}
fixed_cut = {"weight_decay": max_weight_decay, "dropout": max_dropout}
plotting.use_style()

final = final_rows(load_runs(resolve(runs_dir)))
final = final[final["regularizer"] != "both"]
out = plotting.output_dir(out_dir, "regularization")
cuts = {}
for (dataset, reg), runs in final.groupby(["dataset", "regularizer"]):
    cut = fixed_cut[reg]
    cuts[(dataset, reg)] = float(cut) if cut is not None else over_regularization_threshold(
        runs["strength"], runs[VAL_ACC], tolerance)
final["kept"] = [s <= cuts[(d, r)] for d, r, s in zip(final["dataset"], final["regularizer"], final["strength"])]
print("cut per panel (runs at or below are kept):", {f"{d}/{r}": c for (d, r), c in cuts.items()})
final[["dataset", "regularizer", "strength", PID, LLID, "pid_over_llid", VAL_ACC, "kept", "finished"]]

# %%
datasets = list(final["dataset"].unique())
kept_all = final[final["kept"]]
norms = {}  # one colour scale per regularizer, shared by all panels
for reg, runs in kept_all.groupby("regularizer"):
    positive = runs["strength"][runs["strength"] > 0]
    norms[reg] = (LogNorm(positive.min(), positive.max()) if reg == "weight_decay" and len(positive)
                  else Normalize(0, max(runs["strength"].max(), 1e-12)))
fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.5 * len(datasets), 6.5), 5.2), squeeze=False)
metrics, claims = {}, Claims("B", profile_label(final))
for ax, dataset in zip(axes[0], datasets):
    kept = kept_all[kept_all["dataset"] == dataset]
    r, p, n = pearson(kept["pid_over_llid"], kept[VAL_ACC])
    paper = PAPER_R.get(dataset)
    sign_agrees = None if paper is None or np.isnan(r) else bool(np.sign(r) == np.sign(paper))
    metrics[dataset] = {"r": r, "p": p, "n": n, "paper_r": paper, "n_unfinished": int((~kept["finished"]).sum()),
                        "sign_agrees_with_paper": sign_agrees,
                        "cut": {reg: cuts.get((dataset, reg)) for reg in ("weight_decay", "dropout")}}
    claims.add("a higher PID/LLID goes with higher validation accuracy (runs not over-regularized)",
               "r = 0.92 (CIFAR-100), 0.96 (CIFAR-10)", f"r = {r:.2f}, p = {p:.2g}, n = {n} ({dataset})",
               rule="brown_b",
               evidence=correlation_evidence(kept["pid_over_llid"], kept[VAL_ACC], units=kept["seed"],
                                             seeds=kept["seed"].nunique()),
               sensitivity=sensitivity(lambda c: correlation_evidence(kept[c[PID]] / kept[c[LLID]], kept[VAL_ACC],
                                                                  units=kept["seed"], seeds=kept["seed"].nunique()),
                                       kept.columns, [PID, LLID]), id_trust=worst([flag(kept, PID), flag(kept, LLID)]))
    if n >= 3:
        sns.regplot(x=kept["pid_over_llid"].to_numpy(), y=kept[VAL_ACC].to_numpy(), ax=ax, scatter=False,
                    color="0.35", ci=95, n_boot=1000, seed=0, line_kws={"lw": 1.2})
    for reg, runs in kept.groupby("regularizer"):
        ratio_err = runs["pid_over_llid"] * np.hypot(id_error(runs, PID) / runs[PID], id_error(runs, LLID) / runs[LLID])
        n_val = examples_behind(final[VAL_ACC])  # accuracies are k / n: Wilson intervals need n
        yerr = None
        if n_val:
            bounds = wilson_intervals(runs[VAL_ACC], n_val)
            yerr = np.abs(bounds.T - runs[VAL_ACC].to_numpy())
        ax.errorbar(runs["pid_over_llid"], runs[VAL_ACC], xerr=ratio_err, yerr=yerr, fmt="none", ecolor="0.5", lw=0.8,
                    zorder=2)
        ax.scatter(runs["pid_over_llid"], runs[VAL_ACC], c=runs["strength"], cmap=plotting.strength_cmap(reg),
                   norm=norms[reg], marker=plotting.MARKERS[reg], s=60, edgecolor="black", linewidth=0.5, zorder=3)
    unfinished = kept[~kept["finished"]]
    ax.scatter(unfinished["pid_over_llid"], unfinished[VAL_ACC], **plotting.UNFINISHED)
    ax.set_title(f"{dataset}: Pearson r = {r:.2f} (p = {p:.2g}, n = {n})")
    ax.set_xlabel("PID / LLID (validation)")
    ax.set_ylabel("validation accuracy")
for reg in norms:  # horizontal colour bars under the panels, one per regularizer: labels cannot collide
    mappable = plt.cm.ScalarMappable(norm=norms[reg], cmap=plotting.strength_cmap(reg))
    fig.colorbar(mappable, ax=axes.ravel().tolist(), orientation="horizontal", location="bottom", shrink=0.6,
                 aspect=40, pad=0.02, label=f"{plotting.LABELS[reg]} ({'o' if reg == 'weight_decay' else 'x'} markers)")
handles = [Line2D([], [], color="0.35", lw=1.2, label="least-squares line, 95% bootstrap band"),
           Line2D([], [], color="0.5", lw=0.8, marker="_", ms=10,
                  label="± TwoNN resampling error of PID / LLID (propagated)"),
           Line2D([], [], color="0.5", lw=0.8, marker="|", ms=10,
                  label=f"95% Wilson interval of the accuracy (n = {examples_behind(final[VAL_ACC])} validation "
                        "examples, read off the accuracies)")]
if not kept_all["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=1)
fig.suptitle("Validation accuracy against PID / LLID at the last evaluation\n"
             "(runs at or below each panel's over-regularization cut)")
plotting.save_figure(fig, out, "accuracy_vs_pid_over_llid")

# %%
write_json(out / "accuracy_vs_pid_over_llid.json", {**metrics, "claims": claims.rows})
metrics
