"""Every configuration key has a declared constraint, checked before anything is written; run folder names are safe
for any grid value (property-based, hypothesis); capture finds each example's rows; the estimators share their input
checks; the command line refuses impossible shards."""

import dataclasses
import inspect
import re
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import actid
from actid.config import Check
from actid.experiments import REGISTRY
from actid.measures import REGISTRY as MEASURES
from actid.measures import Probe
from actid.pipeline.grid import InvalidSweep, resolve_grid, run_name, sweep_points
from actid.sweep import parse_args
from actid.train import TrainConfig


def config_dataclasses() -> list[type]:
    """Every dataclass whose fields are run config keys: TrainConfig, each experiment's own, probes and measures."""
    found = [TrainConfig, Probe, *MEASURES.values()]
    for experiment in REGISTRY.values():
        module = inspect.getmodule(experiment.resolve)
        found += [obj for obj in vars(module).values() if dataclasses.is_dataclass(obj) and inspect.isclass(obj)
                  and obj.__module__ == module.__name__]
    return found


@pytest.mark.parametrize("cls", config_dataclasses(), ids=lambda c: c.__name__)
def test_every_config_field_declares_its_constraint(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not isinstance(f.metadata.get("check"), Check)]
    assert not missing, f"{cls.__name__} fields without a declared constraint (actid.config.param): {missing}"


def test_the_experiments_config_dataclasses_are_found():
    names = {c.__name__ for c in config_dataclasses()}
    assert {"GrokkingData", "GrokkingModel", "ImageSetup", "MemorizationSetup", "MnistGrokkingSetup",
            "GeometrySetup", "TrainConfig", "Probe", "IntrinsicDimension"} <= names


values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=60),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3),
                      max_leaves=6)
keys = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


@given(st.dictionaries(keys, values, max_size=4))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_a_run_name_is_safe_for_any_grid_point(point):
    name = run_name(point)
    assert re.fullmatch(r"[A-Za-z0-9_=,.+-]+", name) and len(name) <= 200
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")


@given(st.lists(st.dictionaries(st.sampled_from(["a", "b"]), values, min_size=2, max_size=2), min_size=2,
                max_size=6))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_two_different_points_never_share_a_folder(points):
    """Either the names differ, or sweep_points refuses the grid: a folder is never trained for two points."""
    grid = [{k: [v] for k, v in p.items()} for p in points]
    try:
        _, kept = sweep_points({"e": {"x": {"grid": grid}}}, "e", "x")
    except InvalidSweep as err:
        assert "would share the run folder" in str(err)
        return
    assert len({run_name(p) for p in kept}) == len(kept)


grokking_values = {
    "p": st.integers(-5, 200), "train_fraction": st.floats(-1, 2), "dropout": st.floats(-1, 2),
    "lr": st.floats(-1, 1), "batch_size": st.integers(-3, 600), "steps": st.integers(-3, 50),
    "weight_decay": st.floats(-1, 2), "operation": st.sampled_from(["div", "add", "pow", ""]),
    "heads": st.integers(0, 5), "device": st.sampled_from(["cpu", "auto", "gpu", "cuda:0", "cuda:x"]),
    "seed": st.integers(-2, 3) | st.booleans(), "eval_every": st.integers(-1, 10),
}


@given(st.dictionaries(st.sampled_from(sorted(grokking_values)), st.integers(0, 1)).flatmap(
    lambda chosen: st.fixed_dictionaries({k: grokking_values[k] for k in chosen})))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_set_value_is_accepted_or_refused_as_an_invalid_sweep(overrides):
    """Whatever --set gives, resolving the grid either succeeds or raises InvalidSweep (a message, no traceback),
    before any file could change; what it accepts satisfies every declared constraint."""
    params = {"grokking": {"tiny": {"fixed": {"p": 13, "steps": 10}, "grid": {"seed": [0]}}}}
    overrides = {k: v for k, v in overrides.items() if k != "seed"}  # seed is the grid's key (refused, see below)
    try:
        _, configs = resolve_grid("grokking", params, "tiny", overrides)
    except InvalidSweep:
        return
    config = configs[0]
    assert 0 < config["train_fraction"] < 1 and 0 <= config["dropout"] < 1 and config["lr"] > 0
    assert config["batch_size"] >= 1 and config["steps"] >= 1 and config["width"] % config["heads"] == 0


def test_set_on_the_grid_key_is_refused():
    params = {"grokking": {"tiny": {"fixed": {"p": 13}, "grid": {"seed": [0, 1]}}}}
    with pytest.raises(InvalidSweep, match="--set seed="):
        resolve_grid("grokking", params, "tiny", {"seed": 3})


class SeqFirst(nn.Module):
    """Tokens in batch-first, an attention module that works sequence-first (PyTorch's default)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.pool = nn.Flatten(0)  # a module whose output has no dimension of the batch's size

    def forward(self, tokens):
        x = self.embed(tokens).transpose(0, 1)
        y = self.attn(x, x, x)[0]
        self.pool(y.sum())
        return y


def test_capture_puts_each_example_in_one_row_or_refuses_by_name():
    torch.manual_seed(0)
    model, tokens = SeqFirst().eval(), torch.randint(0, 10, (100, 5))
    acts = actid.capture_activations(model, tokens, ["attn"])
    with torch.no_grad():
        x = model.embed(tokens).transpose(0, 1)
        by_hand = model.attn(x, x, x)[0].transpose(0, 1).reshape(100, -1)
    assert acts["attn"].shape == (100, 40) and torch.allclose(acts["attn"], by_hand, atol=1e-6)
    assert torch.equal(actid.capture_activations(model, tokens, ["attn"], batch_dim=1)["attn"], acts["attn"])
    with pytest.raises(ValueError, match="layer 'pool'.*no dimension of the batch's size 100"):
        actid.capture_activations(model, tokens, ["pool"])
    with pytest.raises(ValueError, match="layer 'attn': batch_dim=2"):
        actid.capture_activations(model, tokens, ["attn"], batch_dim=2)


@pytest.mark.parametrize("estimator", [actid.TwoNN(), actid.MLE(), actid.GRIDE()], ids=lambda e: type(e).__name__)
def test_every_estimator_refuses_too_few_usable_points_with_the_same_message(estimator):
    name = type(estimator).__name__
    with pytest.raises(ValueError, match=f"{name}: only 0 of 30 points are usable .* ties"):
        estimator.fit(torch.eye(30))
    with pytest.raises(ValueError, match="NaN"):
        estimator.fit(torch.full((30, 3), float("nan")))
    with pytest.raises(ValueError, match="distinct"):
        estimator.fit(torch.ones(30, 3))


@pytest.mark.parametrize("shard", ["2/2", "0/0", "1", "-1/2", "a/b"])
def test_an_impossible_shard_is_refused(shard, capsys):
    with pytest.raises(SystemExit):
        parse_args(["grokking", f"--shard={shard}"])
    assert "--shard takes i/n with 0 <= i < n" in capsys.readouterr().err


def test_jobs_must_be_positive_and_not_combined_with_a_shard(capsys):
    for argv, reason in ((["--jobs", "0"], "--jobs must be >= 1"),
                         (["--jobs", "2", "--shard", "1/2"], "give --jobs or --shard, not both")):
        with pytest.raises(SystemExit):
            parse_args(["grokking", *argv])
        assert reason in capsys.readouterr().err
