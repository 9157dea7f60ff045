"""Measures as plug-ins: declared in a config, recorded in config.json, run by the loop or a Tracker."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import actid
from actid import schema
from actid.experiments.grokking import build, resolve
from actid.measures import REGISTRY, IntrinsicDimension, build_measure, resolve_measures
from actid.runs import Run, load_runs
from actid.train import train

CHEAP = {
    "id": {"options": {"n_resamples": 3}},
    "participation_ratio": {},
    "sparsity": {"threshold": 0.1, "layers": ["blocks.1.mlp"]},
    "representation_alignment": {"layers": ["blocks.1.mlp"]},
    "gradient_alignment": {"probe": "small"},
    "circuit_complexity": {"layers": ["blocks.1.mlp.fc"], "probe": "small", "every": 2},
    "weight_entropy": {},
    "weight_norm": {},
    "manifold_geometry": {"probe": "balanced", "layers": ["blocks.1.mlp"], "n_t": 20, "n_reps": 2, "every": 2},
}
TINY = {"p": 13, "train_fraction": 0.5, "width": 32, "heads": 2, "mlp_hidden": 64, "batch_size": 32,
        "steps": 12, "eval_every": 4, "device": "cpu", "measures": CHEAP,
        "probes": {"val": {"split": "val"}, "small": {"split": "train", "max_points": 30},
                   "balanced": {"split": "train", "per_class": 2}}}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("runs") / "run")
    config = resolve(TINY)
    run.write_config(config, {"experiment": "grokking", "profile": "test"})
    task, cfg = build(config)
    return run, task, train(task, cfg, run.path, progress=False)


def test_every_parameter_of_every_measure_lands_in_config_json(tracked):
    run, _, _ = tracked
    recorded = json.loads(run.config_path.read_text())["config"]
    assert set(recorded["measures"]) == set(CHEAP)
    for name, params in recorded["measures"].items():
        cls = REGISTRY[params["kind"]]
        fields = {f.name for f in dataclasses.fields(cls) if f.name != "name"}
        assert set(params) == (fields | {"kind"}) - ({"also"} - set(params)), name  # also: only when set
        assert build_measure(name, params).params() == params  # config.json rebuilds the same measure
    assert recorded["measures"]["id"]["options"] == {"discard_fraction": 0.1, "n_resamples": 3,
                                                     "subsample_fraction": 0.9, "seed": 0, "resample_neighbors": 16}
    assert recorded["probes"]["small"] == {"split": "train", "max_points": 30, "seed": 2}


def test_the_loop_writes_every_measure_under_its_own_columns(tracked):
    _, task, df = tracked
    params = [name for name, _ in task.model.named_parameters()]
    expected = ([schema.column("id", layer) for layer in task.id_layers] + [schema.LLID, schema.PID]
                + [schema.column("participation_ratio", layer) for layer in task.id_layers]
                + ["sparsity/blocks.1.mlp", "representation_alignment/blocks.1.mlp", "gradient_alignment/logits",
                   "weight_entropy/total", "weight_norm/total", "circuit_complexity/blocks.1.mlp.fc"]
                + [f"{k}/blocks.1.mlp" for k in ("capacity", "radius", "dimension", "center_corr")]
                + [schema.column("gradient_alignment", p) for p in params]
                + [schema.column("weight_norm", p) for p in params])
    missing = [c for c in expected if c not in df]
    assert not missing
    sparse = ["circuit_complexity/blocks.1.mlp.fc", "capacity/blocks.1.mlp", "radius/blocks.1.mlp",
              "dimension/blocks.1.mlp", "center_corr/blocks.1.mlp"]
    assert df.drop(columns=sparse).notna().all().all()
    # every: 2 -> evaluations 0, 2 and the last one (steps 0, 8, 12)
    for column in sparse:
        assert df.loc[df[column].notna(), "step"].tolist() == [0, 8, 12], column
    assert (df["capacity/blocks.1.mlp"].dropna() > 0).all()
    assert df["center_corr/blocks.1.mlp"].dropna().between(0, 1).all()
    assert df["sparsity/blocks.1.mlp"].between(0, 1).all()
    assert (df["representation_alignment/blocks.1.mlp"] <= 1).all()


def test_measures_see_the_model_in_eval_mode_and_leave_its_modes(tracked):
    _, task, _ = tracked
    assert task.model.training  # the loop trains in train mode; evaluations do not change it
    model = task.model
    model.blocks[0].mlp.eval()  # a user's choice inside a training model
    from actid.evaluation import evaluate, probe_sets
    from actid.measures import build_measures, build_probes
    from actid.train import TrainConfig
    cfg = TrainConfig(measures=CHEAP, probes=TINY["probes"])
    probes = probe_sets(task, build_probes(cfg.probes))
    evaluate(task, build_measures(cfg.measures), probes, 0, 0, True, cfg.eval_batch_size)
    assert model.training and not model.blocks[0].mlp.training and model.blocks[1].mlp.training


def test_bad_measure_specs_are_refused_with_the_fix():
    with pytest.raises(KeyError, match="unknown measure kind 'idd'"):
        resolve_measures({"idd": {}})
    with pytest.raises(KeyError, match=r"has no parameter\(s\) \['treshold'\]"):
        resolve_measures({"sparsity": {"treshold": 0.1}})
    with pytest.raises(TypeError, match="threshold"):
        resolve_measures({"sparsity": {}})
    with pytest.raises(TypeError, match=r"write them as \['3'\]"):
        resolve_measures({"id": {"layers": [3]}})
    with pytest.raises(KeyError, match="name probes that are not defined"):
        resolve({**TINY, "measures": {"id": {"probe": "test"}}})


def test_a_second_id_estimator_gets_its_own_columns(tmp_path):
    config = resolve({**TINY, "measures": {"id": {"options": {"n_resamples": 0}},
                                           "mle": {"kind": "id", "estimator": "mle", "options": {"k": 10}}}})
    df = train(*build(config), tmp_path / "run", progress=False)
    assert "mle/blocks.1.mlp" in df and "mle/llid" in df and "mle/pid" in df and "llid" in df
    assert not df["mle/llid"].equals(df["llid"])


def test_the_skdim_adapter_returns_skdims_own_number():
    skdim = pytest.importorskip("skdim")
    X = torch.randn(500, 3) @ torch.randn(3, 12)
    ours = IntrinsicDimension(estimator="skdim.MLE", options={"K": 10}, probe="p", layers=["x"])
    ev = actid.measures.Evaluation(model=nn.Identity(), step=0, probes={}, activations={"p": {"x": X}},
                                   llid_layer="x")
    expected = skdim.id.MLE(K=10).fit(X.double().numpy()).dimension_
    assert ours(ev)["id/x"] == pytest.approx(expected, rel=1e-12)
    assert ours.params()["options"]["K"] == 10 and "neighborhood_based" in ours.params()["options"]


def test_mle_and_gride_beside_twonn_share_its_search_and_equal_the_estimators_alone():
    from actid.estimators import GRIDE, MLE, TwoNN
    torch.manual_seed(0)
    acts = {"a": torch.randn(600, 4) @ torch.randn(4, 20), "b": torch.randn(600, 7) @ torch.randn(7, 30)}
    ev = actid.measures.Evaluation(model=nn.Identity(), step=0, probes={}, activations={"p": acts},
                                   llid_layer="b")
    options = {"n_resamples": 5, "subsample_fraction": 0.9, "seed": 3}
    plain = IntrinsicDimension(probe="p", layers=["a", "b"], options=options)(ev)
    row = IntrinsicDimension(probe="p", layers=["a", "b"], options=options, also=["mle", "gride"])(ev)
    for layer, X in acts.items():
        assert row[f"id/{layer}"] == plain[f"id/{layer}"] == TwoNN(**options).fit(X).dimension_
        assert row[f"id_mle/{layer}"] == pytest.approx(MLE().fit(X).dimension_, rel=1e-12)
        assert row[f"id_gride/{layer}"] == pytest.approx(GRIDE().fit(X).dimension_, rel=1e-12)
        assert row[f"id_points/{layer}"] == TwoNN(**options).fit(X).n_used_
    assert row["llid"] == row["id/b"] and row["id_mle/llid"] == row["id_mle/b"]
    assert row["id_gride/pid"] == max(row["id_gride/a"], row["id_gride/b"])
    assert "also" not in IntrinsicDimension(probe="p").params()  # older runs keep their identity
    assert IntrinsicDimension(probe="p", also=["mle"]).params()["also"] == ["mle"]
    with pytest.raises(ValueError, match="also must be a list of one of"):
        IntrinsicDimension(probe="p", also=["bogus"])
    with pytest.raises(ValueError, match="needs an actid estimator other than 'mle'"):
        IntrinsicDimension(probe="p", estimator="mle", also=["mle"])


def test_tracker_rows_load_like_sweep_rows(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(200, 8, 8), torch.randint(0, 4, (200,))
    with pytest.raises(TypeError, match=r"pass \['2'\]"):
        actid.Tracker(model, (x, y), layers=[2], run_dir=tmp_path / "bad")
    tracker = actid.Tracker(model, (x, y), layers=["2", "4"], run_dir=tmp_path / "mine", config={"lr": 0.1},
                            measures={"id": {"options": {"n_resamples": 2}}, "weight_norm": {},
                                      "sparsity": {"threshold": 0.0}})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        tracker.measure(step * 10)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    df = load_runs(tmp_path / "mine")
    assert df["step"].tolist() == [0, 10, 20] and df["lr"].eq(0.1).all()
    assert {"val_loss", "val_acc", "id/2", "id/4", "llid", "pid", "weight_norm/total", "sparsity/4"} <= set(df)
    assert (df["llid"] == df["id/4"]).all() and df.notna().all().all()
    recorded = json.loads((tmp_path / "mine" / "config.json").read_text())["config"]
    assert recorded["measures"]["sparsity"]["threshold"] == 0
    with pytest.raises(ValueError, match="steps must increase"):
        tracker.measure(5)


@pytest.mark.slow
def test_track_your_model_notebook_runs_under_papermill(tmp_path):
    import subprocess
    import sys

    import papermill

    from actid.paths import ROOT
    source = tmp_path / "track.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-o", str(source),
                    "notebooks/track_your_model.py"], check=True, capture_output=True, cwd=ROOT)
    papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters={"run_dir": str(tmp_path / "runs"), "steps": 4, "measure_every": 2})
    (stamp,) = (tmp_path / "runs").iterdir()
    resnet, mlp = load_runs(stamp / "resnet18"), load_runs(stamp / "mlp")
    assert resnet["step"].tolist() == mlp["step"].tolist() == [0, 2, 4]
    assert {"id/layer1", "id/avgpool", "llid", "participation_ratio/avgpool"} <= set(resnet)
    assert {"id/2", "id/4", "gradient_alignment/1.weight", "gradient_alignment/logits"} <= set(mlp)
    assert not (stamp / "not_written").exists()  # the refused Tracker wrote nothing
