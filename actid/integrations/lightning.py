"""actid's measures in a PyTorch Lightning fit: a callback that writes an actid run and logs to the trainer's loggers.

::

    from actid.integrations.lightning import MeasureCallback
    callback = MeasureCallback((x_val, y_val), layers=["encoder.2", "head"], run_dir="runs/mine",
                               measures={"id": {}, "participation_ratio": {}}, every_n_steps=100)
    lightning.Trainer(callbacks=[callback], ...).fit(module, loader)
    actid.runs.load_runs("runs/mine")           # like any sweep's runs; the notebooks read it

The measures are those of params.yaml (``{name: params}``, :mod:`actid.measures`), evaluated by
:class:`actid.Tracker` on a fixed probe at step 0, on the schedule (``every_n_steps`` optimizer steps or
``every_n_epochs`` epochs) and at the end of the fit. Each row goes to ``<run_dir>/metrics.csv`` and to every logger
of the trainer (``actid/<column>`` at the trainer's global step).

**Under DDP** every process holds the same probe (pass the same tensors to each process's callback), and the process
of global rank 0 measures the whole probe while the others wait for it (a broadcast of its outcome: if it fails,
every rank raises its error). DDP keeps the replicas' weights equal, so this is the measure of the model being
trained, and the activations never cross processes. Strategies that shard the weights (FSDP, DeepSpeed) are
refused: rank 0 would not hold the model.

**Resuming** a fit from a Lightning checkpoint (``ckpt_path=``) continues the run: rows measured after that checkpoint
(by the fit that was stopped) are kept aside as ``metrics.csv.bad-<n>``, and the resumed fit measures those steps
again; the row at the checkpoint's step is already there (the callback measures before a checkpoint is saved). A
fit without ``ckpt_path`` into a run directory that holds rows is refused: the run would mix two fits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch.nn import functional as F

from actid import schema
from actid.integrations import require
from actid.tracker import Tracker

L = require("lightning.pytorch", "lightning")

SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class MeasureCallback(L.Callback):
    """Measure ``layers`` of the LightningModule on ``probe`` during ``Trainer.fit`` (see the module docstring).

    Args:
        probe: ``(inputs, labels)`` or a dict of named pairs, as for :class:`actid.Tracker`.
        layers: module names inside the LightningModule (``named_modules()``); the last is the LLID layer.
        run_dir: the actid run directory the rows go to.
        measures: ``{name: params}`` as in params.yaml (default: the TwoNN ID of every layer).
        every_n_steps / every_n_epochs: the schedule (one of them; default every epoch).
        log_prefix: prefix of the names logged to the trainer's loggers.
        live: mirror rows into DVCLive/TensorBoard files in ``run_dir`` (:mod:`actid.integrations.live`).
        config: anything else to record in ``config.json`` (the LightningModule's ``hparams`` are recorded too).
    """

    def __init__(self, probe, *, layers: list[str], run_dir: str | Path, measures: dict | None = None,
                 every_n_steps: int | None = None, every_n_epochs: int | None = None, llid_layer: str | None = None,
                 loss_fn: Callable = F.cross_entropy, batch_size: int = 1024, seed: int = 0,
                 log_prefix: str = "actid/", live: str | tuple[str, ...] | None = None, config: dict | None = None):
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError("give every_n_steps or every_n_epochs, not both")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        self.probe, self.layers, self.run_dir = probe, list(layers), Path(run_dir)
        self.measures, self.llid_layer, self.loss_fn = measures, llid_layer, loss_fn
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.batch_size, self.seed, self.log_prefix, self.live = batch_size, seed, log_prefix, live
        self.config = dict(config or {})
        self.tracker: Tracker | None = None
        self.last_step: int | None = None

    # --- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if type(trainer.strategy).__name__ in SHARDED:
            raise ValueError(f"MeasureCallback needs every process to hold the whole model (DDP or one device); "
                             f"{type(trainer.strategy).__name__} shards it. Measure after the fit on a gathered copy "
                             "with actid.Tracker instead")

    def on_train_start(self, trainer, pl_module) -> None:
        # after a checkpoint is restored, so global_step is the resumed step. Rank 0 opens the run; every rank
        # learns the outcome (and the last step measured) so that all of them take the same branches below.
        outcome = None
        if trainer.is_global_zero:
            outcome = self._guarded(lambda: self._open_run(trainer, pl_module))
        outcome = trainer.strategy.broadcast(outcome, src=0)
        self._raise_if_failed(outcome)
        self.last_step = outcome["last_step"]
        if trainer.ckpt_path is None:  # a fresh fit measures its initial weights; a resumed one has that row
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)  # the final weights always get a row

    # --- the work ----------------------------------------------------------------------------------

    def _open_run(self, trainer, pl_module) -> dict:
        hparams = {k: v for k, v in dict(getattr(pl_module, "hparams", {}) or {}).items()
                   if isinstance(v, (int, float, str, bool, type(None)))}
        self.tracker = Tracker(pl_module, self.probe, layers=self.layers, run_dir=self.run_dir,
                               measures=self.measures, llid_layer=self.llid_layer, loss_fn=self.loss_fn,
                               batch_size=self.batch_size, seed=self.seed, live=self.live, source="lightning",
                               config={"hparams": hparams, "world_size": trainer.world_size, **self.config})
        run = self.tracker.run
        rows = run.read_metrics().to_dict("records") if run.metrics_path.exists() else []
        if rows and trainer.ckpt_path is None:
            raise ValueError(f"{run.path} already holds {len(rows)} rows of an earlier fit: resume that fit "
                             "(Trainer.fit(..., ckpt_path=...)) or give this one a new run_dir")
        kept = [r for r in rows if r[schema.STEP] <= trainer.global_step]
        if len(kept) < len(rows):  # measured after the checkpoint by the fit that stopped: kept aside, named
            if kept:
                run.restore_rows(kept)
            else:
                os.replace(run.metrics_path, run._free_name(run.metrics_path.name + ".bad"))
        self.tracker.calls = len(kept)
        return {"last_step": int(kept[-1][schema.STEP]) if kept else None}

    def _measure(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if step == self.last_step or trainer.sanity_checking:
            return
        self.last_step = step
        outcome = None
        if trainer.is_global_zero:
            outcome = self._guarded(lambda: self._log(trainer, self.tracker.measure(step), step))
        # the other ranks wait here for rank 0, and stop with it if it failed
        self._raise_if_failed(trainer.strategy.broadcast(outcome, src=0))

    def _log(self, trainer, row: dict, step: int) -> dict:
        logged = {self.log_prefix + k: float(v) for k, v in row.items() if k != schema.STEP}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
        return {}

    @staticmethod
    def _guarded(work) -> dict:
        try:
            return work()
        except Exception as err:  # noqa: BLE001 (sent to the other ranks, raised on every rank)
            return {"error": err}

    @staticmethod
    def _raise_if_failed(outcome: dict) -> None:
        if "error" in outcome:
            raise outcome["error"]
