"""A profile's grid points (``params.yaml``: ``<experiment>.<profile>.{fixed, grid}``) and their run configs."""

from __future__ import annotations

import itertools

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
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict) -> str:
    """A grid point's run directory name: ``key=value,key=value`` in the grid's key order."""
    return ",".join(f"{k}={v}" for k, v in point.items())


def sweep_points(params: dict, experiment: str, profile: str) -> tuple[dict, list[dict]]:
    """The section's ``fixed`` keys and its grid points. ``grid`` is one grid (every combination of
    its lists) or a list of grids whose points are joined, e.g. a weight-decay sweep at dropout 0
    plus a dropout sweep at weight decay 0; a point listed twice runs once."""
    try:
        section = params[experiment][profile]
    except KeyError:
        raise InvalidSweep(f"params has no section {experiment}.{profile}; profiles: "
                           f"{list(params.get(experiment, {}))}") from None
    grids = section.get("grid", {})
    points = [p for grid in (grids if isinstance(grids, list) else [grids]) for p in expand_grid(grid)]
    unique: dict[str, dict] = {}
    for point in points:
        unique.setdefault(run_name(point), point)
    return section.get("fixed", {}), list(unique.values())


def resolve_grid(name: str, params: dict, profile: str, overrides: dict | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """The profile's grid points and their resolved run configs, or :class:`InvalidSweep` naming the bad point."""
    exp = experiment(name)
    fixed, points = sweep_points(params, name, profile)
    configs = []
    for point in points:
        try:
            configs.append(exp.resolve({**fixed, **point, **(overrides or {})}))
        except (KeyError, ValueError, TypeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError quotes its text
            raise InvalidSweep(f"grid point {run_name(point)} of {name}.{profile}: {message}") from None
    return points, configs
