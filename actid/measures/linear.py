"""Linear (second-order) dimension measures of activations.

Participation ratio (Gao et al. 2017; Recanatesi et al. 2022): PR = (sum lambda)^2 / sum lambda^2 over the
eigenvalues of the covariance of the activations; it runs from 1 (one direction) to D (isotropic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid.measures.base import LayerMeasure, as_real_tensor, register


def _as_rows(activations, name: str = "activations") -> torch.Tensor:
    """Validate activations and return them as an (n_examples, n_features) float tensor: float32 stays
    float32 (the data hold no more precision, and the product is twice as fast), anything else is float64."""
    activations = as_real_tensor(activations, name)
    if activations.ndim < 1:
        raise ValueError(f"{name} must have a leading example dimension, got a 0-d tensor")
    X = activations.reshape(activations.shape[0], -1)
    X = X if X.dtype == torch.float32 else X.to(torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} contain NaN or Inf; remove or fix those examples first")
    return X


def participation_ratio(activations) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance of the rows (sums in float64).

    Rows are examples (each flattened to a vector); the data are centred. No eigendecomposition is
    needed: sum lambda = trace(C) and sum lambda^2 = ||C||_F^2. When there are fewer rows than features
    the n x n Gram matrix of the centred data is used instead of the D x D covariance (same nonzero
    eigenvalues); the 1/(n-1) normalisation cancels in the ratio.
    """
    X = _as_rows(activations)
    n, D = X.shape
    if n < 2:
        raise ValueError(f"participation_ratio needs at least 2 examples to form a covariance, got {n}")
    Xc = X - X.mean(dim=0, keepdim=True, dtype=torch.float64).to(X.dtype)  # the mean in float64
    M = (Xc @ Xc.T if n < D else Xc.T @ Xc).double()  # Gram or scatter matrix: same nonzero spectrum
    trace = torch.diagonal(M).sum()
    frob2 = (M * M).sum()
    if frob2 == 0:
        raise ValueError("participation_ratio is undefined: all examples are identical (zero covariance)")
    return float(trace * trace / frob2)


# --- plug-in for the training loop (see actid.measures.base) -----------------------------------------



@register
@dataclass(kw_only=True)
class ParticipationRatio(LayerMeasure):
    """Participation ratio of each layer's activations on the probe: ``participation_ratio/<layer>``."""

    kind = "participation_ratio"

    def value(self, activations, labels) -> float:
        return participation_ratio(activations)
