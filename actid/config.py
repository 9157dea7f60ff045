"""Flat run configs: split one dict into the dataclasses that consume it, and reject unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any


def _number(cls, name: str, declared: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: turn numeric strings into the declared number."""
    if declared not in ("float", "int") or not isinstance(value, str):
        return value
    try:
        return float(value) if declared == "float" else int(value)
    except ValueError:
        raise ValueError(f"{cls.__name__}.{name} must be a {declared}, got {value!r}") from None


def pick(cls, config: dict[str, Any]):
    """Instantiate dataclass ``cls`` from the keys of ``config`` that it declares."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return cls(**{k: _number(cls, k, declared[k], v) for k, v in config.items() if k in declared})


def check_keys(config: dict[str, Any], *known: type | set[str]) -> None:
    """Raise if ``config`` has a key that no dataclass or key set in ``known`` declares (a typo
    would otherwise be silently ignored and the run would use the default)."""
    allowed: set[str] = set()
    for k in known:
        allowed |= k if isinstance(k, set) else {f.name for f in dataclasses.fields(k)}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise KeyError(f"unknown config key(s) {unknown}; known keys: {sorted(allowed)}")


def refuse_derived(config: dict[str, Any], derived: set[str], instead: str) -> None:
    """Raise if ``config`` sets a key that ``build`` derives (e.g. ``steps`` from ``epochs``), naming what to set."""
    keys = sorted(derived & set(config))
    if keys:
        raise KeyError(f"{keys} {'is' if len(keys) == 1 else 'are'} derived from epochs; set {instead} instead")


def flat_config(*parts, drop: set[str] = frozenset()) -> dict[str, Any]:
    """The run config of dataclass instances ``parts``: their fields in order (later parts win), without ``drop``,
    tuples as lists (so it equals its JSON round trip in ``config.json``)."""
    flat: dict[str, Any] = {}
    for part in parts:
        flat.update(dataclasses.asdict(part))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items() if k not in drop}


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: every example once, the last batch possibly smaller."""
    return -(-n_examples // batch_size)
