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
# # Extreme memorization via the scale of initialization (Mehta et al. 2021), with the ID lens
#
# A two-layer network z = W2 φ(W1 x) starts from W1 ~ N(0, σ²). With φ = sin, a large σ makes the hidden
# features of different inputs nearly orthogonal: the network fits its training set perfectly and its
# validation accuracy falls to chance. The paper tracks this with the in-class **alignment** Ω of per-example
# gradients and of representations (mean pairwise inner product over the squared mean norm, per class), which
# falls with σ and correlates with the best test accuracy across σ (its Fig. 1b). ReLU networks are reported to
# lose less. Beside the paper's lens this notebook puts the main paper's: the TwoNN **ID of the hidden layer**.
#
# Statistics (fixed before the default profile was tuned): per run, the final and best validation accuracy, the
# in-class gradient alignment of W1 **averaged over all evaluations** (W2 and logits beside it; evaluations are
# log-spaced, so this mean weighs the first epochs most; the step-weighted mean is in `summary.csv`), the final
# representation alignment and the final hidden-layer ID (`actid.analysis.memorization_summary`). Rank
# correlations with σ are over the runs (seeds at one σ are separate runs), with the per-σ means beside them.
# With unfinished runs, the claims get no verdict.
#
# Input: the raw runs of `python -m actid.sweep memorization` (stage `train@memorization` of `dvc.yaml`).
# Output, in `out_dir`: `accuracy_vs_scale`, `alignment_over_training`, `accuracy_vs_alignment` and
# `id_and_alignment_vs_scale` (PNG + PDF), `summary.csv` (per-run statistics) and `metrics.json` (correlations
# and the claims). With `out_dir = None` (JupyterLab) they go to the scratch folder `build/figures/memorization`.

# %% tags=["parameters"]
runs_dir = "runs/memorization"  # relative to the repository root, or absolute
out_dir = None  # None: build/figures/memorization (scratch); the DVC stage passes figures/memorization
chance_margin = 0.1  # largest sigma memorizes: final train accuracy >= 0.99, validation accuracy within this of chance

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.memorization import GRADIENT_ALIGNMENT, memorization_summary
from actid.analysis.stats import examples_behind, pearson, spearman
from actid.calibration import calibrated_limit
from actid.claims import Claims, profile_label
from actid.io import write_csv, write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import STEP
from actid.verdicts import correlation_evidence, mean_interval, not_testable, threshold_evidence, wilson_intervals

plotting.use_style()
ACTIVATIONS = ["sin", "relu", "sigmoid"]
ACT_COLORS = {a: plotting.COLORS[a] for a in ACTIVATIONS}
SIGMA = "initialization scale σ (std of W1)"

runs = load_runs(resolve(runs_dir))
out = plotting.output_dir(out_dir, "memorization")
for key in ("dataset", "loss", "epochs", "train_images", "hidden_units", "lr", "batch_size"):
    if runs[key].nunique(dropna=False) > 1:
        raise ValueError(f"{runs_dir} mixes runs of several {key}s {sorted(runs[key].unique())}; "
                         "point runs_dir at one sweep")
dataset, loss_name = runs["dataset"].iloc[0], runs["loss"].iloc[0]
chance = 1 / (100 if dataset == "cifar100" else 10)
print(f"{runs['run'].nunique()} runs, {len(runs)} evaluation rows from {resolve(runs_dir)} ({dataset}, {loss_name})")

# %%
summary = pd.DataFrame({name: memorization_summary(run) for name, run in runs.groupby("run")}).T
config = runs.groupby("run")[["activation", "init_std", "seed", "finished"]].first()
summary = config.join(summary).sort_values(["activation", "init_std", "seed"])
activations = [a for a in ACTIVATIONS if a in set(summary["activation"])]
seeds = sorted(summary["seed"].unique())
n_seeds = len(seeds)
style_of_seed = {s: plotting.SEED_LINESTYLES[i % len(plotting.SEED_LINESTYLES)] for i, s in enumerate(seeds)}
write_csv(summary, out / "summary.csv")
summary


# %%
def seed_mean(part):
    """The per-σ mean over seeds of every numeric statistic."""
    return part.drop(columns=["activation", "finished"]).astype(float).groupby("init_std").mean()


def seed_band(ax, part, column, color):
    """The 95% t-interval of the per-σ mean over seeds, where a σ has at least two seeds."""
    groups = part.astype({column: float}).groupby("init_std")[column]
    bounds = {sigma: mean_interval(values.dropna()) for sigma, values in groups if values.notna().sum() >= 2}
    if bounds:
        sigmas = sorted(bounds)
        ax.fill_between(sigmas, [bounds[x][0] for x in sigmas], [bounds[x][1] for x in sigmas], color=color,
                        alpha=0.2, lw=0)


def mark_unfinished(ax, frame, x, y):
    """The dashed square on runs that have not finished (their values are not final)."""
    rest = frame[~frame["finished"].astype(bool)]
    if len(rest):
        ax.scatter(rest[x], rest[y], **plotting.UNFINISHED)


fig, axes = plt.subplots(1, len(activations), figsize=(4.6 * len(activations), 4.0), squeeze=False, sharey=True)
for ax, act in zip(axes[0], activations):
    part = summary[summary["activation"] == act]
    mean = seed_mean(part)
    ax.plot(mean.index, mean["final_train_acc"], "--", color=plotting.COLORS["train_acc"])
    ax.plot(mean.index, mean["final_val_acc"], "-", color=ACT_COLORS[act])
    seed_band(ax, part, "final_val_acc", ACT_COLORS[act])
    ax.scatter(part["init_std"], part["final_train_acc"], color=plotting.COLORS["train_acc"], s=20)
    ax.scatter(part["init_std"], part["final_val_acc"], color=ACT_COLORS[act], s=20)
    n_val = examples_behind(summary["final_val_acc"])  # accuracies are k / n: Wilson intervals need n
    if n_val:
        accs = part["final_val_acc"].astype(float).to_numpy()
        bounds = wilson_intervals(accs, n_val)
        ax.errorbar(part["init_std"], accs, yerr=np.abs(bounds.T - accs), fmt="none", ecolor=ACT_COLORS[act],
                    lw=0.8, capsize=2)
    mark_unfinished(ax, part, "init_std", "final_val_acc")
    ax.axhline(chance, color="black", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel=SIGMA, ylim=(-0.02, 1.02), title=f"φ = {act}")
axes[0][0].set_ylabel("final accuracy")
handles = [Line2D([], [], color=plotting.COLORS["train_acc"], marker="o", ls="--", label="training accuracy"),
           *[Line2D([], [], color=ACT_COLORS[a], marker="o", label=f"validation accuracy ({a})") for a in activations],
           Line2D([], [], color="black", marker="o", ls="-",
                  label="points: runs (bars: 95% Wilson interval); lines: mean over seeds; band: its 95% interval"),
           Line2D([], [], color="black", lw=0.8, ls=":", label=f"chance ({chance:.0%})")]
if not summary["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=3)
fig.suptitle(f"Final training and validation accuracy against σ ({dataset}, {loss_name})")
plotting.save_figure(fig, out, "accuracy_vs_scale")

# %% [markdown]
# Alignment over training, one line per σ (colour: σ on a log scale). The x axis is symmetric-log so that
# step 0 (the initialization) is shown.

# %%
panels = [("gradient_alignment/fc1.weight", "gradient alignment of W1\n(training probe)"),
          ("representation_alignment/hidden", "representation alignment\n(training probe)")]
norm = LogNorm(summary["init_std"].min(), summary["init_std"].max())
cmap = plt.get_cmap("viridis")
fig, axes = plt.subplots(len(panels), len(activations), figsize=(4.6 * len(activations), 3.3 * len(panels) + 0.8),
                         squeeze=False, sharex=True)
for j, act in enumerate(activations):
    for i, (column, label) in enumerate(panels):
        ax = axes[i][j]
        for name, stats in summary[summary["activation"] == act].iterrows():
            run = runs[runs["run"] == name].sort_values(STEP)
            ax.plot(run[STEP], run[column], color=cmap(norm(stats["init_std"])), lw=1.4,
                    ls=style_of_seed[stats["seed"]])
            if not stats["finished"]:
                ax.scatter(run[STEP].iloc[-1:], run[column].iloc[-1:], **plotting.UNFINISHED)
        ax.set_xscale("symlog", linthresh=1)
        ax.axhline(0, color="black", lw=0.6)
        if j == 0:
            ax.set_ylabel(label)
        if i == 0:
            ax.set_title(f"φ = {act}")
    axes[-1][j].set_xlabel("training step")
fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=SIGMA, shrink=0.8)
if n_seeds > 1:
    plotting.legend_below(fig, [Line2D([], [], color="black", ls=style_of_seed[s], label=f"seed {s}") for s in seeds])
fig.suptitle(f"In-class alignment Ω over training, one line per run ({dataset})")
plotting.save_figure(fig, out, "alignment_over_training")

# %% [markdown]
# Best validation accuracy against gradient alignment across runs (paper Fig. 1b). The statistic is the W1
# alignment averaged over all evaluations; W2 and the logits are shown beside it. Pearson r over the sin runs
# (the paper's setting) and over all runs.

# %%
correlations = {}
fig, axes = plt.subplots(1, len(GRADIENT_ALIGNMENT), figsize=(4.4 * len(GRADIENT_ALIGNMENT), 4.0), squeeze=False,
                         sharey=True)
for ax, key in zip(axes[0], GRADIENT_ALIGNMENT):
    x = f"mean_gradient_alignment_{key}"
    for act in activations:
        part = summary[summary["activation"] == act]
        ax.scatter(part[x], part["best_val_acc"], color=ACT_COLORS[act], s=45, edgecolor="black", lw=0.4)
        mark_unfinished(ax, part, x, "best_val_acc")
    sin = summary[summary["activation"] == "sin"]
    r_sin, p_sin, n_sin = pearson(sin[x], sin["best_val_acc"])
    r_all, p_all, n_all = pearson(summary[x], summary["best_val_acc"])
    correlations[key] = {"sin": {"r": r_sin, "p": p_sin, "n": n_sin}, "all": {"r": r_all, "p": p_all, "n": n_all}}
    ax.set(xlabel=f"mean gradient alignment of {key}", title=f"sin: r = {r_sin:.2f} (n = {n_sin})\n"
                                                             f"all: r = {r_all:.2f} (n = {n_all})")
axes[0][0].set_ylabel("best validation accuracy")
plotting.legend_below(fig, [Line2D([], [], color=ACT_COLORS[a], marker="o", mec="black", mew=0.4, ls="none",
                                   label=f"φ = {a}, one point per run (σ, seed)") for a in activations])
fig.suptitle(f"Best validation accuracy against in-class gradient alignment (averaged over evaluations), {dataset}")
plotting.save_figure(fig, out, "accuracy_vs_alignment")

# %% [markdown]
# Two lenses on one sweep: the final hidden-layer ID (TwoNN, validation split) and the alignments, against σ.

# %%
lenses = [("final_llid", "final hidden-layer ID (TwoNN, validation)"),
          ("mean_gradient_alignment_W1", "mean gradient alignment of W1"),
          ("final_representation_alignment_val", "final representation alignment\n(validation)")]
fig, axes = plt.subplots(1, len(lenses), figsize=(4.4 * len(lenses), 4.0), squeeze=False)
trends = {}
points_columns = [c for c in runs.columns if c.startswith("id_points/")]  # the points behind each hidden-layer ID
points = (int(runs[points_columns[0]].dropna().min())
          if points_columns and runs[points_columns[0]].notna().any() else None)
for ax, (column, label) in zip(axes[0], lenses):
    for act in activations:
        part = summary[summary["activation"] == act]
        ax.plot(seed_mean(part).index, seed_mean(part)[column], "-", color=ACT_COLORS[act])
        seed_band(ax, part, column, ACT_COLORS[act])
        ax.scatter(part["init_std"], part[column], color=ACT_COLORS[act], s=20)
        if column == "final_llid":  # ± TwoNN's resampling error
            ax.errorbar(part["init_std"].astype(float), part[column].astype(float),
                        yerr=part["final_llid_err"].astype(float), fmt="none", ecolor=ACT_COLORS[act], lw=0.8)
        mark_unfinished(ax, part, "init_std", column)
        rho, p, n = spearman(part["init_std"], part[column])
        trends[f"{act}/{column}"] = {"spearman_rho": rho, "p": p, "n": n}
    ax.set(xscale="log", xlabel=SIGMA, ylabel=label)
    if column == "final_llid" and points:  # beyond this line an ID is outside TwoNN's calibration
        ax.axhline(calibrated_limit(points), color="0.4", ls="--", lw=0.9)
        ax.text(ax.get_xlim()[0], calibrated_limit(points), f" calibrated range of TwoNN ({points} points) ends",
                va="bottom", fontsize="small", color="0.3")
    ax.set_title("Spearman ρ with σ: "
                 + ", ".join(f"{a} {trends[f'{a}/{column}']['spearman_rho']:+.2f}" for a in activations))
plotting.legend_below(fig, [Line2D([], [], color=ACT_COLORS[a], marker="o", label=f"φ = {a}") for a in activations]
                      + [Line2D([], [], color="black", marker="o", label="points: runs; lines: mean over seeds, band: "
                                "its 95% interval; ID bars: ± TwoNN resampling error")])
fig.suptitle(f"Hidden-layer ID and alignment against σ ({dataset}; Spearman ρ over all runs)")
plotting.save_figure(fig, out, "id_and_alignment_vs_scale")

# %% [markdown]
# ## The paper's claims, tested on these runs

# %%
n_unfinished = int((~summary["finished"].astype(bool)).sum())
claims = Claims(None, profile_label(runs), n_unfinished)


def rank_trend(part, column):
    """Spearman ρ of a statistic with σ over the runs, and over the per-σ means of the seeds beside it."""
    rho, p, n = spearman(part["init_std"], part[column])
    means = seed_mean(part)[column]
    rho_m, p_m, n_m = spearman(means.index, means)
    text = f"Spearman ρ = {rho:.2f}, p = {p:.2g}, n = {n} runs"
    if n_m < n:
        text += f" (per-σ means: ρ = {rho_m:.2f}, p = {p_m:.2g}, n = {n_m})"
    return rho, p, f"{text}; {dataset}"


def rank_evidence(part, column):
    """Spearman ρ of a statistic with σ over the runs, with each seed left out (the verdict's evidence)."""
    return correlation_evidence(part["init_std"], part[column], spearman=True, units=part["seed"],
                                seeds=part["seed"].nunique())


figure = "Mehta 2a"
sin = summary[summary["activation"] == "sin"].sort_values("init_std")
if len(sin):
    rho, p, text = rank_trend(sin, "final_val_acc")
    claims.add("with sin, validation accuracy falls as σ grows", "falls to chance (≈10%) as σ grows", text,
               rule="mehta_2a_accuracy", evidence=rank_evidence(sin, "final_val_acc"), figure=figure)
    top = sin[sin["init_std"] == sin["init_std"].max()]
    fitted = bool((top["final_train_acc"] >= 0.99).all())
    memorizes = (threshold_evidence(dict(zip(top["seed"], (top["final_val_acc"] - chance).abs())), chance_margin)
                 if fitted else not_testable("threshold", "a run at the largest σ did not fit its training set"))
    claims.add("with sin, the largest σ memorizes", "training accuracy 100%, test accuracy at chance",
               f"σ = {top['init_std'].iloc[0]:g}, {len(top)} run(s): train "
               + " / ".join(f"{v:.3f}" for v in top["final_train_acc"]) + ", validation "
               + " / ".join(f"{v:.3f}" for v in top["final_val_acc"])
               + f" (chance {chance:.2f}, margin {chance_margin:g}; {dataset})", rule="mehta_2a_memorizes",
               evidence=memorizes, figure=figure)
    for column, text, fig_no, rule in (
            ("mean_gradient_alignment_W1", "gradient alignment (W1, mean over evaluations)", "2c",
             "mehta_2c_gradient_alignment"),
            ("final_representation_alignment_train", "representation alignment (final)", "2d",
             "mehta_2d_representation_alignment")):
        rho, p, ours = rank_trend(sin, column)
        claims.add(f"with sin, {text} falls as σ grows", "falls as σ grows", ours, rule=rule,
                   evidence=rank_evidence(sin, column), figure=f"Mehta {fig_no}")
    r = correlations["W1"]["sin"]
    claims.add("best test accuracy rises with gradient alignment across σ (sin)",
               "positive correlation on CIFAR-10, CIFAR-100, SVHN",
               f"Pearson r = {r['r']:.2f}, p = {r['p']:.2g}, n = {r['n']} runs (W1 alignment, mean over evaluations; "
               f"{dataset})", rule="mehta_1b", figure="Mehta 1b",
               evidence=correlation_evidence(sin["mean_gradient_alignment_W1"], sin["best_val_acc"],
                                             units=sin["seed"], seeds=sin["seed"].nunique()))


def accuracy_drop(part):
    """The best minus the worst per-σ mean final validation accuracy."""
    mean = seed_mean(part)["final_val_acc"]
    return float(mean.max() - mean.min())


relu = summary[summary["activation"] == "relu"]
if len(sin) and len(relu):
    drops = {"sin": accuracy_drop(sin), "relu": accuracy_drop(relu)}
    claims.add("with ReLU, validation accuracy drops less with σ than with sin",
               "ReLU: drops and saturates, a limited drop",
               f"best minus worst per-σ mean validation accuracy: ReLU {drops['relu']:.3f}, sin {drops['sin']:.3f} "
               f"({dataset})", rule="mehta_4", figure="Mehta 4",
               evidence=threshold_evidence({s: accuracy_drop(sin[sin["seed"] == s])
                                            - accuracy_drop(relu[relu["seed"] == s])
                                            for s in sorted(set(sin["seed"]) & set(relu["seed"]))}, 0))
else:
    drops = {}

metrics = {"dataset": dataset, "loss": loss_name, "chance": chance, "n_runs": int(len(summary)),
           "n_unfinished": n_unfinished,
           "accuracy_vs_gradient_alignment": correlations, "trends_with_sigma": trends,
           "validation_accuracy_drop": drops,
           "runs": {name: dict(row) for name, row in summary.iterrows()},
           "claims": claims.rows}
write_json(out / "metrics.json", metrics)
pd.DataFrame(claims.rows)[["figure", "claim", "ours", "rule"]]
