"""Intrinsic dimension of layer activations as a measure: per-layer ID, LLID and PID.

Definitions (Brown et al. 2022; the official README swaps them, see ``docs/reproduction.md``):

* LLID, last-layer ID: the ID of the representation that feeds the classifier (:func:`llid`).
* PID, peak ID: the largest ID over the tracked layers (:func:`peak_id`).

The estimators live in :mod:`actid.estimators` (TwoNN, MLE, GRIDE); any scikit-dimension estimator
(``skdim.id.*``, sklearn-style ``fit`` and ``dimension_``) can be used through :class:`SkdimEstimator`
(``pip install actid[skdim]``), e.g. ``estimator: skdim.MLE``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from actid import schema
from actid.estimators import ESTIMATORS, TwoNN, fit_estimators
from actid.config import integer, mapping, one_of, param, sequence, text
from actid.measures.base import Evaluation, Measure, register

TWONN_PAPER = {"n_resamples": 20, "subsample_fraction": 0.9}
"""The paper's TwoNN protocol (mean and std over 20 random subsets of 90% of the points)."""


def layer_ids(activations: Mapping[str, torch.Tensor], estimator=None, device=None) -> dict[str, dict]:
    """Fit ``estimator`` (default: the paper's TwoNN, 20 resamples of 90%) to each layer's activations.

    Returns {layer: estimator.as_dict()}, i.e. dimension, error and point counts per layer.
    """
    estimator = estimator or TwoNN(n_resamples=20)
    return {name: estimator.fit(acts, device=device).as_dict() for name, acts in activations.items()}


def llid(ids: Mapping[str, float], last_layer: str) -> float:
    """Last-layer ID: the ID of ``last_layer``, the representation feeding the classifier."""
    if last_layer not in ids:
        raise KeyError(f"LLID layer {last_layer!r} was not measured; measured layers: {list(ids)}")
    return float(ids[last_layer])


def peak_id(ids: Mapping[str, float]) -> float:
    """Peak ID: the maximum ID over the tracked layers."""
    if not ids:
        raise ValueError("peak_id needs at least one layer's ID")
    return float(max(ids.values()))


class SkdimEstimator:
    """Adapter: a scikit-dimension estimator class used like actid's (``fit(X).dimension_``).

    ``error_`` is NaN (scikit-dimension gives no error for a global fit)."""

    def __init__(self, name: str, **params):
        try:
            import skdim
        except ImportError:
            raise ImportError("estimator 'skdim.*' needs scikit-dimension: pip install 'actid[skdim]'") from None
        if not hasattr(skdim.id, name):
            raise KeyError(f"scikit-dimension has no estimator {name!r}; see skdim.id (e.g. MLE, TwoNN, lPCA, DANCo)")
        self.estimator = getattr(skdim.id, name)(**params)

    def get_params(self) -> dict:
        return self.estimator.get_params()

    def fit(self, X, device=None):
        X = X.detach().cpu().double().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, float)
        self.dimension_ = float(self.estimator.fit(X.reshape(len(X), -1)).dimension_)
        self.error_ = float("nan")
        return self


def make_estimator(estimator: str, options: dict):
    """An estimator object from its name ('twonn', 'mle', 'gride' or 'skdim.<Class>') and options."""
    if estimator.startswith("skdim."):
        return SkdimEstimator(estimator.removeprefix("skdim."), **options)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)} or 'skdim.<Class>'")
    return ESTIMATORS[estimator](**options)


def estimator_params(estimator: str, options: dict) -> dict:
    """Every constructor parameter of the estimator, defaults filled in (recorded in config.json)."""
    try:
        est = make_estimator(estimator, options)
    except TypeError as err:
        raise TypeError(f"estimator {estimator!r} does not take options {sorted(options)}: {err}") from None
    if isinstance(est, SkdimEstimator):
        return est.get_params()
    names = inspect.signature(type(est).__init__).parameters
    return {k: getattr(est, k) for k in names if k != "self"}


@register
@dataclass(kw_only=True)
class IntrinsicDimension(Measure):
    """ID of each layer's activations on the probe (columns ``<name>/<layer>``, ``<name>_err/<layer>``),
    and, for the measure named ``id``, the LLID (the model's ``llid_layer``) and the PID (maximum over
    the layers); another name gives ``<name>/llid`` and ``<name>/pid``. ``seed`` seeds the resampling."""

    kind = "id"
    needs = "activations"

    estimator: str = param("twonn", text())
    # the estimator's parameters; None: TWONN_PAPER for TwoNN, defaults otherwise
    options: dict | None = param(None, mapping(optional=True))
    seed: int | None = param(None, integer(0, optional=True))
    # estimators fitted beside ``estimator`` from the same neighbour search, with their default options (columns
    # ``<name>_<estimator>/<layer>``, ``.../llid``, ``.../pid``): how much an ID claim depends on the estimator
    also: list[str] = param(check=sequence(one_of("twonn", "mle", "gride")), default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.also and (self.estimator.startswith("skdim.") or self.estimator in self.also):
            raise ValueError(f"measure {self.name!r}: also={self.also} needs an actid estimator other than "
                             f"{self.estimator!r} (they share its neighbour search)")
        options = dict(TWONN_PAPER if self.estimator == "twonn" else {}) if self.options is None else dict(self.options)
        if "seed" in inspect.signature(ESTIMATORS.get(self.estimator, object).__init__).parameters:
            options.setdefault("seed", self.seed)
        self.options = estimator_params(self.estimator, options)

    def params(self) -> dict:
        """Every parameter; ``also`` only when set, so runs made before it existed keep their identity."""
        out = super().params()
        if not self.also:
            out.pop("also")
        return out

    def __call__(self, ev: Evaluation) -> dict[str, float]:
        acts = ev.activations[self.probe]
        row, ids = {}, {name: {} for name in self.also}
        names = [f"{self.name}_{other}" for other in self.also]
        for layer in self.layer_names(ev.id_layers):
            est = make_estimator(self.estimator, self.options)
            if self.also:  # one neighbour search for all of them
                est, *others = fit_estimators(acts[layer], [est] + [ESTIMATORS[o]() for o in self.also])
                for other, fitted in zip(self.also, others):
                    ids[other][layer] = fitted.dimension_
                    row[schema.column(f"{self.name}_{other}", layer)] = fitted.dimension_
            else:
                est.fit(acts[layer])
            ids.setdefault(None, {})[layer] = est.dimension_
            row[schema.column(self.name, layer)] = est.dimension_
            row[schema.column(f"{self.name}_err", layer)] = est.error_
            if hasattr(est, "n_used_"):
                row[schema.column(f"{self.name}_points", layer)] = est.n_used_
        named = self.name == schema.ID
        for key, name in [(None, self.name)] + list(zip(self.also, names)):
            plain = named and key is None
            row[schema.PID if plain else schema.column(name, schema.PID)] = peak_id(ids[key])
            if ev.llid_layer and ev.llid_layer in ids[key]:
                row[schema.LLID if plain else schema.column(name, schema.LLID)] = llid(ids[key], ev.llid_layer)
        return row
