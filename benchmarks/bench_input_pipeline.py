"""Epoch time of CIFAR ResNet-18 training with two input pipelines, on random CIFAR-shaped data.

(a) device: the whole data set as a normalised tensor on the device, batches gathered by index and
    augmented there with ``DeviceAugment`` (our pipeline);
(b) dataloader: the official code's way, a Dataset of uint8 images through PIL and torchvision
    transforms (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader.

Both train with SGD at batch 128 for one epoch of ``--n`` images after a few warm-up steps; times are
extrapolated to CIFAR's 50,000 training images. The augmentation / loading alone is timed too.
CPU-sized defaults (width 8, n 512) run in well under a minute; on a GPU try
``--width 64 --n 50000 --workers 8 --amp``.

    python benchmarks/bench_input_pipeline.py [--device cuda] [--width 64] [--n 50000] [--amp]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from actid.data.images import CIFAR_STATS, DeviceAugment
from actid.models.resnet import ResNet18

MEAN, STD = CIFAR_STATS["cifar10"]


class UInt8Images(Dataset):
    """(N, 32, 32, 3) uint8 images served as PIL images through ``transform``, as torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_batches(x, y, batch_size, augment, generator):
    """Shuffled, augmented batches of the on-device tensors."""
    order = torch.randperm(len(x), generator=generator, device=x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield augment(x[idx], generator), y[idx]


def loader_batches(loader, device):
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_epoch(model, opt, batches, args, device, max_steps=None) -> int:
    """Run SGD over ``batches``; return the number of images seen."""
    seen = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        if args.amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    sync(device)
    return seen


def input_only(batches, device) -> int:
    """Draw every batch without training; return the number of images."""
    n = sum(len(x) for x, _ in batches)
    sync(device)
    return n


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--n", type=int, default=512, help="training images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps per pipeline")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per pipeline (the best is reported)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (meant for CUDA)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std).to(device)
    y = torch.from_numpy(labels).to(device)
    augment = DeviceAugment(crop_padding=4, flip=True, fill=tuple((-mean / std).flatten().tolist()))
    g = torch.Generator(device=device).manual_seed(args.seed)

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = DataLoader(UInt8Images(images, labels, tf), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)

    model = ResNet18(10, width=args.width).to(device)
    if args.amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    pipelines = {
        "device + DeviceAugment": lambda: device_batches(x, y, args.batch, augment, g),
        f"DataLoader (workers={args.workers})": lambda: loader_batches(loader, device),
    }
    for batches in pipelines.values():  # warm up every pipeline first, so neither pays for the first kernels
        input_only(batches(), device)  # also starts the DataLoader's (persistent) workers
        train_epoch(model, opt, batches(), args, device, max_steps=args.warmup)
    rows = []
    for name, batches in pipelines.items():
        n_in, t_in = timed(lambda: input_only(batches(), device))
        # best of `--repeats` epochs: the first epoch of a pipeline can pay for cuDNN autotuning of the
        # last, smaller batch's shapes (the warm-up only sees full batches), which once made whichever
        # pipeline ran first look 2x slower on an H100
        t_tr = min(timed(lambda: train_epoch(model, opt, batches(), args, device))[1] for _ in range(args.repeats))
        rows.append((name, n_in / t_in, args.n / t_tr))

    print(f"device={device} width={args.width} n={args.n} batch={args.batch} amp={args.amp} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'pipeline':<26} {'input-only img/s':>16} {'train img/s':>12} {'epoch@50k (s)':>14} {'ratio':>6}")
    base = rows[0][2]
    for name, in_rate, tr_rate in rows:
        print(f"{name:<26} {in_rate:>16.0f} {tr_rate:>12.1f} {50_000 / tr_rate:>14.1f} {base / tr_rate:>6.2f}")
    print("ratio = epoch time / device pipeline's epoch time")


if __name__ == "__main__":
    main()
