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

import contextlib
import math
import numbers
import os
import warnings
import weakref
from pathlib import Path

from actid.integrations import require

MARKER = ".actid-live"
"""A file that marks ``<run>/dvclive`` as the mirror's: DVCLive clears its files there, so a folder without it (a
user's own DVCLive output) is refused instead."""

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


def _scalars(row: dict) -> tuple[dict[str, float], list[str]]:
    """The row's finite numbers, without the step, and the names of its missing (NaN or infinite) values."""
    out, missing = {}, []
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(value):
            out[key] = float(value)
        else:
            missing.append(key)
    return out, missing


@contextlib.contextmanager
def _dvclive_environment():
    """Neither DVCLIVE_RESUME (it would make the rebuild append) nor a DVC Studio token (it would post the run
    outside the run directory) applies to the mirror."""
    saved = {k: os.environ.pop(k) for k in ("DVCLIVE_RESUME",) if k in os.environ}
    offline = os.environ.get("DVC_STUDIO_OFFLINE")
    os.environ["DVC_STUDIO_OFFLINE"] = "true"
    try:
        yield
    finally:
        os.environ.update(saved)
        if offline is None:
            os.environ.pop("DVC_STUDIO_OFFLINE", None)
        else:
            os.environ["DVC_STUDIO_OFFLINE"] = offline


def _drop(summary: dict, key: str) -> None:
    """Remove ``key`` (``a/b`` nests as DVCLive does) from the summary: a value now missing is not shown stale."""
    *parents, leaf = key.split("/")
    for part in parents:
        summary = summary.get(part)
        if not isinstance(summary, dict):
            return
    summary.pop(leaf, None)


class LiveMirror:
    """Mirror the rows of the run in ``run_dir`` into ``sinks`` (see the module docstring)."""

    def __init__(self, run_dir: str | Path, sinks: tuple[str, ...]):
        self.run_dir, self.sinks = Path(run_dir), parse_sinks(sinks)
        check_installed(self.sinks)
        self._steps: list[int] = []  # the steps mirrored by this process, in order
        self._live = self._writer = None
        self._closer = None

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
            self._write(int(row["step"]), *_scalars(row))
        if self._live is not None and new:
            self._live.make_summary()
        if self._writer is not None:
            self._writer.flush()
        self._steps = steps

    def _open(self, first_step: int) -> None:
        self.close()
        if "dvclive" in self.sinks:
            dvclive = require("dvclive", "live")
            folder = self.run_dir / "dvclive"
            if folder.exists() and not (folder / MARKER).exists():
                raise FileExistsError(f"{folder} exists and was not made by actid's live mirror, which clears "
                                      "DVCLive's files there: move it aside, or turn the mirror off")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MARKER).touch()
            with _dvclive_environment():  # no dvc.yaml, report, experiment or Studio: files in the run only
                self._live = dvclive.Live(dir=str(folder), resume=False, report=None, save_dvc_exp=False,
                                          dvcyaml=None)
        if "tensorboard" in self.sinks:
            require("tensorboard", "live")
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides the events that earlier processes wrote at or after the first step rewritten here
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=first_step)
            self._closer = weakref.finalize(self, self._writer.close)  # its file and thread end with the mirror

    def _write(self, step: int, values: dict[str, float], missing: list[str]) -> None:
        if self._live is not None:
            self._live.step = step
            for key, value in values.items():
                self._live.log_metric(key, value)
            for key in missing:
                _drop(self._live.summary, key)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        """Close the TensorBoard writer (its file and thread); the next sync rebuilds the mirror."""
        if self._closer is not None:
            self._closer()
        self._live = self._writer = self._closer = None
        self._steps = []


def mirror_quietly(mirror: LiveMirror, rows: list[dict]) -> bool:
    """Sync ``mirror``; a failure is a warning, not the run's error (the mirror is a view, metrics.csv is written).
    Returns whether the mirror still works."""
    try:
        mirror.sync(rows)
        return True
    except Exception as err:  # noqa: BLE001 (any failure of a view)
        warnings.warn(f"the live mirror of {mirror.run_dir} stopped ({type(err).__name__}: {err}); metrics.csv is "
                      "intact, and the run goes on without it", RuntimeWarning, stacklevel=3)
        mirror.close()
        return False
