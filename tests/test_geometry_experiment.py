"""The geometry-of-memorization experiment (Stephenson et al. 2021): label-permutation bookkeeping, the three kinds
of class manifolds, a real tiny sweep with snapshots, and rewinding."""

import json

import pandas as pd
import pytest
import torch
import yaml

from actid.data.permuted import manifold_samples, permute_labels
from actid.experiments.geometry import (EXPERIMENT, KINDS, REWINDING, build, resolve, rewind_sets, rewinding_grid,
                                        rewound, weight_layers)
from actid.paths import ROOT
from actid.pipeline.grid import resolve_point
from actid.runs import Run, load_runs
from actid.sweep import main as sweep_main


def test_permuting_shuffles_a_fraction_and_marks_exactly_the_changed_labels():
    labels = torch.arange(10).repeat(100)
    p = permute_labels(labels, 0.5, seed=3)
    assert torch.equal(p.true, labels) and torch.equal(p.permuted, p.train != labels)
    assert torch.equal(torch.bincount(p.train), torch.bincount(labels))  # a shuffle: the class counts stay
    assert 0.40 <= float(p.permuted.float().mean()) <= 0.5  # half shuffled, ~1 in 10 keep their label by chance
    assert torch.equal(permute_labels(labels, 0.5, seed=3).train, p.train)  # fixed by the seed
    assert not torch.equal(permute_labels(labels, 0.5, seed=4).train, p.train)
    with pytest.raises(ValueError, match=r"permuted fraction must be in \[0, 1\]"):
        permute_labels(labels, 1.5, seed=0)


def test_the_three_groupings_use_the_right_examples_and_labels():
    labels = torch.arange(10).repeat(60)
    p = permute_labels(labels, 0.5, seed=0)
    samples = manifold_samples(p, per_class=8, seed=0)
    assert not p.permuted[samples.unpermuted].any() and p.permuted[samples.permuted].all()
    assert torch.equal(torch.bincount(p.true[samples.unpermuted]), torch.full((10,), 8))  # by true label
    assert torch.equal(torch.bincount(p.train[samples.permuted]), torch.full((10,), 8))  # by training label
    assert (p.train[samples.permuted] != p.true[samples.permuted]).all()  # restored = the same examples, true labels
    with pytest.raises(ValueError, match="fewer than manifold_points"):
        manifold_samples(p, per_class=40, seed=0)


def test_build_wires_the_eval_sets_to_the_permutation():
    from actid.data.images import load_vectors, train_subset
    true_y = train_subset(load_vectors("mnist5k"), 500).train_y
    task, cfg = build({"train_images": 500, "manifold_points": 5, "width": 16, "epochs": 1, "device": "cpu"})

    def train_index(x):  # where each of these examples sits in the training set
        return (x.unsqueeze(1) == task.train_x.unsqueeze(0)).all(-1).int().argmax(1)

    for kind, want in (("manifolds_unpermuted", "true"), ("manifolds_restored", "true"),
                       ("manifolds_permuted", "train"),
                       ("unpermuted", "true"), ("permuted", "train")):
        x, y = task.eval_sets[kind]
        i = train_index(x)
        assert torch.equal(y, true_y[i] if want == "true" else task.train_y[i]), kind
        relabelled = task.train_y[i] != true_y[i]
        assert bool(~relabelled.any() if kind.endswith("unpermuted") else relabelled.all()), kind
    x_perm, y_perm = task.eval_sets["manifolds_permuted"]
    x_rest, y_rest = task.eval_sets["manifolds_restored"]
    assert torch.equal(x_perm, x_rest) and (y_perm != y_rest).all()
    x, y = task.eval_sets["permuted"]
    matches = (x.unsqueeze(1) == task.train_x.unsqueeze(0)).all(-1)  # where each permuted example sits in train
    assert (task.train_y[matches.int().argmax(1)] == y).all()  # evaluated against the labels it is trained on
    assert len(task.eval_sets["permuted"][1]) + len(task.eval_sets["unpermuted"][1]) == 500
    assert cfg.snapshot_every == 1 and set(cfg.measures) == {"id", *KINDS}


def test_resolve_refuses_derived_and_bad_keys():
    with pytest.raises(KeyError, match="derived from epochs"):
        resolve({"steps": 10})
    with pytest.raises(ValueError, match="permuted_fraction must be a number > 0 and < 1"):
        resolve({"permuted_fraction": 0.0})


def test_resolve_refuses_a_dataset_or_augmentation_the_model_cannot_take():
    with pytest.raises(ValueError, match="does not fit model 'mlp'"):
        resolve({"dataset": "cifar100"})
    with pytest.raises(ValueError, match="does not fit model 'vgg16'"):
        resolve({"model": "vgg16", "dataset": "mnist"})
    with pytest.raises(ValueError, match="model: vgg16 only"):
        resolve({"flip": True})
    with pytest.raises(ValueError, match="model must be one of"):
        resolve({"model": "resnet"})
    assert resolve({})["width"] == 512 and resolve({"model": "vgg16"})["width"] == 64  # each model's own default


def test_vgg16_is_torchvisions_network():
    """Loaded with torchvision's vgg16(num_classes=100) weights (ours in the same order, shape by shape), it computes
    the same logits; the bn variant lines up with vgg16_bn; our own init follows torchvision's scheme."""
    import torchvision

    from actid.models.vgg import VGG16, VGGConfig
    torch.manual_seed(0)
    theirs, ours = torchvision.models.vgg16(num_classes=100).eval(), VGG16(VGGConfig()).eval()
    pairs = list(zip(ours.state_dict().items(), theirs.state_dict().values()))
    assert len(pairs) == len(theirs.state_dict()) == 32 and all(a.shape == b.shape for (_, a), b in pairs)
    assert sum(p.numel() for p in ours.parameters()) == 134_670_244
    for name, module in ours.named_children():  # torchvision's init, before loading its weights
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * 9
                assert float(m.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), name
                assert not m.bias.any()
            elif isinstance(m, torch.nn.Linear):
                assert float(m.weight.detach().std()) == pytest.approx(0.01, rel=0.05) and not m.bias.any(), name
    ours.load_state_dict({key: value for (key, _), value in pairs})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    bn_theirs, bn_ours = torchvision.models.vgg16_bn(num_classes=10), VGG16(VGGConfig(n_classes=10, batch_norm=True))
    assert [v.shape for v in bn_ours.state_dict().values()] == [v.shape for v in bn_theirs.state_dict().values()]
    assert weight_layers(ours) == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2", "fc3"]


def test_vgg_run_on_cifar_files_rewinds_batchnorm_statistics_too(tmp_path):
    """A real tiny VGG-16 (with BatchNorm, crops and flips) on files in torchvision's CIFAR layout: rewinding every
    layer to an evaluation reproduces that evaluation's test accuracy exactly, which needs the BatchNorm running
    statistics rewound with their convs."""
    from actid.data.images import write_fake_cifar
    write_fake_cifar(str(tmp_path / "data"), "cifar10", n_train=400, n_test=100)
    params = {"profile": "tiny", "geometry": {"tiny": {
        "fixed": {"model": "vgg16", "dataset": "cifar10", "data_dir": str(tmp_path / "data"), "verify_md5": False,
                  "train_images": None, "manifold_points": 4, "width": 4, "hidden": 16, "batch_norm": True,
                  "crop_padding": 2, "flip": True, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 2,
                  "batch_size": 50, "eval_log_points": 3,
                  "measures": {"id": {"probe": "val", "estimator": "twonn"},  # two layers, no center removal: fast
                               **{kind: {"kind": "manifold_geometry", "probe": f"manifolds_{kind}",
                                         "layers": ["pool3", "fc2"], "every": 1, "center_subspace": False}
                                  for kind in KINDS}}},
        "grid": {"permuted_fraction": [0.5]}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sweep_main(["geometry", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "runs"),
                "--set", "device=cpu"])
    rows = load_runs(tmp_path / "runs")
    assert rows["finished"].all() and rows["unpermuted.capacity/pool3"].notna().all()
    assert rows["permuted.dimension/fc2"].notna().all() and rows["id/pool5"].notna().all()
    run = Run(tmp_path / "runs" / rows["run"].iloc[0])
    task, cfg = build({**run.config, "device": "cpu"})
    assert any(k.endswith("running_mean") for k in run.load_snapshot(run.snapshot_steps()[0]))
    grid = rewinding_grid(run, task, cfg.eval_batch_size)
    # the run computed the same grid into its directory when it finished (the notebook only reads that file)
    pd.testing.assert_frame_equal(pd.read_csv(run.path / REWINDING), grid, check_exact=True)
    everything = grid[(grid["first_layer"] == "conv1") & (grid["last_layer"] == "fc3")].set_index("step")["val_acc"]
    assert everything.to_dict() == rows.set_index("step")["val_acc"].to_dict()
    assert len(grid) == len(run.snapshot_steps()) * (16 + 15)  # every suffix and proper prefix of 16 layers


def test_rewound_state_takes_exactly_the_chosen_layers():
    final = {"fc1.weight": 1, "fc1.bias": 1, "fc2.weight": 1, "fc3.weight": 1}
    early = {k: 0 for k in final}
    assert rewound(final, early, ["fc2", "fc3"]) == {"fc1.weight": 1, "fc1.bias": 1, "fc2.weight": 0, "fc3.weight": 0}
    assert rewind_sets(["fc1", "fc2", "fc3"]) == [["fc1", "fc2", "fc3"], ["fc2", "fc3"], ["fc3"],
                                                  ["fc1"], ["fc1", "fc2"]]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One real run of the experiment, small: 300 digits, half permuted, width 32, 5 epochs, 4 evaluations."""
    tmp = tmp_path_factory.mktemp("geometry")
    params = {"profile": "tiny", "geometry": {"tiny": {
        "fixed": {"train_images": 300, "manifold_points": 6, "width": 32, "epochs": 5, "eval_log_points": 4},
        "grid": {"permuted_fraction": [0.5]}}}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    sweep_main(["geometry", "--params", str(tmp / "params.yaml"), "--out", str(tmp / "runs"), "--set", "device=cpu"])
    return tmp / "runs"


def test_tiny_sweep_tracks_every_kind_and_rewinding_all_layers_reproduces_each_evaluation(tiny_runs):
    rows = load_runs(tiny_runs)
    assert rows["finished"].all()
    for kind in KINDS:
        for key in ("capacity", "radius", "dimension", "center_corr"):
            for layer in ("relu1", "relu2", "fc3"):
                assert rows[f"{kind}.{key}/{layer}"].notna().all(), (kind, key, layer)
    for column in ("permuted_acc", "unpermuted_acc", "val_acc", "id/relu2"):
        assert rows[column].notna().all()
    run = Run(tiny_runs / rows["run"].iloc[0])
    task, cfg = build({**run.config, "device": "cpu"})
    assert run.snapshot_steps() == sorted(rows["step"].tolist())
    grid = rewinding_grid(run, task, cfg.eval_batch_size)
    # the run computed the same grid into its directory when it finished (the notebook only reads that file)
    pd.testing.assert_frame_equal(pd.read_csv(run.path / REWINDING), grid, check_exact=True)
    everything = grid[(grid["first_layer"] == "fc1") & (grid["last_layer"] == "fc3")].set_index("step")["val_acc"]
    assert everything.to_dict() == rows.set_index("step")["val_acc"].to_dict()  # exactly epoch e's test accuracy
    final_acc = rows.set_index("step")["val_acc"].iloc[-1]
    assert (grid[grid["step"] == rows["step"].max()]["val_acc"] == final_acc).all()  # rewinding to the end: a no-op
    assert weight_layers(task.model) == ["fc1", "fc2", "fc3"]
    # one partial rewind against a hand-made model: fc3 from the first snapshot, the rest from the last
    first, last = run.load_snapshot(run.snapshot_steps()[0]), run.load_snapshot(run.snapshot_steps()[-1])
    task.model.load_state_dict({k: (first[k] if k.startswith("fc3.") else v) for k, v in last.items()})
    x, y = task.eval_sets["val"]
    with torch.no_grad():
        by_hand = int((task.model.eval()(x).argmax(1) == y).sum()) / len(y)
    step0 = grid[(grid["step"] == run.snapshot_steps()[0]) & (grid["first_layer"] == "fc3")]["val_acc"].iloc[0]
    assert by_hand == pytest.approx(step0, abs=1e-12)


def test_profiles_resolve_default_one_half_permuted_mlp_run_paper_vgg16_on_cifar100():
    profiles = yaml.safe_load((ROOT / "params.yaml").read_text())["geometry"]
    assert profiles["default"]["grid"] == {"permuted_fraction": [0.5]}
    default = resolve_point(EXPERIMENT, profiles["default"]["fixed"])  # as the sweep does: lenses join the measures
    assert default["dataset"] == "mnist5k" and default["model"] == "mlp"
    assert {"permuted", "id", "nc1", "cka_drift"} <= set(default["measures"]) and "lenses" not in default
    paper = resolve(profiles["paper"]["fixed"])
    assert (paper["model"], paper["dataset"], paper["train_images"], paper["width"], paper["hidden"]) == \
        ("vgg16", "cifar100", None, 64, 4096)
    assert paper["measures"]["permuted"]["layers"] == [f"pool{b}" for b in range(1, 6)] + ["fc1", "fc2", "fc3"]


@pytest.mark.slow
def test_figure_notebook_under_papermill(tmp_path, tiny_runs, run_notebook):
    done = run_notebook("fig_geometry", tmp_path / "out.ipynb", runs_dir=tiny_runs, out_dir=tmp_path / "fig")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    metrics = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    assert len(metrics["claims"]) == 3 and {c["figure"] for c in metrics["claims"]} == {"Stephenson"}
    written = {p.name for p in (tmp_path / "fig").iterdir()}
    assert {f"{stem}.{ext}" for stem in ("geometry_by_layer", "geometry_over_training", "rewinding")
            for ext in ("png", "pdf")} | {"rewinding.csv"} <= written
