"""Grokking: data, model, the shared training loop, run format, resume, sweep and the figure notebook."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from actid.analysis.grokking import grokking_summary
from actid.data.modular import EQ_TOKEN, NUMBER_OFFSET, OP_TOKEN, modular_equations, train_val_split
from actid.experiments.grokking import build
from actid.models.transformer import Transformer
from actid.paths import ROOT
from actid.pipeline.local import run_sweep
from actid.runs import load_runs
from actid.train import TrainConfig, evaluation_steps, lr_factor, train

TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32,
        "steps": 12, "eval_every": 4, "measures": {"id": {"options": {"n_resamples": 3}}}, "device": "cpu"}


def test_division_labels_are_a_times_b_inverse_mod_p():
    tokens, labels = modular_equations(97, "div")
    assert len(labels) == 97 * 96
    a, b = tokens[:, 0] - NUMBER_OFFSET, tokens[:, 2] - NUMBER_OFFSET
    assert torch.all(tokens[:, 1] == OP_TOKEN) and torch.all(tokens[:, 3] == EQ_TOKEN)
    assert torch.all(b > 0)
    assert torch.all((labels * b) % 97 == a)  # c = a / b  <=>  c * b = a (mod p)
    assert torch.all(labels == torch.tensor([x * pow(y, 95, 97) % 97 for x, y in zip(a.tolist(), b.tolist())]))


@pytest.mark.parametrize("op,fn", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                   ("mul", lambda a, b: a * b)])
def test_other_operations(op, fn):
    tokens, labels = modular_equations(11, op)
    a, b = tokens[:, 0] - NUMBER_OFFSET, tokens[:, 2] - NUMBER_OFFSET
    assert len(labels) == 121 and torch.all(labels == fn(a, b) % 11)


def test_bad_modulus_or_operation_is_refused():
    with pytest.raises(ValueError, match="prime modulus"):
        modular_equations(96, "div")
    with pytest.raises(ValueError, match="unknown operation 'pow'"):
        modular_equations(97, "pow")


def test_split_is_fixed_by_the_split_seed_and_matches_the_official_sizes():
    for frac, n_train in [(0.15, 1396), (0.2, 1862), (0.25, 2328), (0.3, 2793)]:
        train_idx, val_idx = train_val_split(9312, frac)
        assert len(train_idx) == n_train and len(val_idx) == 9312 - n_train
        assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 9312
    a, _ = train_val_split(9312, 0.3, split_seed=9)
    torch.manual_seed(123)  # the training seed must not matter
    b, _ = train_val_split(9312, 0.3, split_seed=9)
    c, _ = train_val_split(9312, 0.3, split_seed=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
    small, _ = train_val_split(9312, 0.2)
    assert torch.equal(small, a[:1862])  # a larger fraction adds equations; same shuffle


def test_transformer_shapes_and_paper_layer_names():
    torch.manual_seed(0)
    model = Transformer(vocab_size=99, n_classes=97)
    assert model.id_layers == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert model.llid_layer == "blocks.1.mlp"
    names = dict(model.named_modules())
    assert all(name in names for name in model.id_layers)
    x = torch.randint(0, 99, (8, 4))
    assert model(x).shape == (8, 97)
    model.eval()
    assert torch.allclose(model(x), model(x, all_positions=False), atol=1e-5)  # training shortcut, same logits


def test_schedule_and_evaluation_points():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1.0)
    assert lr_factor(0, cfg) == pytest.approx(0.01) and lr_factor(99, cfg) == 1 and lr_factor(500, cfg) == 1
    cos = TrainConfig(steps=100, schedule="cosine")
    assert lr_factor(0, cos) == 1 and lr_factor(50, cos) == pytest.approx(0.5)
    multi = TrainConfig(steps=100, schedule="multistep", milestones=(30, 60), gamma=0.2)
    assert [lr_factor(s, multi) for s in (29, 30, 60)] == pytest.approx([1, 0.2, 0.04])
    assert evaluation_steps(TrainConfig(steps=10, eval_every=4)) == [0, 4, 8, 10]
    log = evaluation_steps(TrainConfig(steps=1000, eval_log_points=5))
    assert log[0] == 0 and log[-1] == 1000 and len(log) == 6
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="lion")


def test_a_short_run_writes_a_valid_run_directory(tmp_path):
    task, cfg = build(TINY)
    df = train(task, cfg, tmp_path / "run", progress=False)
    assert df["step"].tolist() == [0, 4, 8, 12]
    for col in ["train_loss", "train_acc", "val_loss", "val_acc", "llid", "pid", "id/blocks.1.mlp",
                "id_err/blocks.0.attn"]:
        assert col in df.columns and df[col].notna().all()
    assert (df["llid"] == df["id/blocks.1.mlp"]).all()
    assert (df["pid"] == df[[c for c in df if c.startswith("id/")]].max(axis=1)).all()
    assert (tmp_path / "run" / "done.json").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cpu_autocast_without_native_bf16_warns(tmp_path, monkeypatch):
    monkeypatch.setattr("actid.train_state.cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="amp=false"):
        train(*build({**TINY, "steps": 2, "eval_every": 2, "amp": True}), tmp_path / "run", progress=False)


def test_unknown_config_key_is_refused():
    with pytest.raises(KeyError, match=r"unknown config key\(s\) \['weight_decy'\]"):
        build({**TINY, "weight_decy": 0.1})


def test_same_seed_gives_identical_metrics_and_resume_loses_no_rows(tmp_path):
    full = train(*build(TINY), tmp_path / "full", progress=False)
    again = train(*build(TINY), tmp_path / "again", progress=False)
    pd.testing.assert_frame_equal(full, again)
    # kill after step 4, then resume from the checkpoint in a fresh process state
    partial = train(*build(TINY), tmp_path / "resumed", progress=False, stop_after=4)
    assert partial["step"].tolist() == [0, 4] and (tmp_path / "resumed" / "checkpoint.pt").exists()
    torch.manual_seed(999)  # resuming must restore every random stream itself
    resumed = train(*build(TINY), tmp_path / "resumed", progress=False)
    pd.testing.assert_frame_equal(full, resumed)
    on_disk = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert on_disk["step"].tolist() == [0, 4, 8, 12]


def test_sweep_runs_the_grid_and_load_runs_returns_a_tidy_table(tmp_path):
    params = {"grokking": {"tiny": {"fixed": TINY, "grid": {"weight_decay": [0.0, 0.1], "seed": [0]}}}}
    run_sweep("grokking", params, tmp_path, "tiny")
    (tmp_path / "stale-run").mkdir()
    params["grokking"]["tiny"]["grid"]["weight_decay"] = [0.1]
    run_sweep("grokking", params, tmp_path, "tiny")  # the finished run is kept, the others removed
    df = load_runs(tmp_path)
    assert df["run"].unique().tolist() == ["weight_decay=0.1,seed=0"]
    assert df["weight_decay"].eq(0.1).all() and df["finished"].all() and df["p"].eq(13).all()
    config = json.loads((tmp_path / "weight_decay=0.1,seed=0" / "config.json").read_text())
    assert config["experiment"] == "grokking" and config["config"]["weight_decay"] == 0.1


def test_grokking_summary_finds_the_crossing_and_the_drop():
    steps = np.arange(0, 1100, 100)
    run = pd.DataFrame({"step": steps, "train_acc": np.minimum(1, steps / 200),
                        "val_acc": np.where(steps >= 600, 0.95, 0.02),
                        "llid": [40, 20, 20, 20, 20, 20, 20, 18, 8, 6, 5]})  # the early dip is ignored
    s = grokking_summary(run)
    assert s["memorization_step"] == 200 and s["grok_step"] == 600 and s["grokked"]
    # centred 3-point means at 600..900: 19.33, 15.33, 10.67, 6.33: the steepest step ends at 800
    assert s["llid_drop_step"] == 800 and s["lag_steps"] == 200 and s["eval_interval"] == 100
    assert s["co_occurs"] and not grokking_summary(run, co_occurrence_intervals=1.5)["co_occurs"]
    never = grokking_summary(run.assign(val_acc=0.01))
    assert not never["grokked"] and np.isnan(never["lag_steps"]) and not never["co_occurs"]
    rising = grokking_summary(run.assign(llid=[40, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]))  # no drop after memorization
    assert np.isnan(rising["llid_drop_step"]) and np.isnan(rising["lag_steps"]) and not rising["co_occurs"]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_grokking_summary_of_a_run_in_progress_has_no_drop_yet(n):
    steps = np.arange(n) * 100.0
    run = pd.DataFrame({"step": steps, "train_acc": np.ones(n), "val_acc": np.ones(n), "llid": 20.0 - steps / 100})
    s = grokking_summary(run)
    assert s["grok_step"] == 0
    if n < 4:  # fewer than two centred 3-point means: no drop, no lag
        assert np.isnan(s["llid_drop_step"]) and not s["co_occurs"]
    else:
        assert s["llid_drop_step"] == 200 and s["lag_steps"] == 200 and s["co_occurs"]


def test_figure_notebook_runs_under_papermill_on_tiny_runs(tmp_path):
    import subprocess
    import sys

    import nbformat
    import papermill

    params = {"grokking": {"tiny": {"fixed": TINY, "grid": {"weight_decay": [0.0, 0.1]}}}}
    run_sweep("grokking", params, tmp_path / "runs", "tiny")
    source = tmp_path / "grokking.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-o", str(source), "notebooks/grokking.py"],
                   check=True, capture_output=True, cwd=ROOT)
    assert nbformat.read(source, as_version=4).metadata.kernelspec.name == "python3"
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters={"runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "fig")})
    assert (tmp_path / "fig" / "grokking.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "grokking.pdf").read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    assert metrics["n_runs"] == 2 and set(metrics["runs"]) == {"weight_decay=0.0", "weight_decay=0.1"}
    summary = pd.read_csv(tmp_path / "fig" / "summary.csv")
    assert len(summary) == 2 and {"llid_drop_step", "llid_start"} <= set(summary.columns)
    # another ID column: the summary's columns are named after it, not after the LLID
    papermill.execute_notebook(str(source), str(tmp_path / "pid.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters={"runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "pid"),
                                           "id_column": "pid"})
    columns = set(pd.read_csv(tmp_path / "pid" / "summary.csv").columns)
    assert {"pid_drop_step", "pid_start", "pid_final"} <= columns and not any(c.startswith("llid") for c in columns)
    runs = json.loads((tmp_path / "pid" / "metrics.json").read_text())["runs"]
    assert all("pid_drop_step" in run for run in runs.values())
