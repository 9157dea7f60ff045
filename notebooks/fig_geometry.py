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
# # The geometry of memorization (Stephenson et al. 2021): permuted labels, class manifolds by layer, rewinding
#
# A fraction of the training labels is permuted; the network first learns what the classes share (test accuracy
# peaks), then memorizes the permuted examples (test accuracy falls). Stephenson et al. measure, layer by layer, the
# mean-field geometry (MFTMA) of three kinds of class manifolds: **unpermuted** examples by their label,
# **permuted** examples by the label they are trained on, and **restored**: the same permuted examples by their true
# label. The capacity of the permuted manifolds grows as they are memorized, mainly in the deeper layers; and
# rewinding the last layers to an early epoch restores test accuracy, rewinding the first ones does not.
#
# Statistics (fixed before the default profile was tuned; the rules of claims 2 and 3 were tightened after a review
# of the first run, without changing their verdicts): the **early** evaluation is the one with the best test
# accuracy, the **final** one the last. Per hidden layer, the rise of the permuted manifolds' capacity from early to
# final (the logits are reported beside them: they are trained on those labels). Rewinding (from the run's weight
# snapshots): test accuracy of the final model with its last linear layer set back to the early evaluation,
# against the same with its first linear layer set back.
#
# Input: the raw runs of `python -m actid.sweep geometry` (stage `train@geometry` of `dvc.yaml`): each run's
# `metrics.csv` and its `rewinding.csv` (the rewinding grid, computed from the weight snapshots when the run
# finished); the figures use the run with `permuted_fraction` (a parameter). Output, in `out_dir`: `geometry_by_layer`,
# `geometry_over_training`, `rewinding` (PNG + PDF), `rewinding.csv` and `metrics.json` (with the claims). With
# `out_dir = None` they go to `build/figures/geometry`.

# %% tags=["parameters"]
runs_dir = "runs/geometry"  # relative to the repository root, or absolute
out_dir = None  # None: build/figures/geometry (scratch); the DVC stage passes figures/geometry
min_drop = 0.1  # memorization: final test accuracy at least this far below its peak
min_fit = 0.95  # memorization: final accuracy on the permuted examples (their training labels) at least this
min_gain = 0.05  # a layer "rises most" / a rewinding "restores" when it beats the alternative / the final model by this
permuted_fraction = 0.5  # the runs to use (their permuted_fraction); the figures show the first seed's run

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from actid import plotting
from actid.analysis.stats import examples_behind
from actid.claims import Claims, profile_label
from actid.io import write_csv, write_json
from actid.paths import resolve
from actid.runs import Run, load_runs
from actid.schema import ID, STEP, columns_of
from actid.verdicts import mean_band, not_testable, threshold_evidence, wilson_intervals

plotting.use_style()
runs = load_runs(resolve(runs_dir))
out = plotting.output_dir(out_dir, "geometry")
chosen = runs[runs["permuted_fraction"] == permuted_fraction]
if chosen.empty:
    raise ValueError(f"no run with permuted_fraction {permuted_fraction} in {runs_dir}; "
                     f"runs have {sorted(runs['permuted_fraction'].unique())}")
name = sorted(chosen["run"].unique())[0]
run_rows = runs[runs["run"] == name].sort_values(STEP).reset_index(drop=True)
run = Run(resolve(runs_dir) / name)
config = run.config
finished = bool(run_rows["finished"].iloc[0])
KINDS = list(dict.fromkeys(c.split(".capacity/")[0] for c in run_rows if ".capacity/" in c))  # manifold kinds
KIND_COLORS = dict(zip(KINDS, plotting.PALETTE))
layers = [c.split("/", 1)[1] for c in run_rows if c.startswith("unpermuted.capacity/")]
early = int(run_rows.loc[run_rows["val_acc"].idxmax(), STEP])
final = int(run_rows[STEP].iloc[-1])
row_at = {step: run_rows[run_rows[STEP] == step].iloc[0] for step in (early, final)}
print(f"run {name}: permuted fraction {config['permuted_fraction']}, layers {layers}; early step {early} "
      f"(best test accuracy {row_at[early]['val_acc']:.3f}), final step {final}"
      + ("" if finished else " [unfinished]"))

# %% [markdown]
# ## Geometry by layer, at the early and the final evaluation

# %%
QUANTITIES = {"capacity": "capacity α_M", "radius": "radius R_M", "dimension": "dimension D_M"}
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, (q, label) in zip(axes, QUANTITIES.items()):
    for kind in KINDS:
        for step, ls in ((early, "--"), (final, "-")):
            ax.plot(layers, [row_at[step][f"{kind}.{q}/{layer}"] for layer in layers], ls, marker="o",
                    color=KIND_COLORS[kind])
    ax.set_xlabel("layer")
    ax.set_title(f"mean {label} of the class manifolds")
handles = ([Line2D([], [], color=KIND_COLORS[k], marker="o", label=k) for k in KINDS]
           + [Line2D([], [], color="black", ls="--", label=f"step {early} (best test accuracy)"),
              Line2D([], [], color="black", ls="-", label=f"step {final} (final)")])
plotting.legend_below(fig, handles, ncol=5)
plotting.save_figure(fig, out, "geometry_by_layer")

# %% [markdown]
# ## Over training: accuracies and the geometry of the last hidden layer and the logits

# %%
deep = layers[-2:]
fig, axes = plt.subplots(1, 1 + len(deep), figsize=(4.2 * (1 + len(deep)), 3.8))
steps = run_rows[STEP].clip(lower=1)
for split, label, color in (("val_acc", "test", "black"),
                            ("unpermuted_acc", "unpermuted training (true labels)", KIND_COLORS["unpermuted"]),
                            ("permuted_acc", "permuted training (training labels)", KIND_COLORS["permuted"])):
    axes[0].plot(steps, run_rows[split], marker=".", label=label, color=color)
    n = examples_behind(run_rows[split])  # accuracies are k / n: a 95% Wilson band needs n
    if n:
        bounds = wilson_intervals(run_rows[split], n)
        axes[0].fill_between(steps, bounds[:, 0], bounds[:, 1], color=color, alpha=0.15, lw=0)
axes[0].set_xscale("log")
axes[0].set_xlabel("step (0 plotted at 1)")
axes[0].set_title("accuracy (bands: 95% Wilson intervals)")
axes[0].set_ylim(-0.02, 1.5)  # head room for the legend, off the curves
axes[0].set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
axes[0].legend(loc="upper left", fontsize="small")
seeds_rows = chosen.assign(step_plotted=chosen[STEP].clip(lower=1))
n_seeds = seeds_rows["run"].nunique()
for ax, layer in zip(axes[1:], deep):
    for kind in KINDS:
        ax.plot(steps, run_rows[f"{kind}.capacity/{layer}"], marker=".", color=KIND_COLORS[kind], label=kind)
        if n_seeds >= 2:  # the mean over seeds with a 95% t-band
            curves = seeds_rows.pivot_table(index="step_plotted", columns="run",
                                            values=f"{kind}.capacity/{layer}").dropna()
            mean, lo, hi = mean_band(curves)
            ax.fill_between(curves.index, lo, hi, color=KIND_COLORS[kind], alpha=0.15, lw=0)
            ax.plot(curves.index, mean, color=KIND_COLORS[kind], ls="--", lw=0.9)
    ax.axvline(max(early, 1), color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("step (0 plotted at 1)")
    ax.set_title(f"capacity α_M, layer {layer}")
plotting.legend_below(fig, [Line2D([], [], color=KIND_COLORS[k], marker=".", label=f"{k} manifolds ({name})")
                            for k in KINDS]
                      + [Line2D([], [], color="gray", ls=":", label="best test accuracy")]
                      + ([Line2D([], [], color="black", ls="--", lw=0.9,
                                 label=f"mean of {n_seeds} seeds (band: 95% t-interval)")] if n_seeds >= 2 else []),
                      ncol=3)
plotting.save_figure(fig, out, "geometry_over_training")

# %% [markdown]
# ## Rewinding: the final model with some layers set back to an earlier evaluation

# %%
if (run.path / "rewinding.csv").exists():
    grid = pd.read_csv(run.path / "rewinding.csv")
elif finished:
    raise FileNotFoundError(f"{run.path} has no rewinding.csv: it finished before actid computed the grid after "
                            "training; rerun `python -m actid.sweep geometry` (or `dvc repro`), which adds it to "
                            "finished runs")
else:  # computed when the run finishes
    grid = pd.DataFrame(columns=["step", "first_layer", "last_layer", "val_acc"])
snapshots = sorted(grid["step"].unique().tolist())  # every weight snapshot the run kept
have_snapshots = early in snapshots and final in snapshots and snapshots[-1] == final
if snapshots:
    write_csv(grid, out / "rewinding.csv")
    grid["rewound"] = [f"{a}" if a == b else f"{a}–{b}" for a, b in zip(grid["first_layer"], grid["last_layer"])]
    order = list(dict.fromkeys(grid["rewound"]))
    table = grid.pivot(index="rewound", columns="step", values="val_acc").loc[order]
    fig, ax = plt.subplots(figsize=(1.1 + 0.55 * table.shape[1], 0.5 + 0.45 * table.shape[0]))
    image = ax.imshow(table.values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=90)
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_xlabel("rewound to the weights of step")
    ax.set_ylabel("layers rewound")
    ax.set_title(f"test accuracy of the final model (step {snapshots[-1]}) with layers rewound")
    for (i, j), value in np.ndenumerate(table.values):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="test accuracy")
    plotting.save_figure(fig, out, "rewinding")

# %% [markdown]
# ## Claims and metrics

# %%
seed_runs = sorted(chosen["run"].unique())  # one per seed: the figures show the first, the claims use every seed
hidden = [layer for layer in layers if layer in columns_of(run_rows, ID)]  # the model's hidden (ID) layers
linear = list(dict.fromkeys(grid["first_layer"]))  # the weight layers in forward order (the rewound ranges' starts)


def statistics(name: str) -> dict:
    """One seed's run: peak and final test accuracy, the permuted examples' fit, each layer's capacity rise, and the
    test accuracy with the first and the last weight layer alone rewound to the peak (None without snapshots)."""
    rows = runs[runs["run"] == name].sort_values(STEP).reset_index(drop=True)
    peak_step, last_step = int(rows.loc[rows["val_acc"].idxmax(), STEP]), int(rows[STEP].iloc[-1])
    at = {step: rows[rows[STEP] == step].iloc[0] for step in (peak_step, last_step)}
    path = resolve(runs_dir) / name / "rewinding.csv"
    rewound = pd.read_csv(path) if path.exists() else None
    alone = None
    if rewound is not None and {peak_step, last_step} <= set(rewound["step"]):
        at_peak = rewound[rewound["step"] == peak_step]
        alone = {layer: float(at_peak[(at_peak["first_layer"] == layer)
                                      & (at_peak["last_layer"] == layer)]["val_acc"].iloc[0])
                 for layer in (linear[0], linear[-1])} if linear else None
    return {"seed": int(rows["seed"].iloc[0]), "early": peak_step, "final": last_step,
            "peak": float(at[peak_step]["val_acc"]), "last": float(at[last_step]["val_acc"]),
            "fit": float(at[last_step]["permuted_acc"]),
            "rise": {layer: float(at[last_step][f"permuted.capacity/{layer}"]
                                  - at[peak_step][f"permuted.capacity/{layer}"]) for layer in layers},
            "alone": alone}


per_seed = {name: statistics(name) for name in seed_runs}
first = per_seed[seed_runs[0]]
peak, last, fit, rise, alone = first["peak"], first["last"], first["fit"], first["rise"], first["alone"] or {}


def by_seed(value, names=seed_runs) -> dict:
    return {per_seed[n]["seed"]: value(per_seed[n]) for n in names}


def seeds_text(value, fmt=".3f") -> str:
    if len(seed_runs) < 2:
        return ""
    return (f"; seeds {'/'.join(str(per_seed[n]['seed']) for n in seed_runs)}: "
            + " / ".join(format(value(per_seed[n]), fmt) for n in seed_runs))


claims = Claims("Stephenson", profile_label(chosen), sum(not runs.loc[runs["run"] == n, "finished"].iloc[0]
                                                         for n in seed_runs))
unfitted = [n for n in seed_runs if per_seed[n]["fit"] < min_fit]
claims.add("with permuted labels the network memorizes: it fits the permuted examples while test accuracy falls from "
           "its peak", "permuted examples fitted late in training, test accuracy peaks early then declines",
           f"permuted examples {fit:.3f} (training labels), test accuracy {peak:.3f} at step {early} → {last:.3f} at "
           f"step {final} (ε {config['permuted_fraction']}; {config['dataset']})"
           + seeds_text(lambda s: s["peak"] - s["last"]), rule="stephenson_memorizes",
           evidence=threshold_evidence(by_seed(lambda s: s["peak"] - s["last"]), min_drop) if not unfitted else
           not_testable("threshold", f"the permuted examples are not fitted in {len(unfitted)} run(s) "
                                     f"(accuracy < {min_fit:g})"))
claims.add(f"the permuted manifolds' capacity rises more in the last hidden layer than in the first (early → final; "
           f"by at least {min_gain})", "memorization happens mainly in the deeper layers",
           f"rise per layer {', '.join(f'{k} {v:+.3f}' for k, v in rise.items())}"
           + seeds_text(lambda s: s["rise"][hidden[-1]] - s["rise"][hidden[0]]), rule="stephenson_capacity",
           evidence=threshold_evidence(by_seed(lambda s: s["rise"][hidden[-1]] - s["rise"][hidden[0]]), min_gain))
if all(per_seed[n]["alone"] for n in seed_runs):
    claims.add(f"rewinding the last layer to the peak-test evaluation restores test accuracy (by at least {min_gain}); "
               "rewinding the first layer does not", "generalization restored by rewinding the last layers only",
               f"final {last:.3f}; {linear[-1]} rewound to step {early}: {alone[linear[-1]]:.3f}; {linear[0]} rewound: "
               f"{alone[linear[0]]:.3f}" + seeds_text(lambda s: s["alone"][linear[-1]] - s["alone"][linear[0]]),
               rule="stephenson_rewinding",
               evidence=threshold_evidence(by_seed(lambda s: s["alone"][linear[-1]] - s["alone"][linear[0]]),
                                           min_gain))
else:
    claims.add("rewinding the last layer to the peak-test evaluation restores test accuracy; rewinding the first layer "
               "does not", "generalization restored by rewinding the last layers only",
               "no weight snapshots at the peak and final steps of every run", rule="stephenson_rewinding",
               evidence=not_testable("threshold", "no weight snapshots"))
claims.print()
metrics = {"run": name, "runs": per_seed, "finished": finished, "early_step": early, "final_step": final,
           "val_acc": {"peak": peak, "final": last}, "permuted_acc_final": fit, "permuted_capacity_rise": rise,
           "rewinding_at_peak": alone,
           "claims": claims.rows}
write_json(out / "metrics.json", metrics)
