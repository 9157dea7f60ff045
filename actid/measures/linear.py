"""Linear (second-order) dimension measures of activations.

Participation ratio (Gao et al. 2017; Recanatesi et al. 2022): PR = (sum lambda)^2 / sum lambda^2 over the
eigenvalues of the covariance of the activations; it runs from 1 (one direction) to D (isotropic).

Effective rank (RankMe; Roy & Vetterli 2007, Garrido et al. 2023): exp of the Shannon entropy of the singular values
normalised to sum to 1; k equal singular values give exactly k. RankMe reads the embeddings as they are (not
centred); ``center=True`` measures the covariance's spectrum instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid.config import flag, param
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


def effective_rank(activations, center: bool = False) -> float:
    """RankMe: exp(-sum p_k log p_k) with p_k = s_k / sum s over the singular values s of the rows (0 log 0 = 0).

    Between 1 and min(n, features); k equal nonzero singular values give k. ``center`` subtracts the mean row."""
    X = _as_rows(activations).double()
    if center:
        X = X - X.mean(dim=0, keepdim=True)
    n, D = X.shape
    # the singular values are the square roots of the eigenvalues of the smaller of X X^T and X^T X: an n x n or
    # D x D symmetric eigenproblem instead of an SVD of the n x D matrix (10x faster for a wide layer). Eigenvalues
    # within rounding of 0 (below max(n, D) * eps of the largest, as for a matrix rank) are 0.
    eig = torch.linalg.eigvalsh(X @ X.T if n < D else X.T @ X)
    eig = torch.where(eig > eig.max() * max(n, D) * torch.finfo(eig.dtype).eps, eig, 0.0)
    s = eig.sqrt()
    total = s.sum()
    if total == 0:
        raise ValueError("effective_rank is undefined: the activations are all zero" +
                         (" after centring (all examples identical)" if center else ""))
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


# --- plug-in for the training loop (see actid.measures.base) -----------------------------------------



@register
@dataclass(kw_only=True)
class ParticipationRatio(LayerMeasure):
    """Participation ratio of each layer's activations on the probe: ``participation_ratio/<layer>``."""

    kind = "participation_ratio"

    def value(self, activations, labels) -> float:
        return participation_ratio(activations)


@register
@dataclass(kw_only=True)
class EffectiveRank(LayerMeasure):
    """Effective rank (RankMe) of each layer's activations on the probe: ``effective_rank/<layer>``."""

    kind = "effective_rank"

    center: bool = param(False, flag())

    def value(self, activations, labels) -> float:
        return effective_rank(activations, self.center)
