"""Run directories and sweeps: what a run writes, how a grid expands, and how to load results.

A run is a directory::

    config.json   the resolved config: every key the run used, plus experiment/profile/versions
    metrics.csv   one row per evaluation point (see actid.train)
    done.json     present once the run finished: final row and wall time

A sweep is a directory of runs, one per grid point, named ``key=value,key=value``.
"""

from __future__ import annotations

import itertools
import json
import platform
import shutil
from pathlib import Path

import pandas as pd
import torch

import actid


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """All combinations of the grid's values, in the order of the lists (first key slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def write_config(run_dir: Path, config: dict, meta: dict) -> None:
    """Write config.json; if the directory holds a run of a different config, start it afresh."""
    path = run_dir / "config.json"
    if path.exists() and json.loads(path.read_text())["config"] != config:
        print(f"config of {run_dir.name} changed: discarding its old results")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        versions = {"actid": actid.__version__, "torch": torch.__version__, "python": platform.python_version()}
        path.write_text(json.dumps({"config": config, **meta, "versions": versions}, indent=1))


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One run's metrics with its config values as extra columns (plus ``run`` and ``finished``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: not a run directory, or the run has not evaluated yet")
    df = pd.read_csv(run_dir / "metrics.csv")
    config = json.loads((run_dir / "config.json").read_text())["config"]
    for key, value in config.items():
        if key not in df.columns and not isinstance(value, (list, dict)):
            df[key] = value
    df.insert(0, "run", run_dir.name)
    df["finished"] = (run_dir / "done.json").exists()
    return df


def load_runs(path: str | Path) -> pd.DataFrame:
    """Load a run directory, or every run below a sweep directory, into one tidy DataFrame.

    One row per (run, evaluation step). Columns: ``run``, ``step``, losses and accuracies per split
    (``train_acc``, ``val_acc``, ...), ``id/<layer>`` and ``id_err/<layer>``, ``llid``, ``pid``,
    ``learning_rate``, every scalar config value (``weight_decay``, ``train_fraction``, ...) and
    ``finished``.
    """
    path = Path(path)
    if (path / "metrics.csv").exists():
        return load_run(path)
    runs = sorted(p.parent for p in path.glob("*/metrics.csv"))
    if not runs:
        raise FileNotFoundError(f"no runs (*/metrics.csv) under {path}; run the sweep first, e.g. `dvc repro`")
    return pd.concat([load_run(r) for r in runs], ignore_index=True)
