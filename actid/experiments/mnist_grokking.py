"""Grokking on real data (Golechha 2024, on Omnigrok's MNIST set-up) with every progress measure and the ID.

Omnigrok's MLP (:mod:`actid.models.scaled_mlp`) with every parameter scaled by α = 8 fits 1,000 training digits
at once and generalizes thousands of steps later, trained as in Golechha's Table 1: squared loss against
one-hot targets (torch's ``MSELoss``: the mean over classes and examples), AdamW lr 1e-3 (default betas), batch
200 or 1,000. Three variants, by config key:

* **baseline** (decreasing weight norm): ``norm_reward: 0``, ``dropout: 0``;
* **increasing norm**: the training loss minus δ Σ w² over all parameters (``norm_reward`` = δ, weight decay still
  on), so the weight norm grows while the model groks (Golechha: δ = 2e-10 at weight decay 0.01; keep
  δ / weight decay = 2e-8);
* **dropout** p after each hidden layer (``dropout: 0.3``): the delay is reported to vanish.

Tracked at each evaluation (log-spaced, dense early; :func:`default_measures`): loss and accuracy on both splits;
the L2 norm of every parameter and of all of them; activation sparsity of each hidden layer on the training
inputs, with a fixed threshold and relative to the layer's median |activation|; weight entropy of every weight
matrix and their sum; local circuit complexity of every linear layer on the training inputs (fixed masks); and
the TwoNN ID of both hidden layers on the validation inputs (LLID: the last hidden layer, PID).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid.config import check_fields, check_keys, flag, flat_config, integer, one_of, param, pick, real, text
from actid.data.images import VECTOR_NAMES, check_subset_size, download_missing, load_vectors, train_subset
from actid.experiments.base import Experiment
from actid.losses import LOSSES, get_loss
from actid.models.scaled_mlp import ScaledMLP, ScaledMLPConfig
from actid.paths import resolve as resolve_path
from actid.task import Task
from actid.train import TrainConfig, resolve_device

PROBES = {"train": {"split": "train"}, "val": {"split": "val"}}


def default_measures(depth: int = 3) -> dict:
    """Golechha's progress measures, the weight norms and the ID, for an MLP with ``depth`` linear layers."""
    return {
        "weight_norm": {},
        "sparsity": {"threshold": 0.1, "probe": "train"},
        "relative_sparsity": {"ratio": 0.1, "probe": "train"},
        "weight_entropy": {},
        "circuit_complexity": {"layers": [f"fc{i}" for i in range(1, depth + 1)], "probe": "train"},
        "id": {"probe": "val", "also": ["mle", "gride"]},  # MLE and GRIDE from TwoNN's neighbour search
    }


# Golechha's Table 1 (TrainConfig keys); any of them can be overridden in params.yaml
REFERENCE = dict(optimizer="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, batch_size=1000, steps=100_000,
                 eval_log_points=100, probes=PROBES)


@dataclass
class MnistGrokkingSetup:
    """Data and model of one run (the optimizer and length keys live in TrainConfig)."""

    dataset: str = param("mnist5k", one_of(*VECTOR_NAMES[:2]))  # or mnist (torchvision's on-disk layout under data_dir)
    data_dir: str = param("data", text())  # relative to the repository root
    download: bool = param(False, flag())
    train_images: int = param(1000, integer(1))  # a fixed class-balanced subset of the training split
    # likewise of the validation (test) split; None: all of it
    val_images: int | None = param(None, integer(1, optional=True))
    width: int = param(200, integer(1))
    depth: int = param(3, integer(2))
    init_scale: float = param(8.0, real(0, low_open=True))  # α
    dropout: float = param(0.0, real(0, 1, high_open=True))
    norm_reward: float = param(0.0, real(0))  # δ: the training loss is L - δ Σ w² (0: the baseline)
    loss: str = param("squared", one_of(*LOSSES))  # actid.losses: squared = torch's MSELoss against one-hot targets

    def __post_init__(self):
        check_fields(self)


def resolve(config: dict) -> dict:
    """Every key a run uses: the dataclass defaults, then :data:`REFERENCE` and the default measures, then
    ``config``."""
    check_keys(config, MnistGrokkingSetup, TrainConfig)
    merged = {**REFERENCE, "measures": default_measures(config.get("depth", MnistGrokkingSetup.depth)), **config}
    setup, train_cfg = pick(MnistGrokkingSetup, merged), pick(TrainConfig, merged)  # validates values
    ScaledMLPConfig(width=setup.width, depth=setup.depth, init_scale=setup.init_scale, dropout=setup.dropout)
    get_loss(setup.loss)
    if setup.dataset not in VECTOR_NAMES[:2]:
        raise ValueError(f"dataset must be one of {VECTOR_NAMES[:2]}, got {setup.dataset!r}")
    check_subset_size("train_images", setup.train_images, 10)
    check_subset_size("val_images", setup.val_images, 10)
    if setup.norm_reward < 0:
        raise ValueError(f"norm_reward is δ >= 0 in the loss L - δ Σ w² (0: off), got {setup.norm_reward!r}")
    return flat_config(setup, train_cfg)


def prepare(configs: list[dict]) -> None:
    """Download MNIST once, if runs need it and lack it, before the sweep starts parallel shards."""
    download_missing(configs, resolve_path)


def weight_norm_reward(delta: float):
    """The penalty -δ Σ w² over every parameter: minimizing it rewards a larger weight norm."""
    def penalty(model: torch.nn.Module) -> torch.Tensor:
        return -delta * sum(p.square().sum() for p in model.parameters())
    return penalty


def build(config: dict) -> tuple[Task, TrainConfig]:
    """Task and TrainConfig for one run of a config (see :func:`resolve`)."""
    config = resolve(config)
    setup = pick(MnistGrokkingSetup, config)
    train_cfg = pick(TrainConfig, config)
    device = resolve_device(train_cfg.device)
    data = load_vectors(setup.dataset, str(resolve_path(setup.data_dir)), download=setup.download, device=device)
    data = train_subset(data, setup.train_images)
    if setup.val_images is not None:
        data = train_subset(data, setup.val_images, split="val")
    torch.manual_seed(train_cfg.seed)  # model initialisation
    model = ScaledMLP(ScaledMLPConfig(in_features=data.train_x.shape[1], width=setup.width, depth=setup.depth,
                                          n_classes=data.n_classes, init_scale=setup.init_scale,
                                          dropout=setup.dropout)).to(device)
    task = Task(model=model, train_x=data.train_x, train_y=data.train_y,
                eval_sets={"train": (data.train_x, data.train_y), "val": (data.val_x, data.val_y)},
                id_layers=model.id_layers, llid_layer=model.llid_layer, loss_fn=get_loss(setup.loss),
                penalty=weight_norm_reward(setup.norm_reward) if setup.norm_reward else None)
    return task, train_cfg


EXPERIMENT = Experiment("mnist_grokking", resolve, build, prepare=prepare)
