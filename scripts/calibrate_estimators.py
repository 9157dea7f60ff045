"""Where each ID estimator can be trusted: TwoNN, MLE (k = 20) and GRIDE on data of known dimension.

For every true dimension d in ``DIMS``, sample size n in ``SIZES``, kind of data in ``KINDS`` and seed in ``SEEDS``,
the three estimators are fitted on one shared exact neighbour search (``actid.fit_estimators``). The kinds:

* ``gaussian``: N(0, I_d), a flat d-dimensional cloud;
* ``sphere``: uniform on the unit sphere S^d in R^(d+1), a curved d-dimensional manifold without boundary;
* ``cube``: uniform in [0, 1]^d, flat with a boundary (boundary points have fewer neighbours on one side).

An isometric embedding into a larger space does not change exact neighbour distances, so the data stay in their
own d (or d + 1) coordinates. Outputs (``--out``, default docs/calibration/):

* ``calibration.csv``: every fit (kind, d, n, seed, estimator, estimate, estimate / d);
* ``calibration.png``: estimate / d against d, one panel per estimator and kind, one line per n (mean over seeds);
* ``actid/calibration_ranges.json`` (``--ranges``; shipped with the package): per estimator and n,
  up to which d every kind and seed is within ``TOLERANCE`` of the truth,
  below which estimate that holds, and above which estimate the data may lie beyond the grid (:func:`ranges`);
  :func:`actid.calibration.trust` reads an estimate against it.

    python scripts/calibrate_estimators.py [--out docs/calibration] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

import actid
from actid.calibration import RANGES

DIMS = [2, 5, 10, 20, 50, 100, 200]
SIZES = [500, 1000, 2000, 5000, 10000]
KINDS = ["gaussian", "sphere", "cube"]
SEEDS = 3
TOLERANCE = 0.1
"""An estimate within 10% of the true dimension counts as right."""
ESTIMATORS = {"twonn": lambda: actid.TwoNN(), "mle": lambda: actid.MLE(k=20), "gride": lambda: actid.GRIDE()}
ROOT = Path(__file__).resolve().parents[1]


def sample(kind: str, d: int, n: int, seed: int) -> torch.Tensor:
    """n points of a d-dimensional set of the given kind (float64)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + d * 1009 + n)
    if kind == "gaussian":
        return torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "sphere":
        x = torch.randn(n, d + 1, generator=g, dtype=torch.float64)
        return x / x.norm(dim=1, keepdim=True)
    if kind == "cube":
        return torch.rand(n, d, generator=g, dtype=torch.float64)
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")


def fit_cell(kind: str, d: int, n: int, seed: int) -> list[dict]:
    """One search, three estimators: a row per estimator."""
    fitted = actid.fit_estimators(sample(kind, d, n, seed), [make() for make in ESTIMATORS.values()])
    return [{"kind": kind, "d": d, "n": n, "seed": seed, "estimator": name, "estimate": est.dimension_,
             "ratio": est.dimension_ / d} for name, est in zip(ESTIMATORS, fitted)]


def ranges(table: pd.DataFrame, tolerance: float = TOLERANCE) -> dict:
    """Per estimator and n (``{estimator: {n: {...}}}``), from the calibration table:

    * ``accurate_up_to``: the largest d of the grid up to which every kind and seed is within ``tolerance``;
    * ``accurate_below``: estimates below it are accurate (the smallest estimate seen at the first d that is not;
      at most ``accurate_up_to``);
    * ``calibrated_below``: the smallest estimate seen at the largest d of the grid. An estimate above it may come
      from a dimension beyond the grid, where nothing was calibrated: it is outside the calibrated range."""
    out = {}
    top = table["d"].max()
    for (name, n), rows in table.groupby(["estimator", "n"]):
        accurate, accurate_below = 0, math.inf
        for d in sorted(rows["d"].unique()):
            cell = rows[rows["d"] == d]
            if not ((cell["ratio"] - 1).abs() <= tolerance).all():
                accurate_below = float(cell["estimate"].min())
                break
            accurate = int(d)
        out.setdefault(name, {})[str(int(n))] = {
            "accurate_up_to": accurate, "accurate_below": min(accurate_below, float(accurate)),
            "calibrated_below": float(rows.loc[rows["d"] == top, "estimate"].min())}
    return out


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    from actid import plotting
    plotting.use_style()
    fig, axes = plt.subplots(len(ESTIMATORS), len(KINDS), figsize=(12, 9), sharex=True, sharey=True)
    colors = plt.cm.viridis([i / (len(SIZES) - 1) for i in range(len(SIZES))])
    for i, name in enumerate(ESTIMATORS):
        for j, kind in enumerate(KINDS):
            ax = axes[i, j]
            ax.axhspan(1 - TOLERANCE, 1 + TOLERANCE, color="0.9", zorder=0)
            ax.axhline(1, color="0.5", lw=0.8)
            for n, color in zip(SIZES, colors):
                rows = table[(table["estimator"] == name) & (table["kind"] == kind) & (table["n"] == n)]
                mean = rows.groupby("d")["ratio"].mean()
                ax.plot(mean.index, mean.values, marker="o", ms=3, color=color, label=f"n = {n:,}")
            ax.set_xscale("log")
            ax.set_title(f"{ {'twonn': 'TwoNN', 'mle': 'MLE (k = 20)', 'gride': 'GRIDE'}[name]}, {kind}", fontsize=10)
            if i == len(ESTIMATORS) - 1:
                ax.set_xlabel("true dimension d")
            if j == 0:
                ax.set_ylabel("estimate / d")
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="points")
    fig.suptitle(f"ID estimate / true dimension (mean of {table['seed'].nunique()} seeds; band: ±{TOLERANCE:.0%})")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "calibration")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--ranges", type=Path, default=RANGES, help="where the ranges go (read by actid.calibration)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    cells = [(kind, d, n, seed) for n in SIZES for d in DIMS for kind in KINDS for seed in range(args.seeds)]
    from tqdm import tqdm
    for cell in tqdm(cells, desc="calibration"):
        rows.extend(fit_cell(*cell))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "calibration.csv", index=False)
    calibrated = ranges(table)
    record = {"tolerance": TOLERANCE, "seeds": args.seeds, "dims": DIMS, "sizes": SIZES, "kinds": KINDS,
              "estimators": {"twonn": "TwoNN()", "mle": "MLE(k=20)", "gride": "GRIDE()"}, "ranges": calibrated}
    args.ranges.write_text(json.dumps(record, indent=1) + "\n")
    plot(table, args.out / "calibration.png")
    print(f"{len(cells)} searches in {time.perf_counter() - started:.0f} s; {args.out}")
    for name, by_n in calibrated.items():
        print(name, {n: (r["accurate_up_to"], round(r["accurate_below"], 1), round(r["calibrated_below"], 1))
                     for n, r in by_n.items()})


if __name__ == "__main__":
    main()
