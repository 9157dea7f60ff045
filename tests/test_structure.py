"""The package's structure: no import cycle, small modules, notebooks that only read files, a lazy top level, and
old import paths that still work (with a DeprecationWarning naming the new one)."""

import ast
import importlib
import subprocess
import sys
import warnings

import pytest

from actid.paths import ROOT

PACKAGE = ROOT / "actid"
TRAINING = ("actid.train", "actid.batched", "actid.train_state", "actid.pipeline", "actid.experiments", "actid.sweep")
"""Modules that train models (and what they import to do it): figure notebooks must not reach them."""
SHIMS = {"actid.progress": "actid.pipeline.shard_progress", "actid.slurm": "actid.pipeline.slurm",
         "actid.models.grokking_mlp": "actid.models.scaled_mlp"}
"""Modules that moved, left behind as shims."""


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def tables(tree: ast.Module) -> list[str]:
    """The modules named in a module's ``MOVED`` or ``API`` table (imported on first use: still a dependency)."""
    named = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("MOVED", "API")
                                                for t in node.targets):
            named += [v.split(":")[0] for v in ast.literal_eval(node.value).values()]
    return named


def imports(tree: ast.AST) -> set[str]:
    """The actid modules a file imports anywhere (module level, functions, TYPE_CHECKING blocks). ``import actid`` and
    ``from actid import <not a module>`` are edges to the package's ``__init__``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "actid"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "actid":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = {m for m in imports(tree) | set(tables(tree)) if m != name}
        unknown = edges[name] - set(MODULES)
        assert not unknown, f"{name} imports modules that do not exist: {unknown}"
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(edges: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += edges.get(node, ())
    return seen


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_stay_small_and_the_sweep_is_its_command_line_only():
    assert len((PACKAGE / "sweep.py").read_text().splitlines()) <= 250
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.py")))
def test_notebooks_import_no_training_code(notebook):
    """Figures are drawn from files only: no notebook reaches the training loop, the pipeline or an experiment."""
    edges = graph()
    direct = imports(ast.parse((ROOT / "notebooks" / notebook).read_text()))
    reached = reachable(edges, direct)
    training = sorted(m for m in reached if m.startswith(TRAINING))
    assert not training, f"{notebook} imports training code: {training}"


def moved_names():
    for name in MODULES:
        if name in SHIMS:
            continue
        for old, target in ast.literal_eval(next(
                (n.value for n in ast.parse(MODULES[name].read_text()).body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "MOVED" for t in n.targets)), "{}")).items():
            yield name, old, target


@pytest.mark.parametrize("module,old,target", list(moved_names()))
def test_a_moved_name_still_imports_from_its_old_place_with_a_warning(module, old, target):
    new_module, _, new_name = target.partition(":")
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} moved to {new_module}\.{new_name or old}"):
        value = getattr(importlib.import_module(module), old)
    assert value is getattr(importlib.import_module(new_module), new_name or old)


def test_moved_modules_still_import_with_a_warning():
    code = ("import importlib, warnings\n"
            f"for old, new in {SHIMS!r}.items():\n"
            "    with warnings.catch_warnings(record=True) as caught:\n"
            "        warnings.simplefilter('always')\n"
            "        importlib.import_module(old)\n"
            "    warned = [w for w in caught if issubclass(w.category, DeprecationWarning) and new in str(w.message)]\n"
            "    assert warned, old\n"
            "from actid.progress import ShardReporter\n"
            "from actid.slurm import RunTask, submit\n"
            "from actid.models.grokking_mlp import GrokkingMLP, GrokkingMLPConfig\n"
            "from actid.models.scaled_mlp import ScaledMLP\n"
            "assert GrokkingMLP is ScaledMLP\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_import_actid_is_light_and_its_names_load_on_use():
    code = ("import sys, actid\n"
            "assert 'torch' not in sys.modules, 'import actid imported torch'\n"
            "import actid.estimators\n"
            "heavy = [m for m in sys.modules if m.startswith(('actid.train', 'actid.pipeline', 'actid.experiments'))]\n"
            "assert not heavy, heavy\n"
            "assert actid.TwoNN is actid.estimators.TwoNN and 'actid.train' not in sys.modules\n"
            "print(sorted(actid.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    import actid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(callable(getattr(actid, name)) for name in actid.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        actid.nope  # noqa: B018


def stage_commands():
    """(stage, command, deps) of every dvc.yaml stage, ``foreach`` stages expanded (over a literal or over a
    ``params.yaml`` section) and ``${key}``/``${item...}`` filled in."""
    import re

    import yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            yield name, stage["cmd"], stage.get("deps", [])
            continue
        items = stage["foreach"]
        if isinstance(items, str):  # ${section} of params.yaml
            items = params[items.strip("${}")]
        for key, item in items.items():
            def fill(text, key=key, item=item):
                text = text.replace("${key}", key)
                return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)
            yield f"{name}@{key}", fill(stage["do"]["cmd"]), [fill(d) for d in stage["do"].get("deps", [])]


def with_packages(modules: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first."""
    return modules | {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}


@pytest.mark.parametrize("stage,cmd,deps", list(stage_commands()), ids=[s for s, _, _ in stage_commands()])
def test_every_stage_depends_on_each_actid_module_its_command_runs(stage, cmd, deps):
    """A lineage cannot go stale silently: a change to any code a stage runs makes ``dvc repro`` rerun it."""
    import re
    edges = graph()
    started = {m for m in re.findall(r"python (?:-W \"[^\"]*\" )?-m (actid[\w.]*)", cmd)}
    notebooks = re.findall(r"notebooks/\w+\.py", cmd)
    if "actid.pipeline.notebooks" in started:  # the figure's notebooks are named in params.yaml
        import yaml
        figure = cmd.split("actid.pipeline.notebooks")[1].split()[0]
        spec = yaml.safe_load((ROOT / "params.yaml").read_text())["figures"][figure]
        notebooks += [f"notebooks/{n}.py" for n in spec["notebooks"]]
    for notebook in notebooks:
        started |= imports(ast.parse((ROOT / notebook).read_text()))
        assert any(notebook == d or notebook.startswith(d.rstrip("/") + "/") for d in deps), \
            f"{stage} runs {notebook} but does not depend on it"
    assert started, f"{stage}: no actid module or notebook found in its command"
    reached = with_packages(reachable(edges, started))
    files = {str(MODULES[m].relative_to(ROOT)) for m in reached}
    missing = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} runs these files but does not list them in deps: {missing}"
