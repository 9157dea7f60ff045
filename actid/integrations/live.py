"""Watch a run while it trains: its rows mirrored into DVCLive and TensorBoard files inside the run directory.

``metrics.csv`` stays the source of truth; the mirror is a view rebuilt from it. Turn it on with the sweep's
``--live dvclive,tensorboard`` (or ``ACTID_LIVE=dvclive,tensorboard`` for any process, ``dvc repro`` included), or
``live=`` of :class:`actid.Tracker` and of the Lightning callback. Every time the run writes its rows:

* ``<run>/dvclive/``: ``metrics.json`` (the latest row) and ``plots/metrics/<column>.tsv`` (one line per step), in
  DVCLive's layout, written by DVCLive itself with no ``dvc.yaml``, no report and no DVC experiment. Draw them while
  the run trains: ``dvc plots show runs/grokking/<run>/dvclive/plots/metrics`` (or open them in an editor's DVC view).
* ``<run>/tensorboard/``: TensorBoard event files (``tensorboard --logdir runs/grokking``).

Nothing is written outside the run directory, and ``dvc.yaml`` is never edited, so a second ``dvc repro`` stays a
no-op. The first write in a process rebuilds the mirror from every row (DVCLive clears its own files, TensorBoard
events of earlier processes are hidden with ``purge_step``), so a resumed run mirrors exactly its rows.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from actid.integrations import require

SINKS = ("dvclive", "tensorboard")
ENV = "ACTID_LIVE"
"""The environment variable that turns the mirror on for every run a process (and its workers) writes."""


def parse_sinks(value: str | list | tuple | None) -> tuple[str, ...]:
    """``"dvclive,tensorboard"`` (or a list) as a tuple of sink names; an unknown name raises ValueError."""
    if value is None:
        return ()
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    names = [s for s in names if s]
    unknown = sorted(set(names) - set(SINKS))
    if unknown:
        raise ValueError(f"unknown live sink(s) {unknown}: choose from {list(SINKS)} (e.g. --live dvclive,tensorboard)")
    return tuple(dict.fromkeys(names))


def sinks_from_env() -> tuple[str, ...]:
    """The sinks that ``ACTID_LIVE`` names (none when unset)."""
    try:
        return parse_sinks(os.environ.get(ENV))
    except ValueError as err:
        raise ValueError(f"{ENV}: {err}") from None


def check_installed(sinks: tuple[str, ...]) -> None:
    """Fail now, naming the extra, rather than at a run's first evaluation."""
    if "dvclive" in sinks:
        require("dvclive", "live")
    if "tensorboard" in sinks:
        require("tensorboard", "live")


def _scalars(row: dict) -> dict[str, float]:
    """The row's finite numbers, without the step."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class LiveMirror:
    """Mirror the rows of the run in ``run_dir`` into ``sinks`` (see the module docstring)."""

    def __init__(self, run_dir: str | Path, sinks: tuple[str, ...]):
        self.run_dir, self.sinks = Path(run_dir), parse_sinks(sinks)
        check_installed(self.sinks)
        self._steps: list[int] = []  # the steps mirrored by this process, in order
        self._live = self._writer = None

    def sync(self, rows: list[dict]) -> None:
        """Mirror ``rows`` (the run's whole table): append the new ones, or rebuild if the table is not an extension
        of what this process mirrored (its first write, or rows restored from a checkpoint)."""
        steps = [int(r["step"]) for r in rows]
        if self._steps and steps[:len(self._steps)] == self._steps:
            new = rows[len(self._steps):]
        else:
            self._open(first_step=steps[0] if steps else 0)
            new = rows
        for row in new:
            self._write(int(row["step"]), _scalars(row))
        if self._live is not None and new:
            self._live.make_summary()
        if self._writer is not None:
            self._writer.flush()
        self._steps = steps

    def _open(self, first_step: int) -> None:
        self.close()
        if "dvclive" in self.sinks:
            dvclive = require("dvclive", "live")
            # no dvc.yaml, no report, no experiment: files inside the run directory only
            self._live = dvclive.Live(dir=str(self.run_dir / "dvclive"), resume=False, report=None,
                                      save_dvc_exp=False, dvcyaml=None)
        if "tensorboard" in self.sinks:
            require("tensorboard", "live")
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides the events that earlier processes wrote at or after the first step rewritten here
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=first_step)

    def _write(self, step: int, values: dict[str, float]) -> None:
        if self._live is not None:
            self._live.step = step
            for key, value in values.items():
                self._live.log_metric(key, value)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._live = self._writer = None
