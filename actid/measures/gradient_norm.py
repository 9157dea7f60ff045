"""Relative gradient norm ‖∇_θ L‖ / ‖θ‖ per parameter tensor (Mehta et al. 2021).

L is the mean loss over a fixed probe. The ratio is the size of a gradient step relative to the weights: it
shrinks as the initialization scale grows, where training barely moves the first layer (the "lazy" regime in
which a sin network memorizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from actid import schema
from actid.config import integer, param
from actid.measures.base import Evaluation, Measure, register


def relative_gradient_norms(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss_fn, *,
                            chunk_size: int = 1024) -> dict[str, float]:
    """``{name: ‖∇ L‖ / ‖θ‖}`` for every trainable parameter, L = mean of ``loss_fn(logits, labels,
    reduction="sum")`` over the inputs (in chunks of ``chunk_size``). Neither the parameters nor their
    ``.grad`` are touched; the model is evaluated in its current mode."""
    if len(inputs) == 0 or len(labels) != len(inputs):
        raise ValueError(f"need one label per input and at least one input, got {len(inputs)} inputs and "
                         f"{len(labels)} labels")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    totals = [torch.zeros_like(p) for _, p in named]
    with torch.enable_grad():
        for start in range(0, len(inputs), chunk_size):
            x, y = inputs[start:start + chunk_size], labels[start:start + chunk_size]
            loss = loss_fn(model(x), y, reduction="sum") / len(inputs)
            for total, g in zip(totals, torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)):
                if g is not None:
                    total += g
    return {name: float(g.norm() / p.detach().norm()) if p.detach().norm() > 0 else float("nan")
            for (name, p), g in zip(named, totals)}


@register
@dataclass(kw_only=True)
class RelativeGradientNorm(Measure):
    """‖∇_θ L‖ / ‖θ‖ of each parameter tensor, L the mean loss on the probe: ``relative_gradient_norm/<param>``.
    It takes no layers."""

    kind = "relative_gradient_norm"
    needs = "model"
    chunk_size: int = param(1024, integer(1))

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        x, y = ev.probes[self.probe]
        values = relative_gradient_norms(ev.model, x, y, ev.loss_fn, chunk_size=self.chunk_size)
        return {schema.column(self.name, key): value for key, value in values.items()}
