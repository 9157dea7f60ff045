"""actid's build backend: setuptools' own, plus `data-files` in editable installs.

`pip install -e .` (PEP 660) builds an "editable wheel". setuptools means to put the `data-files` of
pyproject.toml into it (`editable_wheel._run_install("data")`) but checks for them under the name
`Distribution.has_data`, which does not exist (the method is `has_data_files`), so without this module
`share/jupyter/lab/settings/overrides.d/actid.json` reaches `<sys.prefix>` only on a non-editable
`pip install .`. Supplying the missing name makes the editable install copy it too; harmless once
setuptools fixes the lookup. (MANIFEST.in puts this file into the sdist, so a wheel builds from one.)
"""

from setuptools import build_meta as _setuptools_backend
from setuptools.build_meta import *  # noqa: F403  (the PEP 517/660 hooks, unchanged)
from setuptools.dist import Distribution

if not hasattr(Distribution, "has_data"):
    Distribution.has_data = Distribution.has_data_files

__all__ = _setuptools_backend.__all__
