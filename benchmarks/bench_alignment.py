"""Benchmark: the cost of gradient alignment in the memorization experiment (Mehta et al. 2021).

On the default profile's model and data (784 -> 1024 -> 10, the class-balanced probe of 100 training digits per
class) it times, medians of ``--repeats`` round-robin calls:

* one evaluation with every tracked measure, and the same evaluation without gradient alignment
  (the difference: the median of the paired differences);
* gradient alignment alone by actid's Gram route (per-example gradients of a Linear never formed), against a
  loop with one backward pass per example like the reference TF code (which keeps the per-class sums S, Q, N
  as it goes, so it needs no more memory than ours), and checks both give the same Ω within 1e-5.

    python benchmarks/bench_alignment.py [--device cuda] [--repeats 7] [--activation sin] [--init-std 0.1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import yaml
from bench_measures import interleaved_seconds  # the sibling script (benchmarks/ is on sys.path when run)

from actid.evaluation import evaluate, probe_sets
from actid.experiments import memorization
from actid.measures import build_measures, build_probes, gradient_alignment
from actid.measures.alignment import omega_from_sums
from actid.paths import ROOT
from actid.pipeline.grid import resolve_point, sweep_points
from actid.train import TrainConfig


def per_example_loop(model, inputs, labels, loss_fn) -> dict[str, float]:
    """In-class Ω with one backward pass per example (the reference code's method), for each parameter and the
    logits, accumulating the per-class sums S_c = Σg, Q_c = Σ|g|², N_c = Σ|g| in float64."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keys = [n for n, _ in named] + ["logits"]
    sums: dict = {}
    for x, y in zip(inputs, labels):
        z = model(x[None])
        *grads, dz = torch.autograd.grad(loss_fn(z, y[None]).sum(), [p for _, p in named] + [z])
        for key, g in zip(keys, [*grads, dz]):
            g = g.flatten().double()
            S, Q, N, n = sums.get((key, int(y)), (0, 0.0, 0.0, 0))
            sums[(key, int(y))] = (S + g, Q + float(g @ g), N + float(g.norm()), n + 1)
    result = {}
    for key in keys:
        omegas = [omega_from_sums(float(S @ S), Q, N, n)
                  for (k, _), (S, Q, N, n) in sums.items() if k == key and n >= 2]
        result[key] = sum(omegas) / len(omegas)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--activation", default="sin")
    parser.add_argument("--init-std", type=float, default=0.1)
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fixed, _ = sweep_points(params, "memorization", "default")
    config = resolve_point(memorization.EXPERIMENT, {**fixed, "activation": args.activation,
                                                     "init_std": args.init_std, "device": args.device})
    task, cfg = memorization.build(config)
    device = task.train_x.device
    probes = probe_sets(task, build_probes(cfg.probes, cfg.seed))
    x, y = probes["train"].inputs, probes["train"].labels
    loss = lambda z, t: task.loss_fn(z, t, reduction="none")  # noqa: E731

    def evaluation(measures: dict):
        c = TrainConfig(**{**{k: v for k, v in vars(cfg).items() if k != "measures"}, "measures": measures})
        ms = build_measures(c.measures, c.seed)
        return lambda: evaluate(task, ms, probes, cfg.steps, 0, True, c.eval_batch_size)

    without = {k: v for k, v in cfg.measures.items() if k != "gradient_alignment"}
    alone = {f"only {k}": evaluation({k: v}) for k, v in cfg.measures.items()}
    times = interleaved_seconds({"eval_all": evaluation(cfg.measures), "eval_without": evaluation(without),
                                 "eval_plain": evaluation({}), **alone,
                                 "gram": lambda: gradient_alignment(task.model, x, y, loss),
                                 "loop": lambda: per_example_loop(task.model, x, y, loss)}, args.repeats, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(a - b for a, b in zip(times["eval_all"], times["eval_without"]))

    ours, reference = gradient_alignment(task.model, x, y, loss), per_example_loop(task.model, x, y, loss)
    worst = max(abs(ours[k] - reference[k]) for k in ours)
    print(f"memorization default ({args.activation}, σ = {args.init_std:g}) on {device} "
          f"({torch.get_num_threads()} threads), probe {len(x)} training digits, medians of {args.repeats}:")
    print(f"  evaluation, every measure          {med['eval_all']:8.3f} s")
    print(f"  evaluation, no gradient alignment  {med['eval_without']:8.3f} s   "
          f"(gradient alignment: {paired:+.3f} s paired, {100 * paired / med['eval_all']:.0f}% of the evaluation)")
    print(f"  evaluation, loss/accuracy only     {med['eval_plain']:8.3f} s   "
          "each measure alone adds (paired medians):")
    for name in alone:
        extra = statistics.median(a - b for a, b in zip(times[name], times["eval_plain"]))
        print(f"    {name[5:]:<32} {extra:+8.3f} s")
    print(f"  gradient alignment, Gram route     {med['gram']:8.3f} s")
    print(f"  gradient alignment, per-example    {med['loop']:8.3f} s   "
          f"({med['loop'] / med['gram']:.0f}x the Gram route)")
    print("  Ω (Gram / per-example loop): " + ", ".join(f"{k} {ours[k]:.6f} / {reference[k]:.6f}" for k in ours))
    print(f"  largest difference {worst:.2e} ({'within' if worst <= 1e-5 else 'NOT within'} 1e-5)")
    if not worst <= 1e-5:
        raise SystemExit("the Gram route and the per-example loop disagree by more than 1e-5")


if __name__ == "__main__":
    main()
