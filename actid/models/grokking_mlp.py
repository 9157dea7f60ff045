"""Deprecated: the α-scaled MLP is :mod:`actid.models.scaled_mlp` (``ScaledMLP``, ``ScaledMLPConfig``); it is not
only the grokking experiment's model."""

from actid._moved import moved_module
from actid.models.scaled_mlp import ScaledMLP as GrokkingMLP
from actid.models.scaled_mlp import ScaledMLPConfig as GrokkingMLPConfig

__all__ = ["GrokkingMLP", "GrokkingMLPConfig"]
moved_module(__name__, "actid.models.scaled_mlp")
