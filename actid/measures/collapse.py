"""Neural collapse NC1 (Papyan, Han & Donoho 2020): within-class variability against between-class variability.

NC1 = tr(Sigma_W Sigma_B^+) / C, with Sigma_W the covariance of the examples about their class means, Sigma_B the
covariance of the C class means about their average, and ^+ the pseudo-inverse (Sigma_B has rank at most C - 1). It
falls towards 0 as each class collapses onto its mean, and does not change when the features are rotated or scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid.measures.base import LayerMeasure, register
from actid.measures.linear import _as_rows


def nc1(activations, labels) -> float:
    """NC1 = tr(Sigma_W Sigma_B^+) / C of the rows grouped by ``labels`` (one per row; float64 inside).

    Computed in the eigenbasis of Sigma_B: tr(Sigma_W Sigma_B^+) = sum_k u_k^T Sigma_W u_k / lambda_k over its
    nonzero eigenpairs (eigenvalues below 1e-10 of the largest count as zero), without forming a features x
    features matrix."""
    H = _as_rows(activations).double()
    labels = torch.as_tensor(labels, device=H.device)
    if labels.ndim != 1 or len(labels) != len(H):
        raise ValueError(f"labels must be 1-D with one label per row ({len(H)}), got shape {tuple(labels.shape)}")
    classes, group, counts = labels.unique(return_inverse=True, return_counts=True)
    C = len(classes)
    if C < 2:
        raise ValueError(f"nc1 needs at least 2 classes, got {C}")
    means = torch.zeros(C, H.shape[1], dtype=H.dtype, device=H.device).index_add_(0, group, H)
    means = means / counts.to(H.dtype)[:, None]
    within = H - means[group]  # each example about its class mean
    between = means - means.mean(0, keepdim=True)  # Sigma_B = between^T between / C
    _, s, vh = torch.linalg.svd(between, full_matrices=False)
    keep = s > s.max() * 1e-5 if s.max() > 0 else s > 0  # eigenvalues s^2 / C above 1e-10 of the largest
    if not keep.any():
        raise ValueError("nc1 is undefined: every class has the same mean (no between-class variability)")
    eig = s[keep] ** 2 / C
    projected = within @ vh[keep].T  # (n, rank): the within-class deviations along Sigma_B's eigenvectors
    sigma_w_diag = projected.square().sum(0) / len(H)  # u_k^T Sigma_W u_k
    return float((sigma_w_diag / eig).sum() / C)


# --- plug-in for the training loop (see actid.measures.base) -----------------------------------------


@register
@dataclass(kw_only=True)
class NeuralCollapse(LayerMeasure):
    """NC1 of each layer's activations on the probe, grouped by the probe's labels: ``nc1/<layer>``."""

    kind = "nc1"

    def value(self, activations, labels) -> float:
        return nc1(activations, labels)
