"""Experiments: each turns a flat config into a (Task, TrainConfig) for :func:`actid.train.train`.

:data:`REGISTRY` is the one list of experiments the pipeline knows (:class:`~actid.experiments.base.Experiment`).
Adding one: a module here with ``resolve``, ``build`` and its ``EXPERIMENT``, one line below, a section in
``params.yaml`` and a notebook (``docs/`` and the README say how to wire its two ``dvc.yaml`` stages).
"""

from actid.experiments import geometry, grokking, memorization, mnist_grokking, regularization
from actid.experiments.base import Experiment

REGISTRY: dict[str, Experiment] = {}
"""Every experiment by name."""


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to :data:`REGISTRY` (a name is registered once)."""
    if experiment.name in REGISTRY and REGISTRY[experiment.name] is not experiment:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered")
    REGISTRY[experiment.name] = experiment
    return experiment


for _module in (geometry, grokking, memorization, mnist_grokking, regularization):
    register(_module.EXPERIMENT)
