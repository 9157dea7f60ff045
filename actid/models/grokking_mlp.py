"""Deprecated: the α-scaled MLP is :mod:`actid.models.scaled_mlp` (``ScaledMLP``, ``ScaledMLPConfig``); it is not
only the grokking experiment's model."""

from actid._moved import moved_module
from actid.models.scaled_mlp import ScaledMLP as GrokkingMLP, ScaledMLPConfig as GrokkingMLPConfig  # noqa: F401

moved_module(__name__, "actid.models.scaled_mlp")
