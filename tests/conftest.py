"""Shared fixtures: data of known intrinsic dimension, notebooks run as the stages run them, headless Chromium."""

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
    reports = terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
    artifacts = [(report.nodeid, value) for report in reports
                 for name, value in report.user_properties if name == "screenshot"]
    for nodeid, path in artifacts:
        terminalreporter.write_line(f"artifact: {path} ({nodeid})")


@pytest.fixture
def run_notebook():
    """Run ``notebooks/<name>.py`` as the DVC stages do (:func:`actid.pipeline.notebooks.run_notebook`: jupytext in
    memory, then papermill with the parameters), in a process of its own; returns the finished process (check
    ``returncode``; stderr holds the notebook's error)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    def run(name: str, executed: Path, **parameters) -> subprocess.CompletedProcess:
        values = {k: str(v) if isinstance(v, Path) else v for k, v in parameters.items()}
        code = ("import json, sys; from pathlib import Path; from actid.pipeline.notebooks import run_notebook; "
                "run_notebook(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]))")
        return subprocess.run([sys.executable, "-c", code, name, str(executed), json.dumps(values)],
                              capture_output=True)
    return run


def _skip_or_fail_browser(reason: str):
    import os
    if os.environ.get("ACTID_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (ACTID_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_tools():
    """(chromium, chromedriver) paths for the ``browser`` tests, or skip (fail under ACTID_REQUIRE_BROWSER=1) naming
    the Debian packages to install."""
    import shutil
    try:
        import selenium  # noqa: F401
    except ImportError:
        _skip_or_fail_browser('selenium is not installed: pip install -e ".[dev]"')
    chromium = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        missing = " and ".join(name for name, path in [("chromium", chromium), ("chromedriver", chromedriver)]
                               if not path)
        _skip_or_fail_browser(f"{missing} not found: install the Debian packages `chromium` and `chromium-driver` "
                              "(apt-get install chromium chromium-driver)")
    return chromium, chromedriver


@pytest.fixture
def chromium(browser_tools, tmp_path):
    """A selenium driver of headless Chromium (1400 x 900), quit after the test."""
    from selenium import webdriver
    path, chromedriver = browser_tools
    options = webdriver.ChromeOptions()
    options.binary_location = path
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--no-first-run", "--disable-extensions"]:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
