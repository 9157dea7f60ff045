"""Batched training (actid.batched): several runs as one model give each run the rows it gets alone."""


import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from actid.batched import StackedAdam, group_members, train_batched
from actid.experiments.grokking import build, resolve
from actid.models.transformer import Transformer
from actid.pipeline.grid import InvalidSweep
from actid.pipeline.local import run_sweep
from actid.pipeline.plan import batch_mode
from actid.runs import Run
from actid.train import TrainConfig, TrainingInterrupted, make_optimizer, train
from actid.train_state import ResumeMismatchError

TINY = {"p": 13, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32, "steps": 24, "eval_every": 8,
        "optimizer": "adamw", "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}
# different seeds, weight decays, learning rates, schedules and train fractions: 78 and 62 training equations make
# batches of unequal size at the end of an epoch, which the batched step pads
POINTS = [{"train_fraction": 0.5, "weight_decay": 0.0, "seed": 0, "warmup_steps": 5, "schedule": "cosine"},
          {"train_fraction": 0.4, "weight_decay": 1.0, "seed": 1, "schedule": "multistep", "milestones": [10]},
          {"train_fraction": 0.5, "weight_decay": 0.1, "seed": 2, "lr": 3e-3}]


def members(root, points, **extra):
    out = []
    for i, point in enumerate(points):
        config = resolve({**TINY, **extra, **point})
        run = Run(root / f"run{i}")
        run.write_config(config, {"experiment": "grokking", "profile": "test"})
        out.append((*build(config), run))
    return out


def assert_rows_close(a: pd.DataFrame, b: pd.DataFrame):
    """Equal to float rounding: losses to 1e-5, IDs to 1e-4 (a nearest-neighbour ratio amplifies rounding)."""
    assert list(a.columns) == list(b.columns) and a["step"].tolist() == b["step"].tolist()
    losses = [c for c in a if not c.startswith(("id", "pid", "llid"))]
    pd.testing.assert_frame_equal(a[losses], b[losses], check_exact=False, rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer,dropout", [("adamw", 0.1), ("adam", 0.1), ("adamw", 0.0)])
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # no vmap rule for the CPU attention kernel
def test_batched_runs_give_the_rows_of_separate_runs(tmp_path, optimizer, dropout):
    separate = [train(task, cfg, run, progress=False)
                for task, cfg, run in members(tmp_path / "separate", POINTS, optimizer=optimizer, dropout=dropout)]
    batched = train_batched(members(tmp_path / "batched", POINTS, optimizer=optimizer, dropout=dropout),
                            progress=False)
    for a, b in zip(separate, batched):
        assert_rows_close(a, b)
        assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]  # they did train
    assert Run(tmp_path / "batched" / "run1").runtime()["batched"] is True


def test_dropout_masks_draw_what_torch_dropout_draws():
    """The model's explicit masks equal nn.Dropout and the attention kernel's own dropout, bit for bit on the CPU:
    a separate run's numbers did not change when the masks became explicit."""
    torch.manual_seed(0)
    model = Transformer(vocab_size=15, n_classes=13, width=32, depth=2, heads=2, mlp_hidden=64, dropout=0.1).train()
    tokens = torch.randint(0, 15, (16, 4))

    def reference(x):  # the forward written with torch's dropout, as a separate run computed it before
        h = F.dropout(model.token_embedding(x) + model.position_embedding(torch.arange(4)), 0.1, True)
        for i, block in enumerate(model.blocks):
            last = i == len(model.blocks) - 1
            b, t, c = h.shape
            q, k, v = block.attn.qkv(block.ln_attn(h)).view(b, t, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
            q = q[:, :, -1:] if last else q
            y = F.scaled_dot_product_attention(q, k, v, is_causal=not last, dropout_p=0.1)
            y = F.dropout(block.attn.proj(y.transpose(1, 2).reshape(b, q.shape[2], c)), 0.1, True)
            h = (h[:, -1:] if last else h) + y
            h = h + F.dropout(block.mlp.proj(F.gelu(block.mlp.fc(block.ln_mlp(h)), approximate="tanh")), 0.1, True)
        return model.head(model.ln_final(h[:, -1]))

    torch.manual_seed(5)
    expected = reference(tokens)
    torch.manual_seed(5)
    assert torch.equal(model(tokens), expected)
    masks = model.dropout_masks(16, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model(tokens, masks=masks), expected)
    assert masks["blocks.1.attn.weights"].shape == (16, 2, 1, 4)  # the last block computes the last query only


def test_stacked_adam_is_torch_adam_for_each_run():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3) for _ in range(3)]
    lrs, decays = [1e-3, 2e-3, 5e-4], [0.0, 0.1, 1.0]
    for kind in ("adam", "adamw"):
        stacked = {"w": torch.stack(weights).requires_grad_()}
        adam = StackedAdam(stacked, kind, (0.9, 0.98), 1e-8, decays)
        singles = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizers = [make_optimizer(torch.nn.ParameterList([p]), TrainConfig(optimizer=kind, lr=lr, weight_decay=wd,
                                                                               betas=(0.9, 0.98)))
                      for p, lr, wd in zip(singles, lrs, decays)]
        for _ in range(5):
            grads = torch.randn(3, 5, 3)
            stacked["w"].grad = grads.clone()
            adam.step(torch.tensor(lrs, dtype=torch.float64))
            for p, opt, g in zip(singles, optimizers, grads):
                p.grad = g.clone()
                opt.step()
        for k, p in enumerate(singles):
            torch.testing.assert_close(stacked["w"][k].detach(), p.detach(), rtol=1e-6, atol=1e-7)


def test_an_interrupted_batched_run_resumes_to_the_same_rows(tmp_path):
    full = train_batched(members(tmp_path / "full", POINTS[:2]), progress=False)
    train_batched(members(tmp_path / "stopped", POINTS[:2]), progress=False, stop_after=8)  # killed after a row
    assert pd.read_csv(tmp_path / "stopped" / "run0" / "metrics.csv")["step"].tolist() == [0, 8]
    calls = iter(range(10**6))
    with pytest.raises(TrainingInterrupted, match="interrupted at step 12"):  # asked to stop between evaluations
        train_batched(members(tmp_path / "asked", POINTS[:2]), progress=False, interrupt=lambda: next(calls) == 12)
    for root in ("stopped", "asked"):
        torch.manual_seed(999)  # resuming restores every random stream itself
        resumed = train_batched(members(tmp_path / root, POINTS[:2]), progress=False)
        for a, b in zip(full, resumed):
            pd.testing.assert_frame_equal(a, b)
    # a run interrupted while batched does not resume separately: its float rounding would change mid-run
    train_batched(members(tmp_path / "mixed", POINTS[:1]), progress=False, stop_after=8)
    task, cfg, run = members(tmp_path / "mixed", POINTS[:1])[0]
    with pytest.raises(ResumeMismatchError, match="--batch-runs on"):
        train(task, cfg, run, progress=False)


def test_a_run_checkpointed_at_step_0_and_a_new_run_each_get_one_step_0_row(tmp_path):
    train_batched(members(tmp_path, POINTS[:1]), progress=False, stop_after=0)  # rows [0], checkpoint at step 0
    groups = group_members(members(tmp_path, POINTS[:2]))
    assert [[run.name for _, _, run in g] for g in groups] == [["run0"], ["run1"]]
    for group in groups:
        train_batched(group, progress=False)
    for name in ("run0", "run1"):
        assert Run(tmp_path / name).read_metrics()["step"].tolist() == [0, 8, 16, 24]


def test_runs_of_different_shapes_or_steps_are_refused(tmp_path):
    mixed = members(tmp_path / "shapes", [{"train_fraction": 0.5}, {"train_fraction": 0.5, "width": 16}])
    with pytest.raises(ValueError, match="cannot train as one model"):
        train_batched(mixed, progress=False)
    assert not (tmp_path / "shapes" / "run0" / "metrics.csv").exists()


def test_the_sweep_batches_on_request_and_refuses_what_cannot_be_batched(tmp_path):
    grid = {"grokking": {"tiny": {"fixed": {**TINY, "train_fraction": 0.5}, "grid": {"weight_decay": [0.0, 1.0]}}}}
    run_sweep("grokking", grid, tmp_path / "off", "tiny", batch_runs="off")
    run_sweep("grokking", grid, tmp_path / "on", "tiny", batch_runs="on")
    for name in ("weight_decay=0.0", "weight_decay=1.0"):
        off, on = Run(tmp_path / "off" / name), Run(tmp_path / "on" / name)
        assert on.is_finished and on.runtime().get("batched") and not off.runtime().get("batched")
        assert_rows_close(off.read_metrics(), on.read_metrics())
    assert not batch_mode("grokking", [resolve(TINY)], "auto")  # on a CPU, auto keeps runs separate
    on_gpu = [resolve({**TINY, "device": "cuda"})]
    assert batch_mode("grokking", on_gpu, "auto") and not batch_mode("grokking", on_gpu, "auto", jobs=2)
    with pytest.raises(InvalidSweep, match="not optimizer 'sgd'"):
        batch_mode("grokking", [resolve({**TINY, "optimizer": "sgd"})], "on")
    with pytest.raises(InvalidSweep, match="memorization runs cannot train batched"):
        batch_mode("memorization", [{}], "on")
