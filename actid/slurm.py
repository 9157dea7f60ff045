"""Deprecated: moved to :mod:`actid.pipeline.slurm` (the SLURM launcher is part of the pipeline package)."""

from actid._moved import moved_module
from actid.pipeline.slurm import *  # noqa: F401,F403
from actid.pipeline.slurm import RunTask, SlurmOptions, _expand, _flags_on  # noqa: F401

moved_module(__name__, "actid.pipeline.slurm")
