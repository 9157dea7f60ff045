"""Gradient alignment Ω (Mehta, Cutkosky & Neyshabur 2021, "Extreme memorization via scale of initialization").

Ω of vectors g_1..g_n is the mean pairwise inner product over the squared mean norm,

    Ω = E_{i≠j}⟨g_i, g_j⟩ / (E_i‖g_i‖)² = n (‖Σ g_i‖² − Σ‖g_i‖²) / ((n − 1) (Σ‖g_i‖)²),

so three sums and O(n) work suffice. Ω ≤ 1 with equality iff all g_i are equal, it can be negative, and it is
unchanged when every g_i is scaled by one factor. The paper tracks Ω of per-example gradients within a class: high
when the examples of a class pull the parameters the same way, near 0 when each example is fit on its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from actid import schema
from actid.config import integer, param
from actid.measures.base import Evaluation, LayerMeasure, Measure, register


def omega_from_sums(sum_vector_sq_norm, sum_sq_norms, sum_norms, n):
    """Ω from ‖Σ g_i‖², Σ‖g_i‖², Σ‖g_i‖ and the count n ≥ 2: floats give a float, tensors give Ω elementwise.

    If every g_i is zero (Σ‖g_i‖ = 0), Ω is undefined and this is NaN: vectors of length 0 have no direction
    (e.g. the per-example gradients of a network whose softmax has saturated on every example). The reference code
    reports 0 there, which would read as "unaligned"; in-class means skip such classes.
    """
    if not isinstance(n, torch.Tensor) and n < 2:
        raise ValueError(f"alignment needs at least 2 vectors, got {n}")
    denominator = (n - 1) * sum_norms**2
    if isinstance(denominator, torch.Tensor):
        return torch.where(denominator > 0, n * (sum_vector_sq_norm - sum_sq_norms) / denominator, float("nan"))
    return n * (sum_vector_sq_norm - sum_sq_norms) / denominator if denominator > 0 else float("nan")


def _omega(g: torch.Tensor) -> float:
    """Ω of the rows of a 2-D tensor."""
    return float(omega_from_sums(g.sum(0).square().sum(), g.square().sum(), g.norm(dim=1).sum(), len(g)))


def alignment(vectors, labels=None) -> float:
    """Ω of the rows of ``vectors`` (dims after the first are flattened), in float64.

    With ``labels`` (1-D, one per row) this is the in-class alignment: the mean of Ω over the classes with at least
    2 members; classes with a single member have no pairs and are skipped, as are classes whose vectors are all
    zero (Ω undefined; NaN if that leaves none).
    """
    g = torch.as_tensor(vectors).detach()
    if g.ndim == 0:
        raise ValueError("vectors must have a leading example dimension, got a 0-d tensor")
    g = (g.flatten(1) if g.ndim > 1 else g[:, None]).to(torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError("vectors contain NaN or Inf; remove or fix those rows first")
    if labels is None:
        if len(g) < 2:
            raise ValueError(f"alignment needs at least 2 vectors, got {len(g)}")
        return _omega(g)
    labels = torch.as_tensor(labels, device=g.device)
    if labels.ndim != 1 or len(labels) != len(g):
        raise ValueError(f"labels must be 1-D with one label per vector ({len(g)}), got shape {tuple(labels.shape)}")
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    if not (counts >= 2).any():
        raise ValueError("no class has 2 or more vectors, so there are no pairs to align; pass more examples per class")
    # the three sums of every class in one pass (no loop over classes: many classes stay cheap on a GPU)
    sq_norms = g.square().sum(1)
    per_class = torch.zeros(len(counts), g.shape[1], dtype=g.dtype, device=g.device).index_add_(0, inverse, g)
    sum_sq = torch.zeros(len(counts), dtype=g.dtype, device=g.device).index_add_(0, inverse, sq_norms)
    sum_norms = torch.zeros(len(counts), dtype=g.dtype, device=g.device).index_add_(0, inverse, sq_norms.sqrt())
    omegas = omega_from_sums(per_class.square().sum(1), sum_sq, sum_norms, counts.to(g.dtype))
    return float(omegas[counts >= 2].nanmean())


def gradient_alignment(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss_fn, *,
                       chunk_size: int = 256) -> dict[str, float]:
    """In-class Ω of the per-example gradients g_i = ∇_θ ℓ(model(x_i), y_i), for each parameter tensor and the logits.

    Returns ``{name: Ω}`` for every parameter of ``model.named_parameters()`` with ``requires_grad``, plus
    ``"logits"``: Ω of the per-example gradient of the loss w.r.t. the model's (n, k) output. Each value is the mean
    of Ω over the classes of ``labels`` with at least 2 examples (singleton classes, and classes whose gradients
    are all zero, are skipped; NaN if none is left).

    ``loss_fn(logits, labels)`` returns per-example losses of shape (n,), or a scalar taken to be the batch MEAN
    (as ``F.cross_entropy`` by default). The model runs in eval mode, so examples are independent; every module's
    training flag is restored afterwards, and neither the parameters nor their ``.grad`` are touched.

    Cost: inputs go through in chunks of ``chunk_size``, sorted by class, keeping per class only
    S_c = Σ g_i, Q_c = Σ‖g_i‖², N_c = Σ‖g_i‖. ``nn.Linear`` modules called once per forward (with the examples on
    dim 0) never form per-example gradients: S_c, Q_c and N_c come from the layer inputs and output gradients. All
    other parameters use torch.func (vmap of grad), O(chunk_size × their size) memory; lower ``chunk_size`` for big
    conv nets.

    Limitation: a Linear's weight that the model also uses outside that layer's call (``F.linear(x, self.fc.weight)``
    elsewhere in forward) cannot be seen by the hooks and would be counted from the layer's own call only; tie
    weights through modules (a weight shared by two modules is detected and goes through torch.func).
    """
    inputs = torch.as_tensor(inputs)
    labels = torch.as_tensor(labels, device=inputs.device)
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise ValueError(f"labels must be 1-D with one label per input ({len(inputs)}), got shape "
                         f"{tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    _, group, totals = labels.unique(return_inverse=True, return_counts=True)
    kept = torch.nonzero(totals[group] >= 2).squeeze(1)
    if len(kept) == 0:
        raise ValueError("no class has 2 or more examples, so there are no pairs to align; pass more examples per "
                         "class")
    order = kept[torch.argsort(group[kept], stable=True)]  # classes contiguous: a class closes once it is complete

    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            return _gradient_alignment(model, inputs, labels, loss_fn, order, group[order], chunk_size)
    finally:
        for m, flag in training.items():
            m.training = flag


class _InClassOmega:
    """Per-class Ω of several keys, fed chunk by chunk with examples sorted by class.

    Only a chunk's last class can be incomplete: its vector sums are carried into the next chunk, and every complete
    class is reduced to its Ω at once, so a class's S_c lives no longer than needed. Per chunk, ``add`` takes each
    key's per-class vector sums and per-example squared norms; ``end_chunk`` then sums the norms for all keys at once.
    """

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.carry_S, self.last_S = {}, {}  # key -> S of the carried class; of this chunk's last class
        self.carry = None  # (Q, N, n) of the carried class
        self.A, self.sq = {}, {}  # this chunk's ‖S_c‖² (k,) and ‖g_i‖² (m,) per key
        self.omegas = []

    def add(self, key: str, vector_sums: torch.Tensor, sq_norms: torch.Tensor) -> None:
        S = vector_sums.flatten(1)  # a fresh temporary, in the gradients' dtype
        if key in self.carry_S:  # the chunk's first class is the carried one
            S[:1] += self.carry_S.pop(key)
        self.last_S[key] = S[-1:].clone()
        # squared in the gradients' own precision (10x cheaper than a float64 copy of every class sum)
        self.A[key], self.sq[key] = S.square().sum(1).double(), sq_norms

    def end_chunk(self, local: torch.Tensor, counts: torch.Tensor, last_complete: bool) -> None:
        """``local`` maps each example to its class in the chunk; ``counts`` (k,) are the examples per class."""
        A = torch.stack([self.A.pop(key) for key in self.keys])
        sq = torch.stack([self.sq.pop(key) for key in self.keys]).double().clamp_min(0)
        Q = sq.new_zeros(A.shape).index_add_(1, local, sq)
        N = sq.new_zeros(A.shape).index_add_(1, local, sq.sqrt())
        n = counts.double()
        if self.carry is not None:
            for total, part in zip((Q, N, n), self.carry):
                total[..., :1] += part
        complete = len(n) if last_complete else len(n) - 1
        self.carry = None if last_complete else (Q[:, complete:], N[:, complete:], n[complete:])
        self.carry_S, self.last_S = ({} if last_complete else self.last_S), {}
        self.omegas.append(omega_from_sums(A[:, :complete], Q[:, :complete], N[:, :complete], n[:complete]))

    def means(self) -> dict[str, float]:
        return dict(zip(self.keys, torch.cat(self.omegas, 1).nanmean(1).tolist()))


def _gradient_alignment(model, inputs, labels, loss_fn, order, group, chunk_size) -> dict[str, float]:
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    omega = _InClassOmega([*trainable, "logits"])
    candidates = _linear_candidates(model)
    linears = others = None  # decided on the first chunk, from how often each Linear is called
    for lo in range(0, len(order), chunk_size):
        hi = min(lo + chunk_size, len(order))
        x, y, m = inputs[order[lo:hi]], labels[order[lo:hi]], hi - lo
        _, local, counts = torch.unique_consecutive(group[lo:hi], return_inverse=True, return_counts=True)
        k, split = len(counts), counts.tolist()

        z, calls = _forward_recording(model, x, candidates if linears is None else linears)
        if z.ndim != 2 or len(z) != m:
            raise ValueError(f"the model must return logits of shape (n, k) = ({m}, k), got {tuple(z.shape)}")
        if linears is None:
            linears = {mod: parts for mod, parts in candidates.items()
                       if len(calls[mod]) == 1 and calls[mod][0][0].ndim >= 2 and len(calls[mod][0][0]) == m}
            done = {name for parts in linears.values() for name in parts.values()}
            others = [name for name in trainable if name not in done]
        for mod in linears:
            if len(calls[mod]) != 1:
                raise RuntimeError(f"a Linear called once on the first chunk was called {len(calls[mod])} times later; "
                                   "gradient_alignment needs a call pattern that does not depend on the inputs")

        dz = _output_grad(z, y, loss_fn)
        omega.add("logits", *_dense_stats(dz, local, k))
        outputs = [calls[mod][0][1] for mod in linears]
        deltas = torch.autograd.grad(z, outputs, dz, allow_unused=True) if outputs else []
        for (mod, parts), out, delta in zip(linears.items(), outputs, deltas):
            a = calls[mod][0][0]
            delta = torch.zeros_like(out) if delta is None else delta
            a, delta = a.reshape(m, -1, a.shape[-1]), delta.reshape(m, -1, delta.shape[-1])  # positions t on dim 1
            if "weight" in parts:
                omega.add(parts["weight"], *_linear_weight_stats(a, delta, split))
            if "bias" in parts:
                omega.add(parts["bias"], *_dense_stats(delta.sum(1), local, k))
        del calls, outputs, deltas
        if others:
            for name, g in _per_example_grads(model, others, x, y, loss_fn).items():
                omega.add(name, *_dense_stats(g.reshape(m, -1), local, k))
        omega.end_chunk(local, counts, last_complete=hi == len(order) or bool(group[hi] != group[hi - 1]))
    return omega.means()


def _linear_candidates(model: nn.Module) -> dict[nn.Module, dict[str, str]]:
    """Plain nn.Linear modules -> {"weight"/"bias": parameter name} for their trainable parameters that no other
    module shares (a tied weight's gradient has other terms)."""
    names = {id(p): name for name, p in model.named_parameters()}
    owners = Counter(id(p) for mod in model.modules() for p in mod.parameters(recurse=False))
    candidates = {}
    for mod in model.modules():
        if type(mod) is nn.Linear:  # subclasses may change forward
            parts = {local: names[id(p)] for local, p in mod.named_parameters(recurse=False)
                     if local in ("weight", "bias") and p.requires_grad and owners[id(p)] == 1}
            if parts:
                candidates[mod] = parts
    return candidates


def _forward_recording(model: nn.Module, x: torch.Tensor, modules) -> tuple[torch.Tensor, dict]:
    """model(x) and, per module, the (input, output) of each call.

    The recorded output is replaced downstream by a clone, so in-place ops after the layer (ReLU(inplace=True))
    cannot change the tensor whose gradient we ask for.
    """
    calls = {mod: [] for mod in modules}

    def hook(mod, args, output):
        calls[mod].append((args[0].detach() if args else torch.empty(0), output))
        return output.clone()

    handles = [mod.register_forward_hook(hook) for mod in modules]
    try:
        return model(x), calls
    finally:
        for h in handles:
            h.remove()


def _summed_loss(loss: torch.Tensor, m: int) -> torch.Tensor:
    """Sum of the per-example losses: per-example (m,) losses are summed, a scalar mean is multiplied by m."""
    if loss.ndim == 0:
        return loss * m
    if loss.shape == (m,):
        return loss.sum()
    raise ValueError(f"loss_fn must return per-example losses of shape ({m},) or a scalar batch mean, "
                     f"got shape {tuple(loss.shape)}")


def _output_grad(z: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    """Per-example gradients of the loss w.r.t. the logits, (m, k)."""
    z = z.detach().requires_grad_()
    return torch.autograd.grad(_summed_loss(loss_fn(z, y), len(z)), z)[0]


def _dense_stats(g: torch.Tensor, local: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class vector sums (k, D) and per-example squared norms (m,) of explicit per-example gradients (m, D);
    ``local`` maps each example to its class in the chunk."""
    return g.new_zeros(k, g.shape[1]).index_add_(0, local, g), g.square().sum(1)


def _linear_weight_stats(a: torch.Tensor, delta: torch.Tensor, counts: list[int]):
    """The same for a Linear weight without forming g_i = Σ_t δ_it a_itᵀ.

    a (m, T, d_in) and δ (m, T, d_out) hold each example's T positions. Per class S_c = Δ_cᵀ A_c over all its
    positions; ‖g_i‖² = Σ_{t,s} (δ_it·δ_is)(a_it·a_is), a T×T Gram product per example.
    """
    vector_sums = torch.stack([dc.flatten(0, 1).T @ ac.flatten(0, 1)
                               for dc, ac in zip(delta.split(counts), a.split(counts))])
    sq_norms = ((delta @ delta.mT) * (a @ a.mT)).sum((1, 2))
    return vector_sums, sq_norms


def _per_example_grads(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict:
    """Per-example gradients {name: (m, *shape)} of the named parameters, all other parameters and buffers held
    constant, by vmap over grad of each example's loss."""
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    wrt = {k: state.pop(k) for k in names}

    def example_loss(params, xi, yi):
        out = functional_call(model, {**state, **params}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0)).sum()  # a batch of one: its mean is its loss

    with sdpa_kernel(SDPBackend.MATH):  # vmap batches the plain attention; fused kernels fall back to a loop
        return vmap(grad(example_loss), in_dims=(None, 0, 0))(wrt, x, y)


# --- plug-ins for the training loop (see actid.measures.base) ----------------------------------------

@register
@dataclass(kw_only=True)
class RepresentationAlignment(LayerMeasure):
    """In-class alignment of each layer's activations on the probe (Mehta et al.'s representation
    alignment): ``representation_alignment/<layer>``."""

    kind = "representation_alignment"

    def value(self, activations, labels) -> float:
        return alignment(activations, labels)


@register
@dataclass(kw_only=True)
class GradientAlignment(Measure):
    """In-class alignment of the per-example gradients on the probe, per parameter tensor and of the
    logits: ``gradient_alignment/<param>``, ``gradient_alignment/logits``. It takes no layers."""

    kind = "gradient_alignment"
    needs = "model"
    chunk_size: int = param(256, integer(1))

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        x, y = ev.probes[self.probe]
        values = gradient_alignment(ev.model, x, y, lambda z, t: ev.loss_fn(z, t, reduction="none"),
                                    chunk_size=self.chunk_size)
        return {schema.column(self.name, key): value for key, value in values.items()}
