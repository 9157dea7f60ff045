"""Shared fixtures: data of known intrinsic dimension."""

import numpy as np
import pytest
import torch


def linear_subspace(n: int, d: int, D: int, noise: float = 0.01, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    """n points of a random d-dimensional linear subspace of R^D with small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) @ torch.randn(d, D, generator=g) + noise * torch.randn(n, D, generator=g)
    return X + offset


@pytest.fixture
def subspace10():
    return linear_subspace(3000, 10, 256)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    """List the artifacts tests recorded (e.g. the JupyterLab screenshot), so they appear in CI logs."""
    artifacts = [(report.nodeid, value) for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
                 for name, value in report.user_properties if name == "screenshot"]
    for nodeid, path in artifacts:
        terminalreporter.write_line(f"artifact: {path} ({nodeid})")


@pytest.fixture
def run_notebook():
    """Run ``notebooks/<name>.py`` as the DVC stages do (jupytext to ipynb, then papermill with ``-p`` parameters);
    returns the finished process (check ``returncode``; stderr holds the notebook's error)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(name: str, executed: Path, **parameters) -> subprocess.CompletedProcess:
        ipynb = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-o", "-",
                                str(root / "notebooks" / f"{name}.py")], check=True, capture_output=True).stdout
        args = [a for key, value in parameters.items() for a in ("-p", key, str(value))]
        return subprocess.run([sys.executable, "-m", "papermill", "-", str(executed), "-k", "python3",
                               "--no-progress-bar", *args], input=ipynb, capture_output=True)
    return run
