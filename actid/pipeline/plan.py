"""What a sweep will do with each run directory, decided before any file changes; then setting stale runs aside.

:func:`plan` validates every grid point and classifies each run directory: ``new``, ``skip`` (finished),
``resume`` (unfinished, same numerics) or ``restart`` (its config changed, or ``--restart``). Runs of this
experiment that left the grid are *stale*. :func:`tidy` then moves stale and restarted runs to
``<out>/.stale/<name>-<time>``: never deleted, and folders that are not actid runs of this experiment are never
touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from actid.pipeline.grid import InvalidSweep, experiment, resolve_grid, run_name
from actid.runs import CheckpointRefused, LockRefused, Run
from actid.train import resolve_device
from actid.train_state import ResumeMismatchError, check_resume, runtime

STALE = ".stale"


@dataclass
class Planned:
    """One grid point and what the sweep will do with its run directory."""

    name: str
    config: dict
    run: Run
    action: str  # "new", "skip" (finished), "resume", "restart" (config changed or --restart: set aside first),
    # "failed" (an earlier attempt failed: reported, not trained again until --restart)
    batched: bool = False  # trains as one model with the shard's other runs of its shape (actid.batched)


def batch_mode(name: str, configs: list[dict], requested: str, jobs: int = 1) -> bool:
    """Whether the sweep trains its runs batched: ``requested`` 'on', 'off', or 'auto': on where every run trains
    on a GPU, in one process (``jobs`` 1), and the experiment can batch them. On a CPU batching saves nothing and
    separate runs stay the reference; with several processes per GPU, each has its own runs."""
    if requested not in ("auto", "on", "off"):
        raise InvalidSweep(f"--batch-runs must be auto, on or off, got {requested!r}")
    exp = experiment(name)
    if requested == "off" or not configs:
        return False
    if exp.batchable is None:
        if requested == "on":
            raise InvalidSweep(f"--batch-runs on: {name} runs cannot train batched (only experiments whose "
                               "model draws its dropout masks explicitly can, e.g. grokking); use --batch-runs off")
        return False
    refused = [reason for c in configs if (reason := exp.batchable(c))]
    if refused and requested == "on":
        raise InvalidSweep(f"--batch-runs on: {refused[0]}; use --batch-runs off")
    if requested == "on":
        return True
    return not refused and jobs == 1 and all(resolve_device(c["device"]).type == "cuda" for c in configs)


def plan(name: str, params: dict, out: Path, profile: str, overrides: dict | None = None, *,
         restart: bool = False, threads: int | None = None, shard: tuple[int, int] = (0, 1),
         busy: set[str] = frozenset(), auto_device: str | None = None, batch_runs: str = "off",
         jobs: int | None = None) -> tuple[list[Planned], list[Run]]:
    """Validate every point and classify every run directory; touches no file.

    Returns the grid's runs and the stale runs to set aside (this experiment's runs not in the grid).
    Runs of this ``shard`` are also checked for another writer and, if unfinished, for a change of
    device, autocast or ``threads`` (the CPU thread count they will train with), except those in ``busy``
    (a SLURM job of an earlier submission is still on them). ``auto_device`` is what ``device: auto`` will mean
    where the runs train (the SLURM launcher's nodes), if not this machine. ``batch_runs`` and ``jobs`` (default: the
    shard count): see :func:`batch_mode`."""
    points, configs = resolve_grid(name, params, profile, overrides)
    batched = batch_mode(name, configs, batch_runs, jobs=jobs or shard[1])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; name a directory for the runs")

    def ours(run: Run) -> bool:
        return run.is_actid_run() and run.meta().get("experiment") == name

    def held(run: Run, what: str) -> str | None:
        """Why ``run`` cannot be ``what`` now (another process writes it, or its lock is unusable), or None."""
        try:
            return (f"{run.path} is being written by another process (another sweep or dvc repro?); wait for it or "
                    f"stop it before it is {what}") if run.is_locked() else None
        except LockRefused as err:
            return str(err)

    planned, problems = [], []
    for i, (point, config) in enumerate(zip(points, configs)):
        run, mine = Run(out / run_name(point)), i % shard[1] == shard[0]
        action = "new"
        if run.path.exists() and any(run.path.iterdir()):
            if not ours(run):
                problems.append(f"{run.path} exists and is not a {name} run of actid; move it away or choose "
                                "another --out (actid never writes into a folder it did not create)")
                continue
            action = ("restart" if not run.same_identity(config) else "skip" if run.is_finished else
                      ("restart" if restart else "failed") if run.failure else "resume")
        if action == "resume" and mine and run.name not in busy:
            if problem := held(run, "resumed"):
                problems.append(problem)
                continue
            try:
                device = auto_device if config["device"] == "auto" and auto_device else config["device"]
                check_resume(run.name, run.runtime(), runtime(resolve_device(device), config["amp"], threads, batched))
                run.load_checkpoint()  # a checkpoint that is not plain tensors and values is refused here, unloaded
            except (ResumeMismatchError, CheckpointRefused) as err:
                if not restart:
                    problems.append(str(err))
                    continue
                action = "restart"
        if action == "restart" and run.name not in busy and (problem := held(run, "set aside")):
            problems.append(problem)
            continue
        planned.append(Planned(run.name, config, run, action, batched))
    names = {run_name(point) for point in points}  # the grid's runs, planned or not: never stale
    others = sorted(d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")) if out.exists() else []
    stale = [Run(d) for d in others if d.name not in names and ours(Run(d))]
    problems += [problem for run in stale if (problem := held(run, "set aside"))]
    if problems:
        raise SystemExit("nothing was changed:\n- " + "\n- ".join(problems))
    return planned, stale


def tidy(planned: list[Planned], stale: list[Run], out: Path, profile: str) -> None:
    """Set aside the runs that left the grid and those to restart (config changed, or --restart): all of them or,
    when another process holds one of their locks by now, none (each move happens under the run's lock)."""
    moves = [(run, f"not in the {profile} grid") for run in stale]
    moves += [(p.run, "config changed" if not p.run.same_identity(p.config) else "restarted (--restart)")
              for p in planned if p.action == "restart"]
    with contextlib.ExitStack() as locks:
        present = []
        for run, why in moves:
            if run.path.exists():  # another shard of this sweep may have moved it already
                locks.enter_context(run.lock())
                present.append((run, why))
        for run, why in present:
            set_aside(run, out, why)


def set_aside(run: Run, out: Path, why: str) -> Path:
    """Move a run to ``<out>/.stale/<name>-<time>`` (never delete it) while holding its lock, and say so."""
    with run.lock():
        target = out / STALE / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while target.exists():
            target, n = target.with_name(f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run.path, target)
    print(f"{run.name}: {why}; moved it to {target}")
    return target
