"""The training loop shared by every experiment, read top to bottom.

A :class:`~actid.task.Task` says *what* to train (model, data already on the device, augmentation, loss, the
layers the model names for its ID); a :class:`TrainConfig` says *how* (optimizer, schedule, steps,
evaluation points, probe sets and measures). :func:`train` runs it and writes a run directory
through :class:`actid.runs.Run`: ``metrics.csv`` rows, a checkpoint after each evaluation, model
snapshots if asked, ``done.json`` last.

At each evaluation the loop computes loss and accuracy on every evaluation split and every due measure
(:func:`actid.evaluation.evaluate`) and writes one row (:mod:`actid.schema`).

Speed: the data are tensors on the device and batches are gathered by index, so a step is a
few kernel launches with no DataLoader. Resume: :class:`actid.train_state.TrainState` saves the model, optimizer,
random streams and the rows so far in the checkpoint; a restarted run restores them (and ``metrics.csv`` from them)
and goes on, so an interrupted run ends with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from actid import schema, train_state
from actid.config import check_fields, flag, integer, mapping, one_of, param, real, sequence, text
from actid._moved import moved
from actid.evaluation import evaluate, probe_sets
from actid.measures import build_measures, build_probes, resolve_measures, resolve_probes
from actid.runs import Run
from actid.task import Task, in_layout
from actid.train_state import Progress, TrainState

__all__ = ["Task", "TrainConfig", "TrainingInterrupted", "evaluation_steps", "flushing_denormals", "lr_factor",
           "make_optimizer", "resolve_device", "train"]
MOVED = {"EpochSampler": "actid.train_state", "runtime": "actid.train_state", "check_resume": "actid.train_state",
         "ResumeMismatchError": "actid.train_state", "check_checkpoint_rows": "actid.train_state",
         "cpu_has_native_bf16": "actid.train_state", "warn_if_emulated_bf16": "actid.train_state",
         "ProbeSet": "actid.evaluation"}
"""Names this module held before training state and evaluation got modules of their own (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)


DEVICE = r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?"
"""The devices a run may name (``auto``: a GPU if there is one)."""


def _default_probes() -> dict:
    return {"val": {"split": "val", "max_points": 0}}


def _default_measures() -> dict:
    return {"id": {}}


@dataclass
class TrainConfig:
    """How to train. Steps count optimizer updates; every schedule is in steps.

    optimizer: 'adam' (torch Adam: L2 weight decay coupled into the gradient, as the paper's
        grokking runs), 'adamw' (decoupled decay), or 'sgd' (with momentum, as the paper's ResNets).
    schedule: 'constant', 'cosine' (to 0 at ``steps``) or 'multistep' (x gamma at each milestone),
        after a linear warmup lr * min(1, (step + 1) / warmup_steps).
    eval_every / eval_log_points: evaluate every k steps, or at this many log-spaced steps
        (step 0 and the last step are always evaluated).
    probes: {name: {split, max_points, seed}}: fixed seeded subsets of evaluation splits
        (max_points 0: the whole split; seed default: seed + 2).
    measures: {name: {kind, probe, layers, every, ...}}: what to measure at each evaluation
        (:mod:`actid.measures`; default: the paper's TwoNN ID of the model's ID layers on ``val``).
        Both are resolved to every parameter, so ``config.json`` records them all.
    snapshot_every: keep the model's weights at every k-th evaluation (0: never; the last is
        included), e.g. to rewind layers later.
    amp: bfloat16 autocast for the training forward pass (weights, optimizer and evaluation stay fp32).
        Meant for CUDA; on a CPU without native bf16 (AVX512-BF16 or AMX) it is ~10x slower than fp32,
        and a warning says so.
    """

    steps: int = param(1000, integer(1))
    batch_size: int = param(512, integer(1))
    optimizer: str = param("adam", one_of("adam", "adamw", "sgd"))
    lr: float = param(1e-3, real(0, low_open=True))
    weight_decay: float = param(0.0, real(0))
    betas: tuple[float, float] = param((0.9, 0.98), sequence(real(0, 1, high_open=True), length=2))
    eps: float = param(1e-8, real(0, low_open=True))
    momentum: float = param(0.9, real(0, 1, high_open=True))
    warmup_steps: int = param(0, integer(0))
    schedule: str = param("constant", one_of("constant", "cosine", "multistep"))
    milestones: tuple[int, ...] = param((), sequence(integer(0)))
    gamma: float = param(0.2, real(0, low_open=True))
    eval_every: int = param(100, integer(1))
    eval_log_points: int = param(0, integer(0))
    eval_batch_size: int = param(2048, integer(1))
    probes: dict = param(check=mapping(), default_factory=_default_probes)
    measures: dict = param(check=mapping(), default_factory=_default_measures)
    snapshot_every: int = param(0, integer(0))
    seed: int = param(0, integer(0))
    device: str = param("auto", text(DEVICE))
    amp: bool = param(False, flag())

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "multistep"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'multistep', got {self.schedule!r}")
        check_fields(self)
        self.betas = tuple(self.betas)
        self.milestones = tuple(self.milestones)
        self.probes = resolve_probes(self.probes, self.seed)
        self.measures = resolve_measures(self.measures, self.seed)
        missing = {name: m["probe"] for name, m in self.measures.items() if m["probe"] not in self.probes}
        if missing:
            raise KeyError(f"measure(s) {missing} name probes that are not defined; probes: {sorted(self.probes)}")


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
    """The optimizer of ``cfg``; on CUDA its fused kernel (one launch per step; the same update up to round-off)."""
    params = list(model.parameters())
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate for the update taken at ``step`` (0-based)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    if cfg.schedule == "multistep":
        return warm * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    return warm


@contextmanager
def flushing_denormals(enabled: bool):
    """Flush subnormal floats to zero inside the block (CPU only; see ``Task.flush_denormal``). Afterwards the flag
    is off again, torch's default (torch cannot report its current value)."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary on request, after saving a checkpoint there (resume continues exactly)."""


def train(task: Task, cfg: TrainConfig, run_dir: str | Path | Run, *, progress: bool | Callable = True,
          stop_after: int | None = None, interrupt: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Train ``task`` under ``cfg``, writing rows to ``run_dir``; resume if it holds a checkpoint.

    ``progress``: True for a tqdm bar, False for none, or a callable ``progress(step, total)``.
    ``stop_after`` stops (as if killed) once that step is reached; used to test resuming.
    ``interrupt`` is asked after every step (and evaluation); when it says True, the state is checkpointed at that
    step and :class:`TrainingInterrupted` raised (a SLURM job warned of its time limit uses this).
    Returns the metrics table.
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    with run.lock():
        if run.is_finished:
            return run.read_metrics()
        return _train_locked(task, cfg, run, progress, stop_after, interrupt)


def _train_locked(task: Task, cfg: TrainConfig, run: Run, progress, stop_after, interrupt) -> pd.DataFrame:
    device = resolve_device(cfg.device)
    measures = build_measures(cfg.measures, cfg.seed)
    probes = probe_sets(task, build_probes(cfg.probes, cfg.seed))
    torch.manual_seed(cfg.seed)
    model = task.model.to(device).train()
    if task.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = TrainState.new(model, make_optimizer(model, cfg), len(task.train_x), cfg.batch_size, cfg.seed,
                           task.train_x.device, *TrainState.default_generators(device), measures=measures)
    now = train_state.runtime(device, cfg.amp)
    train_state.warn_if_emulated_bf16(cfg.amp, device)
    all_evals = evaluation_steps(cfg)
    step, elapsed, rows = state.restore(run, now, all_evals)
    optimizer, sampler = state.optimizer, state.sampler

    def save_checkpoint():  # the checkpoint holds the rows: metrics.csv is restored from them on resume
        state.save(run, Progress(step, elapsed + time.perf_counter() - started, rows), now)

    eval_steps = [s for s in all_evals if s > step or (s == 0 and not rows)]
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=run.name, disable=progress is not True, leave=False)
    report = progress if callable(progress) else None
    for target in eval_steps:
        with flushing_denormals(task.flush_denormal):  # training steps only: the measures see every value
            while step < target:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, cfg)
                idx = sampler.next()
                x, y = task.train_x[idx], task.train_y[idx]
                if task.augment is not None:
                    x = task.augment(x, state.aug_generator)
                x = in_layout(task, x)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    loss = task.loss_fn(model(x).float(), y)
                if task.penalty is not None:
                    loss = loss + task.penalty(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                if report:
                    report(step, cfg.steps)
                if interrupt is not None and step < target and interrupt():
                    save_checkpoint()
                    bar.close()
                    raise TrainingInterrupted(f"{run.name}: interrupted at step {step}; checkpoint saved")
        index, last = all_evals.index(step), step == cfg.steps
        row = {schema.STEP: step, schema.LEARNING_RATE: cfg.lr * lr_factor(max(step - 1, 0), cfg),
               **evaluate(task, measures, probes, step, index, last, cfg.eval_batch_size)}
        rows.append(row)
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k in (schema.acc("train"), schema.acc("val"),
                                                                          schema.LLID)})
        if cfg.snapshot_every and (index % cfg.snapshot_every == 0 or last):
            run.save_snapshot(step, model.state_dict())
        # the checkpoint (which holds the rows) first: a kill between the two leaves metrics.csv one row short,
        # which a resume restores from the checkpoint
        save_checkpoint()
        if last:
            break
        run.write_rows(rows)
        if stop_after is not None and step >= stop_after:
            bar.close()
            return pd.DataFrame(rows)
        if interrupt is not None and interrupt():
            bar.close()
            raise TrainingInterrupted(f"{run.name}: interrupted after the evaluation at step {step}")
    bar.close()
    run.finish(rows, elapsed + time.perf_counter() - started)
    return pd.DataFrame(rows)
