"""Hostile inputs and crowded results folders: a run folder is data (loading it runs nothing), a lock is never a
way to write elsewhere, two writers never share a run, a bad value changes nothing on disk, a failing run does not
block its shard, and a full disk leaves the previous rows intact."""

import errno
import json
import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from actid.pipeline.grid import InvalidSweep, resolve_grid, run_name
from actid.pipeline.local import run_sweep
from actid.pipeline.plan import plan
from actid.runs import RUN_FORMAT, CheckpointRefused, LockRefused, Run, RunFormatError, load_runs
from actid.sweep import main as sweep_main

TINY = {"p": 13, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32, "steps": 40, "eval_every": 20,
        "optimizer": "adamw", "train_fraction": 0.5, "measures": {"id": {"options": {"n_resamples": 3}}},
        "device": "cpu"}


def params(grid=None, **fixed):
    return {"profile": "tiny", "grokking": {"tiny": {"fixed": {**TINY, **fixed},
                                                      **({"grid": grid} if grid is not None else {})}}}


def listing(root) -> list[str]:
    """Every path under ``root`` with its type and size: what `find -printf` shows."""
    return sorted(f"{p.relative_to(root)} {'d' if p.is_dir() else p.stat().st_size}" for p in root.rglob("*"))


def interrupted_run(root, **fixed):
    """A grokking run stopped after its first evaluation (a checkpoint, no done.json)."""
    run_sweep("grokking", params({"seed": [0]}, **fixed), root, "tiny", stop_after=20)
    run = Run(root / "seed=0")
    assert run.checkpoint_path.exists() and not run.is_finished
    return run


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_hostile_checkpoint_is_refused_and_nothing_in_it_runs(tmp_path):
    run = interrupted_run(tmp_path / "runs")
    pwned = tmp_path / "PWNED"
    run.checkpoint_path.write_bytes(pickle.dumps({"model": Evil(pwned), "step": 20}))
    before = listing(tmp_path / "runs")
    with pytest.raises(SystemExit, match="nothing was changed(.|\n)*was not loaded(.|\n)*--restart"):
        run_sweep("grokking", params({"seed": [0]}), tmp_path / "runs", "tiny")
    assert not pwned.exists() and listing(tmp_path / "runs") == before
    with pytest.raises(CheckpointRefused, match="Nothing in it was run"):
        run.load_checkpoint()
    # --restart moves the run aside (never deleted) and trains it again from step 0
    run_sweep("grokking", params({"seed": [0]}), tmp_path / "runs", "tiny", restart=True)
    assert run.is_finished and not pwned.exists()
    assert len(list((tmp_path / "runs" / ".stale").iterdir())) == 1


def test_a_checkpoint_holds_only_tensors_and_plain_values(tmp_path):
    run = interrupted_run(tmp_path / "runs")
    state = torch.load(run.checkpoint_path, weights_only=True)  # would raise for any pickled object
    assert state["step"] == 20 and all(isinstance(v, (int, float)) for row in state["rows"] for v in row.values())


def test_a_symlinked_or_hard_linked_lock_is_refused_and_its_target_untouched(tmp_path):
    run = interrupted_run(tmp_path / "runs")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    run.lock_path.unlink()
    run.lock_path.symlink_to(victim)
    with pytest.raises(SystemExit, match="nothing was changed(.|\n)*symbolic link"):
        run_sweep("grokking", params({"seed": [0]}), tmp_path / "runs", "tiny")
    with pytest.raises(LockRefused, match="symbolic link"):
        with run.lock():
            pass
    run.lock_path.unlink()
    os.link(victim, run.lock_path)  # a hard link: the same file under the run's name
    with pytest.raises(LockRefused, match="hard link"):
        with run.lock():
            pass
    assert victim.read_text() == "precious data\n"


def test_the_lock_is_opened_for_writing_without_following_links_or_truncating(tmp_path, monkeypatch):
    run, flags = Run(tmp_path / "run"), []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flag, *a: flags.append(flag) or real_open(path, flag, *a))
    with run.lock():
        run.is_locked()
    assert flags and all(f & os.O_NOFOLLOW and f & os.O_RDWR and not f & os.O_TRUNC for f in flags)


@pytest.mark.parametrize("code", [errno.EBADF, errno.ENOLCK])
def test_a_filesystem_without_locks_is_reported_not_crashed_on(tmp_path, monkeypatch, code):
    """NFS without its lock service answers flock with EBADF or ENOLCK (not testable here without NFS)."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(code, os.strerror(code))
    run = Run(tmp_path / "run")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LockRefused, match=f"errno {code}(.|\n)*local --out"):
        with run.lock():
            pass
    run.lock_path.touch()
    with pytest.raises(LockRefused):
        run.is_locked()


def test_a_run_held_by_another_process_is_never_written_into(tmp_path):
    out = tmp_path / "runs"
    run_sweep("grokking", params({"seed": [0]}, lr=0.001), out, "tiny")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from actid.runs import Run\n"
                               "with Run(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(60)",
                               str(out / "seed=0")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = listing(out)
        # another config for the held run: setting it aside would move it under its writer
        with pytest.raises(SystemExit, match="nothing was changed(.|\n)*being written by another process"):
            run_sweep("grokking", params({"seed": [0]}, lr=0.005), out, "tiny")
        assert listing(out) == before
        # a new grid point beside it trains; the held one is not touched
        run_sweep("grokking", params({"seed": [0, 1]}, lr=0.001), out, "tiny")
        held = [x for x in listing(out) if x.startswith("seed=0")]
        assert Run(out / "seed=1").is_finished and held == [x for x in before if x.startswith("seed=0")]
    finally:
        holder.kill()
        holder.wait()


SLOW_CONFIG = """
import time
import actid.runs
_write = actid.runs.Run.write_config
def slow(self, *args, **kwargs):
    _write(self, *args, **kwargs)
    time.sleep(2)
actid.runs.Run.write_config = slow
"""


@pytest.mark.slow
def test_two_concurrent_sweeps_on_one_out_never_mix_configs_and_rows(tmp_path):
    """Two sweeps with different learning rates, started together, each slowed after writing a config.json: every
    run folder ends with the rows of the config it holds (constant schedule: learning_rate == lr in every row)."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SLOW_CONFIG)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'inject'}:{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params({"seed": [0, 1]})))
    procs = [subprocess.Popen([sys.executable, "-m", "actid.sweep", "grokking", "--params", str(tmp_path / "p.yaml"),
                               "--out", str(tmp_path / "runs"), "--set", f"lr={lr}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for lr in (0.001, 0.005)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert any(p.returncode == 0 for p in procs), outputs
    folders = [d for d in (tmp_path / "runs").rglob("config.json")]
    assert folders
    for config in folders:
        run = Run(config.parent)
        if run.metrics_path.exists():
            rows = run.read_metrics()
            assert (rows["learning_rate"] == run.config["lr"]).all(), (config, outputs)


@pytest.mark.parametrize("bad", ["train_fraction=1.5", "dropout=1.5", "lr=-1", "p=1", "p=12", "operation=pow",
                                 "batch_size=0", "seed=-1", "device=gpu", "measures={id: {every: 0}}"])
def test_a_bad_value_changes_nothing_on_disk(tmp_path, bad):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params({"seed": [0, 1]}, steps=20)))
    argv = ["grokking", "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "runs")]
    sweep_main(argv)
    before = listing(tmp_path / "runs")
    with pytest.raises(SystemExit, match="nothing was changed"):
        sweep_main([*argv, "--set", bad])
    assert listing(tmp_path / "runs") == before


def test_an_empty_grid_list_and_set_on_a_grid_key_are_refused(tmp_path):
    with pytest.raises(InvalidSweep, match=r"\['seed'\] list no values"):
        resolve_grid("grokking", params({"seed": []}), "tiny")
    with pytest.raises(InvalidSweep, match="--set weight_decay=... would train every grid point"):
        resolve_grid("grokking", params({"weight_decay": [0, 1.0]}), "tiny", {"weight_decay": 0.5})


def test_run_folders_stay_inside_out_with_safe_names(tmp_path):
    assert run_name({"weight_decay": 0.0001, "seed": 1}) == "weight_decay=0.0001,seed=1"  # as before: runs reused
    assert run_name({"recipe": "cifar100", "weight_decay": 1e-06, "dropout": 0.0}) == \
        "recipe=cifar100,weight_decay=1e-06,dropout=0.0"
    escape = run_name({"data_dir": "x/../../escape"})
    assert escape.startswith("data_dir=sha-") and "/" not in escape
    assert run_name({"measures": {"id": {}}}).startswith("measures=sha-") and run_name({}) == "run"
    # a profile without a grid gets a named run inside --out
    run_sweep("grokking", params(None, steps=20), tmp_path / "runs", "tiny")
    assert Run(tmp_path / "runs" / "run").is_finished and not (tmp_path / "runs" / "config.json").exists()


def test_names_of_the_committed_results_are_unchanged():
    """The committed paper runs keep their folder names (their grid points are simple values)."""
    from actid.paths import ROOT
    from actid.pipeline.grid import sweep_points
    paper = yaml.safe_load((ROOT / "params.yaml").read_text())
    _, points = sweep_points(paper, "grokking", "paper")
    folders = {p.name for p in (ROOT / "results" / "paper" / "grokking").iterdir() if p.is_dir()}
    assert {run_name(p) for p in points} == folders
    assert load_runs(ROOT / "results" / "paper" / "grokking")["run"].nunique() == 16


def test_runs_without_a_format_are_reused_and_newer_formats_refused(tmp_path):
    out = tmp_path / "runs"
    run_sweep("grokking", params({"seed": [0]}, steps=20), out, "tiny")
    config = out / "seed=0" / "config.json"
    meta = json.loads(config.read_text())
    assert meta["format"] == RUN_FORMAT
    config.write_text(json.dumps({k: v for k, v in meta.items() if k != "format"}))  # a run of before the key
    planned, stale = plan("grokking", params({"seed": [0]}, steps=20), out, "tiny")
    assert [p.action for p in planned] == ["skip"] and not stale
    config.write_text(json.dumps({**meta, "format": RUN_FORMAT + 1}))
    with pytest.raises(RunFormatError, match=f"format {RUN_FORMAT + 1}(.|\n)*upgrade actid"):
        load_runs(out)


MNIST = {"train_images": 100, "val_images": 100, "steps": 40, "eval_log_points": 4, "width": 16, "batch_size": 50,
         "device": "cpu"}


def test_a_diverging_run_is_recorded_and_the_shard_goes_on(tmp_path):
    grid = {"mnist_grokking": {"tiny": {"fixed": MNIST, "grid": {"init_scale": [1e30, 8.0]}}}}
    out = tmp_path / "runs"
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed: init_scale=1e\\+30"):
        run_sweep("mnist_grokking", grid, out, "tiny")
    bad, good = Run(out / "init_scale=1e+30"), Run(out / "init_scale=8.0")
    assert good.is_finished and bad.failure["error"] == "ValueError" and not bad.is_finished
    before = listing(out)
    with pytest.raises(SystemExit, match="failed"):  # reported again, not replayed
        run_sweep("mnist_grokking", grid, out, "tiny")
    assert listing(out) == before
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed"):  # --restart trains it again (and it fails again)
        run_sweep("mnist_grokking", grid, out, "tiny", restart=True)
    assert len(list((out / ".stale").iterdir())) == 1 and Run(out / "init_scale=1e+30").failure


def test_a_full_disk_during_a_row_write_keeps_the_previous_rows(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    run = interrupted_run(out)
    rows = run.metrics_path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".metrics.csv."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device while writing .*metrics.csv(.|\n)*previous version"):
        run_sweep("grokking", params({"seed": [0]}), out, "tiny")
    assert run.metrics_path.read_bytes() == rows and not run.failure  # the disk's fault, not the run's
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "fsync", real_fsync)
    run_sweep("grokking", params({"seed": [0]}), out, "tiny")  # space again: it resumes and finishes
    assert run.is_finished


@pytest.mark.slow
def test_a_sweep_killed_20_times_at_random_points_ends_with_the_rows_of_an_uninterrupted_one(tmp_path):
    """SIGKILL at random times (start-up, training steps, evaluations, checkpoint and row writes), 20 times, then
    let it finish: the rows equal an uninterrupted run's, bit for bit."""
    import random
    import signal
    import time
    p = params({"seed": [0]}, steps=10000, eval_every=50)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    cmd = [sys.executable, "-m", "actid.sweep", "grokking", "--params", str(tmp_path / "p.yaml"),
           "--out", str(tmp_path / "killed"), "--threads", str(torch.get_num_threads())]
    rng, steps_seen = random.Random(0), []
    run = Run(tmp_path / "killed" / "seed=0")

    def rows() -> int:
        try:
            return len(run.read_metrics())
        except (FileNotFoundError, ValueError):
            return 0

    for _ in range(20):
        start = rows()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while rows() <= start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until it trains again (a new row), however slow the machine is today
        time.sleep(rng.uniform(0.0, 2.5))  # then a random point: a step, an evaluation, a checkpoint or row write
        assert proc.poll() is None, "the run finished before its 20 kills: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps_seen.append(rows())
    assert steps_seen[-1] > steps_seen[0], steps_seen
    assert subprocess.run(cmd, capture_output=True, timeout=1800).returncode == 0
    run_sweep("grokking", p, tmp_path / "whole", "tiny")
    whole, killed = load_runs(tmp_path / "whole"), load_runs(tmp_path / "killed")
    pd.testing.assert_frame_equal(whole.drop(columns="run"), killed.drop(columns="run"), check_exact=True)
