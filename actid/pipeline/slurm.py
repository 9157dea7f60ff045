"""A sweep's pending grid points as a SLURM job array, through submitit: ``python -m actid.sweep EXP --launcher slurm``.

The submitting host validates the grid and classifies the run directories exactly as the local launcher does
(:func:`actid.pipeline.plan.plan`: a bad grid changes nothing; stale runs are set aside, never deleted), downloads the
data the runs need once (CIFAR, MNIST), then submits **one array task per unfinished grid point**: finished runs are
never resubmitted, and a run whose job is still pending or running is waited on, not submitted twice. Each task trains
its run with the same code as the local launcher, in the same run directory, with ``threads`` CPU threads.

**Pre-emption and time limits.** SLURM sends SIGUSR2 ``signal_delay_s`` before the time limit (submitit asks for it).
The task then checkpoints the run at the next step boundary (:class:`actid.train.TrainingInterrupted`) and submitit
requeues it; the requeued task resumes from that checkpoint, so the run is the same as an uninterrupted one. A task
killed without warning (``scancel``, a node failure) loses at most the steps since its last evaluation: rerunning
the same command resubmits the unfinished runs, which resume from their checkpoints.

**Bookkeeping** lives in ``<out>/.slurm/``: ``jobs.json`` (run name -> job id, atomically rewritten) and submitit's
files and logs (``logs/<job id>_0_log.out`` / ``.err``). ``--status`` reads them and asks SLURM (``sacct``) for the
state of each job; ``<out>`` and the Python environment must be on a filesystem the nodes share.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from actid.io import atomic_write_text
from actid.pipeline.grid import InvalidSweep, resolve_grid, run_name, sweep_points
from actid.pipeline.local import failed_earlier, needs_finishing, prepare, train_one
from actid.pipeline.plan import plan, tidy
from actid.runs import Run, RunLockedError, RunTaken, identity
from actid.train import TrainingInterrupted

WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
"""SLURM states of a job that will (or may, once released) run again: not a failure, and not to be resubmitted.
(PREEMPTED is final: a pre-empted job that SLURM requeues shows up as PENDING again.)"""
ACTIVE = WAITING | {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
"""SLURM states of a job that may still write its run (UNKNOWN: not yet in the accounting, see UNKNOWN_GRACE_S)."""
UNKNOWN_GRACE_S = 600
"""How long a job may be missing from SLURM's accounting after its submission before it counts as lost."""
ALIVE = ("submitted", "pending", "running")
"""A run's states (:class:`RunState`) while its job is alive."""
STATE_DIR = ".slurm"


@dataclass
class SlurmOptions:
    """What each array task asks SLURM for (``params.yaml``: ``launcher: {slurm: {...}}``; the CLI overrides)."""

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None  # None: the partition's default
    time_min: int = 60  # time limit of one task; a longer run is checkpointed and requeued
    array_parallelism: int = 64  # at most this many tasks of the array at once
    threads: int | None = None  # torch CPU threads per run (None: cpus_per_task)
    signal_delay_s: int = 300  # SIGUSR2 this long before the time limit: longer than one evaluation takes
    max_requeues: int = 20  # how often a run may be requeued at its time limit
    sbatch: dict = field(default_factory=dict)  # further sbatch flags, e.g. {account: abc, qos: high}

    def __post_init__(self):
        minimum = {"gpus_per_node": 0, "max_requeues": 0, "cpus_per_task": 1, "time_min": 1, "array_parallelism": 1,
                   "signal_delay_s": 1}
        for key, least in minimum.items():
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"launcher option {key} must be an integer >= {least}, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"launcher option threads must be a positive integer, got {self.threads!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or self.mem_gb <= 0):
            raise ValueError(f"launcher option mem_gb must be a positive number of GB (e.g. 32), got {self.mem_gb!r}")
        if not isinstance(self.sbatch, dict):
            raise ValueError(f"launcher option sbatch must be a mapping of flag: value, got {self.sbatch!r}")
        if self.signal_delay_s >= 60 * self.time_min:
            raise ValueError(f"signal_delay_s {self.signal_delay_s} must be shorter than the time limit "
                             f"({self.time_min} min)")

    @property
    def run_threads(self) -> int:
        return self.threads or self.cpus_per_task

    @classmethod
    def from_params(cls, params: dict, overrides: dict) -> SlurmOptions:
        """``params['launcher']['slurm']`` updated by the command line's non-None ``overrides``."""
        section = dict(((params.get("launcher") or {}).get("slurm")) or {})
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"params.yaml launcher.slurm has unknown key(s) {unknown}; known: "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**{**section, **{k: v for k, v in overrides.items() if v is not None}})


class RunTask:
    """One array task: train one grid point's run (picklable; submitit calls it on the node).

    SIGUSR2 (the time-limit warning) and SIGTERM (``scancel``, pre-emption) make it checkpoint the run at the next
    step boundary. After SIGUSR2 it hands over to submitit, which calls :meth:`checkpoint` (the same task again) and
    requeues the job; after SIGTERM it exits (a pre-empting SLURM requeues the job itself; a rerun resumes it)."""

    def __call__(self, experiment: str, profile: str, out: str, name: str, config: dict, threads: int) -> str:
        import torch

        with _flags_on(signal.SIGUSR2, signal.SIGTERM) as (received, handover):
            def stop(why: str):
                if signal.SIGUSR2 in received:
                    print(f"{why}; time limit near: handing over to submitit to requeue", flush=True)
                    handover(signal.SIGUSR2)  # submitit requeues the job and exits
                raise SystemExit(f"{why}; stopped by signal {received[0]}: rerun the sweep to resume")

            torch.set_num_threads(threads)
            run = Run(Path(out) / name)
            if run.is_finished and not needs_finishing(experiment, run):
                return "finished earlier"
            if received:
                stop(f"{name}: signalled before training started")
            print(f"{name}: training" + (" (resuming from its checkpoint)" if run.checkpoint_path.exists() else ""),
                  flush=True)
            try:
                train_one(experiment, profile, run, config, interrupt=lambda: bool(received))
            except TrainingInterrupted as err:
                stop(str(err))
            except Exception as err:  # recorded in the run (a resubmission reports it, not trains it), then raised
                if run.path.exists() and not isinstance(err, (RunLockedError, RunTaken)):
                    run.record_failure(err)
                raise
        return "trained"

    def checkpoint(self, *args, **kwargs):
        """submitit's hook at the time limit: resubmit this same task (the run resumes from its checkpoint)."""
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@contextlib.contextmanager
def _flags_on(*signums: int):
    """While inside, each of ``signums`` only adds itself to the list ``received``; ``handover(signum)`` calls the
    handler it replaced (submitit's checkpoint-and-requeue for SIGUSR2). The previous handlers are always restored."""
    received = []
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda signum, frame: received.append(signum))

    def handover(signum):
        signal.signal(signum, previous[signum])
        if callable(previous[signum]):
            previous[signum](signum, None)

    try:
        yield received, handover
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- the submitting side ---------------------------------------------------------------------------------------

def _jobs_path(out: Path) -> Path:
    return out / STATE_DIR / "jobs.json"


def read_jobs(out: Path) -> dict:
    """``{run name: {"job_id": ..., "submitted": ...}}`` of earlier submissions (empty if none)."""
    path = _jobs_path(out)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_jobs(out: Path, jobs: dict) -> None:
    atomic_write_text(_jobs_path(out), json.dumps(jobs, indent=1, sort_keys=True))


@contextlib.contextmanager
def _submitting(out: Path):
    """One submission at a time per runs directory (two would submit the same runs and lose each other's ids)."""
    path = out / STATE_DIR / "submit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"nothing was changed: another submission to {out} is in progress (lock {path}); "
                             "wait for it, or use --status") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def config_key(config: dict) -> str:
    """A short fingerprint of a run's identity (what decides whether a directory holds this run)."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def executor(out: Path, options: SlurmOptions, experiment: str, cluster: str = "slurm"):
    """A submitit executor for this sweep's tasks (``cluster="local"``: processes on this machine, for tests)."""
    import submitit
    ex = submitit.AutoExecutor(folder=out / STATE_DIR / "logs", cluster=cluster,
                               slurm_max_num_timeout=options.max_requeues)
    ex.update_parameters(name=f"actid-{experiment}", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                         slurm_setup=["export TQDM_MININTERVAL=30"]  # a progress line every 30 s in the log
                         # no GPU asked for: none visible, so `device: auto` trains on the CPU as planned
                         + ([] if options.gpus_per_node else ["export CUDA_VISIBLE_DEVICES="]),
                         gpus_per_node=options.gpus_per_node, slurm_array_parallelism=options.array_parallelism,
                         slurm_signal_delay_s=options.signal_delay_s,
                         slurm_additional_parameters={k.replace("-", "_"): v for k, v in options.sbatch.items()},
                         **({"slurm_partition": options.partition} if options.partition else {}),
                         **({"mem_gb": options.mem_gb} if options.mem_gb else {}))
    return ex


def job(out: Path, job_id: str, cluster: str = "slurm"):
    """A submitit job handle for an earlier submission, rebuilt from its id."""
    import submitit
    cls = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    return cls(folder=out / STATE_DIR / "logs", job_id=job_id)


def job_state(handle) -> str:
    """submitit's state word for a job (``CANCELLED by 0`` -> ``CANCELLED``)."""
    return str(handle.state).split()[0].upper()


def _expand(job_id: str) -> list[str]:
    """sacct's ``12_[0-2,5%4]`` -> ``12_0, 12_1, 12_2, 12_5``; other ids unchanged."""
    if "_[" not in job_id:
        return [job_id]
    array, spec = job_id.split("_[", 1)
    ids = []
    for part in spec.rstrip("]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        ids += [f"{array}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """The state of each job (array task ids like ``12_3``) from SLURM's accounting, in one ``sacct`` call; jobs it
    does not list are missing. Raises a clear error when accounting does not answer (actid cannot then tell a dead
    job from a live one)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        done = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"sacct failed ({err}); the slurm launcher needs SLURM's accounting (slurmdbd)") from None
    if done.returncode != 0:
        raise RuntimeError(f"sacct failed: {done.stderr.strip()}; the slurm launcher needs SLURM's accounting "
                           "(slurmdbd) to tell a finished, cancelled or lost job from a running one")
    found = {}
    for line in done.stdout.splitlines():
        if "|" in line:
            job_id, state = line.split("|", 1)
            for one in _expand(job_id.strip()):
                found[one] = (state.split() or ["UNKNOWN"])[0].upper()
    return found


@dataclass
class RunState:
    """Where one grid point stands: ``finished``; ``submitted``, ``pending`` or ``running`` (its job is alive:
    not yet in SLURM's accounting, waiting, or on a node); ``failed`` (its job ended without finishing the run);
    or ``not submitted``."""

    name: str
    state: str
    job_id: str | None = None
    slurm_state: str | None = None
    step: int | None = None  # the last evaluated step

    def line(self) -> str:
        job = f"job {self.job_id}" + (f" {self.slurm_state}" if self.slurm_state else "") if self.job_id else "no job"
        step = f", evaluated up to step {self.step}" if self.step is not None else ""
        return f"{self.state:>13}  {self.name}  ({job}{step})"


def last_step(run: Run) -> int | None:
    """The last step in ``metrics.csv``, read from its tail (cheap to poll)."""
    try:
        with open(run.metrics_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            last = f.read().decode(errors="replace").strip().splitlines()[-1]
        return int(float(last.split(",")[0]))
    except (OSError, IndexError, ValueError):
        return None


def _job_state(out: Path, job_id: str, cluster: str, accounted: dict, handles: dict | None = None) -> str:
    """A job's state: from ``sacct``'s answer (``accounted``) on SLURM, from submitit on the local executor."""
    if cluster == "slurm":
        return accounted.get(job_id, "UNKNOWN")
    return job_state((handles or {}).get(job_id) or job(out, job_id, cluster))


def run_state(slurm_state: str, record: dict) -> str:
    """An unfinished run's state from its job's SLURM state (see :class:`RunState`); a job still missing from the
    accounting :data:`UNKNOWN_GRACE_S` after its submission counts as lost (failed)."""
    if slurm_state == "UNKNOWN":
        return "submitted" if time.time() - record.get("submitted_s", 0) <= UNKNOWN_GRACE_S else "failed"
    return "failed" if slurm_state not in ACTIVE else "pending" if slurm_state in WAITING else "running"


def states(out: Path, names: list[str], cluster: str = "slurm", handles: dict | None = None) -> list[RunState]:
    """The state of every named run, from its directory and its recorded job (the run directory decides
    ``finished``; SLURM's accounting decides whether an unfinished run's job is still alive). ``handles``: job
    id -> submitit job, for jobs submitted by this process."""
    jobs, result, handles = read_jobs(out), [], handles or {}
    recorded = [jobs[n]["job_id"] for n in names if n in jobs and not Run(out / n).is_finished]
    accounted = sacct_states(recorded) if cluster == "slurm" else {}
    for name in names:
        run, record = Run(out / name), jobs.get(name)
        if run.is_finished:
            result.append(RunState(name, "finished", record and record["job_id"], None, last_step(run)))
            continue
        if record is None:
            result.append(RunState(name, "not submitted", step=last_step(run)))
            continue
        slurm_state = _job_state(out, record["job_id"], cluster, accounted, handles)
        state = run_state(slurm_state, record)
        result.append(RunState(name, state, record["job_id"], slurm_state, last_step(run)))
    return result


def log_tail(out: Path, job_id: str, cluster: str = "slurm", lines: int = 15) -> tuple[str, Path]:
    """The last ``lines`` of a job's stderr log (stdout if stderr is empty), and the log's path."""
    handle = job(out, job_id, cluster)
    for path in (handle.paths.stderr, handle.paths.stdout):
        if path.exists() and path.stat().st_size:
            text = path.read_text(errors="replace").replace("\r", "\n")
            return "\n".join([line for line in text.splitlines() if line.strip()][-lines:]), path
    return "(the job wrote no log: it may not have started; see sacct -j " + job_id + ")", handle.paths.stderr


def submit(experiment: str, params: dict, out: Path, profile: str, overrides: dict, options: SlurmOptions, *,
           wait: bool = True, restart: bool = False, cluster: str = "slurm", poll_s: float = 5.0) -> list[RunState]:
    """Plan like the local launcher, set stale runs aside, prepare the data, submit one array task per unfinished
    run that has no live job, record the job ids; then (``wait``) follow them to the end and report failures."""
    out = Path(out)
    resolve_grid(experiment, params, profile, overrides)  # a bad grid fails before the lock below is created
    if out.exists() and not out.is_dir():
        raise InvalidSweep(f"--out {out} is a file; name a directory for the runs")
    with _submitting(out):
        earlier = read_jobs(out)
        unfinished = [n for n in earlier if not Run(out / n).is_finished]
        accounted = sacct_states([earlier[n]["job_id"] for n in unfinished]) if cluster == "slurm" else {}
        live = {n for n in unfinished
                if run_state(_job_state(out, earlier[n]["job_id"], cluster, accounted), earlier[n]) in ALIVE}
        node_device = "cuda" if options.gpus_per_node else "cpu"
        planned, stale = plan(experiment, params, out, profile, overrides, restart=restart,
                              threads=options.run_threads, busy=live, auto_device=node_device)
        changed = {p.name for p in planned if p.action == "restart"} | {r.name for r in stale}
        changed |= {p.name for p in planned
                    if p.name in live and earlier[p.name].get("config") not in (None, config_key(p.config))}
        moving = sorted(live & changed)
        if moving:
            raise SystemExit("nothing was changed: the config of run(s) " + ", ".join(
                f"{n} (job {earlier[n]['job_id']})" for n in moving) + " changed or left the grid, but their jobs "
                "are still active; wait for them or scancel them, then rerun")
        tidy(planned, stale, out, profile)
        prepare(experiment, params, profile, overrides)
        todo = [p for p in planned if p.action not in ("skip", "failed") and p.name not in live]
        handles = []
        if todo:
            ex = executor(out, options, experiment, cluster)
            try:
                handles = ex.map_array(RunTask(), *zip(*[(experiment, profile, str(out.resolve()), p.name, p.config,
                                                          options.run_threads) for p in todo]))
            finally:  # what was submitted is recorded, whatever happens next
                now = time.time()
                earlier.update({p.name: {"job_id": h.job_id, "config": config_key(p.config), "submitted_s": now,
                                         "submitted": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))}
                                for p, h in zip(todo, handles)})
                _write_jobs(out, earlier)
    names = [p.name for p in planned]
    for p in planned:
        if p.action == "failed":
            print(failed_earlier(p.run, "submitted"))
    array = f" (array job {handles[0].job_id.split('_')[0]})" if handles else ""
    print(f"{experiment}/{profile}: {len(todo)} run(s) submitted{array}, {len(live)} still running from before, "
          f"{sum(p.action == 'skip' for p in planned)} finished earlier, "
          f"{sum(p.action == 'failed' for p in planned)} failed earlier; logs in {out / STATE_DIR / 'logs'}")
    handles = {h.job_id: h for h in handles}
    if not wait:
        print("check with the same command plus --status (e.g. python -m actid.sweep "
              f"{experiment} --launcher slurm --status ...)")
        return states(out, names, cluster, handles)
    return follow(out, names, cluster, poll_s, f"{experiment}/{profile}", handles)


def follow(out: Path, names: list[str], cluster: str = "slurm", poll_s: float = 5.0, desc: str = "",
           handles: dict | None = None) -> list[RunState]:
    """Poll until no run's job is active, with a bar of finished runs and a line per change of state; then report
    every failed run with its job id, grid point, log tail and log path, and fail if there was one."""
    seen: dict[str, str] = {}
    failures = 0
    with tqdm(total=len(names), desc=desc, unit="run", dynamic_ncols=True) as bar:
        while True:
            try:
                now = states(out, names, cluster, handles)
                failures = 0
            except RuntimeError as err:  # sacct did not answer this time (slurmdbd restarting, overloaded, ...)
                failures += 1
                if failures > 10:
                    raise
                tqdm.write(f"{err}; retrying in {poll_s:.0f} s (the jobs are unaffected)")
                time.sleep(poll_s)
                continue
            for s in now:
                if seen.get(s.name) != s.state + str(s.slurm_state):
                    seen[s.name] = s.state + str(s.slurm_state)
                    tqdm.write(s.line())
            bar.n = sum(s.state == "finished" for s in now)
            counts = {k: sum(s.state == k for s in now) for k in ALIVE + ("failed",)}
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.items() if v))
            bar.refresh()
            if not any(counts[k] for k in ALIVE):
                break
            time.sleep(poll_s)
    report(out, now, cluster)
    return now


def report(out: Path, now: list[RunState], cluster: str = "slurm") -> None:
    """Say what failed (with its log) and how to continue; raise SystemExit if a run is not finished."""
    failed = [s for s in now if s.state == "failed"]
    for s in failed:
        tail, path = log_tail(out, s.job_id, cluster)
        print(f"\nFAILED: {s.name} (job {s.job_id}, {s.slurm_state}); full log: {path}\n{tail}")
    unfinished = [s for s in now if s.state != "finished"]
    if unfinished:
        raised = [s.name for s in failed if Run(out / s.name).failure]
        lines = [f"{len(unfinished)} of {len(now)} run(s) not finished ({len(failed)} failed)"]
        if len(unfinished) > len(raised):
            lines.append("rerun the same command to resubmit the ones stopped from outside (killed, time limit, node "
                         "lost): they resume from their checkpoints")
        if raised:
            lines.append(f"{', '.join(raised)} raised an error (its failed.json says why) and will not be submitted "
                         "again: fix the config, or rerun with --restart to train it again from step 0")
        raise SystemExit("; ".join(lines))


def print_status(experiment: str, params: dict, out: Path, profile: str, overrides: dict,
                 cluster: str = "slurm") -> list[RunState]:
    """``--status``: every grid point's state (no file changes, nothing submitted)."""
    _, points = sweep_points(params, experiment, profile)
    now = states(Path(out), [run_name(p) for p in points], cluster)
    for s in now:
        print(s.line())
    counts = {k: sum(s.state == k for s in now) for k in ("finished", *ALIVE, "failed", "not submitted")}
    print(f"{experiment}/{profile}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return now
