"""The geometry of memorization (Stephenson et al., ICLR 2021): permuted labels, class manifolds by layer, rewinding.

A fraction ε of the training labels is permuted (:mod:`actid.data.permuted`; fixed ``permutation_seed``) and a model
is trained long enough to fit the permuted examples too. ``model`` picks it:

* ``mlp`` (default): 784-512-512-10 (:class:`actid.models.scaled_mlp.ScaledMLP` at α = 1: PyTorch's default
  init) on flat digits (``mnist5k`` offline, or torchvision's ``mnist``), Adam (actid's default betas 0.9/0.98);
  measured layers ``relu1``, ``relu2`` and the logits ``fc3``;
* ``vgg16``: torchvision's VGG-16 (:mod:`actid.models.vgg`, the paper's workhorse) on images (``cifar100``,
  ``cifar10`` or the padded ``mnist5k`` digits), with optional crop/flip/rotation augmentation; measured layers the
  block outputs ``pool1``-``pool5`` and the classifier's ``fc1``, ``fc2``, ``fc3``.

At log-spaced steps (``eval_log_points``; dense in the first epoch), with a snapshot of the weights at each:

* accuracy on the whole training set (training labels), on its ``unpermuted`` part (true labels), on its
  ``permuted`` part (the labels trained on: memorization) and on the validation split (for mnist5k: the 1,000
  held-out digits);
* the MFTMA geometry (capacity, radius, dimension, center correlation; :mod:`actid.measures.geometry`) of each
  measured layer for the three kinds of class manifolds: ``unpermuted``, ``permuted`` (grouped by training label)
  and ``restored`` (the same examples by true label), each on fixed ``manifold_points`` examples per class; columns
  ``<kind>.capacity/<layer>`` and so on;
* the TwoNN ID of the model's ID layers on the validation split (``id/<layer>``, ``llid``, ``pid``).

**Rewinding** (:func:`rewinding_grid`, from a finished run's snapshots): the final model with the weight layers from
the l-th on (and, for contrast, the first layers only) replaced by their values at an earlier evaluation, BatchNorm
statistics included, and its test accuracy. It is computed once the run has finished (:func:`finish`), into the run's
``rewinding.csv``, so the figure notebook only reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from actid.config import (check_fields, check_keys, flag, flat_config, integer, one_of, param, pick, real,
                          refuse_derived, steps_per_epoch, text)
from actid.data.images import NAMES as IMAGE_NAMES
from actid.data.images import (VECTOR_NAMES, DeviceAugment, check_subset_size, download_missing, load_image_dataset,
                               load_vectors, train_subset)
from actid.data.permuted import manifold_samples, permute_labels
from actid.experiments.base import Experiment
from actid.io import atomic_write_text
from actid.models.scaled_mlp import ScaledMLP, ScaledMLPConfig
from actid.models.vgg import BLOCKS, VGG16, VGGConfig
from actid.paths import resolve as resolve_path
from actid.runs import Run
from actid.task import Task
from actid.train import TrainConfig, resolve_device

KINDS = ("unpermuted", "permuted", "restored")
"""The three kinds of class manifolds; each is a probe (whole split) and a measure of that name."""
MODELS = {"mlp": {"datasets": VECTOR_NAMES[:2], "width": 512}, "vgg16": {"datasets": IMAGE_NAMES, "width": 64}}
"""The models, the data sets each takes and the width each gets when ``width`` is None."""


def default_measures(layers: list[str]) -> dict:
    """TwoNN ID of the hidden layers on the validation split, and the geometry of ``layers`` for each kind."""
    measures = {"id": {"probe": "val", "estimator": "twonn", "also": ["mle", "gride"]}}
    for kind in KINDS:
        measures[kind] = {"kind": "manifold_geometry", "probe": f"manifolds_{kind}", "layers": list(layers),
                          "every": 1}
    return measures


def default_probes() -> dict:
    return {"val": {"split": "val", "max_points": 0},
            **{f"manifolds_{kind}": {"split": f"manifolds_{kind}", "max_points": 0} for kind in KINDS}}


REFERENCE = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, eval_log_points=12, snapshot_every=1,
                 probes=default_probes())
DERIVED = {"steps"}  # set from epochs by build()


@dataclass
class GeometrySetup:
    """Data, label permutation, model and length of one run (the optimizer keys live in TrainConfig)."""

    # mlp: mnist5k or mnist (torchvision's files); vgg16: cifar100, cifar10 or mnist5k
    dataset: str = param("mnist5k", one_of(*dict.fromkeys(IMAGE_NAMES + VECTOR_NAMES[:2])))
    data_dir: str = param("data", text())
    download: bool = param(False, flag())
    verify_md5: bool = param(True, flag())  # torchvision's checksum of the CIFAR files (False for generated test files)
    # a fixed class-balanced subset of the training split (None: all of it)
    train_images: int | None = param(2000, integer(1, optional=True))
    # ε: the fraction of training labels shuffled
    permuted_fraction: float = param(0.5, real(0, 1, low_open=True, high_open=True))
    permutation_seed: int = param(0, integer(0))  # fixed across seeds and ε, so runs differ only in what they vary
    manifold_points: int = param(20, integer(2))  # examples per class in each kind of class manifold
    model: str = param("mlp", one_of(*MODELS))  # or vgg16
    # mlp: hidden units; vgg16: channels of the first block (None: MODELS' width)
    width: int | None = param(None, integer(1, optional=True))
    depth: int = param(3, integer(2))  # mlp: linear layers
    hidden: int = param(4096, integer(1))  # vgg16: units of fc1 and fc2
    batch_norm: bool = param(False, flag())  # vgg16: a BatchNorm after every conv (torchvision's vgg16_bn)
    crop_padding: int = param(0, integer(0))  # vgg16 augmentation: random crops of the image padded by this many pixels
    flip: bool = param(False, flag())  # vgg16 augmentation: random horizontal flips
    rotate_degrees: float = param(0.0, real(0, 180))  # vgg16 augmentation: random rotations within ± this
    epochs: int = param(60, integer(1))

    def __post_init__(self):
        check_fields(self)


def measured_layers(setup: GeometrySetup) -> list[str]:
    """The layers whose class-manifold geometry is measured: every hidden layer's output and the logits."""
    if setup.model == "vgg16":
        return [f"pool{b}" for b in range(1, len(BLOCKS) + 1)] + ["fc1", "fc2", "fc3"]
    return [f"relu{i}" for i in range(1, setup.depth)] + [f"fc{setup.depth}"]


def resolve(config: dict) -> dict:
    """Every key a run uses: the dataclass defaults, then :data:`REFERENCE` and the default measures, then
    ``config``."""
    refuse_derived(config, DERIVED, "epochs (and eval_log_points)")
    check_keys(config, GeometrySetup, {f for f in TrainConfig.__dataclass_fields__} - DERIVED)
    setup = pick(GeometrySetup, config)  # validates values
    if setup.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {setup.model!r}")
    if setup.dataset not in MODELS[setup.model]["datasets"]:
        raise ValueError(f"dataset {setup.dataset!r} does not fit model {setup.model!r}; "
                         f"choose one of {MODELS[setup.model]['datasets']}")
    if setup.crop_padding < 0 or setup.rotate_degrees < 0:
        raise ValueError(f"crop_padding and rotate_degrees must be >= 0, got {setup.crop_padding!r}, "
                         f"{setup.rotate_degrees!r}")
    augments = setup.crop_padding or setup.flip or setup.rotate_degrees
    if setup.model == "mlp" and augments:
        raise ValueError("crop_padding, flip and rotate_degrees augment images: set them with model: vgg16 only")
    width = MODELS[setup.model]["width"] if setup.width is None else setup.width
    merged = {**REFERENCE, "measures": default_measures(measured_layers(setup)), **config, "width": width}
    setup, train_cfg = pick(GeometrySetup, merged), pick(TrainConfig, merged)
    if setup.model == "mlp":
        ScaledMLPConfig(width=setup.width, depth=setup.depth, init_scale=1.0)
    else:
        VGGConfig(width=setup.width, hidden=setup.hidden)
    check_subset_size("train_images", setup.train_images, 100 if setup.dataset == "cifar100" else 10)
    if not 0 < setup.permuted_fraction < 1:
        raise ValueError(f"permuted_fraction must be in (0, 1) (the manifolds need permuted and unpermuted "
                         f"examples), got {setup.permuted_fraction!r}")
    if setup.manifold_points < 2:
        raise ValueError(f"manifold_points must be >= 2, got {setup.manifold_points!r}")
    return flat_config(setup, train_cfg, drop=DERIVED)


def prepare(configs: list[dict]) -> None:
    """Download MNIST once, if runs need it and lack it, before the sweep starts parallel shards."""
    download_missing(configs, resolve_path)


def load_data(setup: GeometrySetup, device):
    """The run's data: flat vectors for the MLP, normalised images for VGG-16; the class-balanced subset if asked."""
    if setup.model == "mlp":
        data = load_vectors(setup.dataset, str(resolve_path(setup.data_dir)), download=setup.download, device=device)
    else:
        data = load_image_dataset(setup.dataset, str(resolve_path(setup.data_dir)), download=setup.download,
                                  device=device, verify=setup.verify_md5)
    return data if setup.train_images is None else train_subset(data, setup.train_images)


def make_model(setup: GeometrySetup, data) -> torch.nn.Module:
    if setup.model == "mlp":
        return ScaledMLP(ScaledMLPConfig(in_features=data.train_x.shape[1], width=setup.width, depth=setup.depth,
                                             n_classes=data.n_classes, init_scale=1.0))
    return VGG16(VGGConfig(n_classes=data.n_classes, in_channels=data.in_channels, width=setup.width,
                           hidden=setup.hidden, batch_norm=setup.batch_norm))


def build(config: dict) -> tuple[Task, TrainConfig]:
    """Task and TrainConfig for one run of a config (see :func:`resolve`)."""
    config = resolve(config)
    setup = pick(GeometrySetup, config)
    device = resolve_device(config["device"])
    data = load_data(setup, device)
    labels = permute_labels(data.train_y.cpu(), setup.permuted_fraction, setup.permutation_seed)
    samples = manifold_samples(labels, setup.manifold_points, setup.permutation_seed)
    train_y, true_y = labels.train.to(device), labels.true.to(device)
    clean, wrong = (~labels.permuted).to(device), labels.permuted.to(device)
    x = data.train_x
    eval_sets = {
        "train": (x, train_y),
        "unpermuted": (x[clean], true_y[clean]),
        "permuted": (x[wrong], train_y[wrong]),
        "val": (data.val_x, data.val_y),
        "manifolds_unpermuted": (x[samples.unpermuted], true_y[samples.unpermuted]),
        "manifolds_permuted": (x[samples.permuted], train_y[samples.permuted]),
        "manifolds_restored": (x[samples.permuted], true_y[samples.permuted]),
    }
    epoch = steps_per_epoch(len(train_y), config["batch_size"])
    train_cfg = pick(TrainConfig, {**config, "steps": setup.epochs * epoch})
    torch.manual_seed(train_cfg.seed)  # model initialisation
    model = make_model(setup, data).to(device)
    augment = None
    if setup.crop_padding or setup.flip or setup.rotate_degrees:
        augment = DeviceAugment(crop_padding=setup.crop_padding, flip=setup.flip,
                                rotate_degrees=setup.rotate_degrees, fill=data.fill)
    task = Task(model=model, train_x=x, train_y=train_y, eval_sets=eval_sets, id_layers=model.id_layers,
                llid_layer=model.llid_layer, augment=augment)
    return task, train_cfg


def weight_layers(model: torch.nn.Module) -> list[str]:
    """The model's top-level modules that hold weights, in forward order (the MLP's ``fc1``, ``fc2``, ...; VGG-16's
    ``conv1``-``conv13``, ``fc1``-``fc3``): the units of rewinding. Both models register them in forward order."""
    return [name for name, module in model.named_children() if any(True for _ in module.parameters())]


def rewound(final: dict, early: dict, rewind: list[str]) -> dict:
    """The state dict ``final`` with every tensor of the layers in ``rewind`` taken from ``early`` (weights, biases,
    and any buffers such as BatchNorm statistics under those module names)."""
    return {key: (early[key] if key.split(".")[0] in rewind else value) for key, value in final.items()}


def rewind_sets(layers: list[str]) -> list[list[str]]:
    """The layer sets rewound: every suffix (the l-th layer and after: the paper's grid) and every proper prefix (up
    to the l-th: rewinding the first layers only)."""
    suffixes = [layers[i:] for i in range(len(layers))]
    prefixes = [layers[:i] for i in range(1, len(layers))]
    return suffixes + prefixes


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Accuracy in eval mode, in batches of ``batch`` as the training loop evaluates (so it matches its numbers)."""
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch]).float().argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    model.train(was)
    return correct / len(y)


def rewinding_grid(run: Run, task: Task, eval_batch_size: int) -> pd.DataFrame:
    """Test accuracy of the final model with a set of layers rewound to each snapshot, for every suffix and prefix
    of the weight layers (:func:`rewind_sets`) and every snapshot: rows ``step``, ``first_layer``, ``last_layer``
    (the rewound range), ``val_acc``. ``task`` is the run's rebuilt task."""
    steps = run.snapshot_steps()
    if not steps:
        raise FileNotFoundError(f"{run.path} has no snapshots; rewinding needs snapshot_every >= 1")
    final = run.load_snapshot(steps[-1])
    layers = weight_layers(task.model)
    x, y = task.eval_sets["val"]
    rows = []
    for step in steps:
        early = run.load_snapshot(step)
        for rewind in rewind_sets(layers):
            task.model.load_state_dict(rewound(final, early, rewind))
            rows.append({"step": step, "first_layer": rewind[0], "last_layer": rewind[-1],
                         "val_acc": accuracy(task.model, x, y, eval_batch_size)})
    task.model.load_state_dict(final)
    return pd.DataFrame(rows)


REWINDING = "rewinding.csv"
"""The rewinding grid of a finished run (:func:`rewinding_grid`; header only when it kept no snapshots)."""


def finish(run: Run, config: dict) -> None:
    """After training: the run's rewinding grid (from its weight snapshots, on its rebuilt data and model) into
    ``rewinding.csv``."""
    if run.snapshot_steps():
        task, train_cfg = build(config)  # on the device the run trained on ("auto": a GPU if there is one)
        grid = rewinding_grid(run, task, train_cfg.eval_batch_size)
    else:
        grid = pd.DataFrame(columns=["step", "first_layer", "last_layer", "val_acc"])
    atomic_write_text(run.path / REWINDING, grid.to_csv(index=False))


EXPERIMENT = Experiment("geometry", resolve, build, prepare=prepare, finish=finish, products=(REWINDING,))
