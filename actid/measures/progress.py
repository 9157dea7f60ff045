"""Progress measures for grokking (Golechha 2024, "Progress measures for grokking on real-world tasks").

* activation sparsity: fraction of activations below a threshold (and a scale-free variant, relative to the
  layer's median |activation|);
* weight entropy: -sum |w| log |w| over the weights (unnormalised);
* local circuit complexity: KL divergence of the output when a random fraction of one layer's weights
  is zeroed, summed over the inputs;
* weight norms (the L2 norm the paper relates grokking to), per tensor and in total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import nn

from actid import schema
from actid.config import integer, param, real
from actid.measures.base import Evaluation, LayerMeasure, Measure, as_real_tensor, register


def activation_sparsity(activations, threshold: float) -> float:
    """Fraction of activation entries strictly below `threshold`, over all examples and features.

    Golechha 2024 counts activations below a small threshold as inactive; pick the threshold to suit
    the nonlinearity (e.g. a small positive value after ReLU).
    """
    x = as_real_tensor(activations, "activations")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"activations must have at least one example along dim 0, got shape {tuple(x.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or math.isnan(threshold):
        raise TypeError(f"threshold must be a real number, got {threshold!r}")
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError("activations contain NaN, which is neither below nor above the threshold; fix them first")
    x = x.reshape(x.shape[0], -1)
    if x.numel() == 0:
        raise ValueError(f"activations have no features, got shape {tuple(activations.shape)}")
    return float((x < threshold).sum().item() / x.numel())


def relative_activation_sparsity(activations, ratio: float) -> float:
    """Fraction of activation entries with |a| <= ``ratio`` x the median |a| of all entries: a scale-free sparsity,
    unchanged when the activations are rescaled. (With a large initialization scale the activations shrink by
    orders of magnitude during training, so a fixed threshold changes meaning over a run.) When more than half the
    entries are 0 (e.g. after ReLU) the median is 0 and this is the fraction of exact zeros."""
    x = as_real_tensor(activations, "activations")
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not ratio >= 0:
        raise ValueError(f"ratio must be a number >= 0, got {ratio!r}")
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"activations must have at least one example and one feature, got shape {tuple(x.shape)}")
    magnitude = x.reshape(-1).abs().to(torch.float64)
    if torch.isnan(magnitude).any():
        raise ValueError("activations contain NaN; fix them first")
    return float((magnitude <= ratio * magnitude.median()).sum().item() / magnitude.numel())


def weight_entropy(weight) -> float:
    """-sum |w| log|w| over all entries of `weight`, with 0 log 0 = 0, in float64 (Golechha 2024; not normalised)."""
    w = as_real_tensor(weight, "weight").to(torch.float64).abs()
    if not torch.isfinite(w).all():
        raise ValueError("weight contains NaN or Inf; the entropy would be meaningless")
    return float(-torch.xlogy(w, w).sum())


def weight_entropies(model: nn.Module) -> dict[str, float]:
    """weight_entropy of every parameter with dim >= 2 (weight matrices and kernels; biases and norm
    scales are left out), keyed by parameter name, plus "total" = their sum."""
    out = {name: weight_entropy(p) for name, p in model.named_parameters() if p.ndim >= 2}
    _check_no_total(out)
    out["total"] = math.fsum(out.values())
    return out


def weight_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of every parameter tensor, keyed by parameter name, plus "total" = the global L2 norm
    sqrt(sum of all squared parameters), in float64."""
    squares = {name: float((p.detach().to(torch.float64) ** 2).sum()) for name, p in model.named_parameters()}
    _check_no_total(squares)
    out = {name: math.sqrt(s) for name, s in squares.items()}
    out["total"] = math.sqrt(math.fsum(squares.values()))
    return out


def _check_no_total(d: dict) -> None:
    if "total" in d:
        raise ValueError('the model has a parameter named "total", which clashes with the "total" key; rename it')


def _weighted_module(model: nn.Module, layer) -> nn.Module:
    if isinstance(layer, bool) or not isinstance(layer, str):
        hint = f' such as "{layer}"' if isinstance(layer, Integral) else ""
        raise TypeError(f"layer must be a dotted module name from model.named_modules(), passed as a string{hint}; "
                        f"got {type(layer).__name__} {layer!r}")
    modules = dict(model.named_modules())
    weighted = [name for name, m in modules.items() if _stored_weight(m) is not None]
    if layer not in weighted:
        if layer not in modules:
            problem = "is not a module of the model"
        elif isinstance(getattr(modules[layer], "weight", None), torch.Tensor):
            problem = "has a weight computed on the fly (e.g. a parametrization), which cannot be ablated in place"
        else:
            problem = "has no weight tensor"
        raise KeyError(f"layer {layer!r} {problem}; modules with a weight are: {', '.join(weighted) or '(none)'}")
    return modules[layer]


def _stored_weight(module: nn.Module) -> torch.Tensor | None:
    """The module's own `weight` parameter or buffer (not one recomputed at each access), else None."""
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    weight = own.get("weight")
    return weight if weight is not None and getattr(module, "weight", None) is weight else None


def _kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over all positions of KL(p || q) along the last dim, in float64; p = 0 terms count as 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum()


def local_circuit_complexity(model: nn.Module, layer: str, inputs: torch.Tensor, fraction: float = 0.1,
                             n_masks: int = 1, seed: int = 0, batch_size: int = 1024) -> float:
    """Sum over `inputs` of KL(softmax(logits) || softmax(logits with a random `fraction` of `layer`'s weight
    entries zeroed)), averaged over `n_masks` fixed masks (Golechha 2024 zero 10% of a layer's weights).

    Mask m zeroes weight entries where U(0, 1) < fraction, the uniforms drawn in float64 on the CPU by
    `torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed + m), dtype=torch.float64)`,
    so they are the same on every device. The bias is untouched. Softmax runs over the last dim of the
    model output; any other output dims (e.g. sequence positions) are summed over like examples.
    Runs in eval mode under torch.no_grad; each module's train/eval flag and the weight are restored
    exactly afterwards, also on error. `inputs` must already be on the model's device.
    """
    module = _weighted_module(model, layer)
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError("inputs must be a tensor with at least one example along dim 0")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    for name, value in (("n_masks", n_masks), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")

    weight = _stored_weight(module)
    masks = [(torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed + m), dtype=torch.float64)
              < fraction).to(weight.device) for m in range(n_masks)]
    training = {m: m.training for m in model.modules()}
    saved = weight.detach().clone()
    per_mask = torch.zeros(n_masks, dtype=torch.float64)
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                x = inputs[start:start + batch_size]
                log_p = _log_probs(model(x))
                for m, mask in enumerate(masks):
                    weight.masked_fill_(mask, 0)
                    per_mask[m] += _kl_sum(log_p, _log_probs(model(x))).cpu()
                    weight.copy_(saved)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        for m, flag in training.items():
            m.training = flag
    if torch.isnan(per_mask).any():
        raise ValueError("the KL divergence is NaN: the model produced NaN outputs (before or after ablation)")
    return float(per_mask.mean())


def _log_probs(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a logits tensor, got {type(logits).__name__}; "
                        "wrap it so that forward returns the logits")
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


# --- plug-ins for the training loop (see actid.measures.base) ----------------------------------------



@register
@dataclass(kw_only=True)
class Sparsity(LayerMeasure):
    """Activation sparsity of each layer on the probe: ``sparsity/<layer>``."""

    kind = "sparsity"
    threshold: float = param(check=real(0))

    def value(self, activations, labels) -> float:
        return activation_sparsity(activations, self.threshold)


@register
@dataclass(kw_only=True)
class RelativeSparsity(LayerMeasure):
    """Scale-free activation sparsity of each layer on the probe (threshold ``ratio`` x the layer's median
    |activation|): ``relative_sparsity/<layer>``."""

    kind = "relative_sparsity"
    ratio: float = param(check=real(0))

    def value(self, activations, labels) -> float:
        return relative_activation_sparsity(activations, self.ratio)


@register
@dataclass(kw_only=True)
class WeightEntropy(Measure):
    """Absolute weight entropy of every weight matrix and their sum: ``weight_entropy/<param>``, ``/total``."""

    kind = "weight_entropy"
    needs = "weights"

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        return {schema.column(self.name, k): v for k, v in weight_entropies(ev.model).items()}


@register
@dataclass(kw_only=True)
class WeightNorm(Measure):
    """L2 norm of every parameter tensor and of all of them: ``weight_norm/<param>``, ``weight_norm/total``."""

    kind = "weight_norm"
    needs = "weights"

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        return {schema.column(self.name, k): v for k, v in weight_norms(ev.model).items()}


@register
@dataclass(kw_only=True)
class CircuitComplexity(Measure):
    """Local circuit complexity of each layer on the probe, summed over its inputs: ``circuit_complexity/<layer>``.
    The masks are fixed by ``seed``, the same at every evaluation."""

    kind = "circuit_complexity"
    needs = "model"
    fraction: float = param(0.1, real(0, 1, low_open=True))
    n_masks: int = param(1, integer(1))
    seed: int | None = param(None, integer(0, optional=True))

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        x = ev.probes[self.probe][0]
        return {schema.column(self.name, layer): local_circuit_complexity(
                    ev.model, layer, x, fraction=self.fraction, n_masks=self.n_masks, seed=self.seed)
                for layer in self.layer_names(ev.id_layers)}
