"""Extreme memorization (Mehta et al. 2021): the model's init, the losses, the inputs, the class-balanced probe,
the relative gradient norm, a real one-epoch sweep and the figure notebook."""

import json
import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from actid.data.images import load_vectors, standardize_per_image, write_fake_cifar
from actid.experiments.memorization import REFERENCE, build, resolve
from actid.losses import get_loss, hinge, squared
from actid.measures import Probe, build_probes, relative_gradient_norms, resolve_probes
from actid.models.mlp import MLPConfig, TwoLayerMLP
from actid.paths import ROOT
from actid.runs import Run, load_runs
from actid.sweep import main as sweep_main

# --- model -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.001, 0.1, 10.0])
def test_w1_has_the_requested_standard_deviation_and_w2_is_glorot_uniform(sigma):
    torch.manual_seed(0)
    model = TwoLayerMLP(MLPConfig(in_features=784, hidden_units=1024, n_classes=10, init_std=sigma))
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    assert w1.shape == (1024, 784) and w2.shape == (10, 1024)
    assert model.fc1.bias is None and model.fc2.bias is None
    # 802,816 draws: the sample std is within 0.3% of sigma (its relative s.e. is 0.08%)
    assert float(w1.std()) == pytest.approx(sigma, rel=3e-3)
    assert abs(float(w1.mean())) < 4 * sigma / math.sqrt(w1.numel())
    bound = math.sqrt(6 / (1024 + 10))
    assert float(w2.abs().max()) <= bound
    assert float(w2.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)  # std of U(-a, a) is a / sqrt(3)


def test_hidden_layer_is_the_activation_of_w1_x():
    torch.manual_seed(0)
    model = TwoLayerMLP(MLPConfig(in_features=12, hidden_units=32, n_classes=3, activation="sin", init_std=2.0))
    x = torch.randn(5, 3, 4)  # any shape: flattened to 12
    seen = {}
    model.hidden.register_forward_hook(lambda m, args, out: seen.setdefault("hidden", out))
    z = model(x)
    expected = torch.sin(x.flatten(1) @ model.fc1.weight.T)
    assert torch.allclose(seen["hidden"], expected, atol=1e-6)
    assert torch.allclose(z, expected @ model.fc2.weight.T, atol=1e-5)
    assert model.id_layers == ["hidden"] and model.llid_layer == "hidden"


def test_sin_features_decorrelate_as_theorem_1_predicts():
    """For w ~ N(0, σ² I): E[sin(w·x) sin(w·x')] = (exp(-σ²|x-x'|²/2) - exp(-σ²|x+x'|²/2)) / 2, within the bound
    exp(-σ²|x-x'|²/2) of the paper's Theorem 1: the features of two nearby inputs decorrelate as σ grows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, generator=g, dtype=torch.float64) * 0.2
    x2 = x + 0.05 * torch.randn(20, generator=g, dtype=torch.float64)  # |x - x'| ≈ 0.2, |x + x'| ≈ 1.8
    empirical = []
    for sigma in (3.0, 6.0, 12.0):
        torch.manual_seed(1)
        model = TwoLayerMLP(MLPConfig(in_features=20, hidden_units=200_000, n_classes=2, init_std=sigma)).double()
        with torch.no_grad():
            h = model.hidden(model.fc1(torch.stack([x, x2])))
        empirical.append(float(h[0] @ h[1]) / h.shape[1])
        bound = math.exp(-sigma**2 * float((x - x2).square().sum()) / 2)
        exact = 0.5 * (bound - math.exp(-sigma**2 * float((x + x2).square().sum()) / 2))
        assert empirical[-1] == pytest.approx(exact, abs=5 / math.sqrt(h.shape[1]))  # Monte-Carlo error ~0.002
        assert abs(empirical[-1]) <= bound / 2 + 5 / math.sqrt(h.shape[1])
    assert empirical[0] > 0.3 > empirical[1] > 0.1 > empirical[2]  # exact: 0.37, 0.15, 0.004


def test_bad_model_settings_are_refused():
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPConfig(activation="tanh")
    with pytest.raises(ValueError, match="standard deviation of W1"):
        MLPConfig(init_std=0)


# --- losses ------------------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
LABELS = torch.tensor([2, 2])


def test_losses_against_hand_computed_values():
    # hinge, example 1 (y = 2, z_y = 0): max(0, 3) + max(0, 2) + max(0, 1) - 1 = 5;
    # example 2 (z_y = 3): max(0, -1.5) + max(0, -1.5) + 1 - 1 = 0
    assert hinge(LOGITS, LABELS, reduction="none").tolist() == [5.0, 0.0]
    # squared: ((2-0)² + (1-0)² + (0-1)²) / 3 = 2; ((0.5)² + (0.5)² + (3-1)²) / 3 = 4.5 / 3
    assert squared(LOGITS, LABELS, reduction="none").tolist() == pytest.approx([2.0, 1.5])
    # cross-entropy: log(e² + e + 1) - 0 and log(2 e^0.5 + e³) - 3
    ce = [math.log(math.e**2 + math.e + 1), math.log(2 * math.exp(0.5) + math.exp(3)) - 3]
    assert get_loss("cross_entropy")(LOGITS, LABELS, reduction="none").tolist() == pytest.approx(ce)
    assert float(hinge(LOGITS, LABELS)) == 2.5 and float(squared(LOGITS, LABELS, reduction="sum")) == pytest.approx(3.5)


def test_hinge_is_zero_only_with_a_margin_of_one():
    assert float(hinge(torch.tensor([[3.0, 2.0]]), torch.tensor([0]))) == 0.0  # margin exactly 1
    assert float(hinge(torch.tensor([[3.0, 2.5]]), torch.tensor([0]))) == 0.5


def test_loss_errors_name_the_choices():
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss("l1")
    with pytest.raises(ValueError, match="reduction must be"):
        hinge(LOGITS, LABELS, reduction="avg")


# --- inputs ------------------------------------------------------------------------------------------


def test_per_image_standardization():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=g) * 5 + 3
    z = standardize_per_image(x)
    assert z.shape == (4, 784)
    assert torch.allclose(z.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(1, unbiased=False), torch.ones(4), atol=1e-5)
    assert torch.equal(standardize_per_image(torch.full((1, 10), 7.0)), torch.zeros(1, 10))  # no 0/0


def test_cifar_vectors_through_torchvision_files(tmp_path):
    write_fake_cifar(str(tmp_path), "cifar10", n_train=60, n_test=20)
    data = load_vectors("cifar10", str(tmp_path), verify=False, standardize=True)
    assert data.train_x.shape == (60, 3072) and data.val_x.shape == (20, 3072) and data.n_classes == 10
    assert torch.allclose(data.train_x.mean(1), torch.zeros(60), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="cifar100 files not found"):
        load_vectors("cifar100", str(tmp_path))


# --- class-balanced probe ----------------------------------------------------------------------------


def test_per_class_probe_is_balanced_fixed_and_recorded_only_when_set():
    labels = torch.arange(10).repeat_interleave(torch.arange(10) + 5)  # class c has 5 + c examples
    probe = Probe(split="train", per_class=4, seed=3)
    index = probe.index(labels)
    assert torch.equal(torch.bincount(labels[index]), torch.full((10,), 4))
    assert torch.equal(index, probe.index(labels)) and torch.equal(index, index.sort().values)
    assert not torch.equal(index, Probe(split="train", per_class=4, seed=4).index(labels))
    with pytest.raises(ValueError, match="class 0 has only 5 examples"):
        Probe(split="train", per_class=6, seed=0).index(labels)
    # runs made before per_class existed keep their config (and so are not rerun)
    assert resolve_probes({"val": {"split": "val"}}) == {"val": {"split": "val", "max_points": 0, "seed": 2}}
    assert resolve_probes({"p": {"split": "train", "per_class": 4}})["p"]["per_class"] == 4
    assert build_probes({"p": {"split": "train", "per_class": 4}})["p"].per_class == 4


# --- relative gradient norm --------------------------------------------------------------------------


def test_relative_gradient_norm_equals_the_full_batch_gradient():
    torch.manual_seed(0)
    model = TwoLayerMLP(MLPConfig(in_features=6, hidden_units=16, n_classes=3, init_std=0.5)).double()
    x, y = torch.randn(50, 6, dtype=torch.float64), torch.randint(3, (50,))
    ratios = relative_gradient_norms(model, x, y, F.cross_entropy, chunk_size=7)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [model.fc1.weight, model.fc2.weight])
    assert ratios["fc1.weight"] == pytest.approx(float(grads[0].norm() / model.fc1.weight.detach().norm()), rel=1e-10)
    assert ratios["fc2.weight"] == pytest.approx(float(grads[1].norm() / model.fc2.weight.detach().norm()), rel=1e-10)
    assert model.fc1.weight.grad is None


def test_memorization_summary_and_rank_correlation():
    import pandas as pd

    from actid.analysis.memorization import memorization_summary
    from actid.analysis.stats import spearman
    run = pd.DataFrame({"step": [8, 0, 4], "train_acc": [1.0, 0.1, 0.6], "val_acc": [0.3, 0.1, 0.5],
                        "gradient_alignment/fc1.weight": [0.1, 0.4, 0.1], "llid": [20.0, 9.0, float("nan")],
                        "representation_alignment/hidden": [0.2, 0.5, 0.3]})
    summary = memorization_summary(run)
    assert (summary["final_train_acc"], summary["final_val_acc"], summary["best_val_acc"]) == (1.0, 0.3, 0.5)
    assert summary["mean_gradient_alignment_W1"] == pytest.approx(0.2)  # the mean over all evaluations
    assert summary["final_llid"] == 20.0 and summary["final_representation_alignment_train"] == 0.2
    assert math.isnan(summary["mean_gradient_alignment_W2"])  # not recorded
    rho, p, n = spearman([0.001, 0.1, 1, 10], [0.9, 0.8, 0.1, 0.05])  # monotone, not linear
    assert rho == pytest.approx(-1) and n == 4


# --- experiment --------------------------------------------------------------------------------------


def test_resolve_writes_out_the_reference_recipe_and_refuses_bad_keys():
    config = resolve({"init_std": 10.0})
    assert {k: config[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size")} == \
        {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256}
    assert config["probes"]["train"] == {"split": "train", "max_points": 0, "per_class": 100, "seed": 2}
    assert set(config["measures"]) == set(REFERENCE["measures"])
    with pytest.raises(KeyError, match="derived from epochs"):
        resolve({"steps": 10})
    with pytest.raises(KeyError, match="unknown config key"):
        resolve({"init_scale": 1.0})
    with pytest.raises(ValueError, match="loss must be one of"):
        resolve({"loss": "mse"})
    with pytest.raises(ValueError, match="init_std must be a number > 0"):
        resolve({"init_std": -1})
    with pytest.raises(ValueError, match="train_images=105"):
        resolve({"train_images": 105})


def test_build_turns_epochs_into_steps_on_784_d_digits():
    task, cfg = build({"train_images": 300, "epochs": 3, "hidden_units": 32, "device": "cpu"})
    assert task.train_x.shape == (300, 784) and cfg.steps == 3 * 2  # batch 256: 2 steps per epoch
    assert task.flush_denormal and task.model.fc1.weight.shape == (32, 784)


def test_one_epoch_sweep_writes_every_measure(tmp_path):
    params = {"profile": "tiny", "memorization": {"tiny": {
        "fixed": {"train_images": 200, "epochs": 1, "hidden_units": 32, "eval_log_points": 2,
                  "probes": {"train": {"split": "train", "per_class": 5}, "val": {"split": "val"}}},
        "grid": {"activation": ["sin", "relu"], "init_std": [0.01, 10.0]}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "runs"
    sweep_main(["memorization", "--params", str(tmp_path / "params.yaml"), "--out", str(out), "--set", "device=cpu"])
    runs = load_runs(out)
    assert runs["run"].nunique() == 4 and runs["finished"].all()
    assert sorted(runs["step"].unique()) == [0, 1]  # 200 digits, batch 256: one step
    for column in ("train_acc", "val_acc", "gradient_alignment/fc1.weight", "gradient_alignment/fc2.weight",
                   "gradient_alignment/logits", "representation_alignment/hidden",
                   "representation_alignment_val/hidden", "relative_gradient_norm/fc1.weight", "llid"):
        assert runs[column].notna().all(), column
    config = Run(out / "activation=sin,init_std=10.0").config
    assert config["init_std"] == 10.0 and config["dataset"] == "mnist5k"


@pytest.mark.slow
def test_figure_notebook_under_papermill(tmp_path, run_notebook):
    params = {"profile": "tiny", "memorization": {"tiny": {
        "fixed": {"train_images": 500, "epochs": 4, "hidden_units": 256, "eval_log_points": 4,
                  "probes": {"train": {"split": "train", "per_class": 20}, "val": {"split": "val"}}},
        "grid": {"activation": ["sin", "relu"], "init_std": [0.01, 0.1, 1.0, 10.0]}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sweep_main(["memorization", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "runs"),
                "--set", "device=cpu"])
    result = run_notebook("fig_memorization", tmp_path / "out.ipynb", runs_dir=tmp_path / "runs",
                          out_dir=tmp_path / "fig")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    for stem in ("accuracy_vs_scale", "alignment_over_training", "accuracy_vs_alignment", "id_and_alignment_vs_scale"):
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 10_000
        assert (tmp_path / "fig" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    assert metrics["n_runs"] == 8 and len(metrics["claims"]) == 6
    runs = metrics["runs"]
    top = runs["activation=sin,init_std=10.0"]
    memorizes = next(c for c in metrics["claims"] if "largest σ memorizes" in c["claim"])
    if top["final_train_acc"] >= 0.99:  # the evidence: |validation accuracy - chance| of the seed, against 0.1
        assert memorizes["evidence"]["estimate"] == pytest.approx(abs(top["final_val_acc"] - 0.1))
        assert memorizes["evidence"]["threshold"] == 0.1 and memorizes["rule"] == "mehta_2a_memorizes"
    else:
        assert memorizes["evidence"]["untestable"]
    assert {c["profile"] for c in metrics["claims"]} == {"tiny"}


def test_params_profiles_resolve_to_the_reference_recipe():
    from actid.pipeline.grid import resolve_grid
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for profile, dataset, n_runs in [("paper", "cifar10", 14), ("default", "mnist5k", 21)]:
        _, configs = resolve_grid("memorization", params, profile)  # as the sweep resolves them
        assert len(configs) == n_runs and {c["dataset"] for c in configs} == {dataset}
        assert {c["activation"] for c in configs} == {"sin", "relu"}
        assert sorted({c["init_std"] for c in configs}) == [0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0]
        assert all(c["optimizer"] == "sgd" and c["lr"] == 0.01 and c["momentum"] == 0 and c["batch_size"] == 256
                   and c["weight_decay"] == 0 and c["loss"] == "cross_entropy" and not c["amp"] for c in configs)
