"""Sweeps through SLURM (actid/slurm.py): the launcher logic on submitit's local executor, and, marked `slurm`, the
real thing against a SLURM cluster (CI starts a single-node one with .ci/slurm.sh): identical results to the local
launcher, failures reported with their logs, scancel detected and resumed, time limits checkpointed and requeued,
--no-wait + --status, and GPU requests."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from actid.experiments.grokking import build, resolve
from actid.pipeline import slurm
from actid.runs import Run
from actid.train import TrainingInterrupted, train

TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32,
        "steps": 12, "eval_every": 4, "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}
LONG = {**TINY, "steps": 3000, "eval_every": 500}  # ~25 s on one thread: long enough to be cancelled midway
LONGER = {**TINY, "steps": 14000, "eval_every": 1000}  # ~100 s: outlasts SLURM's time-limit warning window
GEOMETRY = {"train_images": 300, "width": 16, "epochs": 2, "eval_log_points": 2, "device": "cpu",
            "measures": {"id": {"probe": "val", "estimator": "twonn"}}}


def write_params(path: Path, experiment: str, fixed: dict, grid: dict) -> Path:
    path.write_text(yaml.safe_dump({"profile": "tiny", experiment: {"tiny": {"fixed": fixed, "grid": grid}}}))
    return path


def sweep(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    """``python -m actid.sweep ARGS`` as a user types it; stdout and stderr together."""
    done = subprocess.run([sys.executable, "-m", "actid.sweep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = (done.stdout + done.stderr).replace("\r", "\n")
    if check and done.returncode != 0:
        raise AssertionError(f"sweep {args} failed ({done.returncode}):\n{out[-4000:]}")
    done.output = out
    return done


def metrics(out: Path) -> dict[str, bytes]:
    return {d.name: (d / "metrics.csv").read_bytes() for d in sorted(out.iterdir()) if not d.name.startswith(".")}


# --- without SLURM -----------------------------------------------------------------------------------------------

def test_an_interrupted_run_checkpoints_at_that_step_and_resumes_to_the_uninterrupted_result(tmp_path):
    config = resolve(TINY)
    full = train(*build(config), tmp_path / "full", progress=False)
    run = Run(tmp_path / "cut")
    run.write_config(config, {"experiment": "grokking", "profile": "test"})
    calls = []  # asked after the evaluation at step 0, steps 1-3, the evaluation at 4, step 5: the 6th says stop
    with pytest.raises(TrainingInterrupted, match="interrupted at step 5"):
        train(*build(config), run, progress=False, interrupt=lambda: calls.append(1) or len(calls) >= 6)
    assert run.load_checkpoint()["step"] == 5 and not run.is_finished  # between the evaluations at 4 and 8
    resumed = train(*build(config), run, progress=False)
    pd.testing.assert_frame_equal(resumed, full)
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "full" / "metrics.csv").read_bytes()


def test_the_local_executor_runs_each_unfinished_point_once_like_the_local_launcher(tmp_path):
    params = yaml.safe_load(write_params(tmp_path / "params.yaml", "grokking", TINY,
                                         {"weight_decay": [0.0, 0.1]}).read_text())
    options = slurm.SlurmOptions(threads=1)
    now = slurm.submit("grokking", params, tmp_path / "runs", "tiny", {}, options, cluster="local", poll_s=0.5)
    assert [s.state for s in now] == ["finished", "finished"]
    jobs = slurm.read_jobs(tmp_path / "runs")
    assert sorted(jobs) == ["weight_decay=0.0", "weight_decay=0.1"]
    sweep("grokking", "--params", tmp_path / "params.yaml", "--threads", 1, "--out", tmp_path / "local")
    assert metrics(tmp_path / "runs") == metrics(tmp_path / "local")
    again = slurm.submit("grokking", params, tmp_path / "runs", "tiny", {}, options, cluster="local", poll_s=0.5)
    assert [s.state for s in again] == ["finished", "finished"] and slurm.read_jobs(tmp_path / "runs") == jobs


def test_a_failing_task_on_the_local_executor_is_reported_with_its_log(tmp_path, capsys):
    params = yaml.safe_load(write_params(tmp_path / "params.yaml", "geometry", GEOMETRY,
                                         {"manifold_points": [4, 400]}).read_text())
    with pytest.raises(SystemExit, match="1 of 2 run.s. not finished .1 failed.; manifold_points=400 raised an error "
                                         ".*--restart"):
        slurm.submit("geometry", params, tmp_path / "runs", "tiny", {}, slurm.SlurmOptions(threads=1),
                     cluster="local", poll_s=0.5)
    printed = capsys.readouterr().out
    assert "FAILED: manifold_points=400 (job" in printed and "fewer than manifold_points" in printed
    assert Run(tmp_path / "runs" / "manifold_points=4").is_finished


def test_launcher_options_come_from_params_then_the_command_line_and_are_checked():
    params = {"launcher": {"slurm": {"partition": "gpu", "cpus_per_task": 8, "sbatch": {"account": "abc"}}}}
    options = slurm.SlurmOptions.from_params(params, {"cpus_per_task": 4, "partition": None})
    assert (options.partition, options.cpus_per_task, options.run_threads, options.sbatch) == ("gpu", 4, 4,
                                                                                                {"account": "abc"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gpus'\]"):
        slurm.SlurmOptions.from_params({"launcher": {"slurm": {"gpus": 1}}}, {})
    with pytest.raises(ValueError, match="cpus_per_task must be an integer >= 1"):
        slurm.SlurmOptions(cpus_per_task=0)
    with pytest.raises(ValueError, match="signal_delay_s 120 must be shorter than the time limit"):
        slurm.SlurmOptions(time_min=2, signal_delay_s=120)


def test_job_states_from_sacct_ids_and_the_grace_for_jobs_missing_from_the_accounting():
    assert slurm._expand("12_[0-2,5%4]") == ["12_0", "12_1", "12_2", "12_5"] and slurm._expand("12_3") == ["12_3"]
    just_now, long_ago = {"submitted_s": time.time()}, {"submitted_s": time.time() - 2 * slurm.UNKNOWN_GRACE_S}
    assert [slurm.run_state(s, just_now) for s in ("UNKNOWN", "PENDING", "REQUEUED", "RUNNING", "CANCELLED",
                                                   "PREEMPTED", "TIMEOUT", "NODE_FAIL", "COMPLETED")] == \
        ["submitted", "pending", "pending", "running", "failed", "failed", "failed", "failed", "failed"]
    assert slurm.run_state("UNKNOWN", long_ago) == "failed"  # lost: resubmitted by the next run of the command
    with pytest.raises(ValueError, match="mem_gb must be a positive number"):
        slurm.SlurmOptions(mem_gb="16G")


def test_signal_flags_record_and_always_restore_the_previous_handlers():
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(RuntimeError):
        with slurm._flags_on(signal.SIGUSR2) as (received, _):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert received == [signal.SIGUSR2]
            raise RuntimeError("the body fails")
    assert signal.getsignal(signal.SIGUSR2) == before


def test_status_and_no_wait_belong_to_the_slurm_launcher(tmp_path):
    write_params(tmp_path / "params.yaml", "grokking", TINY, {"weight_decay": [0.0]})
    done = sweep("grokking", "--params", tmp_path / "params.yaml", "--status", check=False)
    assert done.returncode != 0 and "add --launcher slurm" in done.output


# --- against a real SLURM ----------------------------------------------------------------------------------------

def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no SLURM here; .ci/slurm.sh install && .ci/slurm.sh up DIR starts one)"
    try:
        subprocess.run(["sinfo", "-h"], check=True, capture_output=True, timeout=20)
    except (subprocess.SubprocessError, OSError) as err:
        return f"sinfo fails ({err}); is SLURM_CONF set and the cluster up?"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("ACTID_REQUIRE_SLURM") == "1":
            pytest.fail(f"ACTID_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def long_local(tmp_path_factory, cluster):
    """The uninterrupted result of the LONG run, trained by the local launcher on one thread."""
    tmp = tmp_path_factory.mktemp("long")
    sweep("grokking", "--params", write_params(tmp / "params.yaml", "grokking", LONG, {"weight_decay": [0.1]}),
          "--threads", 1, "--out", tmp / "runs")
    return (tmp / "runs" / "weight_decay=0.1" / "metrics.csv").read_bytes()


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sacct(job_id: str, fields: str = "JobID,State") -> str:
    return subprocess.run(["sacct", "-n", "-P", "--duplicates", "-j", job_id, "-o", fields], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slurm
def test_a_sweep_through_slurm_equals_the_local_launcher_and_is_not_resubmitted(tmp_path, cluster):
    params = write_params(tmp_path / "params.yaml", "grokking", TINY, {"weight_decay": [0.0, 0.1, 0.2, 0.3]})
    done = sweep("grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", tmp_path / "slurm")
    assert "4 run(s) submitted (array job" in done.output
    sweep("grokking", "--params", params, "--threads", 1, "--out", tmp_path / "local")
    assert metrics(tmp_path / "slurm") == metrics(tmp_path / "local")  # byte for byte
    jobs = slurm.read_jobs(tmp_path / "slurm")
    assert len({j["job_id"].split("_")[0] for j in jobs.values()}) == 1 and len(jobs) == 4  # one array, 4 tasks
    again = sweep("grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", tmp_path / "slurm")
    assert "0 run(s) submitted" in again.output and "4 finished earlier" in again.output


@pytest.mark.slurm
def test_a_failing_task_is_reported_with_job_id_grid_point_and_log(tmp_path, cluster):
    params = write_params(tmp_path / "params.yaml", "geometry", GEOMETRY, {"manifold_points": [4, 400]})
    done = sweep("geometry", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", tmp_path / "runs",
                 check=False)
    assert done.returncode != 0
    job_id = slurm.read_jobs(tmp_path / "runs")["manifold_points=400"]["job_id"]
    assert f"FAILED: manifold_points=400 (job {job_id}" in done.output
    assert "fewer than manifold_points" in done.output  # the last lines of its log
    log = done.output.split("full log: ", 1)[1].split("\n", 1)[0]
    assert Path(log).exists() and "Traceback" in Path(log).read_text()
    assert "1 of 2 run(s) not finished (1 failed); manifold_points=400 raised an error" in done.output
    assert Run(tmp_path / "runs" / "manifold_points=4").is_finished


@pytest.mark.slurm
def test_a_cancelled_task_is_detected_and_the_rerun_resumes_it(tmp_path, cluster, long_local):
    params = write_params(tmp_path / "params.yaml", "grokking", LONG, {"weight_decay": [0.1]})
    out, run = tmp_path / "runs", Run(tmp_path / "runs" / "weight_decay=0.1")
    sweep("grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", out, "--no-wait")
    first = slurm.read_jobs(out)[run.name]["job_id"]
    again = sweep("grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", out, "--no-wait")
    assert "0 run(s) submitted" in again.output and "1 still running from before" in again.output
    assert slurm.read_jobs(out)[run.name]["job_id"] == first  # waited on, not submitted twice
    wait_until(lambda: (slurm.last_step(run) or 0) >= 500, 120, "the first evaluations")
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: "CANCELLED" in sacct(first) and not run.is_locked(), 60, "the cancelled task to stop")
    status = sweep("grokking", "--params", params, "--launcher", "slurm", "--out", out, "--status").output
    assert f"failed  weight_decay=0.1  (job {first} CANCELLED" in status
    stopped_at = run.load_checkpoint()["step"]
    assert 500 <= stopped_at < 3000
    done = sweep("grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", out)
    assert "1 run(s) submitted" in done.output and run.is_finished
    assert slurm.read_jobs(out)[run.name]["job_id"] != first
    assert run.metrics_path.read_bytes() == long_local  # resumed from step `stopped_at`: nothing lost or doubled


@pytest.mark.slurm
def test_a_task_at_its_time_limit_checkpoints_and_is_requeued(tmp_path, cluster):
    """A 2-minute limit with the warning 75 s before it, on a ~100 s run. SLURM checks time limits about every 30 s,
    so the warning comes 15-75 s into the task: always during training. The task checkpoints at that step and
    submitit requeues it; the test then lifts the requeued job's limit and SLURM's ~2-minute hold on requeued jobs,
    so it finishes in one more attempt. The rerun of the command waits for it, and the result equals the
    uninterrupted run's (trained by the local launcher alongside, on the other core)."""
    params = write_params(tmp_path / "params.yaml", "grokking", LONGER, {"weight_decay": [0.1]})
    out, run = tmp_path / "runs", Run(tmp_path / "runs" / "weight_decay=0.1")
    command = ["grokking", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", out, "--time-min", 2,
               "--signal-delay-s", 75]
    sweep(*command, "--no-wait")
    local = subprocess.Popen([sys.executable, "-m", "actid.sweep", "grokking", "--params", params, "--threads", "1",
                              "--out", tmp_path / "local"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        requeued_and_resumed(out, run, command)
        assert local.wait(timeout=300) == 0
    finally:
        local.kill()
    assert run.metrics_path.read_bytes() == (tmp_path / "local" / run.name / "metrics.csv").read_bytes()


def requeued_and_resumed(out: Path, run: Run, command: list) -> None:
    """The checks of the time-limit test (the run is ~100 s on CI's 2-core machines: a machine much faster than
    that could finish it before SLURM's warning, and this test would then fail on the first wait)."""
    job_id = slurm.read_jobs(out)[run.name]["job_id"]
    log_path = out / ".slurm" / "logs" / f"{job_id}_0_log.out"
    log = lambda: log_path.read_text().replace("\r", "\n") if log_path.exists() else ""  # noqa: E731
    wait_until(lambda: "Requeued job" in log(), 150, "the time-limit warning and the requeue")
    first_attempt = log().split("Requeued job")[0]
    assert f"{run.name}: training" in first_attempt
    assert "time limit near: handing over to submitit to requeue" in first_attempt
    squeue = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    wait_until(lambda: subprocess.run(squeue, capture_output=True, text=True).stdout.strip() == "PENDING", 60,
               "the requeued job to be pending")
    for change in ("TimeLimit=10", "StartTime=now"):
        subprocess.run(["scontrol", "update", f"JobId={job_id}", change], check=True)
    done = sweep(*command)
    assert "0 run(s) submitted" in done.output and "1 still running from before" in done.output
    # the run's files are final before its job ends; SLURM's accounting records the end a moment later
    assert run.is_finished and wait_until(lambda: "COMPLETED" in sacct(job_id), 60, "the job's end in sacct")
    assert "REQUEUED" in sacct(job_id)
    assert f"{run.name}: training (resuming from its checkpoint)" in log().split("Requeued job")[1]


@pytest.mark.slurm
def test_no_wait_then_status_reports_the_states_the_waiting_command_reports(tmp_path, cluster):
    params = write_params(tmp_path / "params.yaml", "geometry", GEOMETRY, {"manifold_points": [4, 400]})
    out = tmp_path / "runs"
    submitted = sweep("geometry", "--params", params, "--launcher", "slurm", "--threads", 1, "--out", out,
                      "--no-wait").output
    assert "check with the same command plus --status" in submitted

    def settled():
        text = sweep("geometry", "--params", params, "--launcher", "slurm", "--out", out, "--status").output
        return text if "0 submitted, 0 pending, 0 running" in text else None

    status = wait_until(settled, 180, "both tasks to end", poll=2)
    jobs = slurm.read_jobs(out)
    assert f"finished  manifold_points=4  (job {jobs['manifold_points=4']['job_id']}" in status
    assert f"failed  manifold_points=400  (job {jobs['manifold_points=400']['job_id']} FAILED" in status
    assert "geometry/tiny: 1 finished, 0 submitted, 0 pending, 0 running, 1 failed, 0 not submitted" in status
    # the failed point raised (failed.json): the same command without --no-wait reports it and submits nothing
    waiting = sweep("geometry", "--params", params, "--launcher", "slurm", "--out", out, check=False)
    assert waiting.returncode != 0 and "0 run(s) submitted" in waiting.output
    assert "manifold_points=400: failed earlier" in waiting.output and "--restart" in waiting.output
    assert slurm.read_jobs(out)["manifold_points=400"]["job_id"] == jobs["manifold_points=400"]["job_id"]
    # --restart submits it again (the finished point stays finished), and it fails again the same way
    again = sweep("geometry", "--params", params, "--launcher", "slurm", "--out", out, "--restart", check=False)
    assert "1 run(s) submitted" in again.output and "1 finished earlier" in again.output
    assert "FAILED: manifold_points=400" in again.output and "1 of 2 run(s) not finished (1 failed)" in again.output
    assert "manifold_points=400 raised an error" in again.output


@pytest.mark.slurm
def test_a_gpu_request_is_scheduled(tmp_path, cluster):
    """The scheduler accepts --gpus-per-node 1 and gives the task a GPU (CI's cluster has two fake GPU files)."""
    params = write_params(tmp_path / "params.yaml", "grokking", TINY, {"weight_decay": [0.0]})
    sweep("grokking", "--params", params, "--launcher", "slurm", "--gpus-per-node", 1, "--out", tmp_path / "runs")
    job_id = slurm.read_jobs(tmp_path / "runs")["weight_decay=0.0"]["job_id"]
    assert "gres/gpu=1" in sacct(job_id, "JobID,AllocTRES%200")
    script = next((tmp_path / "runs" / ".slurm" / "logs").glob("*_submission.sh")).read_text()
    assert "--gpus-per-node=1" in script
    assert Run(tmp_path / "runs" / "weight_decay=0.0").is_finished
