"""Old import paths kept working after a name moved: a module ``__getattr__`` that warns and forwards.

A module whose names moved declares ``MOVED = {"old_name": "actid.new.module"}`` (or ``"actid.new.module:new_name"``
for a renamed one) and sets ``__getattr__ = moved(__name__, MOVED)``. The first use of an old name raises a
:class:`DeprecationWarning` that names the new place; CHANGELOG.md lists every move. The tables are data, so the
import-graph test (``tests/test_structure.py``) counts each as an import of its new module.
"""

from __future__ import annotations

import importlib
import warnings


def moved(module: str, table: dict[str, str]):
    """A ``__getattr__`` for ``module`` serving the names of ``table`` from their new modules, with a warning."""
    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new_name = table[name].partition(":")
        new_name = new_name or name
        warnings.warn(f"{module}.{name} moved to {target}.{new_name}; import it from there (see CHANGELOG.md)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(target), new_name)
    return __getattr__


def moved_module(old: str, new: str) -> None:
    """Warn that the module ``old`` moved to ``new`` (called by the shim left at the old path)."""
    warnings.warn(f"module {old} moved to {new}; import it from there (see CHANGELOG.md)", DeprecationWarning,
                  stacklevel=3)
