"""actid: intrinsic dimension of neural-network activations, fast and exact, during training.

Quick use::

    import actid
    acts = actid.capture_activations(model, x_val, ["layer3", "avgpool"])
    d = actid.intrinsic_dimension(acts["avgpool"], n_resamples=20)   # the paper's TwoNN protocol
    tracker = actid.Tracker(model, (x_val, y_val), layers=["layer3", "avgpool"], run_dir="runs/mine")
    tracker.measure(step)                                              # one row per call, in your loop
"""

from actid.capture import capture_activations, layer_ids, llid, peak_id
from actid.estimators import GRIDE, MLE, TwoNN, fit_estimators, intrinsic_dimension
from actid.neighbors import nearest_neighbors
from actid.tracker import Tracker

__all__ = ["GRIDE", "MLE", "Tracker", "TwoNN", "capture_activations", "fit_estimators", "intrinsic_dimension", "layer_ids",
           "llid", "nearest_neighbors", "peak_id"]
__version__ = "0.1.0"
