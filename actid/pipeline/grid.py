"""A profile's grid points (``params.yaml``: ``<experiment>.<profile>.{fixed, grid}``) and their run configs."""

from __future__ import annotations

import hashlib
import itertools
import json
import re

from actid.experiments import REGISTRY, Experiment


class InvalidSweep(ValueError):
    """A grid point whose keys or values are wrong; raised before any file changes."""


def experiment(name: str) -> Experiment:
    """The registered experiment ``name``, or :class:`InvalidSweep` listing them."""
    if name not in REGISTRY:
        raise InvalidSweep(f"unknown experiment {name!r}; experiments: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """All combinations of the grid's values, in the order of the lists (first key slowest)."""
    keys = list(grid)
    bad = [k for k in keys if not isinstance(grid[k], list)]
    if bad:
        raise InvalidSweep(f"grid values must be lists, got {', '.join(f'{k}: {grid[k]!r}' for k in bad)}; "
                           f"write e.g. {bad[0]}: [{grid[bad[0]]!r}]")
    empty = [k for k in keys if not grid[k]]
    if empty:
        raise InvalidSweep(f"grid key(s) {empty} list no values, so the grid has no runs (and every existing run "
                           "would be set aside); give at least one value, or remove the key")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


SAFE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,39}")
"""A grid value written into a run folder's name as is: short, of safe characters, not starting with a dot."""
MAX_NAME = 200
"""The longest run folder name (file systems allow 255 bytes); a longer one is replaced by a hash."""


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_name(point: dict) -> str:
    """A grid point's run folder name: ``key=value,key=value`` in the grid's key order for simple values (numbers,
    booleans and short strings of safe characters), ``key=sha-<8 hex>`` for any other value (a mapping, a list, a
    path), so a name never holds a ``/``, never starts with a dot and never leaves ``--out``; the full point is in
    the run's ``config.json``. A point without keys (a profile without a grid) is the run ``run``."""
    if not point:
        return "run"
    parts = []
    for key, value in point.items():
        text = str(value)
        simple = isinstance(value, (bool, int, float)) or (isinstance(value, str) and SAFE.fullmatch(text))
        parts.append(f"{key}={text}" if simple and SAFE.fullmatch(text) else f"{key}=sha-{_digest(value)[:8]}")
    name = ",".join(parts)
    if len(name) > MAX_NAME or not re.fullmatch(r"[A-Za-z0-9_=,.+-]+", name) or name.startswith("."):
        name = f"point-{_digest(point)[:16]}"
    return name


def sweep_points(params: dict, experiment: str, profile: str) -> tuple[dict, list[dict]]:
    """The section's ``fixed`` keys and its grid points. ``grid`` is one grid (every combination of
    its lists) or a list of grids whose points are joined, e.g. a weight-decay sweep at dropout 0
    plus a dropout sweep at weight decay 0; a point listed twice runs once, and two different points that would
    share a folder name are refused."""
    try:
        section = params[experiment][profile]
    except KeyError:
        raise InvalidSweep(f"params has no section {experiment}.{profile}; profiles: "
                           f"{list(params.get(experiment, {}))}") from None
    grids = section.get("grid", {})
    points = [p for grid in (grids if isinstance(grids, list) else [grids]) for p in expand_grid(grid)]
    unique: dict[str, dict] = {}
    for point in points:
        other = unique.setdefault(run_name(point), point)
        if other != point:
            raise InvalidSweep(f"grid points {other} and {point} would share the run folder {run_name(point)!r}; "
                               "make their values differ in writing (e.g. 1 and 1.5, not 1 and '1')")
    return section.get("fixed", {}), list(unique.values())


def resolve_point(exp, config: dict) -> dict:
    """One grid point's run config. ``lenses: {name: params}`` adds measures to those the experiment (or the
    point's ``measures``) already takes, so that a profile can put every lens on a study's runs without restating
    the study's own measures; a lens named like one of them replaces it. ``lens_probes: {name: probe}`` adds the
    probes they need in the same way. The run's config records the merged ``measures`` and ``probes`` (``lenses``
    and ``lens_probes`` are not run keys)."""
    config = dict(config)
    lenses, lens_probes = config.pop("lenses", None), config.pop("lens_probes", None)
    resolved = exp.resolve(config)
    for key, value in (("lenses", lenses), ("lens_probes", lens_probes)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping {{name: parameters}}, got {value!r}")
    if lenses or lens_probes:
        resolved = exp.resolve({**config, "measures": {**resolved["measures"], **(lenses or {})},
                                "probes": {**resolved["probes"], **(lens_probes or {})}})
    return resolved


def resolve_grid(name: str, params: dict, profile: str, overrides: dict | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """The profile's grid points and their resolved run configs, or :class:`InvalidSweep` naming the bad point."""
    exp = experiment(name)
    fixed, points = sweep_points(params, name, profile)
    gridded = sorted({k for point in points for k in point} & set(overrides or {}))
    if gridded:
        raise InvalidSweep(f"--set {gridded[0]}=... would train every grid point at that value, in folders named for "
                           f"the grid's values of {gridded}; change the grid in params.yaml instead (or a profile "
                           f"whose grid does not vary {gridded[0]})")
    configs = []
    for point in points:
        try:
            configs.append(resolve_point(exp, {**fixed, **point, **(overrides or {})}))
        except (KeyError, ValueError, TypeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError quotes its text
            raise InvalidSweep(f"grid point {run_name(point)} of {name}.{profile}: {message}") from None
    return points, configs
