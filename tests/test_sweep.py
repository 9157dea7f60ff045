"""Sweep safety: validate before touching the disk, never delete, reuse finished runs, clean shutdown."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from actid.pipeline.local import run_sweep
from actid.runs import Run
from actid.sweep import main, parse_args

TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32,
        "steps": 12, "eval_every": 4, "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}


def params(grid=None, **fixed):
    return {"grokking": {"tiny": {"fixed": {**TINY, **fixed}, "grid": grid or {"weight_decay": [0.0, 0.1]}}}}


def listing(root: Path) -> dict[str, float]:
    """Every file below root with its modification time (to see that nothing changed)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture
def swept(tmp_path):
    """A finished sweep of two runs, a foreign folder beside them, and the listing of it all."""
    out = tmp_path / "runs" / "grokking"
    run_sweep("grokking", params(), out, "tiny")
    (tmp_path / "runs" / "my_important_results").mkdir()
    (tmp_path / "runs" / "my_important_results" / "notes.txt").write_text("precious")
    return out


@pytest.mark.parametrize("bad", [{"weight_decy": [0.1]}, {"optimizer": ["lion"]}, {"weight_decay": 0.1},
                                 {"weight_decay": ["a lot"]}])
def test_a_bad_grid_fails_before_any_file_changes(swept, bad):
    before = listing(swept.parent)
    with pytest.raises((KeyError, ValueError)) as err:
        run_sweep("grokking", params(bad), swept, "tiny")
    assert listing(swept.parent) == before
    assert "weight_decy" in str(err.value) or "lion" in str(err.value) or "list" in str(err.value) \
        or "a lot" in str(err.value)


def test_out_one_level_too_high_touches_no_foreign_folder(swept):
    before = listing(swept.parent)
    run_sweep("grokking", params({"weight_decay": [0.0]}, steps=4), swept.parent, "tiny")
    after = listing(swept.parent)
    assert all(after.get(path) == mtime for path, mtime in before.items())  # nothing changed or removed
    assert (swept.parent / "my_important_results" / "notes.txt").read_text() == "precious"


def test_a_folder_with_a_grid_point_name_that_is_not_a_run_is_refused(tmp_path):
    foreign = tmp_path / "weight_decay=0.0"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(SystemExit, match="is not a grokking run of actid"):
        run_sweep("grokking", params(), tmp_path, "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weight_decay=0.0"]


def test_stale_and_changed_runs_are_moved_aside_not_deleted(swept, capsys):
    old = {name: (swept / name / "metrics.csv").read_text() for name in ["weight_decay=0.0", "weight_decay=0.1"]}
    run_sweep("grokking", params({"weight_decay": [0.1]}, lr=0.002), swept, "tiny")  # 0.0 left; 0.1 changed lr
    message = capsys.readouterr().out
    assert "weight_decay=0.0: not in the tiny grid; moved it to" in message
    assert "weight_decay=0.1: config changed; moved it to" in message
    aside = {p.name.split("-")[0]: p for p in (swept / ".stale").iterdir()}
    assert {name: (aside[name] / "metrics.csv").read_text() for name in old} == old
    assert sorted(p.name for p in swept.iterdir() if not p.name.startswith(".")) == ["weight_decay=0.1"]
    assert Run(swept / "weight_decay=0.1").config["lr"] == 0.002


def test_a_device_override_reuses_finished_runs(swept):
    before = listing(swept)
    main(["grokking", "--params", str(_params_file(swept.parent, params())), "--profile", "tiny", "--out", str(swept),
          "--set", "device=cpu", "eval_batch_size=64"])
    assert listing(swept) == before


@pytest.mark.parametrize("argv", [
    ["--set", "device=cpu", "lr=0.1", "grokking", "--jobs", "2"],
    ["grokking", "--set", "device=cpu", "--jobs", "2", "--set", "lr=0.1"],
    ["--set", "device=cpu", "grokking", "--set", "lr=0.1", "--shard", "0/2"],  # as a shard re-parses it
])
def test_set_is_parsed_in_any_position_and_may_repeat(argv):
    args = parse_args(argv)
    assert args.experiment == "grokking" and args.set == ["device=cpu", "lr=0.1"]


def test_abbreviated_options_are_refused_so_shards_never_see_jobs():
    with pytest.raises(SystemExit):
        parse_args(["grokking", "--job", "2"])


def test_set_may_come_before_the_experiment_name(swept):
    before = listing(swept)
    main(["--set", "device=cpu", "eval_batch_size=64", "grokking", "--params",
          str(_params_file(swept.parent, params())), "--profile", "tiny", "--out", str(swept)])
    assert listing(swept) == before  # parsed as the same command: finished runs reused


@pytest.mark.parametrize("argv, message", [
    (["--set", "device=cpu"], "required: experiment"),
    (["--set", "device", "grokking"], "KEY=VALUE pairs; not one: device"),
    (["grokking", "--set", "steps=5", "regularization"], "KEY=VALUE pairs; not one: regularization"),
])
def test_bad_set_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_an_unfinished_run_on_another_device_is_not_resumed_silently(tmp_path):
    run_sweep("grokking", params({"weight_decay": [0.0]}), tmp_path, "tiny", stop_after=4)
    run = Run(tmp_path / "weight_decay=0.0")
    meta = run.meta()
    run.record_runtime({**meta["runtime"], "device": "cuda", "threads": None})
    before = listing(tmp_path)
    with pytest.raises(SystemExit, match=r"--set device=cuda.*--restart"):
        run_sweep("grokking", params({"weight_decay": [0.0]}), tmp_path, "tiny")
    assert listing(tmp_path) == before
    run_sweep("grokking", params({"weight_decay": [0.0]}), tmp_path, "tiny", restart=True)
    assert run.is_finished and len(list((tmp_path / ".stale").iterdir())) == 1


def _params_file(folder: Path, content: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_stopping_the_jobs_parent_leaves_no_shard_running(tmp_path, how):
    long = params({"weight_decay": [0.0, 0.1]}, steps=100000, eval_every=50000)
    cmd = [sys.executable, "-m", "actid.sweep", "grokking", "--params", str(_params_file(tmp_path, long)),
           "--profile", "tiny", "--out", str(tmp_path / "runs"), "--jobs", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len([r for r in (tmp_path / "runs").glob("*/.lock")]) < 2 and time.time() < deadline:
        time.sleep(0.1)
    shards = _children(parent.pid)
    assert len(shards) == 2
    parent.send_signal(how)
    try:
        parent.wait(timeout=60)
    except subprocess.TimeoutExpired:  # say where everything stands (seen once in CI, not reproduced)
        states = {pid: (Path(f"/proc/{pid}/stat").read_text().split()[2],
                        Path(f"/proc/{pid}/wchan").read_text()) if _alive(pid) else "gone"
                  for pid in [parent.pid, *shards]}
        parent.kill()
        for pid in shards:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the parent did not exit within 60 s of {how!r}; process states {states}")
    deadline = time.time() + 15
    while any(_alive(s) for s in shards) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(s) for s in shards)
    assert not [p for p in (tmp_path / "runs").rglob("*.tmp")]  # no half-written file left behind
    for run in (tmp_path / "runs").iterdir():
        assert not Run(run).is_locked()


def test_progress_of_several_shards_is_one_bar_plus_a_line_each(tmp_path):
    cmd = [sys.executable, "-m", "actid.sweep", "grokking", "--params", str(_params_file(tmp_path, params())),
           "--profile", "tiny", "--out", str(tmp_path / "runs"), "--jobs", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "grokking/tiny" in result.stderr and "shard 0" in result.stderr and "shard 1" in result.stderr
    assert "\x1eactid-progress" not in result.stderr + result.stdout  # status lines are parsed, not shown
    assert all(Run(r).is_finished for r in (tmp_path / "runs").iterdir())
    assert json.loads((tmp_path / "runs" / "weight_decay=0.1" / "config.json").read_text())["runtime"]["threads"] == 1


def test_the_command_line_reports_a_bad_grid_without_a_traceback(swept, capsys):
    bad = _params_file(swept.parent, params({"weight_decy": [0.1]}))
    before = listing(swept.parent)
    with pytest.raises(SystemExit, match=r"nothing was changed: grid point weight_decy=0.1 .*\['weight_decy'\]"):
        main(["grokking", "--params", str(bad), "--profile", "tiny", "--out", str(swept)])
    listing_after = listing(swept.parent)
    listing_after.pop("params.yaml")
    before.pop("params.yaml", None)
    assert listing_after == before
