"""From ``params.yaml`` to trained run directories: what ``python -m actid.sweep`` (and so ``dvc repro``) runs.

Read in this order:

* :mod:`~actid.pipeline.grid`: a profile's grid points and their resolved run configs (bad values fail here);
* :mod:`~actid.pipeline.plan`: what happens to each run directory (new, skip, resume, restart), stale runs set
  aside, whether runs train batched; touches no file until :func:`~actid.pipeline.plan.tidy`;
* :mod:`~actid.pipeline.local`: train a shard's runs in this process, or ``--jobs`` shard processes with
  :mod:`~actid.pipeline.shard_progress` drawing their bars;
* :mod:`~actid.pipeline.slurm`: the same runs as a SLURM job array.

Experiments come from :data:`actid.experiments.REGISTRY`; runs are written through :class:`actid.runs.Run`.
"""
