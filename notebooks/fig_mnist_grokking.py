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
# # Grokking on MNIST: progress measures and the ID on the same curves (Golechha 2024; Brown et al. 2022)
#
# Omnigrok's MLP with every parameter scaled by α = 8 fits 1,000 training digits at once and generalizes much
# later. Golechha proposes three progress measures that track the delayed generalization: **activation
# sparsity**, **absolute weight entropy** and **local circuit complexity**, and shows they keep tracking it when a
# reward for large weights (loss − δ Σ w²) makes the **weight norm grow** while the model groks; with **dropout**
# the delay disappears. Brown et al. report that the last-layer ID (**LLID**) drops when a transformer groks; here
# the same lens is put on real data. One column per variant, every measure against log steps.
#
# Statistics (fixed before the default profile was tuned; `actid.analysis`): the **saturation step** (first
# evaluation with train accuracy ≥ `saturated`), the **grok step** (first evaluation whose validation accuracy
# reaches the midpoint between its value at saturation and its final value), the **delay** between them, and for
# each measure the step of its **steepest change per log-step** from saturation on, with its **lag** from the grok
# step in evaluations (negative: the measure moves first). A measure "moves with grokking" when
# |lag| ≤ `co_occurrence_evaluations` and it changes in the paper's direction; a steepest change at the edge of the
# window gives no lag. A run whose validation accuracy gains less than `min_gain` after saturation has no delayed
# generalization (rules added after the first default runs: `docs/mnist_grokking.md`).
#
# Negative control not run here: at weight decay 0 and ~10⁶–10⁷ steps, test accuracy of this set-up can later
# *collapse* (Prakash & Martin 2025) while sparsity, weight entropy and circuit complexity do not flag it.
#
# Input: the raw runs of `python -m actid.sweep mnist_grokking` (stage `train@mnist_grokking`). Output, in `out_dir`:
# `measures.png`/`.pdf`, `summary.csv` and `metrics.json` (with the claims). With `out_dir = None` (JupyterLab)
# they go to the scratch folder `build/figures/mnist_grokking`.

# %% tags=["parameters"]
runs_dir = "runs/mnist_grokking"  # relative to the repository root, or absolute
out_dir = None  # None: build/figures/mnist_grokking (scratch); the DVC stage passes figures/mnist_grokking
saturated = 0.99  # train accuracy that counts as fitted
min_gain = 0.1  # a run groks if its final validation accuracy exceeds that at saturation by this much
delay_threshold = 1000  # steps: a delay at least this long is delayed generalization
co_occurrence_evaluations = 2  # a measure moves with grokking if its steepest change is this close (evaluations)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.mnist_grokking import measure_lags, midpoint_grokking
from actid.analysis.stats import examples_behind, id_error
from actid.calibration import flag
from actid.claims import Claims, profile_label
from actid.io import write_csv, write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import LLID, STEP, acc
from actid.verdicts import (mean_band, not_testable, sensitivity, threshold_evidence, timing_evidence,
                            wilson_intervals)

plotting.use_style()
runs = load_runs(resolve(runs_dir))
out = plotting.output_dir(out_dir, "mnist_grokking")
several_batches = runs["batch_size"].nunique() > 1


def variant(row) -> str:
    name = (f"dropout {row['dropout']:g}" if row["dropout"] > 0 else
            f"increasing norm (δ {row['norm_reward']:g})" if row["norm_reward"] > 0 else "baseline")
    return f"{name}, batch {row['batch_size']:g}" if several_batches else name


config = runs.groupby("run")[["norm_reward", "dropout", "batch_size", "weight_decay", "dataset", "seed",
                              "finished"]].first()
config["variant"] = config.apply(variant, axis=1)
order = sorted(config.index, key=lambda r: (config.loc[r, "batch_size"], config.loc[r, "dropout"] > 0,
                                           config.loc[r, "norm_reward"] > 0))
print(f"{len(config)} runs, {len(runs)} evaluation rows from {resolve(runs_dir)}")

# %%
MEASURES = {  # label -> column; lags are reported for each
    "weight norm": "weight_norm/total",
    "sparsity (relu1)": "sparsity/relu1", "sparsity (relu2)": "sparsity/relu2",
    "relative sparsity (relu1)": "relative_sparsity/relu1", "relative sparsity (relu2)": "relative_sparsity/relu2",
    "weight entropy": "weight_entropy/total",
    "circuit complexity (fc1)": "circuit_complexity/fc1", "circuit complexity (fc2)": "circuit_complexity/fc2",
    "circuit complexity (fc3)": "circuit_complexity/fc3",
    "LLID": LLID, "ID (relu1)": "id/relu1",
}
rows, lags, groks = {}, {}, {}
for name in order:
    run = runs[runs["run"] == name].sort_values(STEP)
    grok = midpoint_grokking(run, saturated, min_gain)
    lags[name] = measure_lags(run, list(MEASURES.values()), grok, co_occurrence_evaluations)
    groks[name] = grok
    norms = run["weight_norm/total"].to_numpy()
    gap = float((run[acc("train")] - run[acc("val")]).max())  # the overfitting phase, if any
    rows[name] = {**grok, "initial_weight_norm": norms[0], "final_weight_norm": norms[-1], "max_accuracy_gap": gap,
                  **{f"lag_evaluations {label}": lags[name][column]["lag_evaluations"]
                     for label, column in MEASURES.items()}}
summary = config.loc[order].join(pd.DataFrame(rows).T)
write_csv(summary, out / "summary.csv")
summary.T

# %%
panels = [
    ("accuracy", [(acc("train"), "train accuracy (band: 95% Wilson interval)", plotting.COLORS["train_acc"], "-"),
                  (acc("val"), "validation accuracy (band: 95% Wilson interval)", plotting.COLORS["val_acc"], "-")]),
    ("weight norm\n(L2, all parameters)", [("weight_norm/total", None, "black", "-")]),
    ("activation sparsity\n(training inputs)", [
        ("sparsity/relu1", "sparsity relu1, a < 0.1", plotting.PALETTE[0], "-"),
        ("sparsity/relu2", "sparsity relu2, a < 0.1", plotting.PALETTE[1], "-"),
        ("relative_sparsity/relu1", "sparsity relu1, relative", plotting.PALETTE[0], "--"),
        ("relative_sparsity/relu2", "sparsity relu2, relative", plotting.PALETTE[1], "--")]),
    ("weight entropy\n−Σ|w| log|w|", [("weight_entropy/total", None, "black", "-")]),
    ("local circuit complexity\n(Σ KL, training inputs)", [
        (f"circuit_complexity/fc{i}", f"circuit complexity fc{i}", plotting.PALETTE[i - 1], "-") for i in (1, 2, 3)]),
    ("ID (TwoNN, validation)", [(LLID, "LLID (relu2; bands: ± TwoNN resampling error)", plotting.COLORS["id"], "-"),
                                ("id/relu1", "ID relu1", plotting.COLORS["id"], ":")]),
]
fig, axes = plt.subplots(len(panels), len(order), figsize=(4.2 * len(order), 2.3 * len(panels) + 1.2), squeeze=False,
                         sharex=True)
for j, name in enumerate(order):
    run = runs[runs["run"] == name].sort_values(STEP)
    stats = summary.loc[name]
    for i, (label, lines) in enumerate(panels):
        ax = axes[i][j]
        for column, _, color, ls in lines:
            ok = run[column].notna()
            ax.plot(run.loc[ok, STEP], run.loc[ok, column], color=color, ls=ls, lw=1.4)
            if column == LLID or column.startswith("id/"):  # ± TwoNN's resampling error
                err = id_error(run[ok], column)
                ax.fill_between(run.loc[ok, STEP], run.loc[ok, column] - err, run.loc[ok, column] + err, color=color,
                                alpha=0.2, lw=0)
            n = examples_behind(run.loc[ok, column]) if column in (acc("train"), acc("val")) else None
            if n:  # accuracies are k / n: a 95% Wilson band
                bounds = wilson_intervals(run.loc[ok, column], n)
                ax.fill_between(run.loc[ok, STEP], bounds[:, 0], bounds[:, 1], color=color, alpha=0.2, lw=0)
        grok_step = stats["grok_step"] if stats["grokked"] else np.nan
        for step, style in ((stats["saturation_step"], ":"), (grok_step, "--")):
            if np.isfinite(step):
                ax.axvline(step, color="black", ls=style, lw=0.9)
        ax.set_xscale("symlog", linthresh=10)
        if j == 0:
            ax.set_ylabel(label)
    delay = (f"delay {stats['delay_steps']:.0f} steps" if stats["grokked"] else
             f"validation {stats['final_val_acc'] - stats['val_acc_at_saturation']:+.2f} after saturation: no grokking"
             if np.isfinite(stats["saturation_step"]) else "train never saturates")
    seed = f", seed {int(config.loc[name, 'seed'])}" if config["seed"].nunique() > 1 else ""
    axes[0][j].set_title(f"{stats['variant']}{seed}\n{delay}")
    axes[0][j].set_ylim(-0.02, 1.02)
    axes[-1][j].set_xlabel("training step")
    if not stats["finished"]:
        axes[0][j].scatter(run[STEP].iloc[-1:], run[acc("val")].iloc[-1:], **plotting.UNFINISHED)
handles = [Line2D([], [], color=color, ls=ls, label=text)
           for _, lines in panels for _, text, color, ls in lines if text]
handles += [Line2D([], [], color="black", ls=":", lw=0.9, label=f"train accuracy reaches {saturated:g}"),
            Line2D([], [], color="black", ls="--", lw=0.9,
                   label="grok step: validation accuracy at the midpoint\n(runs that grok)")]
if not summary["finished"].all():
    handles.append(plotting.unfinished_handle())
plotting.legend_below(fig, handles, ncol=4)
fig.suptitle(f"Accuracy, weight norm and progress measures against training step ({runs['dataset'].iloc[0]}, "
             f"weight decay {runs['weight_decay'].iloc[0]:g})")
plotting.save_figure(fig, out, "measures")

# %% [markdown]
# Where a variant has several seeds: each curve's mean over the seeds with a 95% t-band (`measures_seed_mean.png`).

# %%
variants = config.loc[order].groupby("variant", sort=False).groups
if max(len(names) for names in variants.values()) >= 2:
    fig, axes = plt.subplots(len(panels), len(variants), figsize=(4.2 * len(variants), 2.3 * len(panels) + 1.2),
                             squeeze=False, sharex=True)
    for j, (name, members) in enumerate(variants.items()):
        group = runs[runs["run"].isin(members)]
        for i, (label, lines) in enumerate(panels):
            ax = axes[i][j]
            for column, _, color, ls in lines:
                curves = group.pivot_table(index=STEP, columns="run", values=column).dropna()
                if curves.empty:
                    continue
                mean, lo, hi = mean_band(curves)  # no band with one seed
                ax.plot(curves.index, mean, color=color, ls=ls, lw=1.4)
                ax.fill_between(curves.index, lo, hi, color=color, alpha=0.2, lw=0)
            ax.set_xscale("symlog", linthresh=10)
            if j == 0:
                ax.set_ylabel(label)
        axes[0][j].set_title(f"{name}\nmean of {len(members)} seed(s)")
        axes[0][j].set_ylim(-0.02, 1.02)
        axes[-1][j].set_xlabel("training step")
    plotting.legend_below(fig, [Line2D([], [], color=color, ls=ls, label=text)
                                for _, lines in panels for _, text, color, ls in lines if text], ncol=4)
    fig.suptitle("Seed means of the measures against training step (bands: 95% t-interval over seeds)")
    plotting.save_figure(fig, out, "measures_seed_mean")

# %% [markdown]
# ## The papers' claims, tested on these runs

# %%
dataset = runs["dataset"].iloc[0]
n_unfinished = int((~summary["finished"].astype(bool)).sum())
claims = Claims(None, profile_label(runs), n_unfinished)


def runs_of(kind: str) -> list[str]:
    """The runs of a variant kind (baseline, increasing, dropout) at its largest batch (Golechha's full batch), one
    per seed."""
    test = {"baseline": lambda c: c["dropout"] == 0 and c["norm_reward"] == 0,
            "increasing": lambda c: c["norm_reward"] > 0, "dropout": lambda c: c["dropout"] > 0}[kind]
    names = [n for n in order if test(config.loc[n])]
    if not names:
        return []
    batch = max(config.loc[n, "batch_size"] for n in names)
    return sorted((n for n in names if config.loc[n, "batch_size"] == batch), key=lambda n: config.loc[n, "seed"])


def describe(stats) -> str:
    return (f"delay {stats['delay_steps']:.0f} steps (train ≥ {saturated:g} at step {stats['saturation_step']:.0f}, "
            f"grok step {stats['grok_step']:.0f}; validation {stats['val_acc_at_saturation']:.2f} → "
            f"{stats['final_val_acc']:.2f}; {dataset})")


def seeds_text(names, value, fmt: str = ".0f") -> str:
    """One value per seed, e.g. "seeds 0/1/2: 3560 / 3380 / 3710" (empty for one seed)."""
    if len(names) < 2:
        return ""
    values = " / ".join(format(value(n), fmt) if np.isfinite(value(n)) else "–" for n in names)
    return f"; seeds {'/'.join(str(int(config.loc[n, 'seed'])) for n in names)}: {values}"


def norm_without(run, tensor: str) -> np.ndarray:
    """The global weight norm without one tensor, from the per-tensor norms."""
    return np.sqrt(np.maximum(run["weight_norm/total"] ** 2 - run[f"weight_norm/{tensor}"] ** 2, 0)).to_numpy()


def run_rows(name: str) -> pd.DataFrame:
    return runs[runs["run"] == name].sort_values(STEP)


def plateau_step(name: str) -> float:
    """The step where relu1's sparsity completes 95% of its rise."""
    sparsity, steps = run_rows(name)["sparsity/relu1"].to_numpy(), run_rows(name)[STEP].to_numpy()
    return float(steps[np.argmax(sparsity >= sparsity.min() + 0.95 * np.ptp(sparsity))])


# label -> (what the paper reports, the sign of change it implies)
PAPER = {"weight norm": ("falls as test accuracy rises", -1),
         "weight entropy": ("drops sharply with generalization", -1),
         "circuit complexity (fc1)": ("decreases with generalization", -1),
         "LLID": ("drops when the model groks (Brown et al., transformer on modular division)", -1)}


def lag_evidence(names: list[str], lags_of: dict, sign: int):
    """Whether each run's measure co-occurs with its grok step, against the chance of it (timing evidence over the
    runs where the lag exists; ``lags_of``: run -> measure_lags entry)."""
    usable = {n: lag for n, lag in lags_of.items() if n in names and np.isfinite(lag["lag_evaluations"])}
    if not usable:
        edge = any(lag["at_edge"] for n, lag in lags_of.items() if n in names)
        return not_testable("timing", "the steepest change sits at the window's edge" if edge else "no grok step")
    hits = {n: bool(abs(lag["lag_evaluations"]) <= co_occurrence_evaluations
                    and np.sign(lag["rate_per_log_step"]) == sign) for n, lag in usable.items()}
    return timing_evidence(hits, {n: lag["chance"] for n, lag in usable.items()},
                           seeds=len({config.loc[n, "seed"] for n in usable}), tolerance=co_occurrence_evaluations)


def seed_evidence(names, value, threshold, **kw):
    """Threshold evidence over the runs' seeds (``value``: run -> the statistic)."""
    return threshold_evidence({int(config.loc[n, "seed"]): value(n) for n in names}, threshold, **kw)


RULE_KEYS = {"weight norm": "weight_norm", "weight entropy": "weight_entropy",
             "circuit complexity (fc1)": "circuit_complexity", "LLID": "llid"}
for kind, figure in (("baseline", "Golechha 1"), ("increasing", "Golechha 2")):
    names = runs_of(kind)
    if not names:
        continue
    name = names[0]  # the text describes the first seed's run; the evidence covers every seed
    stats, run = summary.loc[name], run_rows(name)
    n = "1" if kind == "baseline" else "2"
    if kind == "baseline":
        grokked = [m for m in names if summary.loc[m, "grokked"]]
        claims.add("generalization comes long after the training set is fitted (baseline)",
                   "test accuracy rises thousands of steps after train accuracy saturates",
                   describe(stats) + seeds_text(names, lambda m: summary.loc[m, "delay_steps"]),
                   rule="golechha_1_delay", figure=figure,
                   evidence=seed_evidence(grokked, lambda m: summary.loc[m, "delay_steps"], delay_threshold)
                   if len(grokked) == len(names) else
                   not_testable("threshold", f"a run does not grok (validation gains < {min_gain:g})"))
    else:
        rest = norm_without(run, "fc1.weight")
        fc1 = run["weight_norm/fc1.weight"].to_numpy()

        def rest_ratio(m):
            other = norm_without(run_rows(m), "fc1.weight")
            return other[-1] / other[0]

        claims.add("the model groks while its weight norm grows (loss − δ Σ w²)",
                   "grokking with the weight norm rising (δ = 2e-10)",
                   f"weight norm {stats['initial_weight_norm']:.1f} → {stats['final_weight_norm']:.1f}, all of it in "
                   f"fc1.weight ({fc1[0]:.1f} → {fc1[-1]:.1f}); the other tensors {rest[0]:.1f} → {rest[-1]:.1f}; "
                   + describe(stats) + seeds_text(names, rest_ratio, ".2f"), rule="golechha_2_norm_grows",
                   figure=figure, evidence=seed_evidence(
                       names, rest_ratio, 1, method="final / initial norm of the tensors other than fc1.weight"))
    for label, (text, sign) in PAPER.items():
        if kind == "increasing" and label == "weight norm":
            continue
        lag = lags[name][MEASURES[label]]
        evidence = lag_evidence(names, {m: lags[m][MEASURES[label]] for m in names}, sign)
        if lag["at_edge"]:
            edge = "first" if lag["change_step"] <= stats["grok_step"] else "last"
            ours = (f"steepest change per log-step in the {edge} "
                    f"interval after saturation (step {lag['change_step']:.0f}): the fastest change may lie "
                    f"outside the run, no lag; {dataset}")
        elif np.isfinite(lag["lag_evaluations"]):
            direction = "falls" if lag["rate_per_log_step"] < 0 else "rises"
            ours = (f"{direction} fastest per log-step at step {lag['change_step']:.0f}: lag {lag['lag_steps']:+.0f} "
                    f"steps, {lag['lag_evaluations']:+.0f} evaluations from the grok step; {dataset}")
        else:
            ours = "no grok step, or no change after saturation"
        ours += seeds_text(names, lambda m: lags[m][MEASURES[label]]["lag_evaluations"], "+.0f")
        others = (sensitivity(lambda c: lag_evidence(
            names, {m: measure_lags(run_rows(m), [c[LLID]], groks[m], co_occurrence_evaluations)[c[LLID]]
                    for m in names}, sign), run.columns, [LLID]) if label == "LLID" else None)
        claims.add(f"{label} moves with grokking: its steepest change, in the paper's direction, within "
                   f"{co_occurrence_evaluations:g} evaluations of the grok step ({stats['variant']})", text, ours,
                   rule=f"golechha_{n}_{RULE_KEYS[label]}", evidence=evidence, sensitivity=others,
                   id_trust=flag(runs[runs["run"].isin(names)], LLID) if label == "LLID" else None,
                   figure="Brown D" if label == "LLID" else figure)
    plateau = plateau_step(name)
    grokked = [m for m in names if np.isfinite(summary.loc[m, "grok_step"])]
    claims.add(f"sparsity (relu1) plateaus before the grok step ({stats['variant']})",
               "plateaus just before grokking",
               f"reaches 95% of its rise at step {plateau:.0f} (train ≥ {saturated:g} at "
               f"{stats['saturation_step']:.0f}, grok step {stats['grok_step']:.0f}); {dataset}"
               + seeds_text(grokked, lambda m: plateau_step(m) - summary.loc[m, "grok_step"], "+.0f"),
               rule=f"golechha_{n}_sparsity_plateau", figure=figure,
               evidence=seed_evidence(grokked, lambda m: plateau_step(m) - summary.loc[m, "grok_step"], 0)
               if len(grokked) == len(names) else not_testable("threshold", "a run has no grok step"))
names = runs_of("dropout")
if names:
    name = names[0]
    stats = summary.loc[name]
    baseline = runs_of("baseline")
    gaps = f"; largest train − validation accuracy gap {stats['max_accuracy_gap']:.2f}" + (
        f" (baseline {summary.loc[baseline[0], 'max_accuracy_gap']:.2f})" if baseline else "")
    measurable = all(summary.loc[m, "steps_after_saturation"] >= delay_threshold for m in names)
    gain = stats["final_val_acc"] - stats["val_acc_at_saturation"]

    def gain_of(m):
        return summary.loc[m, "final_val_acc"] - summary.loc[m, "val_acc_at_saturation"]

    if not measurable:
        ours, evidence = (f"train reaches {saturated:g} at step {stats['saturation_step']:.0f}, "
                          f"{stats['steps_after_saturation']:.0f} steps before the end: a delay of "
                          f"{delay_threshold:g} steps could not show ({dataset})"), not_testable(
            "threshold", "too few steps after saturation")
    else:
        ours = (f"validation accuracy gains {gain:+.2f} after train ≥ {saturated:g} at step "
                f"{stats['saturation_step']:.0f} ({stats['val_acc_at_saturation']:.2f} → {stats['final_val_acc']:.2f}"
                f"; no delayed generalization below {min_gain:g}); {dataset}" + seeds_text(names, gain_of, "+.2f"))
        evidence = seed_evidence(names, gain_of, min_gain)
    claims.add("with dropout the delay vanishes", "no delayed generalization, no overfitting phase "
               "(dropout 0.3)", ours + gaps, rule="golechha_3_dropout", evidence=evidence, figure="Golechha 3")

metrics = {"dataset": dataset, "n_runs": int(len(summary)), "n_unfinished": n_unfinished,
           "delay_threshold": delay_threshold, "co_occurrence_evaluations": co_occurrence_evaluations,
           "runs": {name: {"variant": summary.loc[name, "variant"],
                           **{k: summary.loc[name, k]
                              for k in ("saturation_step", "grok_step", "delay_steps", "grokked",
                                        "val_acc_at_saturation", "final_val_acc", "initial_weight_norm",
                                        "final_weight_norm", "max_accuracy_gap", "steps_after_saturation")},
                           "lags": lags[name]} for name in order},
           "claims": claims.rows}
write_json(out / "metrics.json", metrics)
pd.DataFrame(claims.rows)[["figure", "claim", "ours", "rule"]]
