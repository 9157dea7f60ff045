"""Classification losses as Mehta et al. 2021's reference code defines them, in torch.nn.functional style.

Each is ``loss(logits, labels, reduction="mean")`` with ``reduction`` in {"mean", "sum", "none"}, so it can be a
:class:`actid.train.Task`'s ``loss_fn`` (training uses the mean, evaluation the sum, the gradient-alignment
measure the per-example losses).

* ``cross_entropy``: softmax cross-entropy.
* ``hinge``: multi-class hinge, Σ_i max(0, z_i − z_y + 1) − 1 (the i = y term is 1, hence the − 1).
* ``squared``: the mean over classes of (z_k − onehot_k)², per example.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def hinge(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Multi-class hinge loss: Σ_i max(0, z_i − z_y + 1) − 1 per example."""
    correct = logits.gather(1, labels[:, None])
    return _reduce((logits - correct + 1).clamp_min(0).sum(1) - 1, reduction)


def squared(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared loss against one-hot targets, averaged over classes: mean_k (z_k − onehot_k)² per example."""
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return _reduce((logits - target).square().mean(1), reduction)


LOSSES = {"cross_entropy": F.cross_entropy, "hinge": hinge, "squared": squared}


def get_loss(name: str):
    """The loss function called ``name`` (a key of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]
