"""Grokking on MNIST (Golechha 2024, Omnigrok's set-up): the α-scaled MLP, the norm reward, the loading path,
the scale-free sparsity, the grokking statistics, a real tiny sweep with every measure, resume and the notebook."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from actid.analysis.mnist_grokking import measure_lags, midpoint_grokking
from actid.analysis.stats import steepest_log_change
from actid.data.images import load_vectors, write_fake_mnist
from actid.experiments.mnist_grokking import build, resolve, weight_norm_reward
from actid.measures import relative_activation_sparsity
from actid.models.scaled_mlp import ScaledMLP, ScaledMLPConfig
from actid.runs import load_runs
from actid.sweep import main as sweep_main
from actid.train import train

# --- model and objective -----------------------------------------------------------------------------


def test_every_parameter_is_alpha_times_the_default_init():
    torch.manual_seed(0)
    plain = ScaledMLP(ScaledMLPConfig(init_scale=1.0))
    torch.manual_seed(0)
    scaled = ScaledMLP(ScaledMLPConfig(init_scale=8.0))
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters()):
        assert torch.equal(q, 8.0 * p), name  # biases included
    norm = lambda m: math.sqrt(sum(float(p.detach().square().sum()) for p in m.parameters()))  # noqa: E731
    assert norm(scaled) == pytest.approx(8.0 * norm(plain), rel=1e-6)
    assert [n for n, _ in scaled.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                                         "fc3.weight", "fc3.bias"]
    assert scaled.fc1.weight.shape == (200, 784) and scaled.fc3.weight.shape == (10, 200)
    assert scaled.id_layers == ["relu1", "relu2"] and scaled.llid_layer == "relu2"


def test_dropout_sits_after_each_hidden_layer_and_only_in_training():
    torch.manual_seed(0)
    model = ScaledMLP(ScaledMLPConfig(width=32, dropout=0.5, init_scale=1.0))
    assert isinstance(model.dropout1, torch.nn.Dropout) and isinstance(model.dropout2, torch.nn.Dropout)
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="dropout must be in"):
        ScaledMLPConfig(dropout=1.0)
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        ScaledMLPConfig(init_scale=0)


def test_norm_reward_pushes_the_weights_outwards():
    torch.manual_seed(0)
    model = ScaledMLP(ScaledMLPConfig(width=16, init_scale=1.0))
    delta = 1e-3
    penalty = weight_norm_reward(delta)(model)
    total = sum(float(p.detach().square().sum()) for p in model.parameters())
    assert float(penalty.detach()) == pytest.approx(-delta * total)
    penalty.backward()
    for p in model.parameters():  # d(-δ Σ w²)/dw = -2δ w: a descent step moves every weight away from 0
        assert torch.allclose(p.grad, -2 * delta * p.detach())


def test_increasing_norm_variant_grows_the_norm_the_baseline_shrinks(tmp_path):
    """Ten AdamW steps on real digits: with weight decay and no reward the norm falls; a reward larger than the
    decay makes it rise."""
    def norms(reward):
        task, cfg = build({"train_images": 100, "width": 32, "steps": 10, "eval_log_points": 2, "batch_size": 100,
                           "weight_decay": 1.0, "lr": 0.01, "norm_reward": reward, "measures": {"weight_norm": {}},
                           "device": "cpu"})
        rows = train(task, cfg, tmp_path / f"reward={reward}", progress=False)
        return rows["weight_norm/total"].iloc[0], rows["weight_norm/total"].iloc[-1]
    start, baseline = norms(0.0)
    _, rewarded = norms(1.0)
    assert baseline < start < rewarded


def test_logged_loss_is_the_data_loss_without_the_reward(tmp_path):
    task, cfg = build({"train_images": 100, "width": 16, "steps": 1, "eval_log_points": 2, "batch_size": 100,
                       "norm_reward": 1.0, "measures": {}, "device": "cpu"})
    with torch.no_grad():
        expected = float(task.loss_fn(task.model(task.train_x), task.train_y))
    rows = train(task, cfg, tmp_path / "run", progress=False)
    assert rows["train_loss"].iloc[0] == pytest.approx(expected, rel=1e-5)  # Σ w² would add ~10^3


def test_validation_subset_is_class_balanced():
    task, _ = build({"train_images": 100, "val_images": 500, "steps": 1, "device": "cpu"})
    val_y = task.eval_sets["val"][1]
    assert len(val_y) == 500 and torch.equal(torch.bincount(val_y), torch.full((10,), 50))
    with pytest.raises(ValueError, match="val_images=55"):
        resolve({"val_images": 55})  # refused before any run directory is written


def test_resolve_writes_out_table_1_and_refuses_bad_values():
    config = resolve({})
    assert {k: config[k] for k in ("optimizer", "lr", "betas", "weight_decay", "batch_size", "steps", "init_scale",
                                   "loss", "width", "depth")} == \
        {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.01, "batch_size": 1000,
         "steps": 100_000, "init_scale": 8.0, "loss": "squared", "width": 200, "depth": 3}
    assert config["measures"]["circuit_complexity"]["layers"] == ["fc1", "fc2", "fc3"]
    assert resolve({"depth": 4})["measures"]["circuit_complexity"]["layers"] == ["fc1", "fc2", "fc3", "fc4"]
    with pytest.raises(ValueError, match="norm_reward"):
        resolve({"norm_reward": -1e-9})
    with pytest.raises(ValueError, match="dataset must be one of"):
        resolve({"dataset": "cifar10"})
    with pytest.raises(KeyError, match="unknown config key"):
        resolve({"delta": 1e-9})


# --- data --------------------------------------------------------------------------------------------


def test_mnist_through_torchvision_files(tmp_path):
    write_fake_mnist(str(tmp_path), n_train=40, n_test=20)
    data = load_vectors("mnist", str(tmp_path))
    assert data.train_x.shape == (40, 784) and data.val_x.shape == (20, 784) and data.n_classes == 10
    assert 0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1 and data.train_y.dtype == torch.long
    with pytest.raises(FileNotFoundError, match="MNIST files not found"):
        load_vectors("mnist", str(tmp_path / "elsewhere"))


def test_default_digits_are_raw_pixels_and_balanced():
    task, cfg = build({"train_images": 200, "steps": 1, "device": "cpu"})
    assert task.train_x.shape == (200, 784) and float(task.train_x.min()) == 0.0 and float(task.train_x.max()) <= 1.0
    assert torch.equal(torch.bincount(task.train_y), torch.full((10,), 20))
    assert task.eval_sets["val"][0].shape == (1000, 784) and task.penalty is None


# --- measures and statistics ---------------------------------------------------------------------------


def test_relative_sparsity_is_scale_free():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(100, 30, generator=g)) + 0.001
    value = relative_activation_sparsity(a, 0.5)
    assert value == relative_activation_sparsity(a * 1e4, 0.5)
    magnitude = a.flatten()
    assert value == pytest.approx(float((magnitude <= 0.5 * magnitude.median()).float().mean()))
    # more than half exact zeros: the median is 0 and the value is the fraction of zeros
    z = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0]])
    assert relative_activation_sparsity(z, 0.1) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="ratio must be"):
        relative_activation_sparsity(z, -1)


def synthetic_run():
    """Train accuracy saturates at step 100; validation goes 0.3 -> 0.9 with the midpoint 0.6 at step 3,000;
    a measure steps down between 2,000 and 3,000."""
    steps = np.array([0, 10, 100, 300, 1000, 2000, 3000, 5000, 10000])
    return pd.DataFrame({"step": steps,
                         "train_acc": [0.1, 0.5, 0.99, 1, 1, 1, 1, 1, 1],
                         "val_acc": [0.1, 0.2, 0.3, 0.3, 0.35, 0.5, 0.65, 0.85, 0.9],
                         "m": [5.0, 9.0, 5.0, 5.0, 5.0, 5.0, 2.0, 2.0, 2.0],
                         "sparse": [1.0, np.nan, 1.0, np.nan, 1.0, np.nan, 1.0, np.nan, 3.0]})


def test_midpoint_grokking_and_lags_on_a_known_run():
    run = synthetic_run()
    grok = midpoint_grokking(run)
    assert grok["saturation_step"] == 100 and grok["val_acc_at_saturation"] == 0.3
    assert grok["grok_step"] == 3000 and grok["delay_steps"] == 2900 and grok["grokked"]
    lags = measure_lags(run, ["m", "sparse", "absent"], grok)
    # the early jump (steps 10 -> 100) lies before saturation and is ignored
    assert lags["m"]["change_step"] == 3000 and lags["m"]["lag_steps"] == 0 and lags["m"]["lag_evaluations"] == 0
    assert lags["m"]["rate_per_log_step"] == pytest.approx(-3 / math.log(1.5))
    # NaN rows are skipped; a steepest change in the last interval is at the window's edge: no lag
    assert lags["sparse"]["change_step"] == 10000 and lags["sparse"]["at_edge"]
    assert math.isnan(lags["sparse"]["lag_evaluations"]) and not lags["m"]["at_edge"]
    assert math.isnan(lags["absent"]["lag_steps"])
    assert steepest_log_change(np.array([0.0, 5.0]), np.array([1.0, 2.0]))[1] == -1  # step 0 has no log


def test_grok_step_is_searched_from_saturation_on():
    run = synthetic_run()
    run.loc[1, "val_acc"] = 0.7  # a spike before saturation passes the midpoint but is not the grok step
    assert midpoint_grokking(run)["grok_step"] == 3000
    late = synthetic_run().assign(train_acc=[0.1] * 8 + [1.0])  # saturates at the last evaluation
    grok = midpoint_grokking(late)
    assert grok["delay_steps"] == 0 and grok["steps_after_saturation"] == 0 and not grok["grokked"]
    missing = synthetic_run()
    missing.loc[8, "val_acc"] = float("nan")
    assert math.isnan(midpoint_grokking(missing)["grok_step"])


def test_a_run_that_never_fits_has_no_grok_step():
    run = synthetic_run().assign(train_acc=0.5)
    grok = midpoint_grokking(run)
    assert math.isnan(grok["saturation_step"]) and math.isnan(grok["delay_steps"]) and not grok["grokked"]


# --- a real sweep, resume and the notebook -----------------------------------------------------------

TINY = {"train_images": 100, "width": 32, "batch_size": 50, "steps": 12, "eval_log_points": 4,
        "probes": {"train": {"split": "train"}, "val": {"split": "val", "max_points": 300}}}


def test_tiny_sweep_records_every_measure(tmp_path):
    params = {"profile": "tiny", "mnist_grokking": {"tiny": {"fixed": TINY, "grid": [
        {"norm_reward": [0.0], "dropout": [0.0]}, {"norm_reward": [1e-6], "dropout": [0.0]},
        {"norm_reward": [0.0], "dropout": [0.3]}]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sweep_main(["mnist_grokking", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "runs"),
                "--set", "device=cpu"])
    runs = load_runs(tmp_path / "runs")
    assert runs["run"].nunique() == 3 and runs["finished"].all()
    for column in ("train_acc", "val_loss", "weight_norm/total", "weight_norm/fc1.bias", "sparsity/relu1",
                   "sparsity/relu2", "relative_sparsity/relu2", "weight_entropy/fc1.weight", "weight_entropy/total",
                   "circuit_complexity/fc1", "circuit_complexity/fc3", "id/relu1", "llid", "pid"):
        assert runs[column].notna().all() and np.isfinite(runs[column]).all(), column
    assert "weight_entropy/fc1.bias" not in runs  # biases are not weight matrices


def test_interrupted_run_resumes_to_the_same_rows(tmp_path):
    config = {**TINY, "norm_reward": 1e-6, "dropout": 0.3, "device": "cpu"}
    whole = train(*build(config), tmp_path / "whole", progress=False)
    task, cfg = build(config)
    train(task, cfg, tmp_path / "resumed", progress=False, stop_after=3)
    resumed = train(*build(config), tmp_path / "resumed", progress=False)
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), whole.reset_index(drop=True))


@pytest.mark.slow
def test_figure_notebook_under_papermill(tmp_path, run_notebook):
    params = {"profile": "tiny", "mnist_grokking": {"tiny": {
        "fixed": {**TINY, "steps": 60, "eval_log_points": 12, "lr": 0.01}, "grid": [
            {"norm_reward": [0.0], "dropout": [0.0]}, {"norm_reward": [1e-6], "dropout": [0.0]},
            {"norm_reward": [0.0], "dropout": [0.3]}]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sweep_main(["mnist_grokking", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "runs"),
                "--set", "device=cpu"])
    result = run_notebook("fig_mnist_grokking", tmp_path / "out.ipynb", runs_dir=tmp_path / "runs",
                          out_dir=tmp_path / "fig")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert (tmp_path / "fig" / "measures.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "measures.pdf").read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    # baseline, increasing, dropout
    assert metrics["n_runs"] == 3 and len(metrics["claims"]) == (1 + 4 + 1) + (1 + 3 + 1) + 1
    assert {c["profile"] for c in metrics["claims"]} == {"tiny"}
    summary = pd.read_csv(tmp_path / "fig" / "summary.csv", index_col=0)
    assert set(summary["variant"]) == {"baseline", "increasing norm (δ 1e-06)", "dropout 0.3"}
