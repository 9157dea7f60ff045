"""Several runs of one shape trained as one model: ``torch.func.vmap`` over their stacked weights.

A small run (the grokking grid: 16 runs of a 0.4M-parameter transformer) leaves a GPU idle between its kernel
launches; trained as one model, K runs launch each kernel once. Each run keeps everything that makes it a run:
its directory, rows, measures, checkpoint (in :func:`actid.train.train`'s format), batch order, dropout stream,
learning-rate schedule and weight decay (its :class:`actid.train_state.TrainState`). With fp32 on the CPU its rows
equal those of the same run trained alone to float rounding (``tests/test_batched.py``); its random streams are the
same ones, value for value.

Which runs can share one model: :func:`batch_key` (same architecture, steps, evaluation steps, batch size,
optimizer kind and device; no augmentation or penalty). A model takes part by exposing ``dropout`` (its rate)
and ``dropout_masks(*batch_shape, generator=...)``, and by accepting ``masks=`` in its forward
(:class:`actid.models.transformer.Transformer`): each run's masks are drawn from its own generator, in the order
its own training forward would draw them, and passed in.

A batched run records ``batched: true`` with its runtime (:data:`actid.runs.NUMERICS`): an unfinished one resumes
batched (float rounding differs from a separate run's), and its checkpoint is the same format either way.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from actid import schema
from actid.evaluation import evaluate, probe_sets
from actid.measures import build_measures, build_probes
from actid.runs import Run
from actid.task import Task
from actid.train import (TrainConfig, TrainingInterrupted, evaluation_steps, flushing_denormals, lr_factor,
                         make_optimizer, resolve_device)
from actid.train_state import Progress, TrainState, runtime, warn_if_emulated_bf16


def batch_key(task: Task, cfg: TrainConfig) -> tuple | None:
    """Runs with equal keys can train as one model; None when this run cannot be batched at all."""
    model = task.model
    if (not hasattr(model, "dropout_masks") or task.augment is not None or task.penalty is not None
            or cfg.optimizer not in ("adam", "adamw") or next(model.buffers(), None) is not None
            or resolve_device(cfg.device).type not in ("cpu", "cuda")):
        return None
    shapes = tuple((name, tuple(p.shape), p.dtype) for name, p in model.named_parameters())
    return (type(model).__qualname__, shapes, bool(model.dropout), tuple(task.train_x.shape[1:]), task.loss_fn,
            task.flush_denormal, tuple(evaluation_steps(cfg)), cfg.batch_size, cfg.optimizer, tuple(cfg.betas), cfg.eps,
            cfg.amp, str(resolve_device(cfg.device)))


class StackedAdam:
    """Adam or AdamW over stacked weights (dim 0: the run), each run with its own learning rate and weight decay.

    The update is torch.optim's Adam/AdamW (coupled L2 / decoupled decay, bias corrections), equal to it to float
    rounding. Per-run values live on the weights' device and the state moves as whole lists (``torch._foreach_*``,
    as torch.optim does on a GPU), so a step does not wait for the device. State moves in and out in torch.optim's
    format (:meth:`load`, :meth:`export`), so checkpoints are those of a separate run."""

    def __init__(self, params: dict[str, torch.Tensor], kind: str, betas: tuple[float, float], eps: float,
                 weight_decays: list[float]):
        self.params, self.kind, self.betas, self.eps = params, kind, betas, eps
        device = next(iter(params.values())).device
        self.weight_decays = torch.tensor(weight_decays, dtype=torch.float64, device=device)
        self.any_decay = any(weight_decays)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        """One update at learning rates ``lrs``, a (runs,) float64 tensor on the weights' device."""
        self.steps += 1
        beta1, beta2 = self.betas
        names = list(self.params)
        params = [self.params[n] for n in names]
        per_run = lambda values: [values.to(p.dtype).view(-1, *[1] * (p.dim() - 1)) for p in params]  # noqa: E731
        grads = [p.grad for p in params]
        if self.kind == "adamw":
            torch._foreach_mul_(params, per_run(1 - lrs * self.weight_decays))
        elif self.any_decay:
            grads = torch._foreach_add(grads, torch._foreach_mul(params, per_run(self.weight_decays)))
        exp_avg, exp_avg_sq = [self.exp_avg[n] for n in names], [self.exp_avg_sq[n] for n in names]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2 ** self.steps) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(exp_avg, denom)
        torch._foreach_mul_(update, per_run(lrs / (1 - beta1 ** self.steps)))
        torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def load(self, optimizers: list[torch.optim.Optimizer], models: list[torch.nn.Module]) -> None:
        """Take each run's state from its torch optimizer (empty for a new run)."""
        steps = set()
        for k, (opt, model) in enumerate(zip(optimizers, models)):
            for name, p in model.named_parameters():
                state = opt.state.get(p)
                steps.add(int(state["step"]) if state else 0)
                if state:
                    self.exp_avg[name][k].copy_(state["exp_avg"])
                    self.exp_avg_sq[name][k].copy_(state["exp_avg_sq"])
        if len(steps) > 1:
            raise ValueError(f"the runs' optimizers are at different steps {sorted(steps)}; batched runs step together")
        self.steps = steps.pop() if steps else 0

    def export(self, k: int, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Put run ``k``'s state into its torch optimizer (which the checkpoint then saves)."""
        for name, p in model.named_parameters():
            optimizer.state[p] = {"step": torch.tensor(float(self.steps)),
                                  "exp_avg": self.exp_avg[name][k].clone(),
                                  "exp_avg_sq": self.exp_avg_sq[name][k].clone()}


def train_batched(members: list[tuple[Task, TrainConfig, Run]], *, progress: bool | Callable = True,
                  stop_after: int | None = None, interrupt: Callable[[], bool] | None = None) -> list[pd.DataFrame]:
    """Train (or resume) ``members``, a list of (task, config, run), as one model; returns each run's metrics.

    Every run's lock is held throughout. Finished runs are left as they are. ``progress``, ``stop_after`` and
    ``interrupt`` as in :func:`actid.train.train`."""
    runs = [run for _, _, run in members]
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(run.lock())
        todo = [m for m in members if not m[2].is_finished]
        if todo:
            _train_locked(todo, progress, stop_after, interrupt)
    return [run.read_metrics() for run in runs]


def _stack(tensors: list[torch.Tensor], size: int, fill: float | None = None) -> torch.Tensor:
    """Stack per-run batches, padding each to ``size`` rows (with ``fill``, or copies of its first row)."""
    padded = []
    for t in tensors:
        if len(t) < size:
            shape = (size - len(t), *t.shape[1:])
            pad = t[:1].expand(*shape) if fill is None else t.new_full(shape, fill)
            t = torch.cat([t, pad])
        padded.append(t)
    return torch.stack(padded)


def _train_locked(members, progress, stop_after, interrupt) -> None:
    tasks, cfgs, runs = (list(x) for x in zip(*members))
    keys = [batch_key(t, c) for t, c in zip(tasks, cfgs)]
    if None in keys or len(set(keys)) > 1:
        raise ValueError(f"runs {[r.name for r in runs]} cannot train as one model: they need the same architecture, "
                         "steps, evaluation steps, batch size, optimizer (adam/adamw) and device, and no augmentation "
                         "or penalty (see actid.batched.batch_key); train them separately")
    cfg0, task0 = cfgs[0], tasks[0]
    device = resolve_device(cfg0.device)
    warn_if_emulated_bf16(cfg0.amp, device)
    now = runtime(device, cfg0.amp, batched=True)
    models = [t.model.to(device).train() for t in tasks]
    measures = [build_measures(c.measures, c.seed) for c in cfgs]
    probes = [probe_sets(t, build_probes(c.probes, c.seed)) for t, c in zip(tasks, cfgs)]
    all_evals = evaluation_steps(cfg0)
    states, resumed = [], []
    for task, cfg, model, run, run_measures in zip(tasks, cfgs, models, runs, measures):
        # each run's dropout stream: the default generator of the device a separate run would draw from, seeded
        # alike; on CUDA also a separate run's CPU stream (unused there)
        dropout = torch.Generator(device=device).manual_seed(cfg.seed)
        cpu, cuda = (dropout, None) if device.type != "cuda" else (torch.Generator().manual_seed(cfg.seed), dropout)
        states.append(TrainState.new(model, make_optimizer(model, cfg), len(task.train_x), cfg.batch_size, cfg.seed,
                                     task.train_x.device, cpu, cuda, measures=run_measures))
        resumed.append(states[-1].restore(run, now, all_evals))
    if len({(p.step, len(p.rows)) for p in resumed}) > 1:
        raise ValueError(f"runs {[r.name for r in runs]} are at different steps {[p.step for p in resumed]} (or rows); "
                         "batched runs must resume from the same point (actid.batched.group_members groups them so)")
    step = resumed[0].step
    rows, elapsed = [p.rows for p in resumed], [p.elapsed for p in resumed]
    dropout_gens = [state.cuda_rng if device.type == "cuda" else state.cpu_rng for state in states]

    names = [name for name, _ in models[0].named_parameters()]
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
              for name in names}
    adam = StackedAdam(params, cfg0.optimizer, tuple(cfg0.betas), cfg0.eps, [c.weight_decay for c in cfgs])
    adam.load([state.optimizer for state in states], models)
    base = copy.deepcopy(models[0]).to("meta").train()  # the architecture; its weights come from `params`

    def run_loss(weights, x, y, real, masks):  # real: 1 for the run's examples, 0 for padding
        logits = functional_call(base, weights, (x,), {"masks": masks}).float()
        return (task0.loss_fn(logits, y, reduction="none") * real).sum() / real.sum()

    def run_loss_full(weights, x, y, masks):  # no padding: the loss exactly as a separate run computes it
        return task0.loss_fn(functional_call(base, weights, (x,), {"masks": masks}).float(), y)

    def sync_models() -> None:  # each run's own module gets its slice of the stacked weights
        with torch.no_grad():
            for k, model in enumerate(models):
                for name, p in model.named_parameters():
                    p.copy_(params[name][k])

    def save_checkpoint(k: int) -> None:  # in a separate run's format: the Adam state goes into torch's optimizer
        cfg, state = cfgs[k], states[k]
        for group in state.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(max(step - 1, 0), cfg)
        adam.export(k, state.optimizer, models[k])
        state.save(runs[k], Progress(step, elapsed[k] + time.perf_counter() - started, rows[k]), now)

    batched_loss, batched_loss_full = vmap(run_loss), vmap(run_loss_full)
    # every step's learning rate of every run, on the device once (no copy per step)
    learning_rates = torch.tensor([[c.lr * lr_factor(s, c) for c in cfgs] for s in range(cfg0.steps)],
                                  dtype=torch.float64, device=device)
    eval_steps = [s for s in all_evals if s > step or (s == 0 and not rows[0])]
    started = time.perf_counter()
    bar = tqdm(total=cfg0.steps, initial=step, desc=f"{len(runs)} runs as one model", disable=progress is not True,
               leave=False)
    report = progress if callable(progress) else None
    for target in eval_steps:
        with flushing_denormals(task0.flush_denormal):
            while step < target:
                indices = [s.sampler.next() for s in states]
                batches = [(t.train_x[idx], t.train_y[idx]) for t, idx in zip(tasks, indices)]
                sizes = [len(y) for _, y in batches]
                masks = [m.dropout_masks(*x.shape, generator=g) for m, (x, _), g in zip(models, batches, dropout_gens)]
                size = max(sizes)
                x = _stack([x for x, _ in batches], size)
                y = _stack([y for _, y in batches], size)
                masks = {name: _stack([m[name] for m in masks], size, fill=1.0) for name in masks[0]}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg0.amp):
                    if len(set(sizes)) == 1:
                        losses = batched_loss_full(params, x, y, masks)
                    else:
                        real = _stack([torch.ones(n, device=y.device) for n in sizes], size, fill=0.0)
                        losses = batched_loss(params, x, y, real, masks)
                adam.zero_grad()
                losses.sum().backward()  # runs are independent: each run's gradient is its own loss's
                adam.step(learning_rates[step])
                step += 1
                bar.update(1)
                if report:
                    report(step, cfg0.steps)
                if interrupt is not None and step < target and interrupt():
                    sync_models()
                    for k in range(len(runs)):
                        save_checkpoint(k)
                    bar.close()
                    raise TrainingInterrupted(f"{len(runs)} batched runs: interrupted at step {step}; "
                                              "checkpoints saved")
        index, last = all_evals.index(step), step == cfg0.steps
        sync_models()
        for k in range(len(runs)):
            cfg = cfgs[k]
            row = {schema.STEP: step, schema.LEARNING_RATE: cfg.lr * lr_factor(max(step - 1, 0), cfg),
                   **evaluate(tasks[k], measures[k], probes[k], step, index, last, cfg.eval_batch_size)}
            rows[k].append(row)
            if cfg.snapshot_every and (index % cfg.snapshot_every == 0 or last):
                runs[k].save_snapshot(step, models[k].state_dict())
            save_checkpoint(k)  # before metrics.csv, as in actid.train
            if not last:
                runs[k].write_rows(rows[k])
        if last:
            break
        if stop_after is not None and step >= stop_after:
            bar.close()
            return
        if interrupt is not None and interrupt():
            bar.close()
            raise TrainingInterrupted(f"{len(runs)} batched runs: interrupted after the evaluation at step {step}")
    bar.close()
    for k, run in enumerate(runs):
        run.finish(rows[k], elapsed[k] + time.perf_counter() - started)


def group_members(members: list[tuple[Task, TrainConfig, Run]]) -> list[list[tuple[Task, TrainConfig, Run]]]:
    """Split runs into groups that can train as one model: one shape (:func:`batch_key`), and the same step to
    resume from."""
    groups: dict[tuple, list] = {}
    for task, cfg, run in members:
        key = batch_key(task, cfg)
        if key is None:
            raise ValueError(f"run {run.name} cannot train batched (see actid.batched.batch_key); train it separately")
        # a new run (-1) starts with the evaluation at step 0; one checkpointed at 0 has it
        state = run.load_checkpoint()
        groups.setdefault((key, state["step"] if state else -1), []).append((task, cfg, run))
    return list(groups.values())
