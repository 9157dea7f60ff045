"""Load another version of an actid module (e.g. ``git show REV:actid/neighbors.py > /tmp/neighbors_REV.py``) to time
it as a benchmark's baseline in the same process."""

from __future__ import annotations

import importlib.util
import sys


def load_module(path: str, name: str):
    """The module in the file ``path``, registered as ``name`` (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
