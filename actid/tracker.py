"""Measure your own model in your own training loop, into the same run format as actid's sweeps.

::

    tracker = actid.Tracker(model, (x_val, y_val), layers=["layer3", "avgpool"], run_dir="runs/mine",
                            measures={"id": {}, "participation_ratio": {}})
    for step in range(steps):
        ...                                   # your training step
        if step % 100 == 0:
            tracker.measure(step)             # one row in runs/mine/metrics.csv
    actid.runs.load_runs("runs/mine")         # like any sweep's runs
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from actid import schema
from actid.capture import check_layer_names
from actid.evaluation import evaluate, probe_sets
from actid.integrations.live import check_installed, parse_sinks
from actid.measures import Measure, build_measures, build_probes, resolve_measures, resolve_probes
from actid.runs import Run
from actid.task import Task


class Tracker:
    """Evaluate ``measures`` of ``model`` on fixed probe sets and append one row per :meth:`measure`.

    Args:
        probe: ``(inputs, labels)``, named ``val`` (the measures' default probe), or a dict of named
            ``(inputs, labels)`` pairs. Each row has ``<probe>_loss`` and ``<probe>_acc``.
        layers: module names (strings, as in ``model.named_modules()``) that measures with
            ``layers: model`` (the default) use; the last one is the LLID layer unless ``llid_layer``.
        measures: Measure objects or a ``{name: params}`` mapping as in params.yaml (default: the
            paper's TwoNN ID).
        run_dir: the run directory; ``config.json`` records every measure parameter, the layers,
            the probe sizes and ``config`` (anything else you want recorded, e.g. your hyperparameters).
        loss_fn: ``loss_fn(logits, labels, reduction=...)`` for the loss columns and gradient measures.
        live: mirror the rows into ``<run_dir>/dvclive`` and/or ``<run_dir>/tensorboard`` as they are written
            (``"dvclive,tensorboard"``, see :mod:`actid.integrations.live`); None follows ``ACTID_LIVE``.
        source: what wrote the run, recorded in ``config.json`` (``experiment``).
    """

    def __init__(self, model: nn.Module, probe, *, layers: list[str], run_dir: str | Path,
                 measures: list[Measure] | dict | None = None, llid_layer: str | None = None,
                 loss_fn: Callable = F.cross_entropy, config: dict | None = None, batch_size: int = 1024,
                 seed: int = 0, live: str | tuple[str, ...] | None = None, source: str = "tracker"):
        check_layer_names(model, layers)
        probes = probe if isinstance(probe, dict) else {"val": probe}
        device = next(model.parameters()).device
        eval_sets = {name: (x.to(device), y.to(device)) for name, (x, y) in probes.items()}
        spec = measures if isinstance(measures, dict) or measures is None else {m.name: m.params() for m in measures}
        self.probes_spec = resolve_probes({name: {"split": name} for name in eval_sets}, seed)
        self.measures_spec = resolve_measures({"id": {}} if spec is None else spec, seed)
        missing = {n: m["probe"] for n, m in self.measures_spec.items() if m["probe"] not in self.probes_spec}
        if missing:
            raise KeyError(f"measure(s) {missing} name probes that are not defined; probes: {sorted(self.probes_spec)}")
        self.batch_size = batch_size
        self.task = Task(model=model, train_x=torch.empty(0), train_y=torch.empty(0), eval_sets=eval_sets,
                         id_layers=list(layers), llid_layer=llid_layer or layers[-1], loss_fn=loss_fn)
        self.measures = build_measures(self.measures_spec, seed)
        self.probes = probe_sets(self.task, build_probes(self.probes_spec, seed))
        sinks = None if live is None else parse_sinks(live)
        if sinks:
            check_installed(sinks)  # now, not at the first row
        self.run = Run(run_dir, live=sinks)
        recorded = {"layers": list(layers), "llid_layer": self.task.llid_layer, "measures": self.measures_spec,
                    "probes": self.probes_spec, "probe_sizes": {n: len(x) for n, (x, _) in eval_sets.items()},
                    "seed": seed, **(config or {})}
        with self.run.lock():
            self.run.write_config(recorded, {"experiment": source, "profile": None})
        self.calls = 0

    def measure(self, step: int) -> dict[str, float]:
        """Measure now, append the row (atomically) and return it."""
        with self.run.lock():
            row = {schema.STEP: step, **evaluate(self.task, self.measures, self.probes, step, self.calls, last=False,
                                                 batch_size=self.batch_size)}
            self.run.append_row(row)
        self.calls += 1
        return row

