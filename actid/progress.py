"""Deprecated: moved to :mod:`actid.pipeline.shard_progress` (the name clashed with :mod:`actid.measures.progress`)."""

from actid._moved import moved_module
from actid.pipeline.shard_progress import TAG, ShardMonitor, ShardReporter  # noqa: F401

moved_module(__name__, "actid.pipeline.shard_progress")
