"""Regularization sweeps (Figs. A-C): recipes, a real one-epoch run, the sweep grid, the analysis rules and the
notebooks."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from actid.analysis.regularization import final_rows, over_regularization_threshold, regularizer
from actid.analysis.stats import pearson
from actid.data.images import write_fake_cifar
from actid.experiments.regularization import RECIPES, build, prepare, resolve
from actid.paths import ROOT
from actid.pipeline.grid import resolve_grid, sweep_points
from actid.pipeline.local import run_sweep
from actid.runs import Run, load_runs
from actid.train import lr_factor, train

LAYERS = ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "avg_pool"]


def test_recipes_are_written_out_in_the_resolved_config():
    c100, c10 = resolve({"recipe": "cifar100"}), resolve({"recipe": "cifar10"})
    assert (c100["optimizer"], c100["lr"], c100["momentum"], c100["batch_size"], c100["epochs"]) == \
        ("sgd", 0.1, 0.9, 128, 200)
    assert (c100["schedule"], c100["milestone_epochs"], c100["gamma"], c100["rotate_degrees"]) == \
        ("multistep", [60, 120, 160], 0.2, 15.0)
    assert (c10["dataset"], c10["schedule"], c10["rotate_degrees"], c10["flip"]) == ("cifar10", "cosine", 0.0, True)
    # the paper's protocol: TwoNN 20 x 90% on the whole validation split
    assert c100["probes"]["val"]["max_points"] == 0 and c100["measures"]["id"]["options"]["n_resamples"] == 20
    # the official cifar10_id config (pitfall P4, docs/reproduction.md) is an override away, and the override is
    # recorded
    p4 = resolve({"recipe": "cifar100", "dataset": "cifar10"})
    assert p4["dataset"] == "cifar10" and p4["schedule"] == "multistep"
    assert resolve({"recipe": "mnist5k"})["flip"] is False


def test_bad_configs_are_refused_with_the_fix():
    with pytest.raises(KeyError, match="derived from epochs"):
        resolve({"steps": 100})
    with pytest.raises(ValueError, match="unknown recipe 'imagenet'"):
        resolve({"recipe": "imagenet"})
    with pytest.raises(KeyError, match="unknown config key"):
        resolve({"weight_decy": 1e-4})
    with pytest.raises(ValueError, match="weight_decay must be a float"):
        resolve({"weight_decay": "lots"})
    assert resolve({"weight_decay": "1e-6"})["weight_decay"] == 1e-6  # YAML 1.1 reads 1e-6 as a string


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar(str(root), "cifar100", n_train=72, n_test=40, seed=0)
    return root


def tiny(fake_cifar, **kw):
    return {"recipe": "cifar100", "data_dir": str(fake_cifar), "verify_md5": False, "width": 2, "epochs": 2,
            "milestone_epochs": [1], "batch_size": 32, "measures": {"id": {"options": {"n_resamples": 3}}},
            "device": "cpu", **kw}


def test_build_turns_epochs_into_steps(fake_cifar):
    task, cfg = build(tiny(fake_cifar))
    steps_per_epoch = math.ceil(72 / 32)
    assert (cfg.steps, cfg.eval_every, cfg.milestones) == (2 * steps_per_epoch, steps_per_epoch, (steps_per_epoch,))
    assert lr_factor(steps_per_epoch - 1, cfg) == 1 and lr_factor(steps_per_epoch, cfg) == pytest.approx(0.2)
    assert task.id_layers == LAYERS and task.llid_layer == "avg_pool"
    assert task.augment.rotate_degrees == 15.0 and task.augment.flip
    assert task.model.fc.out_features == 100 and len(task.eval_sets["val"][0]) == 40


def test_prepare_uses_present_files_and_names_the_folder_when_offline(fake_cifar, tmp_path):
    prepare([resolve(tiny(fake_cifar, download=True))])  # files present: nothing to fetch
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        # download=False: a missing data set is an error that names the folder to fill
        build(tiny(tmp_path, recipe="cifar10"))


def test_one_epoch_run_writes_a_valid_run(fake_cifar, tmp_path):
    config = resolve(tiny(fake_cifar, epochs=1, weight_decay=5e-4, dropout=0.1))
    Run(tmp_path / "run").write_config(config, {"experiment": "regularization", "profile": "test"})
    task, cfg = build(config)
    metrics = train(task, cfg, tmp_path / "run", progress=False)
    assert list(metrics["step"]) == [0, 3]
    run = load_runs(tmp_path / "run")
    for layer in LAYERS:
        assert run[f"id/{layer}"].between(0.5, 200).all() and (run[f"id_err/{layer}"] >= 0).all()
    assert np.allclose(run["llid"], run["id/avg_pool"])
    assert np.allclose(run["pid"], run[[f"id/{layer}" for layer in LAYERS]].max(axis=1))
    assert run["val_acc"].between(0, 1).all() and run["train_acc"].between(0, 1).all()
    assert run["finished"].all() and (run["weight_decay"] == 5e-4).all() and (run["dataset"] == "cifar100").all()
    assert json.loads((tmp_path / "run" / "done.json").read_text())["final"]["step"] == 3


def test_channels_last_gives_the_same_rows(fake_cifar, tmp_path):
    """The layout CUDA runs use (channels_last) trains and measures the same as NCHW, up to round-off."""
    config = resolve(tiny(fake_cifar, epochs=1, width=4, measures={}))  # dropout draws its masks in memory order
    rows = {}
    for layout in (False, True):
        task, cfg = build(config)
        assert not task.channels_last  # on for CUDA only
        task.channels_last = layout
        rows[layout] = train(task, cfg, tmp_path / str(layout), progress=False)
        assert task.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last) == layout
    pd.testing.assert_frame_equal(rows[False], rows[True], rtol=1e-3)  # 3 SGD steps at lr 0.1 amplify round-off


def test_sweep_joins_grids_and_runs_each_point_once(fake_cifar, tmp_path):
    params = {"regularization": {"tiny": {
        "fixed": tiny(fake_cifar, epochs=1, eval_train=False),
        "grid": [{"weight_decay": [1e-3], "dropout": [0.0]},
                 {"weight_decay": [0.0], "dropout": [0.0, 0.5]},
                 {"weight_decay": [0.0], "dropout": [0.5]}]}}}  # a repeated point runs once
    _, points = sweep_points(params, "regularization", "tiny")
    assert [(p["weight_decay"], p["dropout"]) for p in points] == [(1e-3, 0.0), (0.0, 0.0), (0.0, 0.5)]
    run_sweep("regularization", params, tmp_path, "tiny")
    final = final_rows(load_runs(tmp_path))
    assert sorted(final["regularizer"]) == ["dropout", "dropout", "weight_decay"]
    assert final["finished"].all() and final["pid_over_llid"].gt(0).all()


def test_regularizer_threshold_and_pearson_rules():
    assert [regularizer(1e-4, 0), regularizer(0, 0.3), regularizer(0, 0), regularizer(1e-4, 0.3)] == \
        ["weight_decay", "dropout", "dropout", "both"]
    strength = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8]
    acc = [0.95, 0.96, 0.95, 0.945, 0.90, 0.40]
    assert over_regularization_threshold(strength, acc, tolerance=0.02) == 0.4
    assert over_regularization_threshold(strength, acc, tolerance=0.1) == 0.6
    r, p, n = pearson([1, 2, 3, 4], [8, 6, 4, 2])
    assert r == pytest.approx(-1) and n == 4
    assert np.isnan(pearson([1, 2], [3, 4])[0]) and np.isnan(pearson([1, 1, 1], [1, 2, 3])[0])
    with pytest.raises(ValueError, match="at least one run"):
        over_regularization_threshold([], [])


def write_synthetic_sweep(root):
    """Runs in the real format with known final values: LLID falls linearly with strength, accuracy
    collapses beyond WD 1e-3 / p 0.4 while the PID falls, and accuracy rises with PID/LLID before it."""
    wd = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    p = [0.0, 0.2, 0.4, 0.6, 0.8]
    rows = [(w, 0.0, 10 - 50 * w, 20.0 + i, 0.9 + 0.01 * i) for i, w in enumerate(wd[:3])]
    rows += [(1e-2, 0.0, 9.5, 12.0, 0.6), (1e-1, 0.0, 5.0, 6.0, 0.2)]
    rows += [(0.0, q, 10 - 5 * q, 20.0 + 2 * q, 0.9 + 0.02 * q) for q in p[:3]]
    rows += [(0.0, 0.6, 7.0, 11.0, 0.7), (0.0, 0.8, 6.0, 7.0, 0.3)]
    for w, q, llid, pid, acc in rows:
        config = resolve({"recipe": "mnist5k", "weight_decay": w, "dropout": q})
        run = root / f"weight_decay={w},dropout={q}"
        Run(run).write_config(config, {"experiment": "regularization", "profile": "synthetic"})
        Run(run).finish([{"step": 0, "val_acc": 0.1, "llid": 12.0, "pid": 15.0},
                         {"step": 100, "val_acc": acc, "llid": llid, "pid": pid}], train_seconds=1.0)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("notebook,stem", [("fig_a_llid_vs_strength", "llid_vs_strength"),
                                           ("fig_b_pid_over_llid", "accuracy_vs_pid_over_llid"),
                                           ("fig_c_over_regularization", "pid_vs_strength")])
def test_figure_notebook_under_papermill(tmp_path, notebook, stem, run_notebook):
    rows = write_synthetic_sweep(tmp_path / "runs")
    result = run_notebook(notebook, tmp_path / "out.ipynb", runs_dir=tmp_path / "runs", out_dir=tmp_path / "fig",
                          tolerance=0.05)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((tmp_path / "fig" / f"{stem}.json").read_text())
    table = pd.DataFrame(rows, columns=["weight_decay", "dropout", "llid", "pid", "val_acc"])
    if stem == "llid_vs_strength":
        wd = table[table["weight_decay"] > 0]
        assert metrics["mnist5k/weight_decay"]["r"] == pytest.approx(np.corrcoef(wd["weight_decay"], wd["llid"])[0, 1])
        assert metrics["mnist5k/dropout"]["r"] == pytest.approx(-1.0)  # LLID = 10 - 5 p
        assert metrics["mnist5k/dropout"]["n"] == 5 and metrics["mnist5k/dropout"]["paper_r"] is None
    elif stem == "accuracy_vs_pid_over_llid":
        assert metrics["mnist5k"]["cut"] == {"weight_decay": 1e-3, "dropout": 0.4}
        kept = table[(table["weight_decay"] <= 1e-3) & (table["dropout"] <= 0.4)]
        assert metrics["mnist5k"]["n"] == 6
        assert metrics["mnist5k"]["r"] == pytest.approx(np.corrcoef(kept["pid"] / kept["llid"], kept["val_acc"])[0, 1])
    else:
        assert metrics["mnist5k/weight_decay"]["threshold"] == 1e-3
        assert metrics["mnist5k/dropout"]["threshold"] == 0.4
        assert metrics["mnist5k/dropout"]["n_over_regularized"] == 2
        assert metrics["mnist5k/dropout"]["pid_over_regularized_vs_rest"] == pytest.approx(9.0 / 20.4)


def test_train_images_is_a_fixed_class_balanced_subset():
    digits = {"recipe": "mnist5k", "width": 2, "epochs": 2, "device": "cpu"}
    full, _ = build(digits)
    task, cfg = build({**digits, "train_images": 50})
    assert len(task.train_y) == 50 and torch.bincount(task.train_y, minlength=10).tolist() == [5] * 10
    again, _ = build({**digits, "train_images": 50, "seed": 5})  # the subset does not follow the run seed
    assert torch.equal(task.train_x, again.train_x) and torch.equal(task.eval_sets["val"][1], full.eval_sets["val"][1])
    assert cfg.steps == 2 * math.ceil(50 / 128)
    for bad, reason in ((55, "multiple of the 10 classes"), (0, "train_images must be an integer >= 1")):
        with pytest.raises(ValueError, match=reason):
            build({**digits, "train_images": bad})


def test_default_profile_trains_in_fp32():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for experiment in ("grokking", "regularization"):
        _, configs = resolve_grid(experiment, params, "default")  # as the sweep resolves them
        assert not any(c["amp"] for c in configs), experiment


def test_params_profiles_resolve():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for profile, n_runs in [("paper", 76), ("default", None)]:
        points, configs = resolve_grid("regularization", params, profile)
        assert all(regularizer(c["weight_decay"], c["dropout"]) != "both" for c in configs)
        if n_runs:
            assert len(points) == n_runs
    fixed, points = sweep_points(params, "regularization", "paper")
    wd = sorted({p["weight_decay"] for p in points if p["weight_decay"] > 0})
    assert len(wd) == 21 and wd[0] == 1e-6 and wd[-1] == 1e-2
    assert sorted({p["dropout"] for p in points}) == pytest.approx([round(0.05 * i, 2) for i in range(17)])
    assert set(RECIPES) >= {p["recipe"] for p in points}
