"""The integrations: the torchmetrics metric equals actid's estimators (one process and two), the Lightning callback
writes actid runs under DDP and resumes exactly, the token-pooling protocols equal pooling by hand, and the live
mirror equals metrics.csv, stays inside the run, keeps `dvc repro` a no-op and renders with `dvc plots show`."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import actid
from actid.integrations.metric import IntrinsicDimension, stream_keys
from actid.runs import Run
from conftest import linear_subspace

ROOT = Path(__file__).resolve().parents[1]
VEGA = ROOT / "build" / "vega"
SCREENSHOT = ROOT / "build" / "test-artifacts" / "dvc_plots.png"


def _run(cmd, cwd=ROOT, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# --- torchmetrics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, estimator", [("twonn", actid.TwoNN()), ("mle", actid.MLE(k=10)),
                                             ("gride", actid.GRIDE())])
def test_metric_equals_the_estimator_on_the_concatenated_batches(name, estimator):
    X = linear_subspace(2000, 7, 50)
    metric = IntrinsicDimension(name, {"k": 10} if name == "mle" else None)
    for batch in torch.split(X, [300, 1, 699, 1000]):
        metric.update(batch.reshape(len(batch), 5, 10))  # rows are flattened, like capture_activations
    assert float(metric.compute()) == estimator.fit(X).dimension_
    assert metric.result_.n_used_ == estimator.n_used_


def _splitmix64_keys(seed, rank, n):
    """An independent splitmix64 (Python integers) of the reservoir keys: a stream whose start hashes (seed, rank)."""
    mask = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)
    golden = 0x9E3779B97F4A7C15
    base = mix(mix((seed * golden + 1) & mask) ^ ((rank * 0xD1B54A32D192ED03) & mask))
    return torch.tensor([mix((i * golden + base) & mask) >> 1 for i in range(n)])


def test_reservoir_keeps_the_rows_with_the_smallest_keys_however_the_stream_is_cut():
    X = linear_subspace(3000, 5, 30, seed=1)
    keys = _splitmix64_keys(seed=7, rank=0, n=len(X))
    assert torch.equal(stream_keys(7, 0, 0, len(X)), keys)
    keep = torch.sort(torch.argsort(keys)[:800]).values
    results = []
    for sizes in ([3000], [1, 999, 2000], [128] * 23 + [56]):
        metric = IntrinsicDimension("twonn", max_points=800, seed=7)
        for batch in torch.split(X, sizes):
            metric.update(batch)
        assert torch.equal(metric.points[0], X[keep]), sizes  # bounded memory: only the sample is held
        results.append(float(metric.compute()))
    assert results == [actid.TwoNN().fit(X[keep]).dimension_] * 3


def test_reservoir_streams_of_ranks_and_seeds_are_unrelated():
    keys = {(seed, rank): stream_keys(seed, rank, 0, 2000) for seed in (0, 1, 2**32) for rank in (0, 1)}
    for a in keys:
        for b in keys:
            if a != b:  # no shared keys, so no stream is a shifted copy of another
                assert not set(keys[a].tolist()) & set(keys[b].tolist()), (a, b)


def test_calling_the_metric_only_accumulates():
    X = linear_subspace(600, 4, 12)
    metric = IntrinsicDimension()
    for batch in X.split(5):  # batches too small for an ID of their own
        assert metric(batch) is None
    assert float(metric.compute()) == actid.TwoNN().fit(X).dimension_


def test_metric_refuses_bad_input():
    with pytest.raises(ValueError, match="not one of"):
        IntrinsicDimension("pca")
    with pytest.raises(ValueError, match="max_points"):
        IntrinsicDimension(max_points=5)
    with pytest.raises(TypeError):
        IntrinsicDimension("mle", {"neighbours": 3})
    metric = IntrinsicDimension()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(torch.randn(50, 8))
    with pytest.raises(ValueError, match="features"):
        metric.update(torch.randn(50, 9))
    metric.update(torch.full((5, 8), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        metric.compute()


@pytest.mark.slow
def test_metric_under_ddp_equals_the_estimator_on_the_rank_order_concatenation(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from ddp_metric import SHARDS, data
    _run([sys.executable, "tests/ddp_metric.py", str(tmp_path)])
    values = json.loads((tmp_path / "metric.json").read_text())
    X = data()
    assert values["twonn"] == actid.TwoNN().fit(X).dimension_
    assert values["mle"] == actid.MLE(k=10).fit(X).dimension_
    keys = torch.cat([_splitmix64_keys(3, rank, n) for rank, n in enumerate(SHARDS)])
    keep = torch.sort(torch.argsort(keys)[:1000]).values  # a uniform sample of both processes' rows
    assert values["twonn_reservoir"] == actid.TwoNN().fit(X[keep]).dimension_
    assert values["n_used_reservoir"] == 1000


# --- Lightning ---------------------------------------------------------------------------------------------


def _fit(out, devices, epochs, ckpt=None, check=True):
    cmd = [sys.executable, "tests/lightning_fit.py", str(out), str(devices), str(epochs),
           *([str(ckpt)] if ckpt else [])]
    if check:
        return _run(cmd, timeout=300)  # a rank left waiting for another would hang: fail instead
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_lightning_ddp_fit_writes_an_actid_run_logs_each_row_and_resumes_exactly(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from lightning_fit import LAYERS, MEASURES, Net, data
    whole = tmp_path / "whole"
    _fit(whole, devices=2, epochs=2)
    rows = actid.runs.load_runs(whole / "run")
    # 1,024 examples, batches of 64 split over 2 processes: 8 steps an epoch; a row every 4 steps and at the end
    assert rows["step"].tolist() == [0, 4, 8, 12, 16]
    meta = json.loads((whole / "run" / "config.json").read_text())
    assert meta["experiment"] == "lightning" and meta["config"]["world_size"] == 2
    assert meta["config"]["hparams"] == {"width": 32, "lr": 0.1}
    logged = pd.read_csv(whole / "logs" / "version_0" / "metrics.csv").dropna(subset=["actid/llid"])
    assert logged["step"].tolist() == rows["step"].tolist()
    for column in ["llid", "pid", "val_acc", "participation_ratio/body.3"]:
        assert logged[f"actid/{column}"].tolist() == pytest.approx(rows[column].tolist(), rel=1e-12)
    # rank 0 measured the model being trained: the last row equals a Tracker on the final weights
    model = Net()
    model.load_state_dict(torch.load(whole / "final.pt"))
    x, y = data()
    again = actid.Tracker(model, (x[:400], y[:400]), layers=LAYERS, run_dir=tmp_path / "check",
                          measures=MEASURES).measure(16)
    last = rows.iloc[-1]
    for column in ["llid", "id/body.1", "participation_ratio/body.1", "val_loss", "val_acc"]:
        assert last[column] == pytest.approx(again[column], rel=1e-9), column
    # stopped after 1 epoch, with a row measured after its checkpoint, then resumed on both processes
    split = tmp_path / "split"
    _fit(split, devices=2, epochs=1)
    metrics = split / "run" / "metrics.csv"
    metrics.write_text(metrics.read_text() + "12" + ",0" * 10 + "\n")
    _fit(split, devices=2, epochs=2, ckpt=split / "checkpoints" / "last.ckpt")
    pd.testing.assert_frame_equal(pd.read_csv(metrics), pd.read_csv(whole / "run" / "metrics.csv"),
                                  check_exact=False, rtol=1e-9)
    assert (split / "run" / "metrics.csv.bad-1").exists()  # the later row, kept aside


@pytest.mark.slow
def test_a_second_fit_into_a_run_without_its_checkpoint_is_refused(tmp_path):
    _fit(tmp_path, devices=1, epochs=1)
    before = (tmp_path / "run" / "metrics.csv").read_text()
    proc = _fit(tmp_path, devices=1, epochs=1, check=False)
    assert proc.returncode != 0 and "already holds 5 rows of an earlier fit" in proc.stderr
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_callback_checks_its_schedule():
    from actid.integrations.lightning import MeasureCallback
    probe = (torch.randn(20, 3), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        MeasureCallback(probe, layers=["0"], run_dir="x", every_n_steps=2, every_n_epochs=1)
    with pytest.raises(ValueError, match="positive integer"):
        MeasureCallback(probe, layers=["0"], run_dir="x", every_n_steps=0)


# --- Hugging Face and token pooling ------------------------------------------------------------------------


def _by_hand(hidden, mask, pooling):
    points = []
    for h, m in zip(hidden, mask.bool()):
        tokens = h[m]
        points += [tokens[-1]] if pooling == "last" else [tokens.mean(0)] if pooling == "mean" else list(tokens)
    return torch.stack(points)


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_pooling_equals_pooling_by_hand_for_right_left_and_no_padding(pooling):
    from actid.integrations.hf import pool
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 5, 4, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    right = (torch.arange(5) < lengths[:, None]).long()
    for mask in (right, right.flip(1), torch.ones(6, 5, dtype=torch.long)):
        assert torch.allclose(pool(hidden, mask, pooling), _by_hand(hidden, mask, pooling), atol=1e-6)


def test_half_precision_states_are_pooled_in_float32():
    from actid.integrations.hf import pool
    hidden = torch.randn(3, 301, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 301, dtype=torch.long)
    pooled = pool(hidden.bfloat16(), mask, "mean")
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, hidden.bfloat16().float().mean(1), rtol=1e-6, atol=1e-6)


def test_pooling_refuses_bad_masks():
    from actid.integrations.hf import pool
    hidden = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="no token"):
        pool(hidden, torch.tensor([[1, 1, 0], [0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="0 .padding. and 1"):
        pool(hidden, torch.tensor([[1, 2, 0], [1, 1, 1]]), "last")
    with pytest.raises(ValueError, match="shape"):
        pool(hidden, torch.ones(2, 4), "last")
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, None, "first")


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=16, n_embd=48, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (160, 12), generator=g)
    lengths = torch.randint(3, 13, (160,), generator=g)
    mask = (torch.arange(12) < lengths[:, None]).long()
    return GPT2Model(config).eval(), ids * mask, mask  # right padding with token 0


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_gpt2_hidden_states_equal_each_sequence_run_alone(gpt2, pooling):
    from actid.integrations.hf import hidden_states, id_profile
    model, ids, mask = gpt2
    states = hidden_states(model, ids, mask, pooling=pooling, batch_size=50)
    assert list(states.points) == ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert states.protocol["pooling"] == pooling and states.protocol["padding"] == "right"
    with torch.no_grad():  # the reference: every sequence alone, without padding or mask, pooled by hand
        alone = [model(input_ids=i[m.bool()][None], output_hidden_states=True).hidden_states
                 for i, m in zip(ids, mask)]
    n_points = int(mask.sum()) if pooling == "all" else len(ids)
    for layer, name in enumerate(states.points):
        reference = torch.cat([_by_hand(h[layer], torch.ones(h[layer].shape[:2]), pooling) for h in alone])
        assert states.points[name].shape == (n_points, 48)
        assert torch.allclose(states.points[name], reference, atol=2e-5), name
    profile = id_profile(model, ids, mask, pooling=pooling, batch_size=50)
    assert profile["layer"].tolist() == list(states.points) and profile.attrs["protocol"]["pooling"] == pooling
    for _, row in profile.iterrows():
        assert row["n_points"] == n_points
        layer = int(row["layer"].split(".")[1])
        if pooling == "all":
            # every token: sequences that share a prefix share its states, which the padded batch and the reference
            # may compute equal or 1e-8 apart depending on the CPU (1085 against 1096 distinct points of 1174 on an
            # AMD EPYC), and TwoNN's r2/r1 on such near-duplicates moves the estimate by ~1%; the points were
            # compared above, so the profile is compared with TwoNN on the same points
            reference = states.points[row["layer"]]
        else:
            reference = torch.cat([_by_hand(h[layer], torch.ones(h[layer].shape[:2]), pooling) for h in alone])
        assert row["dimension"] == pytest.approx(actid.TwoNN().fit(reference).dimension_, rel=1e-3)


def test_any_module_by_forward_hooks_the_grokking_transformer():
    from actid.integrations.hf import hidden_states
    from actid.models.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(vocab_size=99, n_classes=97).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.randint(0, 97, (300,), generator=g), torch.full((300,), 97),
                          torch.randint(1, 97, (300,), generator=g), torch.full((300,), 98)], 1)
    layers = model.id_layers
    states = hidden_states(model, tokens, pooling="last", layers=layers)
    assert states.protocol["source"] == "forward hooks" and states.protocol["padding"] == "none"
    # actid's grokking measure flattens the 4 positions (512 features): its last 128 are the last token
    flat = actid.capture_activations(model, tokens, layers)
    for layer in layers:
        assert states.points[layer].shape == (300, 128)
        assert torch.equal(states.points[layer], flat[layer][:, -128:]), layer
    everything = hidden_states(model, tokens, pooling="all", layers=layers[:1]).points[layers[0]]
    assert torch.equal(everything, flat[layers[0]].reshape(1200, 128))
    with pytest.raises(ValueError, match="not \\(batch, seq=4"):  # the training path computes the last position only
        hidden_states(model, tokens, pooling="last", layers=[model.llid_layer], forward_kwargs={"all_positions": False})
    with pytest.raises(ValueError, match="name the layers"):
        hidden_states(model, tokens, pooling="last")

    class Skips(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Embedding(99, 8), torch.nn.Linear(8, 8)

        def forward(self, ids):
            return self.used(ids)
    with pytest.raises(ValueError, match=r"\['unused'\] did not run"):
        hidden_states(Skips(), tokens, pooling="last", layers=["used", "unused"])


# --- live view ---------------------------------------------------------------------------------------------


def _tracker_rows(run_dir, live, steps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 10, generator=g), torch.randint(0, 3, (300,), generator=g)
    tracker = actid.Tracker(model, (x, y), layers=["1"], run_dir=run_dir, live=live)
    for step in steps:
        tracker.measure(step)
        with torch.no_grad():
            model[0].weight.mul_(1.3)
    return pd.read_csv(Path(run_dir) / "metrics.csv")


def _tensorboard_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_live_mirror_equals_metrics_csv_and_stays_in_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _tracker_rows("mine", "dvclive,tensorboard", [0, 10, 20])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing at the working directory's root
    live = tmp_path / "mine" / "dvclive"
    assert not list(live.rglob("dvc.yaml")) and not (live / "report.html").exists()
    for column in ["val_acc", "llid", "id/1", "id_err/1"]:
        tsv = pd.read_csv(live / "plots" / "metrics" / f"{column}.tsv", sep="\t")
        assert tsv["step"].tolist() == [0, 10, 20]
        assert tsv[column.split("/")[-1]].tolist() == rows[column].tolist()  # exact: the same floats
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 20 and summary["llid"] == rows["llid"].iloc[-1]
    assert summary["id"]["1"] == rows["id/1"].iloc[-1]
    scalars = _tensorboard_scalars(tmp_path / "mine" / "tensorboard")
    assert [s for s, _ in scalars["llid"]] == [0, 10, 20]
    assert [v for _, v in scalars["llid"]] == pytest.approx(rows["llid"].tolist(), rel=1e-6)  # float32 events


def test_live_mirror_is_rebuilt_from_the_rows_a_resumed_run_holds(tmp_path):
    rows = [{"step": s, "val_acc": 0.1 * s, "llid": 10.0 - s} for s in range(4)]
    Run(tmp_path, live=("dvclive", "tensorboard")).write_rows(rows)  # a first process wrote 4 rows
    resumed = Run(tmp_path, live=("dvclive", "tensorboard"))  # a second one resumes from a checkpoint of 2
    resumed.write_rows(rows[:2])
    resumed.write_rows(rows[:2] + [{"step": 2, "val_acc": 0.5, "llid": 7.5}])
    tsv = pd.read_csv(tmp_path / "dvclive" / "plots" / "metrics" / "llid.tsv", sep="\t")
    assert tsv.values.tolist() == [[0, 10.0], [1, 9.0], [2, 7.5]]
    assert _tensorboard_scalars(tmp_path / "tensorboard")["llid"] == [(0, 10.0), (1, 9.0), (2, 7.5)]


def test_a_failing_mirror_warns_and_leaves_the_run_and_foreign_files_alone(tmp_path):
    foreign = tmp_path / "dvclive" / "metrics.json"  # a user's own DVCLive output where the mirror would go
    foreign.parent.mkdir()
    foreign.write_text('{"mine": 1}')
    rows = [{"step": 0, "llid": 3.0}, {"step": 1, "llid": float("nan")}]
    with pytest.warns(RuntimeWarning, match="was not made by actid's live mirror"):
        Run(tmp_path, live=("dvclive",)).write_rows(rows)
    assert foreign.read_text() == '{"mine": 1}'
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [0, 1]


def test_a_missing_value_is_not_shown_stale_in_the_summary(tmp_path):
    run = Run(tmp_path, live=("dvclive",))
    run.write_rows([{"step": 0, "llid": 3.0, "id/a": 2.0}])
    run.write_rows([{"step": 0, "llid": 3.0, "id/a": 2.0}, {"step": 1, "llid": float("nan"), "id/a": 2.5}])
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert summary == {"id": {"a": 2.5}, "step": 1}


def test_live_sinks_are_checked_and_a_missing_extra_is_named(tmp_path, monkeypatch):
    from actid.integrations.live import LiveMirror, sinks_from_env
    monkeypatch.setenv("ACTID_LIVE", "dvclive,wandb")
    with pytest.raises(ValueError, match="ACTID_LIVE: unknown live sink.*wandb"):
        sinks_from_env()
    proc = subprocess.run([sys.executable, "-m", "actid.sweep", "grokking", "--live", "wandb"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--live: unknown live sink(s) ['wandb']" in proc.stderr
    monkeypatch.setitem(sys.modules, "dvclive", None)
    with pytest.raises(ImportError, match=r"pip install 'actid\[live\]'"):
        LiveMirror(tmp_path, ("dvclive",))


@pytest.mark.slow
@pytest.mark.browser
def test_live_sweep_in_dvc_repro_stays_a_no_op_and_dvc_plots_show_renders(tmp_path, browser_tools, chromium,
                                                                          record_property):
    """A DVC project whose stage trains a sweep with --live: the mirror is inside the stage's output, so the second
    `dvc repro` does nothing; `dvc plots show` of the runs' declared plots and of a live folder render in Chromium
    (with the Vega scripts that DVC's page loads from a CDN, fetched by scripts/fetch_vega.py)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    if not all((VEGA / f"{n}.min.js").exists() for n in ("vega", "vega-lite", "vega-embed")):
        if os.environ.get("ACTID_REQUIRE_BROWSER") == "1":
            pytest.fail("the Vega scripts are missing: python scripts/fetch_vega.py (ACTID_REQUIRE_BROWSER=1)")
        pytest.skip("the Vega scripts are missing: python scripts/fetch_vega.py")
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    run = "runs/grokking/weight_decay=1.0,seed=0"
    (repo / "dvc.yaml").write_text(f"""stages:
  train:
    cmd: {sys.executable} -m actid.sweep grokking --set steps=4 eval_every=2 --live dvclive,tensorboard
    params: [grokking]
    outs: [runs/grokking]
plots:
  - accuracy:
      x: step
      y:
        "{run}/metrics.csv": [train_acc, val_acc]
  - llid:
      x: step
      y:
        "{run}/metrics.csv": llid
""")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"]):
        _run(cmd, cwd=repo)
    _run(["dvc", "repro"], cwd=repo)
    changed = sorted(line[3:] for line in _run(["git", "status", "--porcelain"], cwd=repo).stdout.splitlines())
    assert changed == ["dvc.lock", "runs/"] or changed == [".gitignore", "dvc.lock"], changed  # dvc.yaml untouched
    assert (repo / run / "dvclive" / "plots" / "metrics" / "llid.tsv").exists()
    assert not (repo / "dvclive").exists()
    lock = (repo / "dvc.lock").read_text()
    second = _run(["dvc", "repro"], cwd=repo).stdout
    assert "didn't change" in second and (repo / "dvc.lock").read_text() == lock
    template = tmp_path / "page.html"
    template.write_text("<!DOCTYPE html><html><head>"
                        + "".join(f'<script src="{(VEGA / f"{n}.min.js").as_uri()}"></script>'
                                  for n in ("vega", "vega-lite", "vega-embed"))
                        + "</head><body>{plot_divs}</body></html>")
    pages = {}
    for name, targets in (("declared", []), ("live", [f"{run}/dvclive/plots/metrics"])):
        _run(["dvc", "plots", "show", *targets, "--html-template", str(template), "-o", str(tmp_path / name)],
             cwd=repo)
        pages[name] = tmp_path / name / "index.html"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    for name, page, expected in (("declared", pages["declared"], 2), ("live", pages["live"], 10)):
        chromium.get(page.as_uri())
        WebDriverWait(chromium, 60).until(
            lambda d, n=expected: len(d.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")) >= n,
            f"dvc plots show ({name}) did not render {expected} Vega plots")
        errors = chromium.find_elements(By.CSS_SELECTOR, ".vega-embed .error, .error-view")
        assert not errors, [e.text for e in errors]
        if name == "declared":
            chromium.save_screenshot(str(SCREENSHOT))
    record_property("screenshot", str(SCREENSHOT))
    assert math.isfinite(pd.read_csv(repo / run / "metrics.csv")["llid"].iloc[-1])


@pytest.mark.slow
def test_hidden_states_notebook_runs_under_papermill_and_records_its_protocols(tmp_path, run_notebook):
    proc = run_notebook("hidden_states", tmp_path / "executed.ipynb", out_dir=tmp_path / "out", n_sequences=200,
                        train_steps=5)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    profiles = pd.read_csv(tmp_path / "out" / "profiles.csv")
    assert set(profiles["pooling"]) == {"last", "mean", "all", "flattened positions"}
    assert profiles.groupby("model")["layer"].nunique().to_dict() == {"gpt2-random": 5, "grokking-transformer": 4}
    protocols = json.loads((tmp_path / "out" / "protocols.json").read_text())
    assert [p["pooling"] for p in protocols["gpt2-random"]] == ["last", "mean", "all"]
    assert protocols["gpt2-random"][0]["padding"] == "right" and protocols["gpt2-random"][0]["n_sequences"] == 200
    assert (tmp_path / "out" / "hidden_states.png").stat().st_size > 10_000
