"""Grokking modular division (Brown et al. 2022, Fig. D): data, model and training set-up from a flat config."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actid.config import check_fields, check_keys, flat_config, integer, one_of, param, pick, real
from actid.data.modular import OPERATIONS, is_prime, modular_equations, train_val_split, vocab_size
from actid.experiments.base import Experiment
from actid.models.transformer import Transformer
from actid.task import Task
from actid.train import TrainConfig, resolve_device


@dataclass
class GrokkingData:
    p: int = param(97, integer(2))
    operation: str = param("div", one_of(*OPERATIONS))
    train_fraction: float = param(0.2, real(0, 1, low_open=True, high_open=True))
    split_seed: int = param(9, integer(0))

    def __post_init__(self):
        check_fields(self)
        if self.operation == "div" and not is_prime(self.p):
            raise ValueError(f"division mod {self.p} needs a prime modulus (every b != 0 must be invertible); "
                             "try p = 97")


@dataclass
class GrokkingModel:
    width: int = param(128, integer(1))
    depth: int = param(2, integer(1))
    heads: int = param(4, integer(1))
    mlp_hidden: int = param(512, integer(1))
    dropout: float = param(0.1, real(0, 1, high_open=True))

    def __post_init__(self):
        check_fields(self)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")


def resolve(config: dict) -> dict:
    """Every key a run uses: the defaults of data, model and training, overridden by ``config``."""
    check_keys(config, GrokkingData, GrokkingModel, TrainConfig)
    return flat_config(*(pick(cls, config) for cls in (GrokkingData, GrokkingModel, TrainConfig)))


def batchable(config: dict) -> str | None:
    """Why this run cannot train as one model with others of its shape (:mod:`actid.batched`), or None."""
    if config["optimizer"] not in ("adam", "adamw"):
        return f"batched runs use adam or adamw, not optimizer {config['optimizer']!r}"
    return None


def build(config: dict) -> tuple[Task, TrainConfig]:
    """Task and TrainConfig for one grokking run; ``config`` mixes data, model and training keys."""
    check_keys(config, GrokkingData, GrokkingModel, TrainConfig)
    data, arch, train_cfg = pick(GrokkingData, config), pick(GrokkingModel, config), pick(TrainConfig, config)
    device = resolve_device(train_cfg.device)
    tokens, labels = modular_equations(data.p, data.operation)
    train_idx, val_idx = train_val_split(len(labels), data.train_fraction, data.split_seed)
    tokens, labels = tokens.to(device), labels.to(device)
    torch.manual_seed(train_cfg.seed)  # model initialisation
    model = Transformer(vocab_size(data.p), data.p, width=arch.width, depth=arch.depth, heads=arch.heads,
                        mlp_hidden=arch.mlp_hidden, dropout=arch.dropout, max_len=tokens.shape[1]).to(device)
    task = Task(model=model, train_x=tokens[train_idx], train_y=labels[train_idx],
                eval_sets={"train": (tokens[train_idx], labels[train_idx]), "val": (tokens[val_idx], labels[val_idx])},
                id_layers=model.id_layers, llid_layer=model.llid_layer)
    return task, train_cfg


EXPERIMENT = Experiment("grokking", resolve, build, batchable=batchable)
