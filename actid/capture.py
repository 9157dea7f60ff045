"""Capture layer activations with forward hooks, and turn them into per-layer IDs, LLID and PID.

Definitions (Brown et al. 2022, section 7 of the reproduction notes; the official README swaps them):

* LLID, last-layer ID: the ID of the representation that feeds the classifier.
* PID, peak ID: the largest ID over the tracked layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from actid.estimators import TwoNN


def _check_layer_names(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        valid = ", ".join(name for name in modules if name)
        raise KeyError(f"unknown layer name(s) {missing}; valid dotted module names of {type(model).__name__} are: {valid}")
    return {name: modules[name] for name in layers}


def _batches(data, batch_size: int):
    """Yield input batches from a tensor or from an iterable of tensors / (input, target) pairs."""
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@contextmanager
def recording(model: nn.Module, layers: Iterable[str], *, store: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32):
    """Within the block, every forward pass of ``model`` appends each layer's flattened output to
    ``chunks[layer]`` (yielded); :func:`capture_activations` is the usual entry point. Lets a caller
    record activations during a forward pass it needs anyway (e.g. to compute the accuracy)."""
    layers = list(layers)
    modules = _check_layer_names(model, layers)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook_for(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            chunks[name].append(out.detach().flatten(1).to(device=store, dtype=dtype))
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield chunks
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_activations(
    model: nn.Module,
    data,
    layers: Iterable[str],
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    keep_on_device: bool = False,
) -> dict[str, torch.Tensor]:
    """Return {layer name: (n_examples, features)} activations of ``model`` on ``data``.

    Runs in eval mode under ``no_grad`` (the model's mode is restored afterwards). A module
    that returns a tuple contributes its first element (e.g. an attention block's output).

    Args:
        data: an input tensor (batched along dim 0) or an iterable such as a DataLoader
            yielding inputs or (input, target) pairs.
        layers: dotted module names as in ``model.named_modules()``.
        device: where to run the model (default: the model's device).
        dtype: storage dtype of the activations; float16/bfloat16 halve the memory. The
            estimators upcast to float32 and centre before measuring distances.
        keep_on_device: keep activations on the model's device (e.g. GPU) instead of the CPU.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with recording(model, layers, store=device if keep_on_device else "cpu", dtype=dtype) as chunks:
            for x in _batches(data, batch_size):
                model(x.to(device, non_blocking=True))
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def layer_ids(activations: Mapping[str, torch.Tensor], estimator=None, device=None) -> dict[str, dict]:
    """Fit ``estimator`` (default: the paper's TwoNN, 20 resamples of 90%) to each layer's activations.

    Returns {layer: estimator.as_dict()}, i.e. dimension, error and point counts per layer.
    """
    estimator = estimator or TwoNN(n_resamples=20)
    return {name: estimator.fit(acts, device=device).as_dict() for name, acts in activations.items()}


def llid(ids: Mapping[str, float], last_layer: str) -> float:
    """Last-layer ID: the ID of ``last_layer``, the representation feeding the classifier."""
    if last_layer not in ids:
        raise KeyError(f"LLID layer {last_layer!r} was not measured; measured layers: {list(ids)}")
    return float(ids[last_layer])


def peak_id(ids: Mapping[str, float]) -> float:
    """Peak ID: the maximum ID over the tracked layers."""
    if not ids:
        raise ValueError("peak_id needs at least one layer's ID")
    return float(max(ids.values()))
