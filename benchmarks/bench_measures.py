"""Benchmark: the cost of one evaluation with every cheap measure, against TwoNN alone and training.

For the default profiles of the grokking and regularization experiments (their first grid point),
it times on the same model and data:

* ``train interval``: the training between two evaluations (``eval_every`` steps), from the step time
  of actid's loop (median of 3 runs of the step loop, evaluations excluded);
* ``eval: loss/acc``: one evaluation with no measure (loss and accuracy on every split);
* ``eval: + TwoNN``: with the ID measure of the profile (the paper's TwoNN, 20 x 90%);
* ``eval: + all cheap``: with the ID measure and every cheap measure (participation ratio, sparsity,
  representation alignment, gradient alignment, local circuit complexity, weight entropy, norms);

and prints medians over ``--repeats`` evaluations, run round-robin so that a noisy spell of a shared
machine hits every configuration alike, and the target ratio ``(all cheap - TwoNN) / train interval``
(target <= 10%), where the difference is the median of the paired differences.

    python benchmarks/bench_measures.py [--device cuda] [--repeats 9] [--experiments grokking regularization]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time

import torch
import yaml

from actid.evaluation import evaluate, probe_sets
from actid.measures import build_measures, build_probes
from actid.paths import ROOT
from actid.pipeline.grid import resolve_point, sweep_points
from actid.train import TrainConfig, train

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


def interleaved_seconds(fns: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, the calls interleaved round-robin ``repeats`` times after a warm-up, so
    a slow spell of a shared machine hits every configuration alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


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
    config = resolve_point(module.EXPERIMENT, {**fixed, **points[0], "device": device})  # lenses included
    task, cfg = module.build(config)
    dev = task.train_x.device
    steps_per_epoch = -(-len(task.train_x) // cfg.batch_size)
    interval = cfg.eval_every if not cfg.eval_log_points else cfg.steps / cfg.eval_log_points
    probes = {**config["probes"], "grad": {"split": "val", "max_points": 256}}

    def evaluation(measures: dict):
        c = TrainConfig(**{**{k: v for k, v in vars(cfg).items() if k not in ("measures", "probes")},
                           "measures": measures, "probes": probes})
        ms, ps = build_measures(c.measures, c.seed), probe_sets(task, build_probes(c.probes, c.seed))
        return lambda: evaluate(task, ms, ps, cfg.steps, 0, True, c.eval_batch_size)

    cheap = cheap_measures(experiment, config["measures"]["id"])
    configs = {"plain": {}, "twonn": {"id": cheap["id"]}, "all": cheap,
               **{f"only_{name}": {name: spec} for name, spec in cheap.items() if name != "id"}}
    times = interleaved_seconds({name: evaluation(m) for name, m in configs.items()}, repeats, dev)
    median = {name: statistics.median(t) for name, t in times.items()}
    paired = lambda a, b: statistics.median(x - y for x, y in zip(times[a], times[b]))  # noqa: E731
    step = step_seconds(module, {**config}, 3)
    row = {"experiment": experiment, "device": str(dev), "threads": torch.get_num_threads(),
           "step_s": step, "epoch_s": step * steps_per_epoch, "interval_steps": interval,
           "interval_s": step * interval, "eval_plain_s": median["plain"], "eval_twonn_s": median["twonn"],
           "eval_all_s": median["all"], "extra_s": paired("all", "twonn"),
           **{f"{name}_s": paired(name, "plain") for name in configs if name.startswith("only_")}}
    row["extra_over_interval"] = row["extra_s"] / row["interval_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--experiments", nargs="+", default=["grokking", "regularization"])
    args = parser.parse_args()
    for experiment in args.experiments:
        r = bench(experiment, args.device, args.repeats)
        print(f"\n{experiment} default profile on {r['device']} ({r['threads']} threads), medians of {args.repeats}:")
        print(f"  training step            {r['step_s'] * 1000:9.1f} ms")
        print(f"  training epoch           {r['epoch_s']:9.3f} s")
        print(f"  train interval           {r['interval_s']:9.3f} s   "
              f"({r['interval_steps']:g} steps between evaluations)")
        print(f"  eval: loss/acc only      {r['eval_plain_s']:9.3f} s")
        print(f"  eval: + TwoNN            {r['eval_twonn_s']:9.3f} s")
        print(f"  eval: + all cheap        {r['eval_all_s']:9.3f} s   (paired median over TwoNN alone: "
              f"{r['extra_s']:+.3f} s)")
        for key, value in r.items():
            if key.startswith("only_"):
                print(f"    {key[5:-2]:<24}{value:+9.3f} s")
        print(f"  (all cheap - TwoNN) / train interval = {100 * r['extra_over_interval']:.1f}%  (target <= 10%)")
        print("  (each measure alone: paired median over the evaluation without measures)")


if __name__ == "__main__":
    main()
