"""The plug-in protocol: what a measure needs, when it runs, and how its parameters are recorded.

A measure is a small keyword-only dataclass whose fields are its parameters (all of them land in a
run's ``config.json``) and whose ``__call__(evaluation)`` returns named scalars. It declares what it
needs, so the training loop gathers each input once per evaluation:

* ``"activations"``: the outputs of ``layers`` on ``probe`` (one forward pass serves every measure);
* ``"model"``: the model itself and the probe's inputs and labels (gradients, perturbations);
* ``"weights"``: the parameters only.

A **probe** is a fixed, seeded subset of a named evaluation split (the same examples at every
evaluation, so curves over training are comparable). Measures run with the model in eval mode and
leave every submodule's mode as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from actid import schema
from actid.config import Check, check_fields, integer, param, text

MODEL_LAYERS = "model"
"""``layers: model`` means the layers the model names itself (``model.id_layers``)."""


def as_real_tensor(x, name: str) -> torch.Tensor:
    """A measure's array input as a detached real tensor (numpy accepted), or a TypeError naming it."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    return x.detach()


@dataclass(kw_only=True)
class Probe:
    """A fixed subset of an evaluation split: ``max_points`` examples drawn with ``seed`` (0: all), or, with
    ``per_class``, that many examples of every class (a class-balanced probe; not both).

    ``per_class`` is recorded in ``config.json`` only when set, so runs made before it existed keep their
    identity (and are not rerun)."""

    split: str = param("val", text())
    max_points: int = param(0, integer(0))
    per_class: int = param(0, integer(0))
    seed: int | None = param(None, integer(0, optional=True))  # None: the run's seed + 2 (resolved into config.json)

    def __post_init__(self):
        check_fields(self)
        if self.per_class and self.max_points:
            raise ValueError(f"probe of split {self.split!r}: give max_points (a random subset) or per_class (a "
                             f"class-balanced one), not both")

    def index(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Sorted indices of the subset of a split with these ``labels``, or None for the whole split."""
        n = len(labels)
        if self.per_class:
            gen = torch.Generator().manual_seed(self.seed)
            labels = labels.cpu()
            picked = []
            for c in labels.unique().tolist():
                members = torch.nonzero(labels == c).flatten()
                if len(members) < self.per_class:
                    raise ValueError(f"probe of split {self.split!r}: per_class={self.per_class} but class {c} has "
                                     f"only {len(members)} examples; lower per_class")
                picked.append(members[torch.randperm(len(members), generator=gen)[:self.per_class]])
            return torch.cat(picked).sort().values
        if not self.max_points or n <= self.max_points:
            return None
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=gen)[:self.max_points].sort().values


@dataclass
class Evaluation:
    """What one evaluation offers the measures (gathered once, shared by all of them)."""

    model: nn.Module
    step: int
    probes: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (inputs, labels)
    activations: dict[str, dict[str, torch.Tensor]]  # probe -> layer -> (n, features)
    loss_fn: Callable = torch.nn.functional.cross_entropy
    id_layers: list[str] = field(default_factory=list)
    llid_layer: str | None = None


@dataclass(kw_only=True)
class Measure:
    """Base of every measure. ``name`` is its column prefix (``<name>/<key>``)."""

    kind: ClassVar[str] = ""
    needs: ClassVar[str] = "activations"

    name: str = param("", text())
    probe: str = param("val", text())
    layers: list[str] | str = param(MODEL_LAYERS, Check((list, str)))  # module names, or "model": its own
    every: int = param(1, integer(1))  # run at every k-th evaluation (the first and the last always)

    def __post_init__(self):
        self.name = self.name or self.kind
        check_fields(self)
        schema.column(self.name)  # validates the name
        if isinstance(self.layers, list):
            bad = [x for x in self.layers if not isinstance(x, str)]
            if bad:
                raise TypeError(f"measure {self.name!r}: layer names must be strings, got {bad!r}; "
                                f"write them as {[str(x) for x in bad]!r}")
        elif self.layers != MODEL_LAYERS:
            raise ValueError(f"measure {self.name!r}: layers must be a list of module names or {MODEL_LAYERS!r}, "
                             f"got {self.layers!r}")

    def params(self) -> dict:
        """Every parameter, for ``config.json`` (``kind`` included, so it can be rebuilt)."""
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if f.name != "name"}}

    def due(self, index: int, last: bool) -> bool:
        """Whether the measure runs at the ``index``-th evaluation."""
        return last or index % self.every == 0

    def layer_names(self, model_layers: list[str]) -> list[str]:
        """The layers measured: ``layers``, or ``model_layers`` (the model's own ID layers) for ``model``."""
        return list(model_layers) if self.layers == MODEL_LAYERS else list(self.layers)

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> dict | None:
        """What the measure carries from one evaluation to the next (tensors and plain values only), saved in the
        run's checkpoint so that a resumed run measures what an uninterrupted one does; None: nothing."""
        return None

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""


@dataclass(kw_only=True)
class LayerMeasure(Measure):
    """A measure of each layer's activations on the probe, one column ``<name>/<layer>``: subclasses
    give ``value(activations, labels)``."""

    needs: ClassVar[str] = "activations"

    def value(self, activations: torch.Tensor, labels: torch.Tensor) -> float:
        raise NotImplementedError

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        acts, labels = ev.activations[self.probe], ev.probes[self.probe][1]
        return {schema.column(self.name, layer): self.value(acts[layer], labels)
                for layer in self.layer_names(ev.id_layers)}


REGISTRY: dict[str, type[Measure]] = {}


def register(cls: type[Measure]) -> type[Measure]:
    """Class decorator: make a measure available by its ``kind`` in params.yaml."""
    REGISTRY[cls.kind] = cls
    return cls


def build_measure(name: str, params: dict | None, seed: int = 0) -> Measure:
    """A measure from its params.yaml entry: ``kind`` (default: the name) plus its parameters."""
    params = dict(params or {})
    kind = params.pop("kind", name)
    if kind not in REGISTRY:
        raise KeyError(f"unknown measure kind {kind!r} (measure {name!r}); known: {sorted(REGISTRY)}")
    cls = REGISTRY[kind]
    known = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise KeyError(f"measure {name!r} ({kind}) has no parameter(s) {unknown}; its parameters: {sorted(known)}")
    if "seed" in known and params.get("seed") is None:
        params["seed"] = seed
    try:
        return cls(name=name, **params)
    except TypeError as err:  # a required parameter is missing
        raise TypeError(f"measure {name!r} ({kind}): {err}") from None


def build_measures(spec: dict | None, seed: int = 0) -> list[Measure]:
    """Measures from a ``{name: params}`` mapping, in order."""
    return [build_measure(name, params, seed) for name, params in (spec or {}).items()]


def resolve_measures(spec: dict | None, seed: int = 0) -> dict:
    """``{name: every parameter}``: what a run's ``config.json`` records."""
    return {m.name: m.params() for m in build_measures(spec, seed)}


def build_probes(spec: dict | None, seed: int = 0) -> dict[str, Probe]:
    probes = {}
    for name, params in (spec or {}).items():
        params = dict(params or {})
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(Probe)})
        if unknown:
            raise KeyError(f"probe {name!r} has no parameter(s) {unknown}; its parameters: split, max_points, "
                           "per_class, seed")
        if params.get("seed") is None:
            params["seed"] = seed + 2
        probes[name] = Probe(**params)
    return probes


def resolve_probes(spec: dict | None, seed: int = 0) -> dict:
    """``{name: every parameter}`` (``per_class`` only when set; see :class:`Probe`)."""
    return {name: {k: v for k, v in dataclasses.asdict(p).items() if k != "per_class" or v}
            for name, p in build_probes(spec, seed).items()}
