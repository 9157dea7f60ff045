"""Run an experiment's parameter grid for one profile: ``python -m actid.sweep grokking``.

Reads ``params.yaml`` (section ``<experiment>.<profile>`` with keys ``fixed`` and ``grid``) and
writes one run directory per grid point under ``runs/<experiment>``. In this order:

1. **Validate** every grid point (keys and values) and look at every run directory, before any
   file changes: a typo'd key or a bad value changes nothing.
2. **Set aside** runs of this experiment whose config changed or that left the grid: they move to
   ``<out>/.stale/<name>-<time>`` (never deleted), and the message says where. Folders that are not
   actid runs of this experiment are never touched.
3. **Train** the rest: finished runs are skipped (before their data or model are built) whatever
   device they ran on; unfinished runs resume, if their device, autocast and CPU threads are the
   ones they started with (or ``--restart`` sets them aside and starts again).

``--shard i/n`` runs every n-th grid point; ``--jobs n`` starts n such shard processes (each with
cores/n threads, or ``--threads``: on 2 CPU cores two single-threaded runs beat one two-threaded run for
these small models; on one GPU several processes overlap their kernel launches). The parent draws one
overall bar and one line per shard, forwards Ctrl-C/SIGTERM to the shards and waits for them; a shard
whose parent dies stops.

``--batch-runs`` (auto: on where the runs train on a GPU and the experiment can) trains each shard's runs of one
shape as one model (:mod:`actid.batched`), each run still with its own directory, rows and random streams.

``--launcher slurm`` (or ``launcher: {name: slurm}`` in ``params.yaml``) submits the unfinished grid points
as a SLURM job array instead (:mod:`actid.pipeline.slurm`); ``--no-wait`` returns after submitting, ``--status``
reports where every grid point stands.

This module is the command line only; the work is done by :mod:`actid.pipeline`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path

import torch
import yaml

from actid._moved import moved
from actid.experiments import REGISTRY
from actid.integrations import live
from actid.pipeline import grid, local, slurm
from actid.pipeline import plan as planning
from actid.pipeline.shard_progress import ShardReporter
from actid.train import TrainingInterrupted

MOVED = {
    "InvalidSweep": "actid.pipeline.grid", "expand_grid": "actid.pipeline.grid", "run_name": "actid.pipeline.grid",
    "sweep_points": "actid.pipeline.grid", "resolve_grid": "actid.pipeline.grid",
    "Planned": "actid.pipeline.plan", "plan": "actid.pipeline.plan", "batch_mode": "actid.pipeline.plan",
    "tidy": "actid.pipeline.plan", "set_aside": "actid.pipeline.plan", "STALE": "actid.pipeline.plan",
    "build_run": "actid.pipeline.local", "prepare": "actid.pipeline.local", "run_sweep": "actid.pipeline.local",
    "train_shard_batched": "actid.pipeline.local", "run_jobs": "actid.pipeline.local",
}
"""Names this module held before the pipeline package (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)


def _experiment_from_set(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--set a=1 grokking``: argparse hands the experiment name to ``--set``; take it back, and
    refuse anything else in ``--set`` that is not KEY=VALUE."""
    stray = [s for s in args.set if "=" not in s]
    args.set = [s for s in args.set if "=" in s]
    if args.experiment is None and len(stray) == 1 and stray[0] in REGISTRY:
        args.experiment = stray.pop()
    if stray:
        parser.error(f"--set takes KEY=VALUE pairs; not one: {' '.join(stray)}")
    if args.experiment is None:
        parser.error(f"the following arguments are required: experiment (one of {', '.join(sorted(REGISTRY))})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; options may come before or after the experiment name, ``--set`` may repeat."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # run_jobs removes --jobs from the shards' argv by name
    parser.add_argument("experiment", nargs="?", choices=sorted(REGISTRY))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", help="default: the params file's top-level `profile`")
    parser.add_argument("--out", type=Path, help="default: runs/<experiment>")
    parser.add_argument("--shard", default="0/1", help="i/n: run grid points i, i+n, i+2n, ...")
    parser.add_argument("--jobs", type=int, default=1, help="run this many shards in parallel processes")
    parser.add_argument("--restart", action="store_true",
                        help="set aside unfinished runs that started on another device/autocast/thread count, and "
                             "start them again")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override a run config key for every run, e.g. --set device=cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (local default: cores / jobs; "
                        "slurm default: cpus-per-task); results are reproducible for a fixed thread count")
    parser.add_argument("--batch-runs", choices=["auto", "on", "off"], default="auto",
                        help="train each shard's runs of one shape as one model (actid.batched); auto: on where the "
                             "runs train on a GPU and the experiment can (grokking)")
    parser.add_argument("--live", metavar="SINKS",
                        help="mirror each run's rows, as they are written, into <run>/dvclive and/or <run>/tensorboard "
                             "(dvclive,tensorboard; the same as ACTID_LIVE=...; needs actid[live])")
    parser.add_argument("--launcher", choices=["local", "slurm"],
                        help="where runs train (default: params.yaml launcher.name, else local)")
    slurm = parser.add_argument_group("slurm launcher (defaults: params.yaml launcher.slurm, see actid/slurm.py)")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus-per-node", type=int)
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--time-min", type=int, help="time limit per task; longer runs are checkpointed and requeued")
    slurm.add_argument("--array-parallelism", type=int, help="at most this many tasks at once")
    slurm.add_argument("--signal-delay-s", type=int, help="time-limit warning (SIGUSR2) this many seconds before it")
    slurm.add_argument("--sbatch", nargs="*", action="extend", default=[], metavar="FLAG=VALUE",
                       help="further sbatch flags, e.g. --sbatch account=abc qos=high")
    slurm.add_argument("--no-wait", action="store_true", help="return once submitted (see --status)")
    slurm.add_argument("--status", action="store_true", help="report every grid point's state; submit nothing")
    args = parser.parse_args(argv)
    _experiment_from_set(parser, args)
    match = re.fullmatch(r"(\d+)/(\d+)", args.shard)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        parser.error(f"--shard takes i/n with 0 <= i < n (grid points i, i+n, ...), got {args.shard!r}; "
                     "e.g. 0/2 and 1/2")
    args.shard_index, args.shard_count = int(match[1]), int(match[2])
    if args.live is not None:
        try:
            args.live = live.parse_sinks(args.live)
            live.check_installed(args.live)
        except (ValueError, ImportError) as err:
            parser.error(f"--live: {err}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and args.shard != "0/1":
        parser.error("--jobs starts its own shards; give --jobs or --shard, not both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.live is not None:  # the shards, SLURM jobs and runs read it (actid.runs.Run)
        os.environ[live.ENV] = ",".join(args.live)
    params = yaml.safe_load(args.params.read_text())
    profile = args.profile or params["profile"]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = args.out or Path("runs") / args.experiment
    launcher = args.launcher or (params.get("launcher") or {}).get("name", "local")
    if launcher == "slurm":
        return slurm_main(args, params, profile, overrides, out)
    if launcher != "local":
        raise SystemExit(f"params.yaml launcher.name must be local or slurm, got {launcher!r}")
    if args.status or args.no_wait:
        raise SystemExit("--status and --no-wait belong to the slurm launcher; add --launcher slurm")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    # SIGTERM unwinds like Ctrl-C, so temporary files are removed and locks released. The signal is also
    # remembered: Python drops an exception raised by a signal handler that happens to run inside a weakref
    # callback or __del__ (seen: an import's module-lock callback in a run's first steps), so training also stops
    # at its next step when asked (interrupt=), after a checkpoint
    received: list[int] = []

    def stop(signum, _frame):
        received.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)

    # a SIGINT ignored by whoever started us (e.g. `sweep &` in a script) stays ignored
    inherited_ignore = signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    handled = [signal.SIGTERM] + ([] if inherited_ignore else [signal.SIGINT])
    previous = {s: signal.signal(s, stop) for s in handled}
    try:
        jobs = args.jobs
        if jobs > 1:
            n_points = len(grid.resolve_grid(args.experiment, params, profile, overrides)[0])
            if jobs > n_points:
                print(f"--jobs {jobs}: the grid has {n_points} run(s), so {max(n_points, 1)} shard process(es)")
                jobs = max(n_points, 1)
        if jobs > 1:
            planned, stale = planning.plan(args.experiment, params, out, profile, overrides, restart=args.restart,
                                           threads=args.threads or local.threads_per_job(jobs),
                                           batch_runs=args.batch_runs, jobs=jobs)
            planning.tidy(planned, stale, out, profile)
            local.prepare(args.experiment, params, profile, overrides)
            shard_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--restart"]
            return local.run_jobs(jobs, shard_argv, len(planned), f"{args.experiment}/{profile}",
                                  args.threads or local.threads_per_job(jobs))
        sharded = "ACTID_PARENT_PID" in os.environ
        if sharded:
            local.stop_when_orphaned(int(os.environ["ACTID_PARENT_PID"]))
        local.run_sweep(args.experiment, params, out, profile, (args.shard_index, args.shard_count), overrides,
                        restart=args.restart, set_aside_stale=not sharded,
                        reporter=ShardReporter() if sharded else None, batch_runs=args.batch_runs,
                        interrupt=lambda: bool(received))
        if received:  # the signal's exception was dropped during the last evaluation: still exit as stopped
            raise TrainingInterrupted("stopped by a signal")
    except grid.InvalidSweep as err:  # a user's mistake, found before any file changed: no traceback
        raise SystemExit(f"nothing was changed: {err}") from None
    except (KeyboardInterrupt, TrainingInterrupted) as err:  # Ctrl-C (a shard's parent reports it once for all shards)
        if isinstance(err, TrainingInterrupted) and received[0] != signal.SIGINT:
            raise SystemExit(128 + received[0]) from None
        if "ACTID_PARENT_PID" in os.environ:
            raise SystemExit(130) from None
        raise SystemExit("interrupted: finished runs and checkpoints are kept; rerun the same command to "
                         "resume") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def slurm_main(args: argparse.Namespace, params: dict, profile: str, overrides: dict, out: Path) -> None:
    """``--launcher slurm``: submit (and follow) the unfinished grid points, or report them (``--status``)."""
    try:
        if args.status:
            try:
                slurm.print_status(args.experiment, params, out, profile, overrides)
            except RuntimeError as err:
                raise SystemExit(str(err)) from None
            return
        cli = {"partition": args.partition, "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task,
               "mem_gb": args.mem_gb, "time_min": args.time_min, "array_parallelism": args.array_parallelism,
               "signal_delay_s": args.signal_delay_s, "threads": args.threads}
        options = slurm.SlurmOptions.from_params(params, cli)
        # --sbatch exclusive: a flag without a value
        options.sbatch = {**options.sbatch, **dict(s.split("=", 1) if "=" in s else (s, True) for s in args.sbatch)}
    except (grid.InvalidSweep, ValueError) as err:  # a user's mistake, found before any submission: no traceback
        raise SystemExit(f"nothing was changed: {err}") from None
    try:
        slurm.submit(args.experiment, params, out, profile, overrides, options, wait=not args.no_wait,
                     restart=args.restart)
    except grid.InvalidSweep as err:  # raised by the planning, before any file changes
        raise SystemExit(f"nothing was changed: {err}") from None
    except RuntimeError as err:  # sacct does not answer: say so, without a traceback
        raise SystemExit(f"{err}. Submitted jobs (if any) are recorded in {out / slurm.STATE_DIR / 'jobs.json'}; "
                         "once SLURM answers, rerun the same command (with --status to look first)") from None


if __name__ == "__main__":
    main()
