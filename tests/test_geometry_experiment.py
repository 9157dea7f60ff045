"""The geometry-of-memorization experiment (Stephenson et al. 2021): label-permutation bookkeeping, the three kinds
of class manifolds, a real tiny sweep with snapshots, and rewinding."""

import json

import pytest
import torch
import yaml

from actid.data.permuted import manifold_samples, permute_labels
from actid.experiments.geometry import KINDS, build, linear_layers, resolve, rewind_sets, rewinding_grid, rewound
from actid.paths import ROOT
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

    for kind, want in (("manifolds_unpermuted", "true"), ("manifolds_restored", "true"), ("manifolds_permuted", "train"),
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
    with pytest.raises(ValueError, match="permuted_fraction must be in"):
        resolve({"permuted_fraction": 0.0})


def test_rewound_state_takes_exactly_the_chosen_layers():
    final = {"fc1.weight": 1, "fc1.bias": 1, "fc2.weight": 1, "fc3.weight": 1}
    early = {k: 0 for k in final}
    assert rewound(final, early, ["fc2", "fc3"]) == {"fc1.weight": 1, "fc1.bias": 1, "fc2.weight": 0, "fc3.weight": 0}
    assert rewind_sets(["fc1", "fc2", "fc3"]) == [["fc1", "fc2", "fc3"], ["fc2", "fc3"], ["fc3"], ["fc1"], ["fc1", "fc2"]]


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
    everything = grid[(grid["first_layer"] == "fc1") & (grid["last_layer"] == "fc3")].set_index("step")["val_acc"]
    assert everything.to_dict() == rows.set_index("step")["val_acc"].to_dict()  # exactly epoch e's test accuracy
    final_acc = rows.set_index("step")["val_acc"].iloc[-1]
    assert (grid[grid["step"] == rows["step"].max()]["val_acc"] == final_acc).all()  # rewinding to the end: a no-op
    assert linear_layers(task.model) == ["fc1", "fc2", "fc3"]
    # one partial rewind against a hand-made model: fc3 from the first snapshot, the rest from the last
    first, last = run.load_snapshot(run.snapshot_steps()[0]), run.load_snapshot(run.snapshot_steps()[-1])
    task.model.load_state_dict({k: (first[k] if k.startswith("fc3.") else v) for k, v in last.items()})
    x, y = task.eval_sets["val"]
    with torch.no_grad():
        by_hand = int((task.model.eval()(x).argmax(1) == y).sum()) / len(y)
    step0 = grid[(grid["step"] == run.snapshot_steps()[0]) & (grid["first_layer"] == "fc3")]["val_acc"].iloc[0]
    assert by_hand == pytest.approx(step0, abs=1e-12)


def test_default_profile_is_one_half_permuted_run():
    profile = yaml.safe_load((ROOT / "params.yaml").read_text())["geometry"]["default"]
    assert profile["grid"] == {"permuted_fraction": [0.5]} and profile["fixed"]["dataset"] == "mnist5k"
    resolve(profile["fixed"])


@pytest.mark.slow
def test_figure_notebook_under_papermill(tmp_path, tiny_runs, run_notebook):
    done = run_notebook("fig_geometry", tmp_path / "out.ipynb", runs_dir=tiny_runs, out_dir=tmp_path / "fig")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    metrics = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    assert len(metrics["claims"]) == 3 and {c["figure"] for c in metrics["claims"]} == {"Stephenson"}
    written = {p.name for p in (tmp_path / "fig").iterdir()}
    assert {f"{stem}.{ext}" for stem in ("geometry_by_layer", "geometry_over_training", "rewinding")
            for ext in ("png", "pdf")} | {"rewinding.csv"} <= written
