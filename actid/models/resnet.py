"""CIFAR ResNet-18 with dropout (Brown et al. 2022's image model, kuangliu/pytorch-cifar style).

Shape: the stem ``conv1`` is a 3x3 conv (in_channels -> 64, padding 1, no bias), BN, ReLU and no
max-pool; stages ``conv2_x`` (64, stride 1), ``conv3_x`` (128, stride 2), ``conv4_x`` (256, stride 2)
and ``conv5_x`` (512, stride 2) of two BasicBlocks each (3x3 conv-BN-ReLU-3x3 conv-BN, a 1x1 conv + BN
shortcut when the shape changes, ReLU after the add); then ``avg_pool`` (AdaptiveAvgPool2d(1)),
flatten and the linear ``fc``. PyTorch's default init. 11,173,962 parameters for 10 classes and
11,220,132 for 100 classes at width 64.

Dropout: element-wise ``nn.Dropout(p)`` after the outputs of conv1, conv2_x, conv3_x, conv4_x,
conv5_x and once before fc, i.e. 6 sites with one p. The official config also has an
``fc_dropout`` key, but the code silently ignores it: the single ``dropout`` p drives all 6 sites.
Dropout is a separate module applied in ``forward``, so hooks on the ID layers (conv1 ... conv5_x,
avg_pool) see the activations *before* dropout. The LLID layer is ``avg_pool`` (512-d at width 64,
pre-dropout, pre-fc).

``width`` (64 in the paper) scales the channels to width, 2w, 4w, 8w, and ``in_channels`` allows
grayscale inputs, for small offline profiles.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or 1x1 conv + BN) shortcut; ReLU after the add."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 whose ID layers are its stem, its four stages and the global average pool."""

    def __init__(self, n_classes: int, *, width: int = 64, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        w = width
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                   nn.ReLU(inplace=True))
        self.conv2_x = _stage(w, w, 1)
        self.conv3_x = _stage(w, 2 * w, 2)
        self.conv4_x = _stage(2 * w, 4 * w, 2)
        self.conv5_x = _stage(4 * w, 8 * w, 2)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)  # one module, applied at all 6 sites
        self.fc = nn.Linear(8 * w, n_classes)

    @property
    def id_layers(self) -> list[str]:
        """The paper's ID layers: stem, the four stages and the pooled features (all pre-dropout)."""
        return ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "avg_pool"]

    @property
    def llid_layer(self) -> str:
        return "avg_pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.conv1(x))
        for stage in (self.conv2_x, self.conv3_x, self.conv4_x, self.conv5_x):
            x = self.dropout(stage(x))
        return self.fc(self.dropout(self.avg_pool(x).flatten(1)))
