"""Point clouds from a transformer's hidden states, under a stated token-pooling protocol, and their ID by layer.

A layer of a language model gives one vector per token, ``(batch, seq, hidden)``; an ID needs one point per
example. Which tokens make the points changes the answer, so the choice is an argument and is recorded:

==========  =============================================================================================
``last``    the last non-padding token of each sequence (what a causal model predicts from; right or left
            padding alike); one point per sequence
``mean``    the mean over each sequence's non-padding tokens; one point per sequence
``all``     every non-padding token; one point per token (points of one sequence are not independent)
==========  =============================================================================================

Padding never enters a point: the ``attention_mask`` (1 = token, 0 = padding) decides. ::

    from actid.integrations.hf import id_profile
    profile = id_profile(model, input_ids, attention_mask, pooling="last")    # one row per layer
    profile.attrs["protocol"]                                                 # the recorded choices

A Hugging Face ``PreTrainedModel`` gives every layer through ``output_hidden_states=True`` (``hidden_states.0`` is
the embeddings, ``hidden_states.<L>`` the last layer as the model returns it: GPT-2 applies its final LayerNorm
there). Any other module is recorded with forward hooks on the named ``layers``, each of which must output
``(batch, seq, ...)`` for the sequence given; the mask is then used for pooling only. Needs ``actid[hf]`` only for
transformers models; the rest is plain torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from actid.capture import check_layer_names, eval_mode, recording
from actid.estimators import Estimator, TwoNN

POOLINGS = ("last", "mean", "all")


def _check_mask(attention_mask: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(attention_mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, the sequences {tuple(shape)}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
    mask = mask.bool()
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"sequence(s) {empty[:5]} have no token in attention_mask: they would give no point")
    return mask


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Points from ``hidden`` ``(batch, seq, ...)`` under ``pooling`` (``last``, ``mean`` or ``all``), ignoring the
    positions where ``attention_mask`` is 0. Returns ``(points, features)`` (float32 for half-precision states)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if hidden.ndim < 3:
        raise ValueError(f"hidden states must be (batch, seq, hidden), got shape {tuple(hidden.shape)}")
    mask = _check_mask(attention_mask, hidden.shape[:2]).to(hidden.device)
    hidden = hidden.flatten(2)
    if hidden.dtype in (torch.float16, torch.bfloat16):  # sums and counts of half-precision states lose digits
        hidden = hidden.float()
    if pooling == "all":
        return hidden[mask]
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1)
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


def _padding_side(mask: torch.Tensor) -> str:
    padded = ~mask.all(1)
    if not padded.any():
        return "none"
    right = (mask[padded, 0]).all()  # every padded sequence starts with a token
    left = (mask[padded, -1]).all()
    return "right" if right and not left else "left" if left and not right else "mixed"


def _is_pretrained(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


@dataclass
class HiddenStates:
    """``points[layer]``: ``(n_points, features)``; ``protocol``: the choices that made them (recorded with them)."""

    points: dict[str, torch.Tensor]
    protocol: dict = field(default_factory=dict)


@torch.no_grad()
def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  pooling: str, layers: list[str] | None = None, batch_size: int = 64,
                  forward_kwargs: dict | None = None) -> HiddenStates:
    """Pooled hidden states of ``model`` on ``input_ids`` ``(batch, seq)``, layer by layer (see the module docstring).

    Args:
        layers: module names to record; None takes every hidden state of a ``PreTrainedModel``.
        forward_kwargs: extra keyword arguments of the forward call (e.g. ``all_positions=True`` for actid's
            grokking transformer, whose last block otherwise computes the last position only).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    mask = _check_mask(attention_mask, input_ids.shape)
    pretrained = _is_pretrained(model)
    if layers is None and not pretrained:
        raise ValueError(f"{type(model).__name__} is not a transformers PreTrainedModel: name the layers to record "
                         "(modules that output (batch, seq, hidden))")
    if layers is not None:
        check_layer_names(model, layers)
    device = next(model.parameters()).device
    kwargs = dict(forward_kwargs or {})
    parts: dict[str, list[torch.Tensor]] = {}
    with eval_mode(model):
        for start in range(0, len(input_ids), batch_size):
            ids, m = input_ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device)
            if layers is None:
                out = model(input_ids=ids, attention_mask=m.long(), output_hidden_states=True, **kwargs)
                states = {f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)}
            else:
                call = {"attention_mask": m.long()} if pretrained else {}
                with recording(model, layers, store=device, flatten=False) as chunks:
                    model(ids, **call, **kwargs)
                silent = [name for name in layers if not chunks[name]]
                if silent:
                    raise ValueError(f"layer(s) {silent} did not run in the forward pass of {type(model).__name__}")
                states = {name: chunks[name][0] for name in layers}
            for name, h in states.items():
                if h.ndim < 3 or h.shape[1] != ids.shape[1]:
                    raise ValueError(f"layer {name!r} outputs shape {tuple(h.shape)}, not (batch, seq={ids.shape[1]}, "
                                     "...): record a module that keeps every position (or pass forward_kwargs that "
                                     "make the model compute them)")
                parts.setdefault(name, []).append(pool(h, m, pooling).cpu())
    points = {name: torch.cat(chunks) for name, chunks in parts.items()}
    protocol = {"pooling": pooling, "padding": _padding_side(mask), "n_sequences": len(input_ids),
                "seq_len": int(input_ids.shape[1]), "tokens": int(mask.sum()), "layers": list(points),
                "source": "output_hidden_states" if layers is None else "forward hooks",
                "model": type(model).__name__}
    return HiddenStates(points, protocol)


def id_profile(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               pooling: str, layers: list[str] | None = None, estimator: Estimator | None = None,
               batch_size: int = 64, forward_kwargs: dict | None = None) -> pd.DataFrame:
    """One row per layer: the ID of its pooled points (``estimator``, default :class:`actid.TwoNN`), its error and
    the point counts. ``.attrs["protocol"]`` records the pooling choices (see :func:`hidden_states`)."""
    states = hidden_states(model, input_ids, attention_mask, pooling=pooling, layers=layers, batch_size=batch_size,
                           forward_kwargs=forward_kwargs)
    estimator = estimator if estimator is not None else TwoNN()
    rows = []
    for name, X in states.points.items():
        fitted = copy.deepcopy(estimator).fit(X)
        rows.append({"layer": name, "dimension": fitted.dimension_, "error": fitted.error_,
                     "n_points": len(X), "n_used": fitted.n_used_, "n_duplicates": fitted.n_duplicates_,
                     "pooling": pooling})
    profile = pd.DataFrame(rows)
    profile.attrs["protocol"] = {**states.protocol, "estimator": type(estimator).__name__}
    return profile
