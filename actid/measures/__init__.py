"""Measures of representations and weights, as plain functions and as plug-ins for the training loop.

Plain functions (any tensors, any model)::

    alignment(vectors, labels=None)                      Mehta et al.'s Omega (in-class with labels)
    gradient_alignment(model, inputs, labels, loss_fn)   in-class Omega of per-example gradients
    activation_sparsity(activations, threshold)          Golechha: fraction of entries below threshold
    relative_activation_sparsity(activations, ratio)     the same below ratio x the median |activation|
    weight_entropy(weight)                               Golechha: -sum |w| log |w|
    local_circuit_complexity(model, layer, inputs)       Golechha: KL after zeroing 10% of a layer
    participation_ratio(activations)                     (sum lambda)^2 / sum lambda^2 of the covariance
    effective_rank(activations, center)                  RankMe: exp of the entropy of the normalised singular values
    debiased_cka(x, y)                                   debiased linear CKA of two representations of the same examples
    nc1(activations, labels)                             neural collapse: tr(Sigma_W Sigma_B^+) / C
    manifold_capacity(manifolds, kappa, n_t, seed)       MFTMA capacity, radius, dimension, center correlation
    simulated_capacity(manifolds)                        capacity by brute-force separability (the check)
    weight_norms(model)                                  L2 norm per tensor and in total
    relative_gradient_norms(model, inputs, labels, loss_fn)  Mehta et al.: |grad L| / |theta| per tensor

Plug-ins (:mod:`actid.measures.base`): in ``params.yaml`` a run lists ``measures: {name: {kind, ...}}``
(``kind`` defaults to the name); :data:`REGISTRY` maps each kind to its class:

=========================  ===========  ================================================
kind                       needs        columns
=========================  ===========  ================================================
id                         activations  id/<layer>, id_err/<layer>, llid, pid
participation_ratio        activations  participation_ratio/<layer>
effective_rank             activations  effective_rank/<layer>   (RankMe)
cka_drift                  activations  cka_drift/<layer>   (debiased CKA with the previous evaluation; stateful)
nc1                        activations  nc1/<layer>   (within- over between-class variability)
sparsity                   activations  sparsity/<layer>   (``threshold`` required)
relative_sparsity          activations  relative_sparsity/<layer>   (``ratio`` required)
representation_alignment   activations  representation_alignment/<layer> (in-class)
gradient_alignment         model        gradient_alignment/<param>, gradient_alignment/logits
relative_gradient_norm     model        relative_gradient_norm/<param>
circuit_complexity         model        circuit_complexity/<layer>  (``layers`` required)
weight_entropy             weights      weight_entropy/<param>, weight_entropy/total
weight_norm                weights      weight_norm/<param>, weight_norm/total
manifold_geometry          activations  capacity/<layer>, radius/<layer>, dimension/<layer>, center_corr/<layer>
=========================  ===========  ================================================
"""

from actid.measures.alignment import GradientAlignment, RepresentationAlignment, alignment, gradient_alignment
from actid.measures.collapse import NeuralCollapse, nc1
from actid.measures.base import (REGISTRY, Evaluation, LayerMeasure, Measure, Probe, build_measure, build_measures,
                                 build_probes, register, resolve_measures, resolve_probes)
from actid.measures.geometry import ManifoldGeometry, ManifoldGeometryMeasure, manifold_capacity, simulated_capacity
from actid.measures.gradient_norm import RelativeGradientNorm, relative_gradient_norms
from actid.measures.intrinsic import IntrinsicDimension, SkdimEstimator
from actid.measures.linear import EffectiveRank, ParticipationRatio, effective_rank, participation_ratio
from actid.measures.similarity import RepresentationDrift, debiased_cka
from actid.measures.progress import (CircuitComplexity, RelativeSparsity, Sparsity, WeightEntropy, WeightNorm,
                                     activation_sparsity, local_circuit_complexity, relative_activation_sparsity,
                                     weight_entropies, weight_entropy, weight_norms)

__all__ = ["REGISTRY", "CircuitComplexity", "EffectiveRank", "Evaluation", "NeuralCollapse", "RepresentationDrift",
           "debiased_cka", "effective_rank", "nc1", "GradientAlignment", "IntrinsicDimension", "LayerMeasure",
           "ManifoldGeometry", "ManifoldGeometryMeasure", "Measure", "ParticipationRatio", "Probe",
           "RelativeGradientNorm", "RelativeSparsity", "RepresentationAlignment", "SkdimEstimator", "Sparsity",
           "WeightEntropy", "WeightNorm", "activation_sparsity", "alignment", "build_measure", "build_measures",
           "build_probes", "gradient_alignment", "local_circuit_complexity", "manifold_capacity",
           "participation_ratio", "register", "relative_activation_sparsity", "relative_gradient_norms",
           "resolve_measures", "resolve_probes", "simulated_capacity", "weight_entropies", "weight_entropy",
           "weight_norms"]
