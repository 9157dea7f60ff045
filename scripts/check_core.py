"""The core install alone (`pip install .`, no extras): import actid, fit the estimators, track a model.

CI runs it in a fresh venv holding torch and the core only, so a module of the core that needs an extra (DVC,
papermill, JupyterLab, seaborn, mlxtend, submitit, torchvision, the integrations' packages) fails here instead of on
a user's machine; an integration without its extra must name the extra to install."""

import importlib.util
import sys
import tempfile

EXTRAS = ["dvc", "papermill", "jupytext", "jupyterlab", "matplotlib", "seaborn", "mlxtend", "submitit", "torchvision",
          "skdim", "lightning", "torchmetrics", "transformers", "dvclive", "tensorboard"]

present = [name for name in EXTRAS if importlib.util.find_spec(name) is not None]
if present:
    raise SystemExit(f"this check needs a venv with the core only, but {present} are installed")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import actid  # noqa: E402
from actid.measures import manifold_capacity  # noqa: E402
from actid.runs import load_runs  # noqa: E402

g = torch.Generator().manual_seed(0)
X = torch.randn(3000, 6, generator=g) @ torch.randn(6, 64, generator=g)  # a 6-d linear subspace of R^64
twonn, mle, gride = actid.fit_estimators(X, [actid.TwoNN(), actid.MLE(k=20), actid.GRIDE()])
assert all(5 < est.dimension_ < 7 for est in (twonn, mle, gride)), (twonn.dimension_, mle.dimension_, gride.dimension_)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
y = torch.randint(0, 3, (3000,), generator=g)
with tempfile.TemporaryDirectory() as tmp:
    tracker = actid.Tracker(model, (X[:500], y[:500]), layers=["1"], run_dir=f"{tmp}/mine",
                            measures={"id": {}, "participation_ratio": {}})
    tracker.measure(0)
    rows = load_runs(f"{tmp}/mine")
assert {"id/1", "llid", "participation_ratio/1", "val_acc"} <= set(rows.columns)
# MFTMA geometry runs its compiled loops (numba, a core dependency): 60 isolated points have capacity 2 (Cover)
points = torch.randn(60, 1, 100, generator=g, dtype=torch.float64)
cover = manifold_capacity(points, n_t=2000, center_subspace=False).capacity
assert abs(cover - 2) < 0.1, cover
# an integration without its extra: an ImportError that names the extra to install
for module, extra in [("actid.integrations.metric", "lightning"), ("actid.integrations.lightning", "lightning")]:
    try:
        importlib.import_module(module)
    except ImportError as err:
        assert f"actid[{extra}]" in str(err), err
    else:
        raise AssertionError(f"{module} imported without its extra")
from actid.integrations.live import LiveMirror  # noqa: E402 (imports no extra until a mirror is made)

try:
    LiveMirror(tempfile.gettempdir(), ("dvclive",))
except ImportError as err:
    assert "actid[live]" in str(err), err
else:
    raise AssertionError("LiveMirror worked without dvclive")

print(f"core install: actid {actid.__version__} on Python {sys.version.split()[0]}, torch {torch.__version__}: "
      f"TwoNN {twonn.dimension_:.3f}, MLE {mle.dimension_:.3f}, GRIDE {gride.dimension_:.3f} (true 6); "
      f"Tracker row with LLID {rows['llid'].iloc[0]:.2f}; MFTMA capacity of 60 points {cover:.3f} (Cover: 2); "
      f"none of {EXTRAS} installed")
