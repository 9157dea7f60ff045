"""Files written so that a crash never leaves half of one: atomic writes of bytes, text, JSON and CSV.

Every writer goes through :func:`atomic_write`: a temporary file in the same folder, fsync, then a rename over the
target (and an fsync of the folder), so a reader sees the old file or the new one, never a torn one. A new file
gets the permissions ``open()`` would give it, so a group that shares a results folder can read it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path


def _new_file_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask); mkstemp's are 0o600.

    The umask is read from /proc where it can be, since setting it to read it back is not thread-safe."""
    try:
        status = Path("/proc/self/status").read_text()
        umask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(file_object)`` on a temporary file, fsync, then rename over it.

    The file gets the permissions of the file it replaces, or those of a newly opened file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"{os.strerror(err.errno)} while writing {path}: the previous version of the "
                                     "file is kept, unchanged. Free space and rerun; an interrupted run resumes from "
                                     "its checkpoint") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a text (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def json_ready(value):
    """``value`` as plain JSON: numpy scalars to Python ones, NaN and infinities to None (JSON has neither)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON (see :func:`json_ready`), written atomically."""
    atomic_write_text(path, json.dumps(json_ready(data), indent=1) + "\n")


def read_json(path: Path):
    """A JSON file's content, or a ValueError naming the file (JSON is data: reading it runs nothing)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def write_csv(table, path: Path) -> None:
    """A pandas table as CSV (with its index), written atomically."""
    atomic_write_text(path, table.to_csv())
