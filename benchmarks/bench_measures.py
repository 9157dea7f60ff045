"""Benchmark: the cost of one evaluation with every cheap measure, against TwoNN alone and training.

For the default profiles of the grokking and regularization experiments (their first grid point),
it times on the same model and data:

* ``train interval``: the training between two evaluations (``eval_every`` steps), from the step time
  of actid's loop (median of 3 runs of the step loop, evaluations excluded);
* ``eval: loss/acc``: one evaluation with no measure (loss and accuracy on every split);
* ``eval: + TwoNN``: with the ID measure of the profile (the paper's TwoNN, 20 x 90%);
* ``eval: + all cheap``: with the ID measure and every cheap measure (participation ratio, sparsity,
  representation alignment, gradient alignment, local circuit complexity, weight entropy, norms);

and prints medians over ``--repeats`` evaluations and the target ratio
``(all cheap - TwoNN) / train interval`` (target <= 10%).

    python benchmarks/bench_measures.py [--device cuda] [--repeats 5] [--experiments grokking regularization]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time

import torch
import yaml

from actid.measures import build_measures, build_probes
from actid.paths import ROOT
from actid.sweep import sweep_points
from actid.train import TrainConfig, evaluate, probe_sets, train

LAST = {"grokking": "blocks.1.mlp", "regularization": "avg_pool"}  # LLID layers
HEAD = {"grokking": "head", "regularization": "fc"}  # the classifier, for circuit complexity


def cheap_measures(experiment: str, id_measure: dict) -> dict:
    """The ID measure of the profile plus every cheap measure, with the conventions of their papers."""
    return {
        "id": id_measure,
        "participation_ratio": {},
        "sparsity": {"threshold": 0.1},
        "representation_alignment": {"layers": [LAST[experiment]]},
        "gradient_alignment": {"probe": "grad"},
        "circuit_complexity": {"layers": [HEAD[experiment]], "probe": "grad"},
        "weight_entropy": {},
        "weight_norm": {},
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_seconds(module, config: dict, repeats: int) -> float:
    """Seconds per training step, evaluations excluded: (run of 2 units - run of 1 unit) / steps per unit,
    median of ``repeats``; a unit is 30 steps, or one epoch where lengths are set in epochs."""
    in_epochs = "epochs" in config

    def run(units: int) -> tuple[float, int]:
        length = {"epochs": units, "eval_every_epochs": 10**6} if in_epochs else {"steps": 30 * units,
                                                                                   "eval_every": 10**9}
        task, cfg = module.build({**config, **length, "measures": {}})
        with tempfile.TemporaryDirectory() as d:
            sync(task.train_x.device)
            start = time.perf_counter()
            train(task, cfg, d, progress=False)
            sync(task.train_x.device)
            return time.perf_counter() - start, cfg.steps

    def once() -> float:
        (one, n1), (two, n2) = run(1), run(2)
        return (two - one) / (n2 - n1)

    return statistics.median(once() for _ in range(repeats))


def bench(experiment: str, device: str, repeats: int) -> dict:
    module = importlib.import_module(f"actid.experiments.{experiment}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fixed, points = sweep_points(params, experiment, "default")
    config = module.resolve({**fixed, **points[0], "device": device})
    task, cfg = module.build(config)
    dev = task.train_x.device
    steps_per_epoch = -(-len(task.train_x) // cfg.batch_size)
    interval = cfg.eval_every if not cfg.eval_log_points else cfg.steps / cfg.eval_log_points
    probes = {**config["probes"], "grad": {"split": "val", "max_points": 256}}

    def timer(measures: dict) -> float:
        c = TrainConfig(**{**{k: v for k, v in vars(cfg).items() if k not in ("measures", "probes")},
                           "measures": measures, "probes": probes})
        ms, ps = build_measures(c.measures, c.seed), probe_sets(task, build_probes(c.probes, c.seed))
        return median_seconds(lambda: evaluate(task, c, ms, ps, cfg.steps, 0, True), repeats, dev)

    step = step_seconds(module, {**config}, 3)
    row = {"experiment": experiment, "device": str(dev), "threads": torch.get_num_threads(),
           "step_s": step, "epoch_s": step * steps_per_epoch, "interval_steps": interval,
           "interval_s": step * interval, "eval_plain_s": timer({}),
           "eval_twonn_s": timer({"id": config["measures"]["id"]}),
           "eval_all_s": timer(cheap_measures(experiment, config["measures"]["id"]))}
    for name, spec in cheap_measures(experiment, config["measures"]["id"]).items():
        if name != "id":
            row[f"only_{name}_s"] = timer({name: spec}) - row["eval_plain_s"]
    row["extra_over_interval"] = (row["eval_all_s"] - row["eval_twonn_s"]) / row["interval_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--experiments", nargs="+", default=["grokking", "regularization"])
    args = parser.parse_args()
    for experiment in args.experiments:
        r = bench(experiment, args.device, args.repeats)
        print(f"\n{experiment} default profile on {r['device']} ({r['threads']} threads), medians of {args.repeats}:")
        print(f"  training step            {r['step_s'] * 1000:9.1f} ms")
        print(f"  training epoch           {r['epoch_s']:9.3f} s")
        print(f"  train interval           {r['interval_s']:9.3f} s   ({r['interval_steps']:g} steps between evaluations)")
        print(f"  eval: loss/acc only      {r['eval_plain_s']:9.3f} s")
        print(f"  eval: + TwoNN            {r['eval_twonn_s']:9.3f} s")
        print(f"  eval: + all cheap        {r['eval_all_s']:9.3f} s")
        for key, value in r.items():
            if key.startswith("only_"):
                print(f"    {key[5:-2]:<24}{value:+9.3f} s")
        print(f"  (all cheap - TwoNN) / train interval = {100 * r['extra_over_interval']:.1f}%  (target <= 10%)")


if __name__ == "__main__":
    main()
