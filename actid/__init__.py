"""actid: intrinsic dimension of neural-network activations, fast and exact, during training.

Quick use::

    import actid
    acts = actid.capture_activations(model, x_val, ["layer3", "avgpool"])
    d = actid.intrinsic_dimension(acts["avgpool"], n_resamples=20)   # the paper's TwoNN protocol
    tracker = actid.Tracker(model, (x_val, y_val), layers=["layer3", "avgpool"], run_dir="runs/mine")
    tracker.measure(step)                                              # one row per call, in your loop

The names below are imported on first use (PEP 562), so ``import actid.estimators`` does not import the training
stack, and no module of the package needs this one.
"""

import importlib

from actid.version import __version__  # noqa: F401 (public)

API = {
    "GRIDE": "actid.estimators", "MLE": "actid.estimators", "TwoNN": "actid.estimators",
    "fit_estimators": "actid.estimators", "intrinsic_dimension": "actid.estimators",
    "nearest_neighbors": "actid.neighbors", "capture_activations": "actid.capture",
    "layer_ids": "actid.measures.intrinsic", "llid": "actid.measures.intrinsic", "peak_id": "actid.measures.intrinsic",
    "Tracker": "actid.tracker",
}
"""The public names and the modules that define them."""
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'actid' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
