"""Flat run configs: split one dict into the dataclasses that consume it, and reject unknown keys."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
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


# --- the schema of every config key: declared beside its field (``param``), checked when the dataclass is built ---

@dataclass(frozen=True)
class Check:
    """The values one config field takes: its types, and a range, a pattern or the allowed values.

    Declared with the field (:func:`param`, in the field's ``metadata``), so a field and its constraint are read
    together; :func:`check_fields` runs them all when the dataclass is built, which the sweep does for every grid
    point and ``--set`` before any file changes. Plain dataclass metadata, not a validation library: the checks are a
    few lines, and the configs stay plain dataclasses that ``config.json`` round-trips."""

    types: tuple
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    choices: tuple | None = None
    pattern: str | None = None
    items: "Check | None" = None
    length: int | None = None
    optional: bool = False

    def describe(self) -> str:
        kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
                 list: "a list", tuple: "a list"}
        types = [t for t in self.types if not (t is int and float in self.types)]  # int or float: a number
        text = " or ".join(dict.fromkeys(kinds[t] for t in types))
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {self.high:g}"
        if self.length is not None:
            text += f" of {self.length}"
        if self.items is not None:
            text += f" of {self.items.describe()}"
        if self.pattern is not None:
            text += f" matching {self.pattern}"
        return text + (" (or null)" if self.optional else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) and bool not in self.types:
            return False  # True is an int to Python, never to a config
        if not isinstance(value, self.types):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN
                return False
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                return False
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                return False
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return False
        if isinstance(value, (list, tuple)):
            if self.length is not None and len(value) != self.length:
                return False
            if self.items is not None and not all(self.items.ok(v) for v in value):
                return False
        return True

    def __call__(self, owner: str, name: str, value: Any) -> None:
        if not self.ok(value):
            raise ValueError(f"{owner}.{name} must be {self.describe()}, got {value!r}")


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Check:
    return Check((int,), low=low, high=high, optional=optional)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
         optional: bool = False) -> Check:
    return Check((int, float), low=low, high=high, low_open=low_open, high_open=high_open, optional=optional)


def flag() -> Check:
    return Check((bool,))


def one_of(*choices) -> Check:
    return Check(tuple({type(c) for c in choices}), choices=tuple(choices))


def text(pattern: str | None = None, *, optional: bool = False) -> Check:
    return Check((str,), pattern=pattern, optional=optional)


def mapping(*, optional: bool = False) -> Check:
    return Check((dict,), optional=optional)


def sequence(items: Check, length: int | None = None) -> Check:
    return Check((list, tuple), items=items, length=length)


def param(default: Any = dataclasses.MISSING, check: Check | None = None, *,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its :class:`Check` (``metadata["check"]``)."""
    if check is None:
        raise TypeError("param needs a check")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"check": check})


def check_fields(instance: Any) -> None:
    """Run every field's :class:`Check`; a field without one is a programming error (a test finds it first)."""
    owner = type(instance).__name__
    for f in dataclasses.fields(instance):
        check = f.metadata.get("check")
        if check is None:
            raise TypeError(f"{owner}.{f.name} declares no constraint; declare it with actid.config.param")
        check(owner, f.name, getattr(instance, f.name))
