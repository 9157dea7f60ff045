"""The one owner of training state (actid.train_state.TrainState): save -> restore -> the same next steps, for the
state alone and for both training loops (separate, actid.train; batched, actid.batched) stopped mid-interval."""

import pandas as pd
import pytest
import torch
from torch import nn

from actid.batched import train_batched
from actid.experiments.grokking import build, resolve
from actid.runs import Run
from actid.train import TrainConfig, TrainingInterrupted, make_optimizer, train
from actid.train_state import Progress, TrainState

TINY = {"p": 13, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32, "steps": 24, "eval_every": 8,
        "optimizer": "adamw", "dropout": 0.1, "train_fraction": 0.5, "weight_decay": 0.1,
        "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}


def new_state(seed: int, explicit_generators: bool) -> TrainState:
    """A small model with dropout, its optimizer and streams; ``explicit_generators``: one generator per run (the
    batched loop's), else torch's default ones (the separate loop's)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    cfg = TrainConfig(optimizer="adam", lr=1e-2, batch_size=7)
    if explicit_generators:
        cpu, cuda = torch.Generator().manual_seed(seed), None
    else:
        cpu, cuda = TrainState.default_generators(torch.device("cpu"))
    return TrainState.new(model, make_optimizer(model, cfg), 40, cfg.batch_size, seed, torch.device("cpu"), cpu, cuda)


def take_steps(state: TrainState, data: torch.Tensor, labels: torch.Tensor, n: int) -> list:
    """n training steps drawing on every stream: batch order, augmentation noise, dropout; what each step used."""
    seen = []
    for _ in range(n):
        idx = state.sampler.next()
        x = data[idx] + 0.1 * torch.randn(data[idx].shape, generator=state.aug_generator)
        h = state.model[1](state.model[0](x))
        keep = torch.rand(h.shape, generator=state.cpu_rng) > state.model[2].p  # dropout from the run's stream
        loss = nn.functional.cross_entropy(state.model[3](h * keep / (1 - state.model[2].p)), labels[idx])
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        seen.append((idx.clone(), float(loss.detach())))
    return seen


@pytest.mark.parametrize("explicit_generators", [False, True], ids=["default generators", "one per run"])
def test_save_then_restore_gives_the_same_next_steps(tmp_path, explicit_generators):
    data, labels = torch.randn(40, 6), torch.randint(0, 3, (40,))
    run = Run(tmp_path / "run")
    run.write_config({"seed": 0}, {"experiment": "test", "profile": None})
    steps = [0, 5]
    state = new_state(0, explicit_generators)
    take_steps(state, data, labels, 5)
    rows = [{"step": 0, "val_acc": 0.5}, {"step": 5, "val_acc": 0.75}]
    state.save(run, Progress(5, 1.5, rows), {"device": "cpu", "amp": False, "threads": 1})
    after = take_steps(state, data, labels, 9)  # through an epoch boundary (40 examples, batches of 7)
    final = {k: v.clone() for k, v in state.model.state_dict().items()}

    torch.manual_seed(123)  # other global draws in between, as in a new process
    torch.rand(10)
    restored = new_state(1, explicit_generators)  # other weights and seeds: everything must come from the checkpoint
    progress = restored.restore(run, {"device": "cpu", "amp": False, "threads": 1}, steps)
    assert (progress.step, progress.elapsed, progress.rows) == (5, 1.5, rows)
    assert run.read_metrics().to_dict("records") == rows  # metrics.csv restored from the checkpoint's rows
    again = take_steps(restored, data, labels, 9)
    assert [i.tolist() for i, _ in again] == [i.tolist() for i, _ in after]
    assert [loss for _, loss in again] == [loss for _, loss in after]
    assert all(torch.equal(final[k], v) for k, v in restored.model.state_dict().items())


def members(root):
    out = []
    for i, seed in enumerate((0, 1)):
        config = resolve({**TINY, "seed": seed})
        run = Run(root / f"run{i}")
        run.write_config(config, {"experiment": "grokking", "profile": "test"})
        out.append((*build(config), run))
    return out


def stop_at(step: int):
    """An ``interrupt`` that asks to stop once ``step`` training steps have been taken (mid-interval)."""
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        return calls["n"] >= step
    return interrupt


def final_weights(run: Run) -> dict:
    return run.load_snapshot(run.snapshot_steps()[-1])


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # no vmap rule for the CPU attention kernel
@pytest.mark.parametrize("loop", ["separate", "batched"])
def test_a_loop_stopped_mid_interval_resumes_to_the_same_rows_and_weights(tmp_path, loop):
    def fit(root, interrupt=None):
        group = members(root)
        for task, cfg, run in group:
            cfg.snapshot_every = 1
        if loop == "separate":
            return [train(task, cfg, run, progress=False, interrupt=interrupt) for task, cfg, run in group]
        return train_batched(group, progress=False, interrupt=interrupt)

    whole = fit(tmp_path / "whole")
    with pytest.raises(TrainingInterrupted, match="interrupted at step"):
        fit(tmp_path / "resumed", interrupt=stop_at(11))
    stopped = Run(tmp_path / "resumed" / "run0").load_checkpoint()["step"]
    assert 8 < stopped < 16  # between two evaluations: the sampler, optimizer and streams are mid-interval
    resumed = fit(tmp_path / "resumed")  # a new build: model, data and streams from scratch, then the checkpoint
    for i, (a, b) in enumerate(zip(whole, resumed)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        w_a = final_weights(Run(tmp_path / "whole" / f"run{i}"))
        w_b = final_weights(Run(tmp_path / "resumed" / f"run{i}"))
        assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
