"""Regularization vs ID (Brown et al. 2022, Figs. A-C): ResNet-18 on images, swept over weight decay and dropout.

A run's config is flat. ``recipe`` names one of :data:`RECIPES`, the official training recipes
(SGD lr 0.1, momentum 0.9, batch 128, 200 epochs; CIFAR-100: multistep x0.2 at epochs 60/120/160 and
rotation 15; CIFAR-10: cosine, no rotation); :func:`resolve` writes every value of the recipe into the
config, so ``config.json`` states the whole recipe and any key can still be overridden (the official
``cifar10_id`` config, for instance, is CIFAR-10 data under the CIFAR-100 schedule and rotation: pitfall P4
in ``docs/reproduction.md``; the normalization constants follow ``dataset``, so that override keeps
CIFAR-10's where the official config used CIFAR-100's).

Lengths are in epochs (``epochs``, ``eval_every_epochs``, ``milestone_epochs``); :func:`build` turns
them into optimizer steps from the training-set size. By default the IDs of the six layers are measured on the
whole validation split at every evaluation (TrainConfig's default probe and measure).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from actid.config import (check_fields, check_keys, flag, flat_config, integer, one_of, param, pick, real,
                          refuse_derived, sequence, steps_per_epoch, text)
from actid.data.images import NAMES, DeviceAugment, download_missing, load_image_dataset, train_subset
from actid.experiments.base import Experiment
from actid.models.resnet import ResNet18
from actid.paths import resolve as resolve_path
from actid.task import Task
from actid.train import TrainConfig, resolve_device

_OFFICIAL = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, weight_decay=5e-4, epochs=200,
                 crop_padding=4, flip=True)
RECIPES = {
    "cifar100": dict(_OFFICIAL, dataset="cifar100", schedule="multistep", milestone_epochs=[60, 120, 160],
                     gamma=0.2, rotate_degrees=15.0),
    "cifar10": dict(_OFFICIAL, dataset="cifar10", schedule="cosine", milestone_epochs=[], rotate_degrees=0.0),
    # the offline digits: the CIFAR-10 recipe without flips (a flipped digit is another symbol)
    "mnist5k": dict(_OFFICIAL, dataset="mnist5k", schedule="cosine", milestone_epochs=[], rotate_degrees=0.0,
                    flip=False),
}
DERIVED = {"steps", "eval_every", "milestones", "eval_log_points"}  # set from the epoch keys by build()


@dataclass
class ImageSetup:
    """Data, model and epoch-based lengths of one run (the optimizer keys live in TrainConfig)."""

    recipe: str = param("cifar100", one_of(*RECIPES))
    dataset: str = param("cifar100", one_of(*NAMES))
    data_dir: str = param("data", text())  # relative to the repository root
    download: bool = param(False, flag())
    verify_md5: bool = param(True, flag())  # torchvision's checksum of the CIFAR files (False for generated test files)
    # a fixed class-balanced subset of the training split (None: all of it)
    train_images: int | None = param(None, integer(1, optional=True))
    width: int = param(64, integer(1))
    dropout: float = param(0.0, real(0, 1, high_open=True))
    epochs: int = param(200, integer(1))
    eval_every_epochs: int = param(1, integer(1))
    milestone_epochs: tuple[int, ...] = param((), sequence(integer(0)))
    crop_padding: int = param(4, integer(0))
    flip: bool = param(True, flag())
    rotate_degrees: float = param(0.0, real(0, 180))
    eval_train: bool = param(True, flag())  # also report loss/accuracy on the (unaugmented) training split

    def __post_init__(self):
        check_fields(self)


def _train_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name not in DERIVED]


def resolve(config: dict) -> dict:
    """Every key a run uses: ImageSetup/TrainConfig defaults, then the recipe, then ``config``."""
    refuse_derived(config, DERIVED, "epochs, eval_every_epochs or milestone_epochs")
    check_keys(config, ImageSetup, set(_train_keys()))
    recipe = config.get("recipe", ImageSetup.recipe)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    merged = {**RECIPES[recipe], **config}  # the dataclasses supply the remaining defaults
    setup, train_cfg = pick(ImageSetup, merged), pick(TrainConfig, merged)  # validates values
    return flat_config(setup, train_cfg, drop=DERIVED)


def prepare(configs: list[dict]) -> None:
    """Download the CIFAR sets these runs need and lack, once, before the sweep starts parallel shards."""
    download_missing(configs, resolve_path)


def build(config: dict) -> tuple[Task, TrainConfig]:
    """Task and TrainConfig for one run of a resolved config (see :func:`resolve`)."""
    config = resolve(config)
    setup = pick(ImageSetup, config)
    device = resolve_device(config["device"])
    data = load_image_dataset(setup.dataset, str(resolve_path(setup.data_dir)), download=setup.download,
                              device=device, verify=setup.verify_md5)
    if setup.train_images is not None:
        data = train_subset(data, setup.train_images)
    train_cfg = pick(TrainConfig, config)
    epoch = steps_per_epoch(len(data.train_y), train_cfg.batch_size)
    train_cfg = replace(train_cfg, steps=setup.epochs * epoch, eval_every=setup.eval_every_epochs * epoch,
                        milestones=tuple(e * epoch for e in setup.milestone_epochs))
    torch.manual_seed(train_cfg.seed)  # model initialisation
    model = ResNet18(data.n_classes, width=setup.width, in_channels=data.in_channels, dropout=setup.dropout).to(device)
    eval_sets = {"val": (data.val_x, data.val_y)}
    if setup.eval_train:
        eval_sets = {"train": (data.train_x, data.train_y), **eval_sets}
    augment = DeviceAugment(crop_padding=setup.crop_padding, flip=setup.flip, rotate_degrees=setup.rotate_degrees,
                            fill=data.fill)
    task = Task(model=model, train_x=data.train_x, train_y=data.train_y, eval_sets=eval_sets,
                id_layers=model.id_layers, llid_layer=model.llid_layer, augment=augment,
                channels_last=device.type == "cuda")
    return task, train_cfg


EXPERIMENT = Experiment("regularization", resolve, build, prepare=prepare)
