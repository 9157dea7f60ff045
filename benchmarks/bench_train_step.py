"""Benchmark: ms per training step of the grokking transformer (batch 512), naive loop vs actid's loop.

naive: a torch DataLoader over the training equations (shuffle, batch 512) feeding the model with
       every position computed, fp32, as a straightforward port of the official code would.
actid: actid.train.train: data as device tensors indexed per batch, last-position training path,
       optionally bf16 autocast (--amp).
Evaluation is excluded from both (it happens every 100-500 steps).

    python benchmarks/bench_train_step.py [--device cuda] [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.nn import functional as F

from actid.experiments.grokking import build
from actid.train import train


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def naive_ms(config: dict, steps: int) -> float:
    task, cfg = build(config)
    device = task.train_x.device
    model = task.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    dataset = torch.utils.data.TensorDataset(task.train_x.cpu(), task.train_y.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    done, start = -10, None  # 10 warm-up steps
    while done < steps:
        for x, y in loader:
            if done == 0:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x, all_positions=True), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


def actid_ms(config: dict, steps: int) -> float:
    """(time of a run of 10 + steps steps - time of a run of 10 steps) / steps: start-up and the
    evaluations at the first and last step cancel out."""
    def run_seconds(n: int, directory: str) -> float:
        task, train_cfg = build({**config, "steps": n, "eval_every": 10**9, "measures": {}})
        sync(task.train_x.device)
        start = time.perf_counter()
        train(task, train_cfg, directory, progress=False)
        sync(task.train_x.device)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        run_seconds(10, f"{tmp}/warm-up")
        short = run_seconds(10, f"{tmp}/short")
        long = run_seconds(10 + steps, f"{tmp}/long")
    return (long - short) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    config = {"train_fraction": 0.3, "batch_size": 512, "weight_decay": 1e-3, "device": args.device}
    naive = naive_ms(config, args.steps)
    fp32 = actid_ms(config, args.steps)
    amp = actid_ms({**config, "amp": True}, args.steps)
    print(f"# grokking transformer, batch 512, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("| loop | ms/step | speed-up vs naive |\n|---|---|---|")
    for name, ms in [("naive DataLoader, all positions, fp32", naive), ("actid, fp32", fp32),
                     ("actid, bf16 autocast", amp)]:
        print(f"| {name} | {ms:.2f} | {naive / ms:.2f}x |")


if __name__ == "__main__":
    main()
