"""Column names of ``metrics.csv``: the one place that spells them.

A row holds the evaluation ``step``, the ``learning_rate``, a loss and an accuracy per evaluated
split, and the values of every measure, one column per (measure, key)::

    step, learning_rate, train_loss, train_acc, val_loss, val_acc,
    id/<layer>, id_err/<layer>, llid, pid,            # the intrinsic-dimension measure
    sparsity/<layer>, weight_norm/total, ...          # "<measure>/<key>"

Training, analysis and the notebooks build names with these functions instead of repeating strings.
"""

from __future__ import annotations

STEP = "step"
LEARNING_RATE = "learning_rate"
LLID = "llid"  # last-layer intrinsic dimension (the ID of the layer feeding the classifier)
PID = "pid"  # peak intrinsic dimension (the largest ID over the tracked layers)
ID = "id"  # the intrinsic-dimension measure's column prefix
ID_ERR = "id_err"


def loss(split: str) -> str:
    """Mean loss on an evaluation split, e.g. ``val_loss``."""
    return f"{split}_loss"


def acc(split: str) -> str:
    """Accuracy on an evaluation split, e.g. ``val_acc``."""
    return f"{split}_acc"


def column(measure: str, key: str | None = None) -> str:
    """The column of a measure's value: ``"<measure>/<key>"`` (``key`` is usually a layer or parameter
    name), or ``"<measure>"`` for a measure with a single value."""
    if "/" in measure:
        raise ValueError(f"a measure name may not contain '/', got {measure!r}")
    return measure if key is None else f"{measure}/{key}"


def split_column(name: str) -> tuple[str, str | None]:
    """Inverse of :func:`column`: ``"id/blocks.1.mlp"`` -> ``("id", "blocks.1.mlp")``."""
    measure, _, key = name.partition("/")
    return measure, (key or None)


def columns_of(frame_columns, measure: str) -> dict[str, str]:
    """{key: column} of one measure's columns in a table, e.g. every ``id/<layer>``."""
    return {split_column(c)[1]: c for c in frame_columns if split_column(c)[0] == measure and "/" in c}
