"""The run store: atomic rows, verified resume, locks, snapshots (what a user relies on to trust a run)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from actid.experiments.grokking import build, resolve
from actid.runs import Run, RunLockedError, load_runs
from actid.train import train
from actid.train_state import ResumeMismatchError

TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32,
        "steps": 12, "eval_every": 4, "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}


def fresh(run_dir, config=TINY, **kw):
    """A new run directory with its config, trained (or partly trained with stop_after)."""
    config = resolve(config)
    Run(run_dir).write_config(config, {"experiment": "grokking", "profile": "test"})
    return train(*build(config), run_dir, progress=False, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return fresh(tmp_path_factory.mktemp("full") / "run")


def test_rows_are_written_atomically_and_the_run_finishes_cleanly(tmp_path, uninterrupted):
    df = fresh(tmp_path / "run")
    pd.testing.assert_frame_equal(df, uninterrupted)
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name not in {"config.json", "metrics.csv",
                                                                                 "done.json", ".lock"}]
    assert leftovers == []  # no temporary file, no checkpoint
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["device"] == "cpu"


@pytest.mark.parametrize("damage", ["truncated_last_line", "missing_row", "missing_file", "edited_value"])
def test_resume_recovers_the_checkpointed_rows_exactly(tmp_path, uninterrupted, damage):
    run = Run(tmp_path / "run")
    fresh(run.path, stop_after=8)
    text = run.metrics_path.read_text()
    if damage == "truncated_last_line":
        run.metrics_path.write_text(text[:-25])
    elif damage == "missing_row":
        lines = text.splitlines(keepends=True)
        run.metrics_path.write_text("".join(lines[:2] + lines[3:]))
    elif damage == "missing_file":
        run.metrics_path.unlink()
    else:
        run.metrics_path.write_text(text.replace(text.splitlines()[1].split(",")[2], "0.5", 1))
    resumed = train(*build(resolve(TINY)), run.path, progress=False)
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    pd.testing.assert_frame_equal(pd.read_csv(run.metrics_path), uninterrupted)
    assert not pd.read_csv(run.metrics_path).isna().any().any()
    kept = sorted(p.name for p in run.path.glob("metrics.csv.bad-*"))
    assert kept == ([] if damage == "missing_file" else ["metrics.csv.bad-1"])  # the damaged file is kept, not lost


def test_a_kill_between_checkpoint_and_rows_is_a_normal_resume(tmp_path, uninterrupted):
    run = Run(tmp_path / "run")
    fresh(run.path, stop_after=8)
    rows = pd.read_csv(run.metrics_path)
    run.write_rows(rows.iloc[:-1].to_dict("records"))  # the checkpoint was written, the row not yet
    pd.testing.assert_frame_equal(train(*build(resolve(TINY)), run.path, progress=False), uninterrupted)
    assert not list(run.path.glob("metrics.csv.bad-*"))


def test_rows_without_a_checkpoint_are_kept_aside_and_the_run_restarts(tmp_path, uninterrupted):
    run = Run(tmp_path / "run")
    fresh(run.path, stop_after=8)
    run.checkpoint_path.unlink()
    pd.testing.assert_frame_equal(train(*build(resolve(TINY)), run.path, progress=False), uninterrupted)
    assert (run.path / "metrics.csv.orphan-1").exists()


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    config = {**TINY, "steps": 400, "eval_every": 20}
    full = fresh(tmp_path / "full", config)
    run = Run(tmp_path / "killed")
    run.write_config(resolve(config), {"experiment": "grokking", "profile": "test"})
    code = ("import sys; from actid.experiments.grokking import build, resolve; from actid.train import train; "
            f"train(*build(resolve({config!r})), sys.argv[1], progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.path)])
    deadline = time.time() + 120
    while time.time() < deadline and (not run.metrics_path.exists() or run.metrics_path.read_text().count("\n") < 4):
        time.sleep(0.02)  # three evaluations written: kill it mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not run.is_finished, "the run finished before it could be killed; make it longer"
    resumed = train(*build(resolve(config)), run.path, progress=False)
    pd.testing.assert_frame_equal(resumed, full)
    pd.testing.assert_frame_equal(load_runs(run.path).drop(columns="run"),
                                  load_runs(tmp_path / "full").drop(columns="run"))


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    run = Run(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from actid.runs import Run\n"
                               "with Run(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(60)",
                               str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run.is_locked()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            fresh(run.path)
    finally:
        holder.kill()
        holder.wait()
    assert not run.metrics_path.exists() and not run.is_locked()
    with run.lock(), run.lock():  # re-entrant within the process that holds it
        assert not run.is_locked()


def test_resuming_with_other_numerics_is_refused_with_both_choices(tmp_path):
    run = Run(tmp_path / "run")
    fresh(run.path, stop_after=4)
    state = torch.load(run.checkpoint_path, weights_only=False)
    state["runtime"] = {**state["runtime"], "device": "cuda", "threads": None}
    torch.save(state, run.checkpoint_path)
    with pytest.raises(ResumeMismatchError, match=r"--set device=cuda.*restart"):
        train(*build(resolve(TINY)), run.path, progress=False)


def test_snapshots_restore_the_model_bit_for_bit(tmp_path):
    config = resolve({**TINY, "snapshot_every": 2})
    Run(tmp_path / "run").write_config(config, {"experiment": "grokking", "profile": "test"})
    task, cfg = build(config)
    train(task, cfg, tmp_path / "run", progress=False)
    run = Run(tmp_path / "run")
    assert run.snapshot_steps() == [0, 8, 12]  # every 2nd evaluation and the last
    final = run.load_snapshot(12)
    for name, value in task.model.state_dict().items():
        assert torch.equal(final[name], value), name
    fresh_model = build(config)[0].model
    fresh_model.load_state_dict(run.load_snapshot(0))
    assert not torch.equal(fresh_model.state_dict()["head.weight"], final["head.weight"])


def test_load_refuses_a_finished_run_whose_rows_were_changed(tmp_path):
    run = Run(tmp_path / "run")
    fresh(run.path)
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    run.metrics_path.write_text("".join(lines[:-1]))  # the last row lost after the run finished
    with pytest.raises(ValueError, match="does not end with the final row"):
        load_runs(run.path)


def test_a_run_of_another_config_is_never_overwritten(tmp_path):
    run = Run(tmp_path / "run")
    fresh(run.path)
    with pytest.raises(ValueError, match=r"another config \(keys \['weight_decay'\]"):
        run.write_config(resolve({**TINY, "weight_decay": 0.5}), {"experiment": "grokking", "profile": "test"})
    run.write_config(resolve({**TINY, "device": "cuda", "eval_batch_size": 7}), {"experiment": "grokking"})  # same run


def test_a_directory_with_someone_elses_config_json_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"mine": 1}')
    with pytest.raises(ValueError, match="not written by actid"):
        Run(tmp_path / "run").write_config(resolve(TINY), {"experiment": "grokking"})
    assert (tmp_path / "run" / "config.json").read_text() == '{"mine": 1}'


def test_atomic_writes_get_normal_permissions_not_mkstemps(tmp_path):
    from actid.io import atomic_write
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.csv", lambda f: f.write(b"a\n"))
        assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o644
        os.umask(0o002)  # a group sharing a results folder
        atomic_write(tmp_path / "group.csv", lambda f: f.write(b"g\n"))
        assert (tmp_path / "group.csv").stat().st_mode & 0o777 == 0o664
        (tmp_path / "group.csv").unlink()
        (tmp_path / "new.csv").chmod(0o640)  # a mode the user chose is kept on rewrite
        atomic_write(tmp_path / "new.csv", lambda f: f.write(b"b\n"))
        assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert (tmp_path / "new.csv").read_bytes() == b"b\n" and [p.name for p in tmp_path.iterdir()] == ["new.csv"]
