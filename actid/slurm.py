"""A sweep's pending grid points as a SLURM job array, through submitit: ``python -m actid.sweep EXP --launcher slurm``.

The submitting host validates the grid and classifies the run directories exactly as the local launcher does
(:func:`actid.sweep.plan`: a bad grid changes nothing; stale runs are set aside, never deleted), downloads the data
the runs need once (CIFAR, MNIST), then submits **one array task per unfinished grid point**: finished runs are never
resubmitted, and a run whose job is still pending or running is waited on, not submitted twice. Each task trains its
run with the same code as the local launcher, in the same run directory, with ``threads`` CPU threads.

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
import importlib
import json
import os
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from actid.runs import Run, atomic_write_text

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
"""SLURM job states of a job that may still write its run (UNKNOWN: just submitted, not yet in the accounting)."""
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
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: enough to finish an evaluation
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

        from actid.sweep import EXPERIMENTS
        from actid.train import TrainingInterrupted, train

        torch.set_num_threads(threads)
        os.environ.setdefault("TQDM_MININTERVAL", "30")  # a bar line every 30 s in the job's log
        run = Run(Path(out) / name)
        if run.is_finished:
            return "finished earlier"
        run.write_config(config, {"experiment": experiment, "profile": profile})
        module = importlib.import_module(EXPERIMENTS[experiment])
        task, train_cfg = module.build(config)
        with _flags_on(signal.SIGUSR2, signal.SIGTERM) as (received, handover):
            try:
                train(task, train_cfg, run, interrupt=lambda: bool(received))
            except TrainingInterrupted as err:
                if signal.SIGUSR2 in received:
                    print(f"{err}; time limit near: handing over to submitit to requeue", flush=True)
                    handover(signal.SIGUSR2)  # submitit requeues the job and exits
                raise SystemExit(f"{err}; stopped by signal {received[0]}: rerun the sweep to resume") from None
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


def executor(out: Path, options: SlurmOptions, experiment: str, cluster: str = "slurm"):
    """A submitit executor for this sweep's tasks (``cluster="local"``: processes on this machine, for tests)."""
    import submitit
    ex = submitit.AutoExecutor(folder=out / STATE_DIR / "logs", cluster=cluster,
                               slurm_max_num_timeout=options.max_requeues)
    ex.update_parameters(name=f"actid-{experiment}", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
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
    """SLURM's state word (``CANCELLED by 0`` -> ``CANCELLED``)."""
    return str(handle.state).split()[0].upper()


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


def states(out: Path, names: list[str], cluster: str = "slurm", handles: dict | None = None) -> list[RunState]:
    """The state of every named run, from its directory and its recorded job (the run directory decides
    ``finished``; SLURM's accounting decides whether an unfinished run's job is still alive). ``handles``: job
    id -> submitit job, for jobs submitted by this process."""
    jobs, result, handles = read_jobs(out), [], handles or {}
    for name in names:
        run, record = Run(out / name), jobs.get(name)
        if run.is_finished:
            result.append(RunState(name, "finished", record and record["job_id"], None, last_step(run)))
            continue
        if record is None:
            result.append(RunState(name, "not submitted", step=last_step(run)))
            continue
        slurm_state = job_state(handles.get(record["job_id"]) or job(out, record["job_id"], cluster))
        state = ("failed" if slurm_state not in ACTIVE else "submitted" if slurm_state == "UNKNOWN"
                 else "pending" if slurm_state.startswith(("PENDING", "REQUEUE")) else "running")
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
    from actid.sweep import plan, prepare, tidy

    out = Path(out)
    earlier = read_jobs(out)
    live = {name for name, record in earlier.items()
            if not Run(out / name).is_finished and job_state(job(out, record["job_id"], cluster)) in ACTIVE}
    planned, stale = plan(experiment, params, out, profile, overrides, restart=restart,
                          threads=options.run_threads, busy=live)
    moving = sorted(live & ({p.name for p in planned if p.action == "restart"} | {r.name for r in stale}))
    if moving:
        raise SystemExit("nothing was changed: run(s) " + ", ".join(f"{n} (job {earlier[n]['job_id']})" for n in moving)
                         + " would be set aside, but their jobs are still active; wait for them or scancel them")
    tidy(planned, stale, out, profile)
    prepare(experiment, params, profile, overrides)
    todo = [p for p in planned if p.action != "skip" and p.name not in live]
    if todo:
        ex = executor(out, options, experiment, cluster)
        handles = ex.map_array(RunTask(), *zip(*[(experiment, profile, str(out.resolve()), p.name, p.config,
                                                  options.run_threads) for p in todo]))
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        earlier.update({p.name: {"job_id": h.job_id, "submitted": now} for p, h in zip(todo, handles)})
        _write_jobs(out, earlier)
    names = [p.name for p in planned]
    array = f" (array job {handles[0].job_id.split('_')[0]})" if todo else ""
    print(f"{experiment}/{profile}: {len(todo)} run(s) submitted{array}, {len(live)} still running from before, "
          f"{sum(p.action == 'skip' for p in planned)} finished earlier; logs in {out / STATE_DIR / 'logs'}")
    handles = {h.job_id: h for h in handles} if todo else {}
    if not wait:
        print(f"check with: python -m actid.sweep {experiment} --launcher slurm --status"
              + (f" --out {out}" if out != Path("runs") / experiment else ""))
        return states(out, names, cluster, handles)
    return follow(out, names, cluster, poll_s, f"{experiment}/{profile}", handles)


def follow(out: Path, names: list[str], cluster: str = "slurm", poll_s: float = 5.0, desc: str = "",
           handles: dict | None = None) -> list[RunState]:
    """Poll until no run's job is active, with a bar of finished runs and a line per change of state; then report
    every failed run with its job id, grid point, log tail and log path, and fail if there was one."""
    seen: dict[str, str] = {}
    with tqdm(total=len(names), desc=desc, unit="run", dynamic_ncols=True) as bar:
        while True:
            now = states(out, names, cluster, handles)
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
        raise SystemExit(f"{len(unfinished)} of {len(now)} run(s) not finished ({len(failed)} failed); rerun the same "
                         "command to resubmit them: they resume from their checkpoints")


def print_status(experiment: str, params: dict, out: Path, profile: str, overrides: dict,
                 cluster: str = "slurm") -> list[RunState]:
    """``--status``: every grid point's state (no file changes, nothing submitted)."""
    from actid.sweep import sweep_points, run_name
    _, points = sweep_points(params, experiment, profile)
    now = states(Path(out), [run_name(p) for p in points], cluster)
    for s in now:
        print(s.line())
    counts = {k: sum(s.state == k for s in now) for k in ("finished", *ALIVE, "failed", "not submitted")}
    print(f"{experiment}/{profile}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return now
