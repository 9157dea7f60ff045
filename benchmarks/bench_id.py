"""Benchmark: actid TwoNN vs scikit-dimension TwoNN, same data, same estimate.

Data: a 10-d linear subspace of R^D with small noise (true ID 10). Prints, per (n, D), the time of
one actid fit (median of --repeats calls after a warm-up, data already on the device), the time of
the paper's 20 x 90% resampling protocol, the time of scikit-dimension (one call, float64, CPU), the
two estimates and the speed-up. Usage::

    python benchmarks/bench_id.py                       # CPU, the issue's grid
    python benchmarks/bench_id.py --device cuda --no-skdim --n 20000 100000
    python benchmarks/bench_id.py --device cuda --no-skdim --torchid --n 20000 100000 --D 512 4096

``--torchid`` adds torchid's TwoNN (PyPI ``torchid``, a GPU port of scikit-dimension; it declares Python >= 3.13 but
is pure Python: ``pip install --ignore-requires-python torchid``, plus ``faiss-cpu`` for its CPU path) on the same
tensor, its estimate and actid's speed-up over it. On data without duplicate points both follow
scikit-dimension's fit, so the estimates should agree to 0.5% (torchid clamps r1 where actid drops duplicates).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from actid import TwoNN


def subspace(n: int, D: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g) @ torch.randn(10, D, generator=g) + 0.01 * torch.randn(n, D, generator=g)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--D", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-skdim", action="store_true", help="skip scikit-dimension (it takes minutes at n=20000)")
    parser.add_argument("--torchid", action="store_true", help="add torchid's TwoNN on the same tensor")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# actid TwoNN vs scikit-dimension TwoNN on {name}; torch {torch.__version__}")
    header = "| n | D | actid (s) | actid 20x90% (s) | skdim (s) | actid ID | skdim ID | speed-up |"
    print(header)
    print("|---" * 8 + "|")
    for n in args.n:
        for D in args.D:
            X = subspace(n, D).to(device)
            t_one, est = timed(lambda: TwoNN().fit(X), device, args.repeats)
            t_res, _ = timed(lambda: TwoNN(n_resamples=20).fit(X), device, max(1, args.repeats // 3))
            row = f"| {n} | {D} | {t_one:.4f} | {t_res:.4f} |"
            if args.torchid:
                import torchid  # benchmark-only peer

                t_ti, ref_ti = timed(lambda: torchid.TwoNN().fit(X), device, args.repeats)
                diff = 100 * (ref_ti.dimension_ / est.dimension_ - 1)
                row += (f" torchid {t_ti:.4f} s, ID {ref_ti.dimension_:.4f} ({diff:+.2f}%), "
                        f"actid {t_ti / t_one:.1f}x faster |")
            if args.no_skdim:
                print(row + f" - | {est.dimension_:.4f} | - | - |", flush=True)
                continue
            import skdim  # test/benchmark dependency only

            Xn = X.cpu().double().numpy()
            start = time.perf_counter()
            ref = skdim.id.TwoNN().fit(Xn).dimension_
            t_sk = time.perf_counter() - start
            print(row + f" {t_sk:.2f} | {est.dimension_:.4f} | {ref:.4f} | {t_sk / t_one:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
