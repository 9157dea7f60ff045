"""Capture layer activations with forward hooks: a context manager that always removes its hooks.

:func:`capture_activations` runs a model over data and returns each named layer's flattened outputs;
:func:`recording` records them during forward passes a caller makes anyway (e.g. the accuracy pass of an
evaluation). What is computed from activations (IDs, LLID, PID, ...) lives with the measures (:mod:`actid.measures`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from actid._moved import moved

MOVED = {"layer_ids": "actid.measures.intrinsic", "llid": "actid.measures.intrinsic",
         "peak_id": "actid.measures.intrinsic"}
"""ID definitions this module held; they live with the ID measure now (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)


def check_layer_names(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    """The modules named by ``layers`` (strings as in ``model.named_modules()``), or an error saying how to name
    them."""
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of module names, got the string {layers!r}; pass [{layers!r}]")
    not_str = [name for name in layers if not isinstance(name, str)]
    if not_str:
        raise TypeError(f"layer names must be strings as in model.named_modules(), got {not_str!r}; "
                        f"pass {[str(n) for n in not_str]!r} (an nn.Sequential names its layers '0', '1', ...)")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        valid = ", ".join(name for name in modules if name)
        raise KeyError(f"unknown layer name(s) {missing}; valid dotted module names of {type(model).__name__} are: "
                       f"{valid}")
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
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the block, then give every submodule back its own train/eval
    flag (``model.train(was_training)`` would flip a submodule the user had set to eval)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


class LayerCalledTwiceError(RuntimeError):
    """A recorded module ran more than once in one forward pass of the model."""


def examples_first(out: torch.Tensor, layer: str, batch: int | None, batch_dim: int | None = None) -> torch.Tensor:
    """A layer's output with its example dimension first (see :func:`recording`), or a ValueError naming the layer."""
    if batch is None:  # the model's input is not a tensor batch: dimension 0 as given
        return out
    if batch_dim is not None:
        if out.ndim <= batch_dim or out.shape[batch_dim] != batch:
            raise ValueError(f"layer {layer!r}: batch_dim={batch_dim} but its output has shape {tuple(out.shape)}, "
                             f"and the batch has {batch} examples")
        return out.movedim(batch_dim, 0)
    if out.ndim and out.shape[0] == batch:
        return out
    matches = [d for d in range(out.ndim) if out.shape[d] == batch]
    if len(matches) != 1:
        found = "no dimension" if not matches else f"dimensions {matches}"
        raise ValueError(f"layer {layer!r}: its output has shape {tuple(out.shape)}, with {found} of the batch's "
                         f"size {batch}, so its rows cannot be told apart by example; pass batch_dim= (the dimension "
                         "that indexes the examples) or record another module")
    return out.movedim(matches[0], 0)


@contextmanager
def recording(model: nn.Module, layers: Iterable[str], *, store: str | torch.device = "cpu",
              dtype: torch.dtype | None = None, batch_dim: int | None = None, flatten: bool = True):
    """Within the block, every forward pass of ``model`` appends each layer's flattened output to
    ``chunks[layer]`` (yielded); :func:`capture_activations` is the usual entry point. Lets a caller
    record activations during a forward pass it needs anyway (e.g. to compute the accuracy).

    A module that runs more than once per forward pass of ``model`` (torchvision's ``BasicBlock``
    reuses its ``relu``) raises :class:`LayerCalledTwiceError`: its rows would mix the calls (2n rows
    for n inputs). Record a module that runs once instead, such as the block itself.
    ``dtype`` None keeps each layer's own dtype.

    Each output becomes one row per example: its dimension of the batch's size (the first dimension of the model's
    first tensor input) is moved first, then the rest is flattened. ``batch_dim`` names that dimension; None finds
    it: dimension 0 when it has the batch's size, else the one other dimension that has (a sequence-first module such
    as ``nn.MultiheadAttention`` or ``nn.LSTM`` by default). An output with no such dimension, or several besides the
    first, is refused naming the layer: its rows would mix examples. ``flatten=False`` keeps the other dimensions
    (e.g. ``(batch, seq, hidden)`` for a token-pooling protocol, :mod:`actid.integrations.hf`)."""
    layers = list(layers)
    modules = check_layer_names(model, layers)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    calls = dict.fromkeys(layers, 0)
    batch = {"size": None}

    def new_forward(_module, inputs):
        for name in calls:
            calls[name] = 0
        first = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
        batch["size"] = first.shape[0] if first is not None and first.ndim else None

    def hook_for(name):
        def hook(_module, _inputs, output):
            calls[name] += 1
            if calls[name] > 1:
                parent = name.rpartition(".")[0] or "a module that wraps it"
                raise LayerCalledTwiceError(
                    f"layer {name!r} ran {calls[name]} times in one forward pass of {type(model).__name__}, so its "
                    f"activations would mix the calls; record a module that runs once per forward, e.g. {parent!r}, "
                    "or wrap each call in its own module (an nn.Identity after it)")
            out = output[0] if isinstance(output, (tuple, list)) else output
            out = examples_first(out, name, batch["size"], batch_dim)
            out = out.detach().flatten(1) if flatten else out.detach()
            chunks[name].append(out.to(device=store, dtype=dtype or out.dtype))
        return hook

    handles = [model.register_forward_pre_hook(new_forward)]
    handles += [modules[name].register_forward_hook(hook_for(name)) for name in layers]
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
    dtype: torch.dtype | None = None,
    keep_on_device: bool = False,
    batch_dim: int | None = None,
) -> dict[str, torch.Tensor]:
    """Return {layer name: (n_examples, features)} activations of ``model`` on ``data``.

    Runs in eval mode under ``no_grad``; every submodule's train/eval flag is restored afterwards.
    A module that returns a tuple contributes its first element (e.g. an attention block's output);
    a module that runs twice per forward pass raises :class:`LayerCalledTwiceError`.

    Args:
        data: an input tensor (batched along dim 0) or an iterable such as a DataLoader
            yielding inputs or (input, target) pairs.
        layers: dotted module names as in ``model.named_modules()``.
        device: where to run the model (default: the model's device).
        dtype: storage dtype of the activations (default: the layer's own); float16/bfloat16 halve
            the memory. The estimators centre in float64 before measuring distances in float32.
        keep_on_device: keep activations on the model's device (e.g. GPU) instead of the CPU.
        batch_dim: the dimension of each layer's output that indexes the examples (None: found from the batch size;
            see :func:`recording`).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with eval_mode(model), recording(model, layers, store=device if keep_on_device else "cpu", dtype=dtype,
                                     batch_dim=batch_dim) as chunks:
        for x in _batches(data, batch_size):
            model(x.to(device, non_blocking=True))
    return {name: torch.cat(parts) for name, parts in chunks.items()}
