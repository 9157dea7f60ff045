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
as a SLURM job array instead (:mod:`actid.slurm`); ``--no-wait`` returns after submitting, ``--status``
reports where every grid point stands.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from actid.progress import ShardMonitor, ShardReporter
from actid.runs import Run, RunLockedError
from actid.batched import group_members, train_batched
from actid.train import ResumeMismatchError, TrainingInterrupted, check_resume, resolve_device, runtime, train

EXPERIMENTS = {"grokking": "actid.experiments.grokking", "memorization": "actid.experiments.memorization",
               "mnist_grokking": "actid.experiments.mnist_grokking", "geometry": "actid.experiments.geometry",
               "regularization": "actid.experiments.regularization"}
STALE = ".stale"


class InvalidSweep(ValueError):
    """A grid point whose keys or values are wrong; raised before any file changes."""


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """All combinations of the grid's values, in the order of the lists (first key slowest)."""
    keys = list(grid)
    bad = [k for k in keys if not isinstance(grid[k], list)]
    if bad:
        raise InvalidSweep(f"grid values must be lists, got {', '.join(f'{k}: {grid[k]!r}' for k in bad)}; "
                         f"write e.g. {bad[0]}: [{grid[bad[0]]!r}]")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def sweep_points(params: dict, experiment: str, profile: str) -> tuple[dict, list[dict]]:
    """The section's ``fixed`` keys and its grid points. ``grid`` is one grid (every combination of
    its lists) or a list of grids whose points are joined, e.g. a weight-decay sweep at dropout 0
    plus a dropout sweep at weight decay 0; a point listed twice runs once."""
    try:
        section = params[experiment][profile]
    except KeyError:
        raise InvalidSweep(f"params has no section {experiment}.{profile}; profiles: "
                           f"{list(params.get(experiment, {}))}") from None
    grids = section.get("grid", {})
    points = [p for grid in (grids if isinstance(grids, list) else [grids]) for p in expand_grid(grid)]
    unique: dict[str, dict] = {}
    for point in points:
        unique.setdefault(run_name(point), point)
    return section.get("fixed", {}), list(unique.values())


@dataclass
class Planned:
    """One grid point and what the sweep will do with its run directory."""

    name: str
    config: dict
    run: Run
    action: str  # "new", "skip" (finished), "resume", "restart" (config changed or --restart: set aside first)
    batched: bool = False  # trains as one model with the shard's other runs of its shape (actid.batched)


def _threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def resolve_grid(experiment: str, params: dict, profile: str, overrides: dict | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """The profile's grid points and their resolved run configs, or :class:`InvalidSweep` naming the bad point."""
    module = importlib.import_module(EXPERIMENTS[experiment])
    fixed, points = sweep_points(params, experiment, profile)
    configs = []
    for point in points:
        try:
            configs.append(module.resolve({**fixed, **point, **(overrides or {})}))
        except (KeyError, ValueError, TypeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError quotes its text
            raise InvalidSweep(f"grid point {run_name(point)} of {experiment}.{profile}: {message}") from None
    return points, configs


def batch_mode(experiment: str, configs: list[dict], requested: str, jobs: int = 1) -> bool:
    """Whether the sweep trains its runs batched: ``requested`` 'on', 'off', or 'auto': on where every run trains
    on a GPU, in one process (``jobs`` 1), and the experiment can batch them. On a CPU batching saves nothing and
    separate runs stay the reference; with several processes per GPU, each has its own runs."""
    if requested not in ("auto", "on", "off"):
        raise InvalidSweep(f"--batch-runs must be auto, on or off, got {requested!r}")
    module = importlib.import_module(EXPERIMENTS[experiment])
    if requested == "off" or not configs:
        return False
    if not hasattr(module, "batchable"):
        if requested == "on":
            raise InvalidSweep(f"--batch-runs on: {experiment} runs cannot train batched (only experiments whose "
                               "model draws its dropout masks explicitly can, e.g. grokking); use --batch-runs off")
        return False
    refused = [reason for c in configs if (reason := module.batchable(c))]
    if refused and requested == "on":
        raise InvalidSweep(f"--batch-runs on: {refused[0]}; use --batch-runs off")
    if requested == "on":
        return True
    return not refused and jobs == 1 and all(resolve_device(c["device"]).type == "cuda" for c in configs)


def build_run(experiment: str, profile: str, run: Run, config: dict):
    """Write the run's ``config.json`` (or check the one there) and build its task and TrainConfig: what every
    launcher does before it trains a run."""
    run.write_config(config, {"experiment": experiment, "profile": profile})
    return importlib.import_module(EXPERIMENTS[experiment]).build(config)


def plan(experiment: str, params: dict, out: Path, profile: str, overrides: dict | None = None, *,
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
    points, configs = resolve_grid(experiment, params, profile, overrides)
    batched = batch_mode(experiment, configs, batch_runs, jobs=jobs or shard[1])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; name a directory for the runs")

    def ours(run: Run) -> bool:
        return run.is_actid_run() and run.meta().get("experiment") == experiment

    planned, problems = [], []
    for i, (point, config) in enumerate(zip(points, configs)):
        run, mine = Run(out / run_name(point)), i % shard[1] == shard[0]
        action = "new"
        if run.path.exists() and any(run.path.iterdir()):
            if not ours(run):
                problems.append(f"{run.path} exists and is not a {experiment} run of actid; move it away or choose "
                                "another --out (actid never writes into a folder it did not create)")
                continue
            action = "restart" if not run.same_identity(config) else "skip" if run.is_finished else "resume"
        if action == "resume" and mine and run.name not in busy:
            if run.is_locked():
                problems.append(f"{run.path} is being written by another process (another sweep or dvc repro?); "
                                "wait for it or stop it")
                continue
            try:
                device = auto_device if config["device"] == "auto" and auto_device else config["device"]
                check_resume(run.name, run.runtime(), runtime(resolve_device(device), config["amp"], threads, batched))
            except ResumeMismatchError as err:
                if not restart:
                    problems.append(str(err))
                    continue
                action = "restart"
        planned.append(Planned(run.name, config, run, action, batched))
    if problems:
        raise SystemExit("nothing was changed:\n- " + "\n- ".join(problems))
    names = {p.name for p in planned}
    others = sorted(d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")) if out.exists() else []
    return planned, [Run(d) for d in others if d.name not in names and ours(Run(d))]


def tidy(planned: list[Planned], stale: list[Run], out: Path, profile: str) -> None:
    """Set aside the runs that left the grid and those to restart (config changed, or --restart)."""
    for run in stale:
        set_aside(run, out, f"not in the {profile} grid")
    for p in planned:
        if p.action == "restart":
            set_aside(p.run, out, "config changed" if not p.run.same_identity(p.config) else "restarted (--restart)")


def set_aside(run: Run, out: Path, why: str) -> Path:
    """Move a run to ``<out>/.stale/<name>-<time>`` (never delete it), and say so."""
    if run.is_locked():
        raise RunLockedError(f"cannot set {run.path} aside: another process is writing it")
    target = out / STALE / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target, n = target.with_name(f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run.path, target)
    print(f"{run.name}: {why}; moved it to {target}")
    return target


def run_sweep(experiment: str, params: dict, out: Path, profile: str, shard: tuple[int, int] = (0, 1),
              overrides: dict | None = None, *, restart: bool = False, set_aside_stale: bool = True,
              reporter: ShardReporter | None = None, stop_after: int | None = None, batch_runs: str = "auto",
              interrupt=None) -> list[Planned]:
    """Validate, set stale runs aside (a sweep's shards leave that to their parent), then
    train this shard's runs. ``stop_after`` stops each run at that step (to test resuming); ``interrupt`` as in
    :func:`actid.train.train`."""
    out = Path(out)
    planned, stale = plan(experiment, params, out, profile, overrides, restart=restart, shard=shard,
                          batch_runs=batch_runs)
    if interrupt is not None and interrupt():
        raise TrainingInterrupted("stopped before any run was touched")
    if set_aside_stale:
        tidy(planned, stale, out, profile)
    mine = [p for i, p in enumerate(planned) if i % shard[1] == shard[0]]
    if any(p.batched for p in mine):
        train_shard_batched(experiment, profile, mine, reporter, stop_after, interrupt)
        return planned
    for p in (mine if reporter else tqdm(mine, desc=f"{experiment}/{profile}", unit="run")):
        if p.run.is_finished:  # before building data and model
            if reporter:
                reporter.end(p.name, "finished earlier")
            continue
        if interrupt is not None and interrupt():
            raise TrainingInterrupted(f"stopped before {p.name}")
        task, train_cfg = build_run(experiment, profile, p.run, p.config)
        if reporter:
            reporter.start(p.name, train_cfg.steps)
        train(task, train_cfg, p.run, progress=reporter.step if reporter else True, stop_after=stop_after,
              interrupt=interrupt)
        if reporter:
            reporter.end(p.name, "trained")
    return planned


def train_shard_batched(experiment: str, profile: str, mine: list[Planned], reporter: ShardReporter | None,
                        stop_after: int | None, interrupt=None) -> None:
    """Train the shard's unfinished runs in groups of one shape, each group as one model (:mod:`actid.batched`)."""
    members = []
    for p in mine:
        if p.run.is_finished:  # before building data and model
            if reporter:
                reporter.end(p.name, "finished earlier")
            continue
        members.append((*build_run(experiment, profile, p.run, p.config), p.run))
    groups = group_members(members)
    for group in (groups if reporter else tqdm(groups, desc=f"{experiment}/{profile}", unit="group")):
        if interrupt is not None and interrupt():
            raise TrainingInterrupted("stopped between groups of runs")
        if reporter:
            reporter.start(f"{len(group)} runs as one model", group[0][1].steps)
        train_batched(group, progress=reporter.step if reporter else True, stop_after=stop_after, interrupt=interrupt)
        if reporter:
            for _, _, run in group:
                reporter.end(run.name, "trained")


def prepare(experiment: str, params: dict, profile: str, overrides: dict) -> None:
    """Let the experiment fetch shared inputs (e.g. download CIFAR) once, before parallel shards race for them."""
    module = importlib.import_module(EXPERIMENTS[experiment])
    if hasattr(module, "prepare"):
        module.prepare(resolve_grid(experiment, params, profile, overrides)[1])


def run_jobs(jobs: int, argv: list[str], n_runs: int, desc: str, threads: int | None = None) -> None:
    """Run ``jobs`` shard processes of this command; forward SIGINT/SIGTERM to them and wait; fail if any fails."""
    argv = [a for i, a in enumerate(argv) if not a.startswith("--jobs") and not (i and argv[i - 1] == "--jobs")]
    threads = str(threads or _threads(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1",
           "ACTID_PARENT_PID": str(os.getpid())}
    monitor = ShardMonitor(jobs, n_runs, desc)
    procs = [subprocess.Popen([sys.executable, "-m", "actid.sweep", *argv, "--shard", f"{i}/{jobs}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
             for i in range(jobs)]
    readers = [monitor.follow(i, p.stdout) for i, p in enumerate(procs)]
    received = []

    def forward(signum, _frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
        for r in readers:
            r.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        monitor.close()
    if received:
        raise SystemExit(f"stopped by signal {received[0]}; the shards stopped too. Rerun the same command to resume.")
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        raise SystemExit(f"shard(s) {failed} of {jobs} failed (their output is above, prefixed [shard i]); "
                         "rerun the same command to resume")


def _stop_when_orphaned(parent: int) -> None:
    """A shard stops (as on SIGTERM) when the process that started it is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()


def _experiment_from_set(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--set a=1 grokking``: argparse hands the experiment name to ``--set``; take it back, and
    refuse anything else in ``--set`` that is not KEY=VALUE."""
    stray = [s for s in args.set if "=" not in s]
    args.set = [s for s in args.set if "=" in s]
    if args.experiment is None and len(stray) == 1 and stray[0] in EXPERIMENTS:
        args.experiment = stray.pop()
    if stray:
        parser.error(f"--set takes KEY=VALUE pairs; not one: {' '.join(stray)}")
    if args.experiment is None:
        parser.error(f"the following arguments are required: experiment (one of {', '.join(sorted(EXPERIMENTS))})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; options may come before or after the experiment name, ``--set`` may repeat."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # run_jobs removes --jobs from the shards' argv by name
    parser.add_argument("experiment", nargs="?", choices=sorted(EXPERIMENTS))
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
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    handled = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else [])
    previous = {s: signal.signal(s, stop) for s in handled}
    try:
        if args.jobs > 1:
            planned, stale = plan(args.experiment, params, out, profile, overrides, restart=args.restart,
                                  threads=args.threads or _threads(args.jobs), batch_runs=args.batch_runs,
                                  jobs=args.jobs)
            tidy(planned, stale, out, profile)
            prepare(args.experiment, params, profile, overrides)
            shard_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--restart"]
            return run_jobs(args.jobs, shard_argv, len(planned), f"{args.experiment}/{profile}", args.threads)
        sharded = "ACTID_PARENT_PID" in os.environ
        if sharded:
            _stop_when_orphaned(int(os.environ["ACTID_PARENT_PID"]))
        i, n = (int(v) for v in args.shard.split("/"))
        run_sweep(args.experiment, params, out, profile, (i, n), overrides, restart=args.restart,
                  set_aside_stale=not sharded, reporter=ShardReporter() if sharded else None,
                  batch_runs=args.batch_runs, interrupt=lambda: bool(received))
        if received:  # the signal's exception was dropped during the last evaluation: still exit as stopped
            raise TrainingInterrupted("stopped by a signal")
    except InvalidSweep as err:  # a user's mistake, found before any file changed: no traceback
        raise SystemExit(f"nothing was changed: {err}") from None
    except (KeyboardInterrupt, TrainingInterrupted) as err:  # Ctrl-C (a shard's parent reports it once for all shards)
        if isinstance(err, TrainingInterrupted) and received[0] != signal.SIGINT:
            raise SystemExit(128 + received[0]) from None
        raise SystemExit(130 if "ACTID_PARENT_PID" in os.environ else
                         "interrupted: finished runs and checkpoints are kept; rerun the same command to resume") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

def slurm_main(args: argparse.Namespace, params: dict, profile: str, overrides: dict, out: Path) -> None:
    """``--launcher slurm``: submit (and follow) the unfinished grid points, or report them (``--status``)."""
    from actid import slurm
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
    except (InvalidSweep, ValueError) as err:  # a user's mistake, found before any submission: no traceback
        raise SystemExit(f"nothing was changed: {err}") from None
    try:
        slurm.submit(args.experiment, params, out, profile, overrides, options, wait=not args.no_wait,
                     restart=args.restart)
    except InvalidSweep as err:  # raised by the planning, before any file changes
        raise SystemExit(f"nothing was changed: {err}") from None
    except RuntimeError as err:  # sacct does not answer: say so, without a traceback
        raise SystemExit(f"{err}. Submitted jobs (if any) are recorded in {out / slurm.STATE_DIR / 'jobs.json'}; "
                         "once SLURM answers, rerun the same command (with --status to look first)") from None


if __name__ == "__main__":
    main()
