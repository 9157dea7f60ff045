"""The experiment protocol (actid.experiments.base.Experiment): adding an experiment is one module with resolve and
build, one registry entry and a params.yaml section; the pipeline then trains it, finishes it and loads it."""

from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from actid.claims import Claims, profile_label
from actid.verdicts import threshold_evidence
from actid.config import check_keys, flat_config, pick, steps_per_epoch
from actid.experiments import (REGISTRY, Experiment, geometry, grokking, memorization, mnist_grokking, register,
                               regularization)
from actid.io import atomic_write_text
from actid.runs import Run, load_runs
from actid.sweep import main as sweep_main
from actid.task import Task
from actid.train import TrainConfig

# --- a toy experiment, written as a new experiment's module would be ----------------------------------------------

@dataclass
class ToySetup:
    n_points: int = 64
    width: int = 8
    epochs: int = 3


def resolve(config: dict) -> dict:
    check_keys(config, ToySetup, TrainConfig)
    merged = {"batch_size": 16, "eval_every": 4, "measures": {"id": {"options": {"n_resamples": 2}}},
              "device": "cpu", **config}
    return flat_config(pick(ToySetup, merged), pick(TrainConfig, merged), drop={"steps"})


def build(config: dict) -> tuple[Task, TrainConfig]:
    config = resolve(config)
    setup = pick(ToySetup, config)
    gen = torch.Generator().manual_seed(config["seed"])
    x = torch.randn(setup.n_points, 5, generator=gen)
    y = (x[:, 0] > 0).long()
    steps = setup.epochs * steps_per_epoch(setup.n_points, config["batch_size"])
    train_cfg = pick(TrainConfig, {**config, "steps": steps})
    torch.manual_seed(train_cfg.seed)
    model = nn.Sequential(nn.Linear(5, setup.width), nn.ReLU(), nn.Linear(setup.width, 2))
    task = Task(model=model, train_x=x, train_y=y, eval_sets={"val": (x, y)}, id_layers=["1"], llid_layer="1")
    return task, train_cfg


def finish(run: Run, config: dict) -> None:
    """A product computed after training from the run's files and its rebuilt task: the best accuracy per example."""
    task, _ = build(config)
    best = run.read_metrics()["val_acc"].max()
    atomic_write_text(run.path / "best.txt", f"{best} of {len(task.train_y)}\n")


TOY = Experiment("toy", resolve, build, finish=finish, products=("best.txt",))


# -------------------------------------------------------------------------------------------------------------------

def test_a_new_experiment_is_one_module_one_registry_entry_and_a_params_section(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", TOY)  # the registry entry (in the repository: one line in experiments/)
    params = {"profile": "tiny", "toy": {"tiny": {"fixed": {"width": 6}, "grid": {"seed": [0, 1]}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["toy", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "runs")]
    sweep_main(argv)

    runs = load_runs(tmp_path / "runs")
    assert sorted(runs["run"].unique()) == ["seed=0", "seed=1"] and runs["finished"].all()
    assert (runs["width"] == 6).all() and {"step", "val_acc", "id/1", "llid", "pid"} <= set(runs.columns)
    assert runs.groupby("run")["step"].max().tolist() == [12, 12]  # 3 epochs of 4 steps
    for name, run in runs.groupby("run"):  # the finish hook ran after training, in the run directory
        assert (tmp_path / "runs" / name / "best.txt").read_text() == f"{run['val_acc'].max()} of 64\n"
    claims = Claims("toy", profile_label(runs))
    claims.add("it learns", "-", f"{runs['val_acc'].max():.2f}", rule="toy",
               evidence=threshold_evidence({0: runs["val_acc"].max()}, 0.5))
    assert claims.rows[0]["profile"] == "tiny" and claims.rows[0]["figure"] == "toy"

    # a finished run is not trained again; one that lacks a product gets it, its rows untouched
    product, metrics = tmp_path / "runs" / "seed=1" / "best.txt", tmp_path / "runs" / "seed=1" / "metrics.csv"
    best, rows = product.read_text(), metrics.read_bytes()
    product.unlink()
    sweep_main(argv)
    assert product.read_text() == best and metrics.read_bytes() == rows


def test_every_experiment_is_registered_under_its_name():
    assert REGISTRY == {m.EXPERIMENT.name: m.EXPERIMENT
                        for m in (geometry, grokking, memorization, mnist_grokking, regularization)}
    assert REGISTRY["grokking"].batchable is not None and REGISTRY["memorization"].batchable is None
    assert REGISTRY["geometry"].products == (geometry.REWINDING,)


def test_a_name_is_registered_once_and_finish_comes_with_its_products(monkeypatch):
    monkeypatch.setattr("actid.experiments.REGISTRY", dict(REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        register(Experiment("grokking", resolve, build))
    with pytest.raises(ValueError, match="give finish and the products"):
        Experiment("toy", resolve, build, finish=finish)


def test_shared_resolve_helpers():
    assert steps_per_epoch(10, 3) == 4 and steps_per_epoch(9, 3) == 3
    flat = flat_config(ToySetup(), TrainConfig(milestones=(3, 5)), drop={"steps"})
    assert list(flat)[:3] == ["n_points", "width", "epochs"] and "steps" not in flat and flat["milestones"] == [3, 5]
    assert pd.Series(flat).index.is_unique
