"""What to train: a model and its data, already on the training device (:class:`Task`).

The other half, *how* to train it, is :class:`actid.train.TrainConfig`; an experiment builds both from a flat config
(:mod:`actid.experiments`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Task:
    """What to train: a model and its data, already on the training device.

    eval_sets maps a split name ('train', 'val') to (inputs, labels); probes are drawn from them.
    id_layers and llid_layer name modules of the model (measures with ``layers: model`` use id_layers).
    augment(x, generator) returns an augmented copy of a training batch.
    loss_fn(logits, labels, reduction='mean') is the training loss (torch.nn.functional style).
    penalty(model), if given, is added to the training loss at every step (not to the evaluated loss), e.g.
    -δ Σ w² to make the weight norm grow (Golechha 2024's increasing-norm variant).
    flush_denormal: on the CPU, flush subnormal floats (|x| < 1.2e-38) to zero in the training steps (not in the
    evaluations, so measures see every value). Saturated softmax gradients are full of them and x86 CPUs compute
    them ~4x slower (e.g. the memorization ReLU runs at large σ); flushing changes only those values, but it does
    change them, so it is an opt-in of the task.
    channels_last: train and evaluate 4-D inputs (and the model) in channels_last memory format. CUDA's tensor-core
    convolutions work in that layout, so NCHW costs transposes. The numbers are the same up to round-off, except
    that dropout draws its masks in memory order (another draw of the same distribution). The image experiments
    turn it on for CUDA.
    """

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    id_layers: list[str] = field(default_factory=list)
    llid_layer: str | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    loss_fn: Callable = F.cross_entropy
    penalty: Callable[[nn.Module], torch.Tensor] | None = None
    flush_denormal: bool = False
    channels_last: bool = False


def in_layout(task: Task, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the task's memory format (see ``Task.channels_last``)."""
    return x.contiguous(memory_format=torch.channels_last) if task.channels_last and x.ndim == 4 else x
