"""A ReLU MLP whose default initialization is scaled by α: Omnigrok's MNIST MLP (Liu, Michaud & Tegmark 2023).

It is the model of Golechha 2024's grokking on real data (α = 8) and, at α = 1 (PyTorch's default init), the MLP of
the geometry-of-memorization experiment.

Flatten -> ``fc1`` Linear(784, 200) -> ``relu1`` -> ``fc2`` Linear(200, 200) -> ``relu2`` -> ``fc3`` Linear(200, 10),
PyTorch's default init, then **every parameter, biases included, multiplied by** ``init_scale`` α (8 in both
papers). A large α puts the weights far outside the norm at which the network generalizes: it fits the
training set at once and generalizes only after weight decay has shrunk the weights ("grokking").

``dropout`` p adds ``dropout{i}`` after each hidden ``relu{i}`` (Golechha's control, which removes the delay);
hooks on ``relu{i}`` see the activations before dropout. ID layers: the hidden ``relu{i}``; LLID: the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ScaledMLPConfig:
    in_features: int = 784
    width: int = 200
    depth: int = 3  # linear layers
    n_classes: int = 10
    init_scale: float = 8.0  # α: every parameter of the default init is multiplied by it
    dropout: float = 0.0

    def __post_init__(self):
        if self.depth < 2:
            raise ValueError(f"depth counts linear layers and must be >= 2, got {self.depth}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class ScaledMLP(nn.Module):
    """The MLP of the module docstring; ``config`` is its one argument."""

    def __init__(self, config: ScaledMLPConfig):
        super().__init__()
        self.config = config
        sizes = [config.in_features] + [config.width] * (config.depth - 1) + [config.n_classes]
        self.id_layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(n_in, n_out))
            if i < config.depth:
                setattr(self, f"relu{i}", nn.ReLU())
                self.id_layers.append(f"relu{i}")
                if config.dropout:
                    setattr(self, f"dropout{i}", nn.Dropout(config.dropout))
        self.llid_layer = self.id_layers[-1]
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(config.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.config.depth):
            x = getattr(self, f"relu{i}")(getattr(self, f"fc{i}")(x))
            if self.config.dropout:
                x = getattr(self, f"dropout{i}")(x)
        return getattr(self, f"fc{self.config.depth}")(x)
