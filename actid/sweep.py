"""Run an experiment's parameter grid for one profile: ``python -m actid.sweep grokking``.

Reads ``params.yaml`` (section ``<experiment>.<profile>`` with keys ``fixed`` and ``grid``), writes
one run directory per grid point under ``runs/<experiment>``, skips finished runs, resumes
interrupted ones, and removes run directories that are no longer in the grid.
``--shard i/n`` runs every n-th grid point; ``--jobs n`` starts n such shard processes at once
(each with cores/n threads: on 2 CPU cores two single-threaded runs beat one two-threaded run
for these small models; on one GPU several processes overlap their kernel launches).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from actid.runs import expand_grid, run_name, write_config
from actid.train import train

EXPERIMENTS = {"grokking": "actid.experiments.grokking", "regularization": "actid.experiments.regularization"}


def sweep_points(params: dict, experiment: str, profile: str) -> tuple[dict, list[dict]]:
    """The section's ``fixed`` keys and its grid points. ``grid`` is one grid (every combination of
    its lists) or a list of grids whose points are joined, e.g. a weight-decay sweep at dropout 0
    plus a dropout sweep at weight decay 0; a point listed twice runs once."""
    try:
        section = params[experiment][profile]
    except KeyError:
        raise KeyError(f"params has no section {experiment}.{profile}; profiles: {list(params.get(experiment, {}))}")
    grids = section.get("grid", {})
    points = [p for grid in (grids if isinstance(grids, list) else [grids]) for p in expand_grid(grid)]
    unique: dict[str, dict] = {}
    for point in points:
        unique.setdefault(run_name(point), point)
    return section.get("fixed", {}), list(unique.values())


def run_sweep(experiment: str, params: dict, out: Path, profile: str, shard: tuple[int, int] = (0, 1),
              overrides: dict | None = None) -> None:
    module = importlib.import_module(EXPERIMENTS[experiment])
    fixed, points = sweep_points(params, experiment, profile)
    names = [run_name(p) for p in points]
    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(set(p.name for p in out.iterdir() if p.is_dir()) - set(names)):
        print(f"removing {stale}: not in the {profile} grid")
        shutil.rmtree(out / stale)
    mine = [(n, p) for i, (n, p) in enumerate(zip(names, points)) if i % shard[1] == shard[0]]
    for name, point in tqdm(mine, desc=f"{experiment}/{profile}", unit="run"):
        config = module.resolve({**fixed, **point, **(overrides or {})})
        write_config(out / name, config, {"experiment": experiment, "profile": profile})
        task, train_cfg = module.build(config)
        train(task, train_cfg, out / name)


def prepare(experiment: str, params: dict, profile: str, overrides: dict) -> None:
    """Let the experiment fetch shared inputs (e.g. download CIFAR) once, before parallel shards race for them."""
    module = importlib.import_module(EXPERIMENTS[experiment])
    if hasattr(module, "prepare"):
        fixed, points = sweep_points(params, experiment, profile)
        module.prepare([module.resolve({**fixed, **p, **overrides}) for p in points])


def run_jobs(jobs: int, argv: list[str]) -> None:
    """Start ``jobs`` shard processes of this command and fail if any fails."""
    argv = [a for i, a in enumerate(argv) if not a.startswith("--jobs") and not (i and argv[i - 1] == "--jobs")]
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    procs = [subprocess.Popen([sys.executable, "-m", "actid.sweep", *argv, "--shard", f"{i}/{jobs}"], env=env)
             for i in range(jobs)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise SystemExit(f"shard(s) {failed} of {jobs} failed; rerun the same command to resume")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", help="default: the params file's top-level `profile`")
    parser.add_argument("--out", type=Path, help="default: runs/<experiment>")
    parser.add_argument("--shard", default="0/1", help="i/n: run grid points i, i+n, i+2n, ...")
    parser.add_argument("--jobs", type=int, default=1, help="run this many shards in parallel processes")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a run config key for every run, e.g. --set device=cuda")
    args = parser.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    profile = args.profile or params["profile"]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.jobs > 1:
        prepare(args.experiment, params, profile, overrides)
        return run_jobs(args.jobs, [a for a in (argv if argv is not None else sys.argv[1:])])
    i, n = (int(v) for v in args.shard.split("/"))
    run_sweep(args.experiment, params, args.out or Path("runs") / args.experiment, profile, (i, n), overrides)


if __name__ == "__main__":
    main()
