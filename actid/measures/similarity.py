"""Representational similarity: debiased linear CKA, and the drift of a representation between evaluations.

Linear CKA (Kornblith et al. 2019) compares two representations of the same n examples through their Gram
matrices K = X X^T and L = Y Y^T: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). The plug-in estimate of HSIC is
biased upwards when the features are many against n (two independent random representations score well above 0);
the unbiased estimator of Song et al. (2012) removes that bias, so independent representations score 0 in
expectation and identical ones (up to rotation, isotropic scale and translation) score exactly 1. With the
debiased HSIC the ratio can fall slightly below 0 for unrelated representations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid import schema
from actid.measures.base import Evaluation, Measure, register
from actid.measures.linear import _as_rows


def _unbiased_hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of two Gram matrices (float64, diagonals already zeroed), up to a positive
    constant factor that cancels in CKA."""
    n = K.shape[0]
    k_sum, l_sum = K.sum(1), L.sum(1)
    return ((K * L).sum() + k_sum.sum() * l_sum.sum() / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (k_sum @ l_sum)) / (n * (n - 3))


def _gram(activations, name: str) -> torch.Tensor:
    X = _as_rows(activations, name).double()
    K = X @ X.T
    K.fill_diagonal_(0)
    return K


def debiased_cka(x, y) -> float:
    """Debiased linear CKA of two representations of the same examples (rows; features are flattened, and x and y
    may have different numbers of them). 1: the same up to rotation, isotropic scale and translation; about 0:
    unrelated. Needs at least 4 examples (the unbiased HSIC divides by n - 3)."""
    K, L = _gram(x, "x"), _gram(y, "y")
    n = K.shape[0]
    if L.shape[0] != n:
        raise ValueError(f"debiased_cka compares representations of the same examples: x has {n} rows, "
                         f"y has {L.shape[0]}")
    if n < 4:
        raise ValueError(f"debiased_cka needs at least 4 examples, got {n}")
    kk, ll = _unbiased_hsic(K, K), _unbiased_hsic(L, L)
    if kk <= 0 or ll <= 0:
        raise ValueError("debiased_cka is undefined: a representation has no variance across the examples "
                         "(every row the same up to a constant)")
    return float(_unbiased_hsic(K, L) / torch.sqrt(kk * ll))


# --- plug-in for the training loop (see actid.measures.base) -----------------------------------------


@register
@dataclass(kw_only=True)
class RepresentationDrift(Measure):
    """Debiased linear CKA between each layer's representation of the probe now and at the last evaluation this
    measure ran (``cka_drift/<layer>``; NaN at its first evaluation). 1 - CKA is how far the representation moved.

    The previous representation is the measure's state: it is saved in the run's checkpoint (float32, as
    captured), so a resumed run measures the same drift as an uninterrupted one. The checkpoint grows by
    n x features x 4 bytes per layer: leave wide convolutional layers out of its layer list."""

    kind = "cka_drift"
    needs = "activations"

    def __post_init__(self):
        super().__post_init__()
        self.previous: dict[str, torch.Tensor] = {}  # layer -> its representation at the last evaluation

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        acts = ev.activations[self.probe]
        row, current = {}, {}
        for layer in self.layer_names(ev.id_layers):
            now = acts[layer].detach().reshape(len(acts[layer]), -1).to("cpu", torch.float32).clone()
            before = self.previous.get(layer)
            row[schema.column(self.name, layer)] = (float("nan") if before is None
                                                    else debiased_cka(before, now))
            current[layer] = now
        self.previous = current
        return row

    def state(self) -> dict:
        return {"previous": dict(self.previous)}

    def load_state(self, state: dict) -> None:
        self.previous = dict(state.get("previous", {}))
