"""Time the default profile's training stages, as `dvc repro` runs them.

    python benchmarks/bench_stages.py [grokking regularization memorization] [--avx2] [--jobs 2]

Each stage's command (``python -m actid.sweep <experiment> --jobs 2``) runs into a temporary folder
(``runs/`` is not touched), then the script prints the stage's wall time, each run's training time
(from its ``done.json``) and the machine's CPU kernels. ``--avx2`` sets ``ATEN_CPU_CAPABILITY=avx2``,
so an AVX-512 machine uses the AVX2 kernels that most laptops and AMD servers run. The README's
stage budgets (grokking <= 6 min, regularization <= 6 min, memorization <= 3 min on 2 AVX2 cores) are checked
against this.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=["grokking", "regularization", "memorization"])
    parser.add_argument("--avx2", action="store_true", help="use PyTorch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)")
    parser.add_argument("--jobs", type=int, default=2, help="as in dvc.yaml")
    parser.add_argument("--profile", default="default")
    args = parser.parse_args()
    env = {**os.environ, **({"ATEN_CPU_CAPABILITY": "avx2"} if args.avx2 else {})}
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=env, capture_output=True, text=True, check=True).stdout.strip()
    print(f"CPU kernels: {capability}; {os.cpu_count()} cores; --jobs {args.jobs}; profile {args.profile}")
    for experiment in args.experiments:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "actid.sweep", experiment, "--profile", args.profile,
                                   "--jobs", str(args.jobs), "--out", tmp], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode:
                raise SystemExit(f"{experiment} failed:\n{done.stderr[-3000:]}")
            wall = time.perf_counter() - start
            runs = {d.name: json.loads((d / "done.json").read_text())["train_seconds"]
                    for d in sorted(Path(tmp).iterdir()) if (d / "done.json").exists()}
        print(f"\n{experiment}: stage {wall / 60:.1f} min for {len(runs)} runs "
              f"(median run {statistics.median(runs.values()):.0f} s, sum {sum(runs.values()) / 60:.1f} min)")
        for name, seconds in runs.items():
            print(f"  {name:40s} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
