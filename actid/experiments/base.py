"""The experiment protocol: what the pipeline (:mod:`actid.pipeline`) asks of an experiment.

An experiment is a module with two functions, ``resolve`` and ``build``, and an :class:`Experiment` that names them
with its optional hooks; :data:`actid.experiments.REGISTRY` lists every experiment. Its ``params.yaml`` section
(``<name>: {<profile>: {fixed, grid}}``) gives the grid, its notebook draws the figures from the run directories.
The shared steps of ``resolve`` (unknown keys, derived keys, the flat JSON-ready config, epochs to steps) are in
:mod:`actid.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actid.runs import Run
from actid.task import Task
from actid.train import TrainConfig


@dataclass(frozen=True)
class Experiment:
    """One experiment.

    name: its ``params.yaml`` section, the default ``runs/<name>`` folder and its command-line name.
    resolve(config) -> dict: every key a run uses, defaults filled in, JSON-ready (recorded in ``config.json``);
        raises KeyError/ValueError/TypeError naming a bad key or value. It runs for every grid point before any
        file changes.
    build(config) -> (Task, TrainConfig): the run's data, model and training set-up, on its device.
    prepare(configs): fetch inputs the runs share (e.g. download CIFAR) once, before parallel shards race for them.
    batchable(config) -> why not, or None: whether the run can train as one model with others of its shape
        (:mod:`actid.batched`); None (the field): the experiment's runs never can.
    finish(run, config): after the run's last step, compute products into its directory (e.g. a table a figure
        needs from the model), so that notebooks only read files. It reads the run's files (rows, weight snapshots)
        and may rebuild the task from ``config``; it is also called for a finished run that lacks one of its
        ``products`` (the files it writes), at the next sweep.
    """

    name: str
    resolve: Callable[[dict], dict]
    build: Callable[[dict], tuple[Task, TrainConfig]]
    prepare: Callable[[list[dict]], None] | None = None
    batchable: Callable[[dict], str | None] | None = None
    finish: Callable[[Run, dict], None] | None = None
    products: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.finish is None) != (not self.products):
            raise ValueError(f"experiment {self.name!r}: give finish and the products it writes together")
