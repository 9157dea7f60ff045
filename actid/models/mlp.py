"""The two-layer network of Mehta, Cutkosky & Neyshabur 2021, "Extreme memorization via scale of initialization".

    z(x) = W2 φ(W1 x),   no biases,   W1 ~ N(0, σ²) elementwise,   W2 Glorot-uniform

σ (``init_std``) is a standard deviation, not a multiplier of a default init. With φ = sin and a large σ the
hidden features of two different inputs are nearly orthogonal (|E⟨φ(W1x), φ(W1x')⟩| ≤ h·exp(-σ²‖x-x'‖²/2),
the paper's Theorem 1), so the network can fit any labels and memorizes; a small σ lets it generalize.

Modules: ``fc1`` (W1 = ``fc1.weight``), ``hidden`` (φ: the representation that feeds the top layer, its
ID layer and LLID layer) and ``fc2`` (W2 = ``fc2.weight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class Sin(nn.Module):
    """The activation φ = sin, as a module (so that hooks can record it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


ACTIVATIONS = {"sin": Sin, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


@dataclass
class MLPConfig:
    in_features: int = 784
    hidden_units: int = 1024
    n_classes: int = 10
    activation: str = "sin"  # one of ACTIVATIONS
    init_std: float = 0.1  # σ of W1's Gaussian init

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std is the standard deviation of W1 and must be > 0, got {self.init_std!r}")


class TwoLayerMLP(nn.Module):
    """z = W2 φ(W1 x) without biases; ``hidden`` (φ) is its ID and LLID layer."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.in_features, config.hidden_units, bias=False)
        self.hidden = ACTIVATIONS[config.activation]()
        self.fc2 = nn.Linear(config.hidden_units, config.n_classes, bias=False)
        self.id_layers = ["hidden"]
        self.llid_layer = "hidden"
        with torch.no_grad():
            self.fc1.weight.normal_(0.0, config.init_std)
            bound = math.sqrt(6.0 / (config.hidden_units + config.n_classes))  # Glorot (Xavier) uniform
            self.fc2.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(self.fc1(x.flatten(1))))
