"""The figure style module: where notebooks write, PNG + PDF outputs, JSON without NaN, the env hint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from actid import plotting

ROOT = Path(__file__).resolve().parents[1]


def test_interactive_runs_write_to_the_scratch_folder_not_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "ROOT", tmp_path)
    assert plotting.output_dir(None, "grokking") == tmp_path / "build" / "figures" / "grokking"
    assert plotting.output_dir(str(tmp_path / "mine"), "grokking") == tmp_path / "mine"
    assert (tmp_path / "build" / "figures" / "grokking").is_dir() and (tmp_path / "mine").is_dir()


def test_figures_are_written_as_png_and_reproducible_pdf(tmp_path):
    plotting.use_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plotting.save_figure(fig, tmp_path, "line")
    first = (tmp_path / "line.pdf").read_bytes()
    plotting.save_figure(fig, tmp_path, "line")
    plt.close(fig)
    assert (tmp_path / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first[:5] == b"%PDF-" and (tmp_path / "line.pdf").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.pdf", "line.png"]  # no temporary files left


def test_json_metrics_turn_nan_into_null(tmp_path):
    import numpy as np

    from actid.io import write_json
    write_json(tmp_path / "m.json", {"r": float("nan"), "n": np.int64(3), "ok": np.bool_(True),
                                     "runs": {"a": [1.5, float("inf"), np.float32("nan")]}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"r": None, "n": 3, "ok": True,
                                                             "runs": {"a": [1.5, None, None]}}


def test_dvc_stages_without_the_environment_get_a_one_line_hint(tmp_path):
    """Each dvc.yaml stage starts with scripts/check-env.sh: a Python without torch gets the fix, not a traceback."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None or subprocess.run([system_python, "-c", "import torch"],
                                               capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without torch")
    (tmp_path / "python").symlink_to(system_python)
    bare = subprocess.run(["sh", "scripts/check-env.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert bare.returncode == 1
    assert "missing in this shell: torch" in bare.stderr and ". .venv/bin/activate" in bare.stderr
    venv = subprocess.run(["sh", "scripts/check-env.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert venv.returncode == 0, venv.stderr


def test_every_stage_checks_the_environment_first():
    import yaml
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = [s.get("cmd") or s["do"]["cmd"] for s in stages.values()]
    assert commands and all(c.startswith("sh scripts/check-env.sh && ") for c in commands)
