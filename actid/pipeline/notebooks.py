"""Draw one figure folder as ``dvc repro`` does: ``python -m actid.pipeline.notebooks grokking``.

``params.yaml``'s ``figures`` section names, for each folder ``figures/<name>``, the notebooks that write it, the runs
they read (``runs_dir``) and their ``parameters``. Each notebook (a jupytext percent file in ``notebooks/``) is
converted in memory and executed by papermill with ``runs_dir``, ``out_dir`` and those parameters; the executed copy,
figures inline, goes to ``build/notebooks/<name>/``. This is the one command every figure stage of ``dvc.yaml`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from actid.paths import ROOT, resolve


def figure_spec(params: dict, name: str) -> dict:
    """The ``figures.<name>`` section, checked: ``notebooks`` (a list of names in ``notebooks/``), ``runs_dir``,
    ``parameters`` (a mapping, may be empty)."""
    figures = params.get("figures") or {}
    if name not in figures:
        raise SystemExit(f"params.yaml has no figures.{name}; figures: {', '.join(sorted(figures))}")
    spec = figures[name]
    missing = [k for k in ("notebooks", "runs_dir") if k not in spec]
    if missing or not isinstance(spec.get("notebooks"), list) or not isinstance(spec.get("parameters", {}), dict):
        raise SystemExit(f"params.yaml figures.{name} needs notebooks: [names], runs_dir: path and optionally "
                         f"parameters: {{name: value}}; got {spec!r}")
    absent = [n for n in spec["notebooks"] if not (ROOT / "notebooks" / f"{n}.py").exists()]
    if absent:
        raise SystemExit(f"params.yaml figures.{name} names notebooks that do not exist in notebooks/: {absent}")
    return {"notebooks": spec["notebooks"], "runs_dir": spec["runs_dir"], "parameters": spec.get("parameters") or {}}


def run_notebook(notebook: str, executed: Path, parameters: dict) -> None:
    """Execute ``notebooks/<notebook>.py`` with ``parameters`` (papermill), writing the executed copy to
    ``executed``."""
    import jupytext
    import papermill

    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(jupytext.read(ROOT / "notebooks" / f"{notebook}.py"), str(executed),
                               parameters=parameters, kernel_name="python3", progress_bar=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", help="a key of params.yaml's figures section, e.g. grokking")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out-dir", help="where the figures go (default: figures/<figure>)")
    args = parser.parse_args(argv)
    spec = figure_spec(yaml.safe_load(args.params.read_text()), args.figure)
    out_dir = args.out_dir or f"figures/{args.figure}"
    for notebook in spec["notebooks"]:
        print(f"{args.figure}: running notebooks/{notebook}.py on {spec['runs_dir']} -> {out_dir}", flush=True)
        run_notebook(notebook, resolve(f"build/notebooks/{args.figure}/{notebook}.ipynb"),
                     {"runs_dir": spec["runs_dir"], "out_dir": out_dir, **spec["parameters"]})


if __name__ == "__main__":
    main()
