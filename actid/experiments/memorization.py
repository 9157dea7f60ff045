"""Extreme memorization via the scale of initialization (Mehta, Cutkosky & Neyshabur 2021), with the ID lens.

A two-layer network z = W2 φ(W1 x) (:mod:`actid.models.mlp`) on flat, per-image standardized images, trained as
the reference code does: plain SGD (lr 0.01, no momentum, no weight decay), batch 256, softmax cross-entropy.
Sweeping the standard deviation σ (``init_std``) of W1 moves a sin network from generalizing to memorizing.

At each evaluation (``eval_log_points`` log-spaced steps) a run records, besides loss and accuracy on the
training and validation splits (:data:`MEASURES`):

* ``gradient_alignment/{fc1.weight,fc2.weight,logits}``: in-class alignment Ω of per-example gradients
  (W1, W2 and the logits) on a fixed class-balanced probe of the training split (``train``);
* ``representation_alignment/hidden`` on that probe and ``representation_alignment_val/hidden`` on the
  validation split: in-class Ω of the hidden features φ(W1 x);
* ``relative_gradient_norm/fc1.weight`` (and ``fc2.weight``): ‖∇L‖/‖W‖ on the training probe;
* ``id/hidden`` (= ``llid``): the TwoNN ID of the hidden features on the validation split, at every other
  evaluation and the last (it costs more than all the other measures together).

Lengths are in epochs (``epochs``); :func:`build` turns them into steps from the training-set size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from actid.config import (check_fields, check_keys, flag, flat_config, integer, one_of, param, pick, real,
                          refuse_derived, steps_per_epoch, text)
from actid.data.images import VECTOR_NAMES, check_subset_size, download_missing, load_vectors, train_subset
from actid.experiments.base import Experiment
from actid.losses import LOSSES, get_loss
from actid.models.mlp import ACTIVATIONS, MLPConfig, TwoLayerMLP
from actid.paths import resolve as resolve_path
from actid.task import Task
from actid.train import TrainConfig, resolve_device

PROBES = {"train": {"split": "train", "per_class": 100}, "val": {"split": "val", "max_points": 0}}
MEASURES = {
    "gradient_alignment": {"probe": "train"},
    "representation_alignment": {"probe": "train"},
    "representation_alignment_val": {"kind": "representation_alignment", "probe": "val"},
    "relative_gradient_norm": {"probe": "train"},
    "id": {"probe": "val", "estimator": "twonn", "every": 2,  # the costliest measure: every other evaluation
           "also": ["mle", "gride"]},  # MLE and GRIDE from TwoNN's neighbour search
}
# the reference code's training set-up (TrainConfig keys); any of them can be overridden in params.yaml
REFERENCE = dict(optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=256, eval_log_points=20,
                 probes=PROBES, measures=MEASURES)
DERIVED = {"steps", "eval_every", "milestones"}  # set from epochs by build()


@dataclass
class MemorizationSetup:
    """Data, model and length of one run (the optimizer keys live in TrainConfig)."""

    # or mnist / cifar10 / cifar100 (torchvision's on-disk layout under data_dir)
    dataset: str = param("mnist5k", one_of(*VECTOR_NAMES))
    data_dir: str = param("data", text())  # relative to the repository root
    download: bool = param(False, flag())
    verify_md5: bool = param(True, flag())
    # a fixed class-balanced subset of the training split (None: all of it)
    train_images: int | None = param(None, integer(1, optional=True))
    activation: str = param("sin", one_of(*ACTIVATIONS))
    init_std: float = param(0.1, real(0, low_open=True))  # σ: the standard deviation of W1's Gaussian init
    hidden_units: int = param(1024, integer(1))
    loss: str = param("cross_entropy", one_of(*LOSSES))  # cross_entropy, hinge or squared (actid.losses)
    epochs: int = param(100, integer(1))

    def __post_init__(self):
        check_fields(self)


def resolve(config: dict) -> dict:
    """Every key a run uses: the dataclass defaults, then :data:`REFERENCE`, then ``config``."""
    refuse_derived(config, DERIVED, "epochs (and eval_log_points)")
    check_keys(config, MemorizationSetup, {f.name for f in fields(TrainConfig)} - DERIVED)
    merged = {**REFERENCE, **config}
    setup, train_cfg = pick(MemorizationSetup, merged), pick(TrainConfig, merged)  # validates values
    MLPConfig(activation=setup.activation, init_std=setup.init_std)  # validates the model keys
    check_subset_size("train_images", setup.train_images, 100 if setup.dataset == "cifar100" else 10)
    if setup.dataset not in VECTOR_NAMES:
        raise ValueError(f"dataset must be one of {VECTOR_NAMES}, got {setup.dataset!r}")
    get_loss(setup.loss)
    return flat_config(setup, train_cfg, drop=DERIVED)


def prepare(configs: list[dict]) -> None:
    """Download the CIFAR sets these runs need and lack, once, before the sweep starts parallel shards."""
    download_missing(configs, resolve_path)


def build(config: dict) -> tuple[Task, TrainConfig]:
    """Task and TrainConfig for one run of a config (see :func:`resolve`)."""
    config = resolve(config)
    setup = pick(MemorizationSetup, config)
    device = resolve_device(config["device"])
    data = load_vectors(setup.dataset, str(resolve_path(setup.data_dir)), download=setup.download, device=device,
                        verify=setup.verify_md5, standardize=True)
    if setup.train_images is not None:
        data = train_subset(data, setup.train_images)
    train_cfg = pick(TrainConfig, config)
    train_cfg = replace(train_cfg, steps=setup.epochs * steps_per_epoch(len(data.train_y), train_cfg.batch_size))
    torch.manual_seed(train_cfg.seed)  # model initialisation
    model = TwoLayerMLP(MLPConfig(in_features=data.train_x.shape[1], hidden_units=setup.hidden_units,
                                  n_classes=data.n_classes, activation=setup.activation,
                                  init_std=setup.init_std)).to(device)
    task = Task(model=model, train_x=data.train_x, train_y=data.train_y,
                eval_sets={"train": (data.train_x, data.train_y), "val": (data.val_x, data.val_y)},
                id_layers=model.id_layers, llid_layer=model.llid_layer, loss_fn=get_loss(setup.loss),
                flush_denormal=True)  # saturated ReLU runs at large σ are ~4x slower with subnormals
    return task, train_cfg


EXPERIMENT = Experiment("memorization", resolve, build, prepare=prepare)
