"""One evaluation of a model: loss and accuracy on every evaluation split, then every due measure (one row).

The activations a probe needs are gathered once for all measures: during the accuracy pass of its split when the
probe is the whole split, else in one pass over the probe. Used by the training loops (:mod:`actid.train`,
:mod:`actid.batched`) and by :class:`actid.Tracker` in a loop of your own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from actid import schema
from actid.capture import capture_activations, eval_mode, recording
from actid.measures import Evaluation, Measure, Probe
from actid.task import Task, in_layout


def _ordered_union(lists) -> list[str]:
    return list(dict.fromkeys(x for items in lists for x in items))


class ProbeSet(NamedTuple):
    """A probe's examples, drawn once per run; ``whole_split`` when it is its entire split."""

    inputs: torch.Tensor
    labels: torch.Tensor
    split: str
    whole_split: bool


def probe_sets(task: Task, probes: dict[str, Probe]) -> dict[str, ProbeSet]:
    """Each probe's fixed examples, drawn from the task's evaluation splits."""
    out = {}
    for name, probe in probes.items():
        if probe.split not in task.eval_sets:
            raise KeyError(f"probe {name!r} draws from split {probe.split!r}, which this task does not evaluate; "
                           f"splits: {sorted(task.eval_sets)}")
        x, y = task.eval_sets[probe.split]
        index = probe.index(y)
        out[name] = (ProbeSet(x, y, probe.split, True) if index is None else
                     ProbeSet(x[index.to(x.device)], y[index.to(y.device)], probe.split, False))
    return out


def evaluate(task: Task, measures: list[Measure], probes: dict[str, ProbeSet], step: int, index: int, last: bool,
             batch_size: int) -> dict[str, float]:
    """Loss and accuracy on every evaluation split, then every due measure (one row's values).

    The activations a probe needs are gathered in one forward pass for all measures: during the
    accuracy pass of its split when the probe is the whole split, else in one pass over the probe."""
    model = task.model
    due = [m for m in measures if m.due(index, last)]
    wanted: dict[str, list[str]] = {}
    for m in due:
        if m.needs == "activations":
            wanted[m.probe] = _ordered_union([wanted.get(m.probe, []), m.layer_names(task.id_layers)])
    row: dict[str, float] = {}
    acts: dict[str, dict[str, torch.Tensor]] = {}
    with eval_mode(model):
        with torch.no_grad():
            for split, (x, y) in task.eval_sets.items():
                during = [p for p in wanted if probes[p].whole_split and probes[p].split == split]
                layers = _ordered_union(wanted[p] for p in during)
                with recording(model, layers, store=x.device, dtype=torch.float32) as chunks:
                    loss, correct = 0.0, 0
                    for start in range(0, len(x), batch_size):
                        logits = model(in_layout(task, x[start:start + batch_size])).float()
                        target = y[start:start + batch_size]
                        loss += float(task.loss_fn(logits, target, reduction="sum"))
                        correct += int((logits.argmax(1) == target).sum())
                for p in during:
                    acts[p] = {name: torch.cat(chunks[name]) for name in wanted[p]}
                row[schema.loss(split)], row[schema.acc(split)] = loss / len(x), correct / len(x)
            for p, layers in wanted.items():
                if p not in acts:
                    acts[p] = capture_activations(model, in_layout(task, probes[p].inputs), layers,
                                                  batch_size=batch_size, dtype=torch.float32,
                                                  keep_on_device=True)
        ev = Evaluation(model=model, step=step, probes={p: (v.inputs, v.labels) for p, v in probes.items()},
                        activations=acts,
                        loss_fn=task.loss_fn, id_layers=task.id_layers, llid_layer=task.llid_layer)
        for m in due:
            row.update(m(ev))
    return row
