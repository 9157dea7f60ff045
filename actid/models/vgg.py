"""VGG-16 as torchvision builds it (``torchvision.models.vgg16(num_classes=...)``), with layers named for measuring.

Stephenson et al. (ICLR 2021) measure the geometry of memorization layer by layer on VGG-16 trained on CIFAR-100;
the MFTMA reference notebook uses torchvision's ``vgg16(num_classes=100)`` unchanged, ImageNet head included. This
module is the same network, parameter for parameter (``tests/test_geometry_experiment.py`` loads torchvision's
weights into it and compares outputs), laid out flat in forward order:

``conv1``-``conv13``: each a 3x3 conv (padding 1) [+ BatchNorm] + ReLU, in five blocks of 2, 2, 3, 3, 3 convs with
``width``, 2w, 4w, 8w, 8w channels, each block ending in a 2x2 max-pool ``pool1``-``pool5``; ``avgpool``, an adaptive
average pool to ``pool_size`` x ``pool_size`` (torchvision's 7x7: on a 32x32 image the 1x1 map of ``pool5`` is
repeated 49 times); then ``fc1`` and ``fc2`` (Linear + ReLU + Dropout, ``hidden`` units) and the logits ``fc3``.
torchvision's init: Kaiming-normal convs (fan-out, ReLU gain), zero biases, BatchNorm 1/0, Linear N(0, 0.01).
At width 64, hidden 4096 and pool 7 it has 134,670,244 parameters for 100 classes.

The measured layers are the block outputs ``pool1``-``pool5`` and the classifier's ``fc1``, ``fc2`` (post-ReLU; the
dropout inside them is inactive when measuring, in eval mode) and ``fc3``. The units of rewinding are the 16 weight
layers ``conv1``-``conv13``, ``fc1``-``fc3``; a conv's BatchNorm statistics live in the same module and travel with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BLOCKS = (2, 2, 3, 3, 3)  # convs per block; channels width * (1, 2, 4, 8, 8)


@dataclass
class VGGConfig:
    n_classes: int = 100
    in_channels: int = 3
    width: int = 64  # channels of the first block
    hidden: int = 4096  # units of fc1 and fc2
    pool_size: int = 7  # torchvision's adaptive average pool before the classifier
    dropout: float = 0.5
    batch_norm: bool = False  # torchvision's vgg16 has none; vgg16_bn has one after every conv

    def __post_init__(self):
        for key in ("n_classes", "in_channels", "width", "hidden", "pool_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class VGG16(nn.Module):
    """torchvision's VGG-16 with its layers named (see the module docstring); ``config`` is its one argument."""

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        self.order = []  # module names in forward order
        c_in, conv = config.in_channels, 0
        for block, n_convs in enumerate(BLOCKS, start=1):
            c_out = config.width * min(2 ** (block - 1), 8)
            for _ in range(n_convs):
                conv += 1
                layers = [nn.Conv2d(c_in, c_out, 3, padding=1)]
                layers += [nn.BatchNorm2d(c_out)] if config.batch_norm else []
                self._add(f"conv{conv}", nn.Sequential(*layers, nn.ReLU(inplace=True)))
                c_in = c_out
            self._add(f"pool{block}", nn.MaxPool2d(2))
        self._add("avgpool", nn.AdaptiveAvgPool2d(config.pool_size))
        self._add("flatten", nn.Flatten())
        n_in = c_in * config.pool_size ** 2
        for i in (1, 2):
            self._add(f"fc{i}", nn.Sequential(nn.Linear(n_in, config.hidden), nn.ReLU(inplace=True),
                                              nn.Dropout(config.dropout)))
            n_in = config.hidden
        self._add("fc3", nn.Linear(n_in, config.n_classes))
        self._init_like_torchvision()

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.order.append(name)

    def _init_like_torchvision(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def id_layers(self) -> list[str]:
        """The block outputs and the classifier's hidden layers."""
        return [f"pool{b}" for b in range(1, len(BLOCKS) + 1)] + ["fc1", "fc2"]

    @property
    def llid_layer(self) -> str:
        return "fc2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        return x

