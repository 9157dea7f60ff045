"""The training loop shared by every experiment, read top to bottom.

A :class:`Task` says *what* to train (model, data already on the device, augmentation, loss, the
layers the model names for its ID); a :class:`TrainConfig` says *how* (optimizer, schedule, steps,
evaluation points, probe sets and measures). :func:`train` runs it and writes a run directory
through :class:`actid.runs.Run`: ``metrics.csv`` rows, a checkpoint after each evaluation, model
snapshots if asked, ``done.json`` last.

At each evaluation the loop computes loss and accuracy on every evaluation split, gathers what the
due measures need (one forward pass per probe serves every activation measure; when a probe is a
whole split, during the pass that gives its accuracy) and writes one row (:mod:`actid.schema`).

Speed: the data are tensors on the device and batches are gathered by index, so a step is a
few kernel launches with no DataLoader. Resume: the checkpoint holds the model, optimizer, random
streams and the rows so far; a restarted run restores them (and ``metrics.csv`` from them) and goes
on, so an interrupted run ends with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from actid import schema
from actid.capture import capture_activations, eval_mode, recording
from actid.measures import Evaluation, Measure, Probe, build_measures, build_probes, resolve_measures, resolve_probes
from actid.runs import Run


@dataclass
class Task:
    """What to train: a model and its data, already on the training device.

    eval_sets maps a split name ('train', 'val') to (inputs, labels); probes are drawn from them.
    id_layers and llid_layer name modules of the model (measures with ``layers: model`` use id_layers).
    augment(x, generator) returns an augmented copy of a training batch.
    loss_fn(logits, labels, reduction='mean') is the training loss (torch.nn.functional style).
    penalty(model), if given, is added to the training loss at every step (not to the evaluated loss), e.g.
    -δ Σ w² to make the weight norm grow (Golechha 2024's increasing-norm variant).
    flush_denormal: on the CPU, flush subnormal floats (|x| < 1.2e-38) to zero in the training steps (not in the
    evaluations, so measures see every value). Saturated softmax gradients are full of them and x86 CPUs compute
    them ~4x slower (e.g. the memorization ReLU runs at large σ); flushing changes only those values, but it does
    change them, so it is an opt-in of the task.
    channels_last: train and evaluate 4-D inputs (and the model) in channels_last memory format. CUDA's tensor-core
    convolutions work in that layout, so NCHW costs transposes. The numbers are the same up to round-off, except
    that dropout draws its masks in memory order (another draw of the same distribution). The image experiments
    turn it on for CUDA.
    """

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    id_layers: list[str] = field(default_factory=list)
    llid_layer: str | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    loss_fn: Callable = F.cross_entropy
    penalty: Callable[[nn.Module], torch.Tensor] | None = None
    flush_denormal: bool = False
    channels_last: bool = False


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
    probes: dict = field(default_factory=_default_probes)
    measures: dict = field(default_factory=_default_measures)
    snapshot_every: int = 0
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


def in_layout(task: Task, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the task's memory format (see ``Task.channels_last``)."""
    return x.contiguous(memory_format=torch.channels_last) if task.channels_last and x.ndim == 4 else x


def _ordered_union(lists) -> list[str]:
    return list(dict.fromkeys(x for items in lists for x in items))


class ProbeSet(NamedTuple):
    """A probe's examples, drawn once per run; ``whole_split`` when it is its entire split."""

    inputs: torch.Tensor
    labels: torch.Tensor
    split: str
    whole_split: bool


def probe_sets(task: Task, probes: dict[str, Probe]) -> dict[str, ProbeSet]:
    """Each probe's fixed examples, drawn from the task's evaluation splits."""
    out = {}
    for name, probe in probes.items():
        if probe.split not in task.eval_sets:
            raise KeyError(f"probe {name!r} draws from split {probe.split!r}, which this task does not evaluate; "
                           f"splits: {sorted(task.eval_sets)}")
        x, y = task.eval_sets[probe.split]
        index = probe.index(y)
        out[name] = (ProbeSet(x, y, probe.split, True) if index is None else
                     ProbeSet(x[index.to(x.device)], y[index.to(y.device)], probe.split, False))
    return out


def evaluate(task: Task, cfg: TrainConfig, measures: list[Measure], probes: dict[str, ProbeSet], step: int,
             index: int, last: bool) -> dict[str, float]:
    """Loss and accuracy on every evaluation split, then every due measure (one row's values).

    The activations a probe needs are gathered in one forward pass for all measures: during the
    accuracy pass of its split when the probe is the whole split, else in one pass over the probe."""
    model = task.model
    due = [m for m in measures if m.due(index, last)]
    wanted: dict[str, list[str]] = {}
    for m in due:
        if m.needs == "activations":
            wanted[m.probe] = _ordered_union([wanted.get(m.probe, []), m.layer_names(task.id_layers)])
    row: dict[str, float] = {}
    acts: dict[str, dict[str, torch.Tensor]] = {}
    with eval_mode(model):
        with torch.no_grad():
            for split, (x, y) in task.eval_sets.items():
                during = [p for p in wanted if probes[p].whole_split and probes[p].split == split]
                layers = _ordered_union(wanted[p] for p in during)
                with recording(model, layers, store=x.device, dtype=torch.float32) as chunks:
                    loss, correct = 0.0, 0
                    for start in range(0, len(x), cfg.eval_batch_size):
                        logits = model(in_layout(task, x[start:start + cfg.eval_batch_size])).float()
                        target = y[start:start + cfg.eval_batch_size]
                        loss += float(task.loss_fn(logits, target, reduction="sum"))
                        correct += int((logits.argmax(1) == target).sum())
                for p in during:
                    acts[p] = {name: torch.cat(chunks[name]) for name in wanted[p]}
                row[schema.loss(split)], row[schema.acc(split)] = loss / len(x), correct / len(x)
            for p, layers in wanted.items():
                if p not in acts:
                    acts[p] = capture_activations(model, in_layout(task, probes[p].inputs), layers,
                                                  batch_size=cfg.eval_batch_size, dtype=torch.float32,
                                                  keep_on_device=True)
        ev = Evaluation(model=model, step=step, probes={p: (v.inputs, v.labels) for p, v in probes.items()},
                        activations=acts,
                        loss_fn=task.loss_fn, id_layers=task.id_layers, llid_layer=task.llid_layer)
        for m in due:
            row.update(m(ev))
    return row


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where CPU autocast pays off."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)  # private torch API: absent means unknown


def runtime(device: torch.device, amp: bool, threads: int | None = None, batched: bool = False) -> dict:
    """The facts of where a run trains that change its numbers (see :data:`actid.runs.NUMERICS`); ``threads``
    defaults to this process's CPU thread count. ``batched``: trained as one model with others
    (:mod:`actid.batched`), recorded only then, so runs recorded before it existed resume as they were."""
    facts = {"device": device.type, "amp": amp,
             "threads": (threads or torch.get_num_threads()) if device.type == "cpu" else None}
    return {**facts, "batched": True} if batched else facts


def warn_if_emulated_bf16(amp: bool, device: torch.device) -> None:
    """Warn where bf16 autocast would run ~10x slower than fp32 (a CPU without native bf16)."""
    if amp and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("amp=true on a CPU without native bf16 (AVX512-BF16/AMX): bf16 autocast is emulated and ~10x "
                      "slower than fp32 here; set amp=false (e.g. --set amp=false)", stacklevel=4)


def check_checkpoint_rows(run: Run, rows: list[dict], step: int, cfg: TrainConfig) -> None:
    """A checkpoint at ``step`` must hold one row per evaluation step of ``cfg`` up to it."""
    expected = [s for s in evaluation_steps(cfg) if s <= step]
    if [r[schema.STEP] for r in rows] != expected:
        raise ValueError(f"{run.checkpoint_path} holds rows for steps {[r[schema.STEP] for r in rows]}, not the "
                         f"evaluation steps {expected} of this config; delete {run.path} to restart the run")


class ResumeMismatchError(RuntimeError):
    """An unfinished run would resume on a device or with settings that change its numbers."""


def check_resume(run_name: str, recorded: dict | None, current: dict) -> None:
    """Refuse to resume an unfinished run where its numerics would change, offering the two choices."""
    if recorded is None or recorded == current:
        return
    diff = ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in dict.fromkeys([*current, *recorded])
                     if recorded.get(k) != current.get(k))
    hint = (f"--set device={recorded['device']}" + (f" amp={recorded['amp']}" if recorded.get('amp') != current['amp'] else "")
            + (f" (and {recorded['threads']} CPU threads, e.g. OMP_NUM_THREADS={recorded['threads']})"
               if recorded.get("threads") and recorded.get("threads") != current.get("threads") else "")
            + ((" with --batch-runs on (local launcher)" if recorded.get("batched") else " with --batch-runs off")
               if bool(recorded.get("batched")) != bool(current.get("batched")) else ""))
    raise ResumeMismatchError(
        f"run {run_name} is unfinished and was training with different numerics ({diff}); resuming would mix "
        f"them in one run. Either resume it as it was started ({hint}), or restart it from step 0 (sweep: --restart "
        "moves the unfinished run aside first).")


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
    optimizer = make_optimizer(model, cfg)
    sampler = EpochSampler(len(task.train_x), cfg.batch_size, cfg.seed, task.train_x.device)
    aug_gen = torch.Generator(device=task.train_x.device).manual_seed(cfg.seed + 1)
    now = runtime(device, cfg.amp)
    warn_if_emulated_bf16(cfg.amp, device)

    step, rows, elapsed = 0, [], 0.0
    state = run.load_checkpoint()
    if state is not None:
        check_resume(run.name, state.get("runtime"), now)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        aug_gen.set_state(state["aug_generator"])
        torch.set_rng_state(state["cpu_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, elapsed, rows = state["step"], state["elapsed"], state["rows"]
        check_checkpoint_rows(run, rows, step, cfg)
        run.restore_rows(rows)
    else:
        run.set_aside_orphan_rows()
    if run.config_path.exists():
        run.record_runtime(now)

    def save_checkpoint():
        # it holds the rows: the source of truth that metrics.csv is restored from on resume
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "sampler": sampler.state_dict(), "aug_generator": aug_gen.get_state(),
                             "cpu_rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                             "step": step, "elapsed": elapsed + time.perf_counter() - started, "rows": rows,
                             "runtime": now})

    all_evals = evaluation_steps(cfg)
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
                    x = task.augment(x, aug_gen)
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
               **evaluate(task, cfg, measures, probes, step, index, last)}
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
