"""actid where researchers already train: each integration is an optional extra of the light core.

* :mod:`actid.integrations.lightning` (``actid[lightning]``): a Lightning callback writing actid runs;
* :mod:`actid.integrations.metric` (``actid[lightning]``): a torchmetrics ``Metric`` for the ID;
* :mod:`actid.integrations.hf` (``actid[hf]`` for transformers models): hidden states pooled by a stated protocol;
* :mod:`actid.integrations.live` (``actid[live]``): runs' rows mirrored into DVCLive and TensorBoard files.

Importing a module whose extra is missing raises an ``ImportError`` that names the ``pip install`` to run.
"""

import importlib


def require(module: str, extra: str):
    """Import ``module``, or raise an ImportError naming the actid extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed; this part of actid needs it: pip install 'actid[{extra}]' "
                          f"(in a clone: pip install -e '.[{extra}]')") from err
