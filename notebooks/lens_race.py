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
# # The lens race: which measure moves first, relative to memorization and generalization
#
# Every lens recorded on a study's runs is one series per run. For each, the change-point estimator
# (`actid.analysis.changepoint.ChangePoint`: the largest single change in level, with a permutation null and a
# bootstrap interval) says **when** it moves; the study's events (`actid.analysis.events`: memorization, the
# generalization or peak-test step) say when the accuracies move. A lens's **lag** is its change point minus the event,
# in evaluations (negative: the lens moves first) and in steps. Over the seeds of the study's representative condition
# the race reports the mean lag with a 95% t-interval, and Fisher's combination of the seeds' permutation p-values
# (does the lens move at all?). The regularization sweeps race on the strength axis instead: each lens's value at
# the last evaluation, over the weight decays, against the over-regularization threshold.
#
# The rules of the claims below were registered before this notebook first ran (`actid/claim_rules.yaml`,
# `race_*`; docs/lenses.md).
#
# Input: `runs_dir/<study>/` for each study (the `extended` runs, or the default's `runs/`). Output in `out_dir`:
# `lags.png`/`.pdf` (the race, one panel per study), `curves.png`/`.pdf` (every lens of one run per study, events
# marked), `race.csv` (study × lens × event), `change_points.csv` (per run and lens) and `metrics.json`.

# %% tags=["parameters"]
runs_dir = "results/extended"  # holds one folder per study; the default profile's are in runs/
out_dir = None  # None: build/figures/lens_race (scratch); the DVC stages pass figures/lens_race(_default)
n_boot = 999  # bootstrap resamples of each change point
n_perm = 999  # permutations of each change point's null
# each study's representative condition (the runs whose seeds the race averages) and the layer its layer-wise
# lenses are read at (the LLID layer)
conditions = {
    "grokking": {"where": {"weight_decay": 1.0}, "layer": "blocks.1.mlp", "event": "generalization"},
    "mnist_grokking": {"where": {"norm_reward": 0.0, "dropout": 0.0}, "layer": "relu2", "event": "generalization"},
    "memorization": {"where": {"activation": "sin", "init_std": 0.1}, "layer": "hidden", "event": "memorization"},
    "geometry": {"where": {}, "layer": "relu2", "event": "peak_test"},
    "regularization": {"where": {"dropout": 0.0}, "layer": "avg_pool", "event": "over_regularization"},
}

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter
import pandas as pd
from scipy import stats

from actid import plotting
from actid.analysis.changepoint import ChangePoint
from actid.analysis.events import run_events, strength_event
from actid.claims import Claims, profile_label
from actid.io import write_csv, write_json
from actid.paths import resolve
from actid.runs import load_runs
from actid.schema import STEP, acc
from actid.verdicts import mean_interval, threshold_evidence

plotting.use_style()
out = plotting.output_dir(out_dir, "lens_race")
LENSES = {  # lens -> the column templates that carry it ({layer}: the condition's layer); the first present is used
    "LLID": ["llid"],
    "PID": ["pid"],
    "participation ratio": ["participation_ratio/{layer}"],
    "effective rank": ["effective_rank/{layer}"],
    "CKA drift": ["cka_drift/{layer}"],
    "NC1": ["nc1/{layer}"],
    "repr. alignment": ["representation_alignment/{layer}"],
    "grad. alignment": ["gradient_alignment/logits"],
    "sparsity": ["relative_sparsity/{layer}"],
    "weight norm": ["weight_norm/total"],
    "weight entropy": ["weight_entropy/total"],
    "circuit complexity": ["circuit_complexity/"],  # the last layer measured (a prefix)
    "MFTMA capacity": ["capacity/{layer}", "permuted.capacity/{layer}"],
}


def lens_column(columns, lens: str, layer: str) -> str | None:
    for template in LENSES[lens]:
        name = template.format(layer=layer)
        if name.endswith("/"):
            found = [c for c in columns if c.startswith(name)]
            if found:
                return found[-1]
        elif name in columns:
            return name
    return None


# %%
studies = [s for s in conditions if (resolve(runs_dir) / s).is_dir()]
runs = {s: load_runs(resolve(runs_dir) / s) for s in studies}
profiles = profile_label(pd.concat([r[["profile"]] for r in runs.values()])) if runs else "?"
for s in studies:
    print(f"{s}: {runs[s]['run'].nunique()} runs")


def representative(study: str) -> pd.DataFrame:
    """The rows of the study's representative condition."""
    frame = runs[study]
    for key, value in conditions[study]["where"].items():
        same = (np.isclose(frame[key].astype(float), value, rtol=1e-9, atol=0) if isinstance(value, float)
                else frame[key] == value)  # exact: 2e-9 is not 0
        frame = frame[same]
    return frame


# %% [markdown]
# ## Change points per run and lens

# %%
def index_of(axis: np.ndarray, at: float) -> float:
    """The index of evaluation ``at`` in the run (a lens measured every k-th evaluation is fitted on its own points,
    so its change point's index among them is not the run's)."""
    return float(np.nonzero(axis == at)[0][0]) if np.isfinite(at) else float("nan")


rows = []
for study in studies:
    spec, frame = conditions[study], representative(study)
    if study == "regularization":  # the strength axis: the last evaluation of each run, one series per seed
        last = frame.sort_values(STEP).groupby("run").tail(1)
        last = last[last["weight_decay"] > 0]  # the weight-decay sweep (its strength axis is logarithmic)
        for seed, sweep in last.groupby("seed"):
            sweep = sweep.sort_values("weight_decay")
            event = strength_event(sweep["weight_decay"], sweep[acc("val")])
            for lens in LENSES:
                column = lens_column(sweep.columns, lens, spec["layer"])
                if column is None or sweep[column].isna().all():
                    continue
                axis = np.log10(sweep["weight_decay"].to_numpy(float))
                fit = ChangePoint(n_boot=n_boot, n_perm=n_perm, seed=int(seed)).fit(axis, sweep[column].to_numpy(float))
                rows.append({"study": study, "seed": seed, "run": f"seed={seed}", "lens": lens, "column": column,
                             "event": "over_regularization", "event_index": event["index"],
                             "event_step": np.log10(event["strength"]), "change_index": index_of(axis, fit.step_),
                             "change_step": fit.step_, "p": fit.p_value_, "strength": fit.strength_,
                             "lo_step": fit.interval_[0], "hi_step": fit.interval_[1], "n": fit.n_})
        continue
    for name, run in frame.groupby("run"):
        run = run.sort_values(STEP)
        events = run_events(study, run)
        # the window: from memorization on for the grokking studies (their rule), else every evaluation after step 0
        start = events["memorization"]["step"] if study in ("grokking", "mnist_grokking") else 1
        window = run[run[STEP] >= start] if np.isfinite(start) else run.iloc[0:0]
        for lens in LENSES:
            column = lens_column(run.columns, lens, spec["layer"])
            if column is None or window[column].isna().all():
                continue
            fit = ChangePoint(n_boot=n_boot, n_perm=n_perm, seed=int(run["seed"].iloc[0])).fit(
                window[STEP].to_numpy(float), window[column].to_numpy(float))
            for event, at in events.items():
                rows.append({"study": study, "seed": run["seed"].iloc[0], "run": name, "lens": lens,
                             "column": column, "event": event, "event_index": at["index"], "event_step": at["step"],
                             "change_index": index_of(run[STEP].to_numpy(float), fit.step_),
                             "change_step": fit.step_, "p": fit.p_value_,
                             "strength": fit.strength_, "lo_step": fit.interval_[0], "hi_step": fit.interval_[1],
                             "n": fit.n_})
points = pd.DataFrame(rows, columns=["study", "seed", "run", "lens", "column", "event", "event_index", "event_step",
                                     "change_index", "change_step", "p", "strength", "lo_step", "hi_step", "n"])
points["lag_evaluations"] = points["change_index"] - points["event_index"]
points["lag_steps"] = points["change_step"] - points["event_step"]
write_csv(points, out / "change_points.csv")
points.head()

# %% [markdown]
# ## The race: lags over seeds

# %%
def fisher_p(ps) -> float:
    ps = np.asarray([p for p in ps if np.isfinite(p)], float)
    return float(stats.chi2.sf(-2 * np.log(ps).sum(), 2 * len(ps))) if len(ps) else float("nan")


race = []
for (study, lens, event), group in points.groupby(["study", "lens", "event"], sort=False):
    lags = group["lag_evaluations"].dropna()
    lo, hi = mean_interval(lags) if len(lags) >= 2 else (np.nan, np.nan)
    race.append({"study": study, "lens": lens, "event": event, "column": group["column"].iloc[0],
                 "seeds": len(lags), "lag_evaluations": lags.mean() if len(lags) else np.nan,
                 "ci_low": lo, "ci_high": hi, "lag_steps_median": group["lag_steps"].median(),
                 "p_moves": fisher_p(group["p"]), "main_event": event == conditions[study]["event"]})
race = pd.DataFrame(race, columns=["study", "lens", "event", "column", "seeds", "lag_evaluations", "ci_low",
                                   "ci_high", "lag_steps_median", "p_moves", "main_event"])
race["main_event"] = race["main_event"].astype(bool)
race["rank"] = (race[race["main_event"]].groupby("study")["lag_evaluations"].rank(method="min")
                .reindex(race.index))
write_csv(race, out / "race.csv")
race[race["main_event"]].sort_values(["study", "rank"])

# %%
EVENT_LABEL = {"generalization": "generalization", "memorization": "memorization (train acc >= 0.99)",
               "peak_test": "peak test accuracy", "over_regularization": "over-regularization threshold"}
main = race[race["main_event"]]
fig, axes = plt.subplots(1, len(studies), figsize=(3.4 * len(studies), 5.2), squeeze=False)
for ax, study in zip(axes[0], studies):
    panel = main[main["study"] == study].sort_values("lag_evaluations", ascending=False)
    missing = panel[~np.isfinite(panel["lag_evaluations"].astype(float))]["lens"].tolist()
    panel = panel[np.isfinite(panel["lag_evaluations"].astype(float))]
    y = np.arange(len(panel))
    for i, (_, r) in enumerate(panel.iterrows()):
        seeds = points[(points["study"] == study) & (points["lens"] == r["lens"]) & (points["event"] == r["event"])]
        ax.plot(seeds["lag_evaluations"], np.full(len(seeds), i), "o", color="0.6", ms=3, zorder=2)
        moves = r["p_moves"] < 0.05
        xerr = ([[r["lag_evaluations"] - r["ci_low"]], [r["ci_high"] - r["lag_evaluations"]]]
                if np.isfinite(r["ci_low"]) else None)
        ax.errorbar(r["lag_evaluations"], i, xerr=xerr, fmt="o", color="C0", mfc="C0" if moves else "white",
                    ms=6, capsize=2, zorder=3)
    ax.axvline(0, color="C3", ls="--", lw=1)
    ax.set_yticks(y, panel["lens"])
    unit = "strength steps" if study == "regularization" else "evaluations"
    ax.set_xlabel(f"lag from {EVENT_LABEL[conditions[study]['event']]}\n({unit}; negative: the lens moves first)",
                  fontsize=8)
    ax.set_title(study.replace("_", " "), fontsize=10)
    if missing:  # recorded, but no change point (too few evaluations in the window) or no event on any seed
        ax.text(0.02, -0.3, "no lag: " + ", ".join(missing), transform=ax.transAxes, fontsize=7, va="top", wrap=True)
fig.suptitle("Lens change point minus event: seeds (grey), mean and 95% t-interval (blue; hollow: no lens-wide move, "
             "Fisher p >= 0.05)", fontsize=9)
fig.tight_layout()
plotting.save_figure(fig, out, "lags")
plt.show()

# %% [markdown]
# ## Every lens of one run per study, on a shared log-step axis

# %%
lens_names = list(LENSES)
time_studies = [s for s in studies if s != "regularization"]
fig, axes = plt.subplots(len(studies), len(lens_names), figsize=(1.55 * len(lens_names), 1.55 * len(studies) + 0.8),
                         squeeze=False)
for row, study in enumerate(studies):
    frame = representative(study)
    seed0 = sorted(frame["seed"].unique())[0]
    frame = frame[frame["seed"] == seed0]
    if study == "regularization":
        frame = frame.sort_values(STEP).groupby("run").tail(1).sort_values("weight_decay")
        frame = frame[frame["weight_decay"] > 0]
        x = frame["weight_decay"].to_numpy(float)
        marks = {"over_regularization": strength_event(x, frame[acc("val")])["strength"]}
    else:
        frame = frame.sort_values(STEP)
        frame = frame[frame[STEP] > 0]
        x = frame[STEP].to_numpy(float)
        whole = runs[study][runs[study]["run"] == frame["run"].iloc[0]]
        marks = {k: v["step"] for k, v in run_events(study, whole).items()}
    for col, lens in enumerate(lens_names):
        ax = axes[row][col]
        column = lens_column(frame.columns, lens, conditions[study]["layer"])
        ax.set_xscale("log")
        ax.tick_params(labelsize=5.5, length=2)
        if row == 0:
            ax.set_title(lens, fontsize=7.5)
        if col == 0:
            ax.set_ylabel(study.replace("_", " ") + ("\n(weight decay)" if study == "regularization" else ""),
                          fontsize=7.5)
        if column is None or frame[column].isna().all():
            ax.text(0.5, 0.5, "not\nrecorded", ha="center", va="center", fontsize=6, color="0.5",
                    transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        y = frame[column].to_numpy(float)
        seen = np.isfinite(y)  # a lens measured every k-th evaluation has NaN between
        sparse = study == "regularization" or seen.mean() < 0.5
        ax.plot(x[seen], y[seen], color="C0", lw=1, marker="." if sparse else None, ms=4)
        ax.xaxis.set_major_locator(LogLocator(numticks=3))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for event, at in marks.items():
            if np.isfinite(at):
                ax.axvline(at, color="C3" if event == conditions[study]["event"] else "0.5",
                           ls="--" if event == conditions[study]["event"] else ":", lw=0.9)
        cp = points[(points["study"] == study) & (points["lens"] == lens) & (points["seed"] == seed0)]
        if len(cp) and np.isfinite(cp["change_step"].iloc[0]):
            at = 10 ** cp["change_step"].iloc[0] if study == "regularization" else cp["change_step"].iloc[0]
            ax.axvline(at, color="C2", lw=1.2, alpha=0.8)
fig.suptitle(f"Each lens of one run per study (seed {seed0} of its condition); dashed red: the race's event, dotted "
             "grey: the other event, green: the lens's change point", fontsize=9)
fig.tight_layout(rect=(0, 0, 1, 0.97))
plotting.save_figure(fig, out, "curves")
plt.show()

# %% [markdown]
# ## Claims (rules registered before the first race run)

# %%
claims = Claims("race", profiles)
for study, rule, text in [
        ("grokking", "race_grokking_llid_first",
         "the LLID moves before validation accuracy in grokking (modular division)"),
        ("mnist_grokking", "race_mnist_grokking_llid_first",
         "the LLID moves before validation accuracy in grokking (MNIST)")]:
    if study not in studies:
        continue
    sel = points[(points["study"] == study) & (points["lens"] == "LLID") & (points["event"] == "generalization")]
    sel = sel[np.isfinite(sel["event_step"])]  # the seeds that grok
    lags = dict(zip(sel["seed"].astype(str), sel["lag_evaluations"]))
    evidence = threshold_evidence(lags, 0.0)
    mean = np.nanmean(list(lags.values())) if lags else np.nan
    claims.add(text, "not claimed: Brown et al. 2022 report the drop at grokking, not before it (actid's question)",
               f"mean lag {mean:+.1f} evaluations over {len(lags)} seed(s) that grok" if lags else "no run groks",
               rule=rule, evidence=evidence)
claims.print()

# %%
metrics = {"profile": profiles, "studies": studies, "lenses": sorted(points["lens"].unique()),
           "first_mover": {s: (main[main["study"] == s].sort_values("lag_evaluations")["lens"].iloc[0]
                               if (main["study"] == s).any() else None) for s in studies},
           "race": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                    for r in main[["study", "lens", "seeds", "lag_evaluations", "ci_low", "ci_high",
                                   "lag_steps_median", "p_moves"]].to_dict("records")],
           "claims": claims.rows}
write_json(out / "metrics.json", metrics)
metrics["first_mover"]
