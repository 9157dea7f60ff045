"""Train a sweep's runs on this machine: one shard in this process, or ``--jobs`` shard processes.

A shard trains grid points i, i+n, i+2n, ... (``--shard i/n``). :func:`run_jobs` starts n such processes of the
same command line, each with cores/n threads; the parent draws one overall bar and one line per shard
(:mod:`actid.pipeline.shard_progress`), forwards Ctrl-C/SIGTERM to the shards and waits for them; a shard whose
parent dies stops (:func:`stop_when_orphaned`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from actid.batched import group_members, train_batched
from actid.pipeline.grid import experiment, resolve_grid
from actid.pipeline.plan import Planned, plan, tidy
from actid.pipeline.shard_progress import ShardMonitor, ShardReporter
from actid.runs import LockRefused, Run, RunLockedError, RunTaken
from actid.train import Task, TrainConfig, TrainingInterrupted, train


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def prepare(name: str, params: dict, profile: str, overrides: dict) -> None:
    """Let the experiment fetch shared inputs (e.g. download CIFAR) once, before parallel shards race for them."""
    exp = experiment(name)
    if exp.prepare is not None:
        exp.prepare(resolve_grid(name, params, profile, overrides)[1])


def build_run(name: str, profile: str, run: Run, config: dict) -> tuple[Task, TrainConfig]:
    """Write the run's ``config.json`` (or check the one there) and build its task and TrainConfig: what every
    launcher does before it trains a run."""
    run.write_config(config, {"experiment": name, "profile": profile})
    return experiment(name).build(config)


def needs_finishing(name: str, run: Run) -> bool:
    """Whether a finished run lacks a product that its experiment computes after training (``finish``)."""
    exp = experiment(name)
    return exp.finish is not None and run.is_finished and not all((run.path / f).exists() for f in exp.products)


def finish_run(name: str, run: Run, config: dict) -> None:
    """Compute the experiment's after-training products into a finished run's directory, if any is missing."""
    if needs_finishing(name, run):
        with run.lock():
            experiment(name).finish(run, config)


def train_one(name: str, profile: str, run: Run, config: dict, **train_options) -> None:
    """Build, train (or resume) and finish one run, holding its lock from its first write (``config.json``) to its
    last; ``train_options`` as :func:`actid.train.train` takes them."""
    with run.lock():
        task, train_cfg = build_run(name, profile, run, config)
        train(task, train_cfg, run, **train_options)
        finish_run(name, run, config)


def environmental(error: Exception) -> bool:
    """An error of the machine, not of the run (a full disk, a lost lock service): it stops the shard instead of
    marking the run failed, since rerunning once it is fixed resumes the run."""
    return isinstance(error, LockRefused) or (isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                                                            errno.EDQUOT))


def failed_earlier(run: Run, verb: str) -> str:
    """The line that reports a run an earlier attempt recorded as failed (``failed.json``), which is not ``verb``
    (trained, submitted) again until ``--restart``."""
    record = run.failure or {}
    return (f"{run.name}: failed earlier ({record.get('error')}: {str(record.get('message'))[:200]}); not {verb} "
            "again: fix its config, or rerun with --restart to train it again from step 0")


class Outcomes:
    """What happened to a shard's runs that did not train to the end: skipped (another process holds them) or
    failed (the error is recorded in the run's ``failed.json``); reported together when the shard is done."""

    def __init__(self):
        self.skipped: list[str] = []
        self.failed: list[str] = []

    def skip(self, run: Run, why: Exception) -> None:
        self.skipped.append(run.name)
        print(f"{run.name}: skipped: {why}", flush=True)

    def fail(self, run: Run, error: Exception) -> None:
        record = run.record_failure(error)
        self.failed.append(run.name)
        print(f"{run.name}: FAILED at step {record['last_step']}: {record['error']}: {record['message'][:300]} "
              f"(details in {run.failed_path}; the shard goes on)", flush=True)

    def earlier(self, run: Run) -> None:
        self.failed.append(run.name)
        print(failed_earlier(run, "trained"), flush=True)

    def raise_if_any(self) -> None:
        lines = []
        if self.failed:
            lines.append(f"{len(self.failed)} run(s) failed: {', '.join(self.failed)} (each run's failed.json says "
                         "why; --restart trains them again from step 0)")
        if self.skipped:
            lines.append(f"{len(self.skipped)} run(s) skipped because another process holds them: "
                         f"{', '.join(self.skipped)} (rerun when it is done)")
        if lines:
            raise SystemExit("\n".join(lines))


def run_sweep(name: str, params: dict, out: Path, profile: str, shard: tuple[int, int] = (0, 1),
              overrides: dict | None = None, *, restart: bool = False, set_aside_stale: bool = True,
              reporter: ShardReporter | None = None, stop_after: int | None = None, batch_runs: str = "auto",
              interrupt=None) -> list[Planned]:
    """Validate, set stale runs aside (a sweep's shards leave that to their parent), then
    train this shard's runs. ``stop_after`` stops each run at that step (to test resuming); ``interrupt`` as in
    :func:`actid.train.train`.

    Each run is written only while this process holds its lock, from ``config.json`` on: a run another process holds
    is skipped, never written into. A run whose training raises is recorded as failed (``failed.json``) and the shard
    goes on with its next run; failed and skipped runs are reported at the end (SystemExit)."""
    out = Path(out)
    planned, stale = plan(name, params, out, profile, overrides, restart=restart, shard=shard,
                          batch_runs=batch_runs)
    if interrupt is not None and interrupt():
        raise TrainingInterrupted("stopped before any run was touched")
    if set_aside_stale:
        tidy(planned, stale, out, profile)
    mine = [p for i, p in enumerate(planned) if i % shard[1] == shard[0]]
    outcomes = Outcomes()
    if any(p.batched for p in mine):
        train_shard_batched(name, profile, mine, reporter, stop_after, interrupt, outcomes)
        outcomes.raise_if_any()
        return planned
    for p in (mine if reporter else tqdm(mine, desc=f"{name}/{profile}", unit="run")):
        if p.action == "failed":
            outcomes.earlier(p.run)
            if reporter:
                reporter.end(p.name, "failed earlier")
            continue
        if p.run.is_finished and not needs_finishing(name, p.run):  # before building data and model
            if reporter:
                reporter.end(p.name, "finished earlier")
            continue
        if interrupt is not None and interrupt():
            raise TrainingInterrupted(f"stopped before {p.name}")
        try:
            with p.run.lock():
                task, train_cfg = build_run(name, profile, p.run, p.config)
                if reporter:
                    reporter.start(p.name, train_cfg.steps)
                train(task, train_cfg, p.run, progress=reporter.step if reporter else True, stop_after=stop_after,
                      interrupt=interrupt)
                finish_run(name, p.run, p.config)
        except (RunLockedError, RunTaken) as err:
            outcomes.skip(p.run, err)
            continue
        except Exception as err:  # noqa: BLE001 - any error of one run is recorded; the shard goes on
            if isinstance(err, TrainingInterrupted) or environmental(err):
                raise
            outcomes.fail(p.run, err)
            if reporter:
                reporter.end(p.name, "failed")
            continue
        if reporter:
            reporter.end(p.name, "trained")
    outcomes.raise_if_any()
    return planned


def train_shard_batched(name: str, profile: str, mine: list[Planned], reporter: ShardReporter | None,
                        stop_after: int | None, interrupt=None, outcomes: Outcomes | None = None) -> None:
    """Train the shard's unfinished runs in groups of one shape, each group as one model (:mod:`actid.batched`),
    holding every member's lock from its ``config.json`` on."""
    outcomes = outcomes or Outcomes()
    with contextlib.ExitStack() as locks:
        members, configs = [], {}
        for p in mine:
            if p.action == "failed":
                outcomes.earlier(p.run)
                continue
            if p.run.is_finished and not needs_finishing(name, p.run):  # before building data and model
                if reporter:
                    reporter.end(p.name, "finished earlier")
                continue
            try:
                locks.enter_context(p.run.lock())
                members.append((*build_run(name, profile, p.run, p.config), p.run))
            except (RunLockedError, RunTaken) as err:
                outcomes.skip(p.run, err)
                continue
            configs[p.name] = p.config
        groups = group_members(members)
        for group in (groups if reporter else tqdm(groups, desc=f"{name}/{profile}", unit="group")):
            if interrupt is not None and interrupt():
                raise TrainingInterrupted("stopped between groups of runs")
            if reporter:
                reporter.start(f"{len(group)} runs as one model", group[0][1].steps)
            try:
                train_batched(group, progress=reporter.step if reporter else True, stop_after=stop_after,
                              interrupt=interrupt)
            except Exception as err:  # noqa: BLE001 - the group's runs are recorded as failed; other groups go on
                if isinstance(err, TrainingInterrupted) or environmental(err):
                    raise
                for _, _, run in group:
                    outcomes.fail(run, err)
                continue
            for _, _, run in group:
                finish_run(name, run, configs[run.name])
                if reporter:
                    reporter.end(run.name, "trained")


def run_jobs(jobs: int, argv: list[str], n_runs: int, desc: str, threads: int | None = None) -> None:
    """Run ``jobs`` shard processes of this command; forward SIGINT/SIGTERM to them and wait; fail if any fails."""
    argv = [a for i, a in enumerate(argv) if not a.startswith("--jobs") and not (i and argv[i - 1] == "--jobs")]
    threads = str(threads or threads_per_job(jobs))
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


def stop_when_orphaned(parent: int) -> None:
    """A shard stops (as on SIGTERM) when the process that started it is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
