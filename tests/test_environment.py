"""The project's setup files agree with each other, so conda and pip users get the same stack."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"]
              + [r for name in ("paper", "cluster", "dev", "lightning", "hf", "live") for r in extras[name]]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject.toml: {wanted - listed}"
    assert "python=3.11" in env["dependencies"]


def test_torch_pair_is_pinned_identically_in_readme_ci_and_environment():
    pins = set(re.findall(r"torch==[\d.]+ torchvision==[\d.]+", (ROOT / "README.md").read_text()))
    assert pins == {"torch==2.14.1 torchvision==0.29.1"}, pins
    env = (ROOT / "environment.yml").read_text()
    assert "torch==2.14.1" in env and "torchvision==0.29.1" in env


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```bash\n# Run the tests\n(.*?)```", readme, re.S)
    assert match, "README must have a '# Run the tests' command block"
    command = match.group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()
