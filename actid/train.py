"""The training loop shared by every experiment, read top to bottom.

A :class:`Task` says *what* to train (model, data already on the device, augmentation, ID
layers); a :class:`TrainConfig` says *how* (optimizer, schedule, steps, evaluation points).
:func:`train` runs it and writes a run directory (see :mod:`actid.runs`)::

    run_dir/config.json    resolved configuration (written by the caller)
    run_dir/metrics.csv    one row per evaluation point: step, losses, accuracies, IDs, LLID, PID
    run_dir/checkpoint.pt  latest state while the run is unfinished (deleted when it completes)
    run_dir/done.json      written last: the final row and the wall time (kept out of metrics.csv,
                           which is identical for identical seeds on CPU)

Speed: the data are tensors on the device and batches are gathered by index, so a step is a
few kernel launches with no DataLoader. Resume: a checkpoint is written after every
evaluation row; a restarted run reloads it, keeps exactly the rows up to its step and goes on
with the same random streams, so an interrupted run ends with the same rows as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from actid.capture import capture_activations, llid, peak_id, recording
from actid.estimators import TwoNN


@dataclass
class Task:
    """What to train: a model and its data, already on the training device.

    eval_sets maps a split name ('train', 'val') to (inputs, labels). id_split names the split
    whose activations are measured; id_layers and llid_layer name modules of the model.
    augment(x, generator) returns an augmented copy of a training batch.
    """

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    id_layers: list[str] = field(default_factory=list)
    llid_layer: str | None = None
    id_split: str = "val"
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


@dataclass
class TrainConfig:
    """How to train. Steps count optimizer updates; every schedule is in steps.

    optimizer: 'adam' (torch Adam: L2 weight decay coupled into the gradient, as the paper's
        grokking runs), 'adamw' (decoupled decay), or 'sgd' (with momentum, as the paper's ResNets).
    schedule: 'constant', 'cosine' (to 0 at ``steps``) or 'multistep' (x gamma at each milestone),
        after a linear warmup lr * min(1, (step + 1) / warmup_steps).
    eval_every / eval_log_points: evaluate every k steps, or at this many log-spaced steps
        (step 0 and the last step are always evaluated).
    id_resamples, id_subsample: the TwoNN protocol (paper: 20 subsets of 90%).
    id_max_points: cap on the probe set for the ID (a fixed seeded subset, the same at every step);
        0 keeps the whole split.
    amp: bfloat16 autocast for the training forward pass (weights, optimizer and evaluation stay fp32).
    """

    steps: int = 1000
    batch_size: int = 512
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    momentum: float = 0.9
    warmup_steps: int = 0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.2
    eval_every: int = 100
    eval_log_points: int = 0
    eval_batch_size: int = 2048
    id_resamples: int = 20
    id_subsample: float = 0.9
    id_max_points: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = False

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "multistep"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'multistep', got {self.schedule!r}")
        self.betas = tuple(self.betas)
        self.milestones = tuple(self.milestones)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluation_steps(cfg: TrainConfig) -> list[int]:
    """The steps (0 .. cfg.steps) at which the model is evaluated."""
    if cfg.eval_log_points:
        steps = np.unique(np.round(np.geomspace(1, cfg.steps, cfg.eval_log_points)).astype(int))
        return sorted({0, cfg.steps, *steps.tolist()})
    return sorted({*range(0, cfg.steps, cfg.eval_every), cfg.steps})


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate for the update taken at ``step`` (0-based)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    if cfg.schedule == "multistep":
        return warm * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    return warm


class EpochSampler:
    """Shuffled epochs of indices, split into batches (the last one may be smaller, like a
    DataLoader with shuffle=True, drop_last=False). Its state is saved with the checkpoint.

    The permutation is drawn on the CPU (the same on every device) and moved to the data's
    device once per epoch, so taking a batch never waits for the GPU."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = self._permutation(), 0

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator).to(self.device)

    def next(self) -> torch.Tensor:
        if self.position >= self.n:
            self.order, self.position = self._permutation(), 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].to(self.device), state["position"]


@torch.no_grad()
def evaluate(task: Task, cfg: TrainConfig, probe_index: torch.Tensor | None) -> dict[str, float]:
    """Loss and accuracy on every eval split; ID of each tracked layer on the probe split; LLID, PID.

    When the probe is the whole ID split, its activations are recorded during the same forward
    pass that gives the accuracy (one pass per split)."""
    model = task.model
    was_training = model.training
    model.eval()
    row: dict[str, float] = {}
    acts = None
    for split, (x, y) in task.eval_sets.items():
        record = task.id_layers and split == task.id_split and probe_index is None
        with recording(model, task.id_layers if record else [], store=x.device) as chunks:
            loss, correct = 0.0, 0
            for start in range(0, len(x), cfg.eval_batch_size):
                logits = model(x[start:start + cfg.eval_batch_size]).float()
                target = y[start:start + cfg.eval_batch_size]
                loss += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(1) == target).sum())
        if record:
            acts = {name: torch.cat(parts) for name, parts in chunks.items()}
        row[f"{split}_loss"], row[f"{split}_acc"] = loss / len(x), correct / len(x)
    model.train(was_training)
    if task.id_layers:
        if acts is None:
            x = task.eval_sets[task.id_split][0]
            x = x[probe_index] if probe_index is not None else x
            acts = capture_activations(model, x, task.id_layers, batch_size=cfg.eval_batch_size, keep_on_device=True)
        ids = {}
        for name in list(acts):
            est = TwoNN(n_resamples=cfg.id_resamples, subsample_fraction=cfg.id_subsample, seed=cfg.seed)
            ids[name] = est.fit(acts.pop(name)).dimension_  # pop: free each layer once measured
            row[f"id/{name}"], row[f"id_err/{name}"] = est.dimension_, est.error_
        row["pid"] = peak_id(ids)
        if task.llid_layer:
            row["llid"] = llid(ids, task.llid_layer)
    return row


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(task: Task, cfg: TrainConfig, run_dir: str | Path, *, progress: bool = True,
          stop_after: int | None = None) -> pd.DataFrame:
    """Train ``task`` under ``cfg``, writing metrics rows to ``run_dir``; resume if a checkpoint exists.

    ``stop_after`` stops (as if killed) once that step is reached; used to test resuming.
    Returns the metrics table.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, ckpt_path = run_dir / "metrics.csv", run_dir / "checkpoint.pt"
    if (run_dir / "done.json").exists():
        return pd.read_csv(metrics_path)

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = task.model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    sampler = EpochSampler(len(task.train_x), cfg.batch_size, cfg.seed, task.train_x.device)
    aug_gen = torch.Generator(device=task.train_x.device).manual_seed(cfg.seed + 1)
    probe_split = task.eval_sets.get(task.id_split, (torch.empty(0),))[0]
    probe_index = None
    if cfg.id_max_points and len(probe_split) > cfg.id_max_points:
        probe_gen = torch.Generator().manual_seed(cfg.seed + 2)
        probe_index = torch.randperm(len(probe_split), generator=probe_gen)[:cfg.id_max_points].sort().values
        probe_index = probe_index.to(probe_split.device)

    step, rows, elapsed = 0, [], 0.0
    if ckpt_path.exists():
        # on the CPU: generator states must stay CPU tensors; load_state_dict moves the rest
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        aug_gen.set_state(state["aug_generator"])
        torch.set_rng_state(state["cpu_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, elapsed = state["step"], state["elapsed"]
        rows = pd.read_csv(metrics_path).query("step <= @step").to_dict("records")

    eval_steps = [s for s in evaluation_steps(cfg) if s > step or (s == 0 and not rows)]
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=run_dir.name, disable=not progress, leave=False)
    for target in eval_steps:
        while step < target:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
            idx = sampler.next()
            x, y = task.train_x[idx], task.train_y[idx]
            if task.augment is not None:
                x = task.augment(x, aug_gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
        row = {"step": step, "learning_rate": cfg.lr * lr_factor(max(step - 1, 0), cfg),
               **evaluate(task, cfg, probe_index)}
        rows.append(row)
        pd.DataFrame(rows).to_csv(metrics_path, index=False)
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k in ("train_acc", "val_acc", "llid")})
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                      "aug_generator": aug_gen.get_state(), "cpu_rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None, "step": step,
                      "elapsed": elapsed + time.perf_counter() - started},
                     ckpt_path)
        if stop_after is not None and step >= stop_after and step < cfg.steps:
            bar.close()
            return pd.DataFrame(rows)
    bar.close()
    seconds = elapsed + time.perf_counter() - started
    (run_dir / "done.json").write_text(json.dumps({"final": rows[-1], "train_seconds": round(seconds, 2)}, indent=1))
    ckpt_path.unlink(missing_ok=True)
    return pd.DataFrame(rows)
