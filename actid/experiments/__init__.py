"""Experiments: each turns a flat config dict into a (Task, TrainConfig) for :func:`actid.train.train`."""
