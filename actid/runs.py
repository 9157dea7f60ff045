"""The run directory, and its one owner: :class:`Run`.

A run is a directory::

    config.json    the resolved config (every key the run used), experiment, profile, versions, and
                   ``runtime``: where it ran (device type, autocast, CPU threads)
    metrics.csv    one row per evaluation (column names: :mod:`actid.schema`)
    checkpoint.pt  latest training state while unfinished; it also holds the rows, the source of truth
    snapshots/     model weights at selected evaluations (``step-<step>.pt``), if asked for
    done.json      written last: the final row and the wall time
    .lock          held by the process writing the run

Every file is written atomically (:mod:`actid.io`: a temporary file, fsync, rename): a killed process leaves
the old version or the new one, never half a file. Two processes cannot write one run: the second fails at
once with a message naming the first.

**Identity.** A run is identified by its scientific config: every key except :data:`NOT_IDENTITY`,
which say where and how it runs, not what it computes. A finished run is reused whatever device it
ran on; an unfinished one resumes only where the keys that change its numerics
(:data:`NUMERICS`) match.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import platform
import socket
import stat
import warnings
from pathlib import Path

import pandas as pd
import torch

from actid import io as files
from actid import schema
from actid._moved import moved
from actid.version import __version__

MOVED = {"atomic_write": "actid.io", "atomic_write_text": "actid.io", "_new_file_mode": "actid.io"}
"""Names this module held before the io module (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)

NOT_IDENTITY = {
    "device": "where it runs ('auto', 'cpu', 'cuda', 'cuda:1')",
    "amp": "bfloat16 autocast of the training step (a numerics choice, see NUMERICS)",
    "eval_batch_size": "batching of evaluation forward passes",
    "data_dir": "where the data sets are read from",
    "download": "whether missing data sets may be downloaded",
    "verify_md5": "whether torchvision checks the data files' checksums",
}
"""Config keys recorded in ``config.json`` but not part of a run's identity: changing them never
discards or restarts a run."""

NUMERICS = ("device", "amp", "threads", "batched")
"""Runtime facts that change an unfinished run's numbers: a run resumes only where they match (the
device *type*; the thread count only on the CPU; whether it trains batched with others, :mod:`actid.batched`).
A finished run is reused whatever they were."""


def identity(config: dict) -> dict:
    """The part of a config that identifies a run's results."""
    return {k: v for k, v in config.items() if k not in NOT_IDENTITY}


class RunLockedError(RuntimeError):
    """Another process is writing this run."""


class RunTaken(ValueError):
    """A run folder holds another run (another config, or files actid did not write): never written into."""


class RunFormatError(ValueError):
    """A run written by a newer actid, in a format this version does not know."""


RUN_FORMAT = 2
"""The run directory's format, recorded as ``format`` in ``config.json`` (1: the runs written before the key
existed, read the same way). A run of a newer format is refused, naming both versions."""


class LockRefused(RuntimeError):
    """A run's ``.lock`` cannot be used safely (a link, not a plain file, or a filesystem without locks)."""


class CheckpointRefused(RuntimeError):
    """A run's ``checkpoint.pt`` holds more than tensors and plain values: it is not loaded, nothing in it runs."""


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)
        return True
    except AssertionError:
        return False


def _is_prefix(head: pd.DataFrame, rows: pd.DataFrame) -> bool:
    """Whether ``head`` is ``rows`` without its last row(s)."""
    return (len(head) < len(rows) and list(head.columns) == list(rows.columns)
            and _frames_equal(head, rows.iloc[:len(head)]))


class Run:
    """One run directory: its files, identity, rows, checkpoint, snapshots, completion and lock."""

    def __init__(self, path: str | Path, live: tuple[str, ...] | None = None):
        """``live``: sinks that mirror the rows as they are written (:mod:`actid.integrations.live`); None reads
        ``ACTID_LIVE`` at the first write."""
        self.path = Path(path)
        self.live, self._mirror = live, None
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.csv"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.done_path = self.path / "done.json"
        self.failed_path = self.path / "failed.json"
        self.snapshot_dir = self.path / "snapshots"
        self.lock_path = self.path / ".lock"

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # --- config and identity -------------------------------------------------------------------

    def is_actid_run(self) -> bool:
        """Whether the directory holds an actid run (a ``config.json`` that actid wrote)."""
        try:
            meta = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and isinstance(meta.get("config"), dict) and "experiment" in meta

    def meta(self) -> dict:
        """The whole ``config.json`` (refused, :class:`RunFormatError`, when a newer actid wrote it)."""
        meta = json.loads(self.config_path.read_text())
        version = meta.get("format", 1)
        if not isinstance(version, int) or version > RUN_FORMAT:
            raise RunFormatError(f"{self.config_path} is a run of format {version!r}, written by a newer actid; this "
                                 f"actid ({__version__}) reads formats up to {RUN_FORMAT}: upgrade actid to use it")
        return meta

    @property
    def config(self) -> dict:
        return self.meta()["config"]

    def same_identity(self, config: dict) -> bool:
        return identity(self.config) == identity(config)

    def write_config(self, config: dict, meta: dict) -> None:
        """Create ``config.json``. A run already there must have the same identity (the sweep moves
        a changed run aside first); its file, which records where it ran, is kept."""
        if self.config_path.exists():
            if not self.is_actid_run():
                raise RunTaken(f"{self.config_path} exists and was not written by actid; choose another run "
                               "directory (actid never overwrites a file it did not create)")
            if not self.same_identity(config):
                changed = sorted(k for k in set(identity(config)) | set(identity(self.config))
                                 if identity(config).get(k) != identity(self.config).get(k))
                raise RunTaken(f"{self.path} holds a run of another config (keys {changed} differ); "
                               "move it aside or choose another directory")
            return
        versions = {"actid": __version__, "torch": torch.__version__, "python": platform.python_version()}
        record = {"config": config, **meta, "versions": versions, "format": RUN_FORMAT}
        files.atomic_write_text(self.config_path, json.dumps(record, indent=1))

    def runtime(self) -> dict | None:
        """Where an unfinished run has been training (None before its first step)."""
        return self.meta().get("runtime") if self.config_path.exists() else None

    def record_runtime(self, runtime: dict) -> None:
        files.atomic_write_text(self.config_path, json.dumps({**self.meta(), "runtime": runtime}, indent=1))

    # --- rows ------------------------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return self.done_path.exists()

    @property
    def failure(self) -> dict | None:
        """Why the run failed (``failed.json``: the error, its message and traceback, the last evaluated step), or
        None. A failed run is not trained again until the sweep's ``--restart``."""
        if not self.failed_path.exists():
            return None
        try:
            return json.loads(self.failed_path.read_text())
        except ValueError:
            return {"error": "unreadable failed.json", "message": str(self.failed_path)}

    def record_failure(self, error: BaseException) -> dict:
        """Write ``failed.json`` for an error that stopped the run (the run's other files stay as they are)."""
        import traceback
        rows = self.read_metrics() if self.metrics_path.exists() else None
        record = {"error": type(error).__name__, "message": str(error)[:2000],
                  "last_step": int(rows[schema.STEP].iloc[-1]) if rows is not None and len(rows) else None,
                  "traceback": "".join(traceback.format_exception(error))[-8000:]}
        files.atomic_write_text(self.failed_path, json.dumps(record, indent=1))
        return record

    def read_metrics(self) -> pd.DataFrame:
        """``metrics.csv`` read exactly (floats round-trip), or a clear error naming the file."""
        try:
            return pd.read_csv(self.metrics_path)  # pandas >= 3 parses floats exactly (round trip)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.metrics_path} is missing: the run has not evaluated yet, or the file "
                                    "was removed") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.metrics_path} cannot be read ({err}); it was not written by actid's atomic "
                             "writer. Delete the run directory to retrain it.") from None

    def write_rows(self, rows: list[dict]) -> None:
        """Replace ``metrics.csv`` by ``rows`` (atomically: readers never see a partial row)."""
        files.atomic_write(self.metrics_path, lambda f: pd.DataFrame(rows).to_csv(f, index=False))
        self._mirror_rows(rows)

    def _mirror_rows(self, rows: list[dict]) -> None:
        """Stream the rows to the live sinks, if any (a view of metrics.csv, rebuilt from it). A failing view warns
        and stops; the run goes on."""
        from actid.integrations import live  # imports no extra
        if self._mirror is None:
            try:
                sinks = live.sinks_from_env() if self.live is None else tuple(self.live)
                self._mirror = live.LiveMirror(self.path, sinks) if sinks else False
            except (ImportError, OSError, ValueError) as err:
                warnings.warn(f"no live mirror for {self.path}: {err}", RuntimeWarning, stacklevel=3)
                self._mirror = False
        if self._mirror and not live.mirror_quietly(self._mirror, rows):
            self._mirror = False

    def append_row(self, row: dict) -> None:
        """Add one row (for loops that keep no checkpoint, e.g. :class:`actid.Tracker`)."""
        rows = self.read_metrics().to_dict("records") if self.metrics_path.exists() else []
        if rows and row[schema.STEP] <= rows[-1][schema.STEP]:
            raise ValueError(f"step {row[schema.STEP]} is not after the last recorded step {rows[-1][schema.STEP]} "
                             f"of {self.path}; steps must increase")
        self.write_rows([*rows, row])

    def restore_rows(self, rows: list[dict]) -> None:
        """Make ``metrics.csv`` hold exactly ``rows``, the checkpoint's. A file that is a prefix of them
        lacks only the row whose write a kill interrupted; anything else (edited, truncated, missing
        rows) is kept aside as ``metrics.csv.bad-<n>`` and named."""
        expected = pd.DataFrame(rows)
        if self.metrics_path.exists():
            try:
                on_disk = self.read_metrics()
            except ValueError:
                on_disk = None
            if on_disk is not None and _frames_equal(on_disk, expected):
                return
            if not (on_disk is not None and _is_prefix(on_disk, expected)):
                aside = self._free_name(self.metrics_path.name + ".bad")
                os.replace(self.metrics_path, aside)
                print(f"{self.metrics_path} did not match the run's checkpoint (edited, truncated or rows missing): "
                      f"kept it as {aside.name} and restored the {len(rows)} checkpointed rows")
        elif rows:
            print(f"{self.metrics_path} was missing: restored the {len(rows)} rows held by the checkpoint")
        self.write_rows(rows)

    def _free_name(self, stem: str) -> Path:
        n = 1
        while (self.path / f"{stem}-{n}").exists():
            n += 1
        return self.path / f"{stem}-{n}"

    def set_aside_orphan_rows(self) -> None:
        """An unfinished run without a checkpoint restarts; rows it left are kept aside, not overwritten."""
        if self.metrics_path.exists() and not self.checkpoint_path.exists() and not self.is_finished:
            aside = self._free_name(self.metrics_path.name + ".orphan")
            os.replace(self.metrics_path, aside)
            print(f"{self.metrics_path} had no checkpoint to resume from: kept it as {aside.name}, restarting the run")

    # --- checkpoint, snapshots, completion ------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        files.atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict | None:
        """The training state of an unfinished run, or None. It is loaded as tensors and plain values only
        (``weights_only``): a file that needs anything else (a pickled object: a hostile file, or one an older actid
        wrote) is refused with :class:`CheckpointRefused`, and nothing in it runs."""
        if not self.checkpoint_path.exists():
            return None
        try:
            # on the CPU: generator states must stay CPU tensors; load_state_dict moves the rest
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the file holds, it is refused the same way
            raise CheckpointRefused(
                f"{self.checkpoint_path} was not loaded: it holds more than tensors and plain values, so it was not "
                f"written by this actid ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Nothing in it was "
                "run. To train this run again from step 0, rerun the sweep with --restart (it moves the run to "
                ".stale/ first)") from None

    def snapshot_path(self, step: int) -> Path:
        return self.snapshot_dir / f"step-{step:08d}.pt"

    def save_snapshot(self, step: int, model_state: dict) -> None:
        """Keep the model's weights at an evaluation (e.g. to rewind layers to an earlier epoch later)."""
        files.atomic_write(self.snapshot_path(step), lambda f: torch.save(model_state, f))

    def snapshot_steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.snapshot_dir.glob("step-*.pt"))

    def load_snapshot(self, step: int, map_location="cpu") -> dict:
        path = self.snapshot_path(step)
        if not path.exists():
            raise FileNotFoundError(f"{self.path} has no snapshot at step {step}; snapshots: {self.snapshot_steps()}")
        return torch.load(path, map_location=map_location, weights_only=True)

    def finish(self, rows: list[dict], train_seconds: float) -> None:
        """Write the last rows, then ``done.json``, then drop the checkpoint."""
        self.write_rows(rows)
        done = {"final": rows[-1], "train_seconds": round(train_seconds, 2)}
        files.atomic_write_text(self.done_path, json.dumps(done, indent=1))
        self.checkpoint_path.unlink(missing_ok=True)
        if self._mirror:
            self._mirror.close()

    # --- lock ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self):
        """Hold the run's write lock for the block, or fail at once naming the process that holds it.

        The operating system releases it when the holder dies, however it dies. Re-entrant within a process (a
        launcher holds it from the run's first write, ``config.json``, through training). ``.lock`` is opened for
        writing, never through a symbolic link, never truncated, with the run folder's read/write permissions (so a
        group sharing the results folder can lock it); a ``.lock`` that is a link, or not a plain file of its own,
        is refused (:class:`LockRefused`), as is a filesystem that cannot lock (NFS without its lock service)."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock(create=True)
        try:
            self._flock(fd)
            holder = f"pid {os.getpid()} on {socket.gethostname()}".ljust(LOCK_LINE - 1)[:LOCK_LINE - 1] + "\n"
            os.pwrite(fd, holder.encode(), 0)  # a fixed width: the previous holder's line is overwritten, not cut
            _HELD[key] = 1
            try:
                yield self
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the lock

    def is_locked(self) -> bool:
        """Whether another process holds the lock now (writes nothing). :class:`LockRefused` as :meth:`lock`."""
        if os.path.realpath(self.path) in _HELD:
            return False
        try:
            fd = self._open_lock(create=False)
        except FileNotFoundError:
            return False
        try:
            self._flock(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except RunLockedError:
            return True
        finally:
            os.close(fd)

    def _open_lock(self, create: bool) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.lock_path, flags, self.path.stat().st_mode & 0o666 if create else 0)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LockRefused(f"{self.lock_path} is a symbolic link, which actid never makes; nothing was "
                                  "written through it. Remove it (rm, not the file it points to) and rerun") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise LockRefused(f"{self.lock_path} is not a plain file of its own (a hard link, device or pipe), which "
                              "actid never makes; nothing was written to it. Remove it and rerun")
        return fd

    def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, LOCK_LINE, 0).decode(errors="replace").strip() or "unknown process"
            raise RunLockedError(f"{self.path} is being written by another process ({holder}); wait for it "
                                 "or stop it (two writers would corrupt the run)") from None
        except OSError as err:  # EBADF, ENOLCK, EOPNOTSUPP: a filesystem without working locks (e.g. NFS, no lockd)
            raise LockRefused(f"cannot lock {self.lock_path}: {os.strerror(err.errno)} (errno {err.errno}). The "
                              "filesystem does not support locks here (NFS needs its lock service); without a lock "
                              "two writers could corrupt a run, so nothing was written. Use a local --out or enable "
                              "locking on the mount") from None


LOCK_LINE = 128
"""Bytes of the holder line in ``.lock`` (fixed, so it is overwritten in place, never truncated)."""
_HELD: dict[str, int] = {}
"""Run folders whose lock this process holds (real path -> nesting depth)."""


# --- loading results ----------------------------------------------------------------------------

def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One run's metrics with its config values as extra columns (plus ``run`` and ``finished``)."""
    run = Run(run_dir)
    if not run.metrics_path.exists():
        raise FileNotFoundError(f"{run.path} has no metrics.csv: not a run directory, or the run has not evaluated yet")
    df = run.read_metrics()
    steps = df[schema.STEP] if schema.STEP in df else None
    if steps is None or steps.isna().any() or not steps.is_monotonic_increasing or steps.duplicated().any():
        raise ValueError(f"{run.metrics_path} has missing, repeated or unordered steps; delete the run directory to "
                         "retrain it")
    if run.is_finished:
        final = json.loads(run.done_path.read_text())["final"]
        last = df.iloc[-1]
        if not all(k in df and (last[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(last[k])))
                   for k, v in final.items()):
            raise ValueError(f"{run.metrics_path} does not end with the final row recorded in {run.done_path.name}: "
                             "the file was changed after the run finished. Delete the run directory to retrain it.")
    meta = run.meta()
    extra = {key: value for key, value in meta["config"].items()
             if key not in df.columns and not isinstance(value, (list, dict))}
    extra["finished"] = run.is_finished
    if meta.get("profile") is not None:  # the params.yaml profile of a sweep's run (a Tracker run has none)
        extra["profile"] = meta["profile"]
    df.insert(0, "run", run.name)
    return pd.concat([df, pd.DataFrame({key: [value] * len(df) for key, value in extra.items()}, index=df.index)],
                     axis=1)  # one concat: column-by-column inserts fragment a wide frame


def load_runs(path: str | Path) -> pd.DataFrame:
    """Load a run directory, or every run below a sweep directory, into one tidy DataFrame.

    One row per (run, evaluation step). Columns: ``run``, ``step``, losses and accuracies per split
    (``train_acc``, ``val_acc``, ...), one column per measure value (``id/<layer>``, ``id_err/<layer>``,
    ``llid``, ``pid``, ``<measure>/<key>``; see :mod:`actid.schema`), ``learning_rate``, every scalar
    config value (``weight_decay``, ``train_fraction``, ...) and ``finished``. Folders that are not
    actid runs (and runs set aside under ``.stale/``) are ignored.
    """
    path = Path(path)
    if Run(path).metrics_path.exists():
        return load_run(path)
    runs = sorted(p.parent for p in path.glob("*/metrics.csv") if Run(p.parent).is_actid_run())
    if not runs:
        raise FileNotFoundError(f"no runs (*/metrics.csv) under {path}; run the sweep first, e.g. `dvc repro`")
    return pd.concat([load_run(r) for r in runs], ignore_index=True)
