"""Benchmark: a grokking grid trained as separate runs vs as one batched model (actid.batched), same machine.

Runs the sweep command twice on a short version of a profile's grid (``--steps`` steps, evaluated at the first
and last step with the profile's measures), into fresh temporary folders:

    separate: python -m actid.sweep grokking --batch-runs off --jobs J   (J processes, as before batching)
    batched:  python -m actid.sweep grokking --batch-runs on  --jobs 1   (every run of the grid in one model)

and prints the wall time of each (median of ``--repeats``), seconds per 1,000 steps per run, their ratio, and how
far the batched runs' last rows are from the separate runs' (float rounding; on a GPU also TF32/bf16).

    python benchmarks/bench_batched.py                                   # CPU: default profile, 4 runs, jobs 2
    python benchmarks/bench_batched.py --profile paper --device cuda --jobs 16 --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from actid.pipeline.grid import sweep_points
from actid.runs import load_runs


def sweep_seconds(args, mode: str, jobs: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "actid.sweep", "grokking", "--params", str(args.params), "--profile", args.profile,
           "--out", str(out), "--jobs", str(jobs), "--batch-runs", mode,
           "--set", f"steps={args.steps}", f"eval_every={args.steps}", f"device={args.device}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2, help="processes of the separate sweep")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n_runs = len(sweep_points(yaml.safe_load(args.params.read_text()), "grokking", args.profile)[1])
    times: dict[str, list[float]] = {"separate": [], "batched": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # alternate, so drift of a shared machine hits both alike
            times["separate"].append(sweep_seconds(args, "off", args.jobs, Path(tmp) / f"separate{r}"))
            times["batched"].append(sweep_seconds(args, "on", 1, Path(tmp) / f"batched{r}"))
        separate, batched = load_runs(Path(tmp) / "separate0"), load_runs(Path(tmp) / "batched0")
    last = lambda df: df[df["step"] == args.steps].set_index("run").sort_index()  # noqa: E731
    a, b = last(separate), last(batched)
    columns = [c for c in ("train_loss", "val_loss", "train_acc", "val_acc", "llid") if c in a]
    print(f"grokking/{args.profile}: {n_runs} runs x {args.steps} steps on {args.device} "
          f"(medians of {args.repeats}; each sweep includes start-up and the evaluations at step 0 and {args.steps})")
    for mode, jobs in (("separate", args.jobs), ("batched", 1)):
        t = statistics.median(times[mode])
        print(f"  {mode:9s} (--jobs {jobs:2d}): {t:7.1f} s  = {t / n_runs / args.steps * 1000:6.2f} s per 1,000 steps "
              f"per run   runs: {[round(x, 1) for x in times[mode]]}")
    print(f"  batched is {statistics.median(times['separate']) / statistics.median(times['batched']):.2f}x faster")
    print("  largest |batched - separate| in the last rows: "
          + ", ".join(f"{c} {(a[c] - b[c]).abs().max():.2e}" for c in columns))


if __name__ == "__main__":
    main()
