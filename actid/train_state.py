"""A run's training state, and its one owner: :class:`TrainState` saves it and restores it, for both loops.

What makes a resumed run equal an uninterrupted one: the model, the optimizer, the batch order
(:class:`EpochSampler`), the augmentation stream, the random streams of dropout (CPU and CUDA), the step, the time
spent and the rows so far. The checkpoint (``checkpoint.pt`` in the run directory, :class:`actid.runs.Run`) holds all
of them; its rows are the source of truth that ``metrics.csv`` is restored from. The separate loop
(:mod:`actid.train`) passes torch's default generators; the batched loop (:mod:`actid.batched`) one generator per
run; the checkpoint format is the same either way.

A run resumes only where the facts that change its numbers (:func:`runtime`) are the ones it started with.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from actid import schema
from actid.runs import Run


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


class ResumeMismatchError(RuntimeError):
    """An unfinished run would resume on a device or with settings that change its numbers."""


def check_resume(run_name: str, recorded: dict | None, current: dict) -> None:
    """Refuse to resume an unfinished run where its numerics would change, offering the two choices."""
    if recorded is None or recorded == current:
        return
    diff = ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in dict.fromkeys([*current, *recorded])
                     if recorded.get(k) != current.get(k))
    hint = (f"--set device={recorded['device']}"
            + (f" amp={recorded['amp']}" if recorded.get('amp') != current['amp'] else "")
            + (f" (and {recorded['threads']} CPU threads, e.g. OMP_NUM_THREADS={recorded['threads']})"
               if recorded.get("threads") and recorded.get("threads") != current.get("threads") else "")
            + ((" with --batch-runs on (local launcher)" if recorded.get("batched") else " with --batch-runs off")
               if bool(recorded.get("batched")) != bool(current.get("batched")) else ""))
    raise ResumeMismatchError(
        f"run {run_name} is unfinished and was training with different numerics ({diff}); resuming would mix "
        f"them in one run. Either resume it as it was started ({hint}), or restart it from step 0 (sweep: --restart "
        "moves the unfinished run aside first).")


def check_checkpoint_rows(run: Run, rows: list[dict], step: int, evaluation_steps: list[int]) -> None:
    """A checkpoint at ``step`` must hold one row per evaluation step up to it."""
    expected = [s for s in evaluation_steps if s <= step]
    if [r[schema.STEP] for r in rows] != expected:
        raise ValueError(f"{run.checkpoint_path} holds rows for steps {[r[schema.STEP] for r in rows]}, not the "
                         f"evaluation steps {expected} of this config; delete {run.path} to restart the run")


class Progress(NamedTuple):
    """How far a run has come: the step, the training seconds spent and the rows evaluated so far."""

    step: int = 0
    elapsed: float = 0.0
    rows: list = []


@dataclass
class TrainState:
    """The objects whose state a checkpoint holds. ``cpu_rng`` and ``cuda_rng`` are the generators the run's
    random operations draw from (dropout; ``cuda_rng`` None off CUDA)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: EpochSampler
    aug_generator: torch.Generator
    cpu_rng: torch.Generator
    cuda_rng: torch.Generator | None = None
    measures: list = field(default_factory=list)  # measures whose state() carries across evaluations

    @classmethod
    def new(cls, model: nn.Module, optimizer: torch.optim.Optimizer, n_train: int, batch_size: int, seed: int,
            data_device: torch.device, cpu_rng: torch.Generator, cuda_rng: torch.Generator | None,
            measures: list | None = None) -> TrainState:
        """A run's state at step 0: its batch order seeded with ``seed``, its augmentation stream with seed + 1."""
        return cls(model, optimizer, EpochSampler(n_train, batch_size, seed, data_device),
                   torch.Generator(device=data_device).manual_seed(seed + 1), cpu_rng, cuda_rng, list(measures or []))

    @staticmethod
    def default_generators(device: torch.device) -> tuple[torch.Generator, torch.Generator | None]:
        """torch's default generators for a run alone in its process: the CPU's and, on CUDA, ``device``'s."""
        if device.type != "cuda":
            return torch.default_generator, None
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.default_generator, torch.cuda.default_generators[index]

    def save(self, run: Run, progress: Progress, runtime: dict) -> None:
        """Write the run's checkpoint (atomically): every state above, ``progress`` and the ``runtime``, as tensors
        and plain Python values only, so that it loads without unpickling any object (``weights_only``)."""
        rows = [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in progress.rows]
        run.save_checkpoint({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                             "sampler": self.sampler.state_dict(), "aug_generator": self.aug_generator.get_state(),
                             "cpu_rng": self.cpu_rng.get_state(),
                             "cuda_rng": self.cuda_rng.get_state() if self.cuda_rng is not None else None,
                             "step": progress.step, "elapsed": float(progress.elapsed), "rows": rows,
                             "runtime": runtime, "measures": self.measure_states()})

    def measure_states(self) -> dict:
        return {m.name: st for m in self.measures if (st := m.state()) is not None}

    def restore(self, run: Run, runtime: dict, evaluation_steps: list[int]) -> Progress:
        """Load the run's checkpoint into these objects and make ``metrics.csv`` hold its rows; without a checkpoint,
        keep rows an earlier attempt left aside and start at step 0. Refuses a checkpoint made with other numerics
        (:func:`check_resume`) or whose rows are not those of ``evaluation_steps``. Records ``runtime`` in the
        run's ``config.json``."""
        state = run.load_checkpoint()
        if state is None:
            run.set_aside_orphan_rows()
            progress = Progress(0, 0.0, [])
        else:
            check_resume(run.name, state.get("runtime"), runtime)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            self.aug_generator.set_state(state["aug_generator"])
            self.cpu_rng.set_state(state["cpu_rng"])
            if self.cuda_rng is not None:
                self.cuda_rng.set_state(state["cuda_rng"])
            for m in self.measures:
                if m.name in state.get("measures", {}):
                    m.load_state(state["measures"][m.name])
            progress = Progress(state["step"], state["elapsed"], state["rows"])
            check_checkpoint_rows(run, progress.rows, progress.step, evaluation_steps)
            run.restore_rows(progress.rows)
        if run.config_path.exists():
            run.record_runtime(runtime)
        return progress
