"""Training labels with a permuted fraction, and the three kinds of class manifolds built on them.

Stephenson et al. (ICLR 2021) train on labels of which a fraction has been randomly permuted and compare the
geometry of three groupings of the training examples:

* **unpermuted**: examples whose label was left alone, grouped by that (true) label;
* **permuted**: examples whose label was changed, grouped by the label the network is trained on;
* **restored**: the same permuted examples, grouped by their true label.

``permute_labels`` shuffles the labels of a seeded ``fraction`` of the examples among themselves. A shuffle leaves
some of them with their own label by chance (about 1 in 10 for 10 balanced classes); those count as unpermuted, so
"permuted" always means "trained on a wrong label".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PermutedLabels:
    """``train``: the labels trained on; ``true``: the original ones; ``permuted``: where they differ (bool)."""

    train: torch.Tensor
    true: torch.Tensor
    permuted: torch.Tensor


def permute_labels(labels: torch.Tensor, fraction: float, seed: int) -> PermutedLabels:
    """Shuffle the labels of a random ``fraction`` of the examples (chosen and shuffled with ``seed``)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"permuted fraction must be in [0, 1], got {fraction!r}")
    labels = torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    chosen = torch.randperm(n, generator=gen)[:round(fraction * n)]
    train = labels.clone()
    train[chosen] = labels[chosen[torch.randperm(len(chosen), generator=gen)]]
    return PermutedLabels(train=train, true=labels, permuted=train != labels)


def class_balanced(labels: torch.Tensor, per_class: int, seed: int, name: str) -> torch.Tensor:
    """Sorted indices of ``per_class`` examples of every class in ``labels`` (seeded), or a ValueError naming
    ``name``."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < per_class:
            raise ValueError(f"{name}: class {c} has only {len(members)} examples, fewer than manifold_points = "
                             f"{per_class}; lower manifold_points or raise train_images / permuted_fraction")
        picked.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picked).sort().values


@dataclass(frozen=True)
class ManifoldSamples:
    """Indices into the training set of the examples whose geometry is measured: ``unpermuted`` (grouped by true
    label) and ``permuted`` (grouped by training label for the permuted kind, by true label for the restored kind).
    The permuted sample is class-balanced in the training labels; its true labels are then unbalanced."""

    unpermuted: torch.Tensor
    permuted: torch.Tensor


def manifold_samples(labels: PermutedLabels, per_class: int, seed: int) -> ManifoldSamples:
    """``per_class`` unpermuted examples of every true class and ``per_class`` permuted examples of every training
    class (fixed by ``seed``: the same examples at every evaluation)."""
    clean = torch.nonzero(~labels.permuted).flatten()
    wrong = torch.nonzero(labels.permuted).flatten()
    return ManifoldSamples(
        unpermuted=clean[class_balanced(labels.true[clean], per_class, seed, "unpermuted examples")],
        permuted=wrong[class_balanced(labels.train[wrong], per_class, seed + 1, "permuted examples")])
