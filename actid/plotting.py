"""One figure style for every notebook: seaborn theme, a colour per condition, markers for
unfinished runs, and figures (PNG + PDF) written atomically to a chosen folder (JSON and CSV: :mod:`actid.io`).

Interactive use and the pipeline differ on purpose: a notebook's ``out_dir`` parameter is ``None``
by default, so exploring in JupyterLab writes to the scratch folder ``build/figures/<name>`` (figures
also show inline); the DVC stages pass ``out_dir=figures/<name>`` through papermill.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D

from actid._moved import moved
from actid.io import atomic_write
from actid.paths import ROOT, resolve

MOVED = {"save_json": "actid.io:write_json", "save_csv": "actid.io:write_csv", "_finite": "actid.io:json_ready"}
"""Writers of data files this module held; :mod:`actid.io` owns them now (:mod:`actid._moved`)."""
__getattr__ = moved(__name__, MOVED)

_PALETTE = sns.color_palette("colorblind")
PALETTE = list(_PALETTE)  # for several layers in one panel, in order
# The same condition has the same colour in every figure.
COLORS = {
    "weight_decay": _PALETTE[0],  # blue
    "dropout": _PALETTE[1],  # orange
    "id": _PALETTE[2],  # green: an intrinsic dimension over training
    "id_train": _PALETTE[8],  # yellow: the same ID on training examples
    "val_acc": _PALETTE[0],
    "train_acc": "0.55",  # grey
    "threshold": _PALETTE[3],  # vermillion: over-regularization threshold
    "sin": _PALETTE[4],  # the activations of the memorization figures
    "relu": _PALETTE[5],
    "sigmoid": _PALETTE[9],
}
MARKERS = {"weight_decay": "o", "dropout": "X"}
LABELS = {"weight_decay": "weight decay", "dropout": "dropout p"}
SEED_LINESTYLES = ["-", "--", "-.", ":"]
# Drawn around a point (or at the end of a curve) whose run has not finished: its values are not final.
UNFINISHED = dict(marker="s", s=140, facecolors="none", edgecolors="black", linewidths=1.0, linestyles="--",
                  zorder=5)


def use_style() -> None:
    """The project's matplotlib/seaborn style (call once per notebook, before plotting)."""
    sns.set_theme(context="paper", style="ticks", font_scale=1.25,
                  rc={"axes.titlesize": "medium", "figure.titlesize": "large", "legend.frameon": False,
                      "savefig.bbox": "tight", "figure.constrained_layout.use": True})


def strength_cmap(regularizer: str) -> ListedColormap:
    """A sequential colour map in the regularizer's colour for its strength, starting at a light
    shade rather than white, so the weakest setting stays visible."""
    base = {"weight_decay": "Blues", "dropout": "Oranges"}[regularizer]
    return ListedColormap(plt.get_cmap(base)(np.linspace(0.25, 1.0, 256)), name=f"{base}_from_light")


def unfinished_handle() -> Line2D:
    """Legend entry for the UNFINISHED marker."""
    return Line2D([], [], marker="s", markersize=10, markerfacecolor="none", markeredgecolor="black",
                  linestyle="none", label="run not finished (last evaluation)")


def legend_below(fig: plt.Figure, handles: list, ncol: int | None = None) -> None:
    """A figure legend under all panels, where it cannot cover data."""
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol or min(len(handles), 3))


def output_dir(out_dir: str | Path | None, name: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` if given (relative to the repository root), else
    the git-ignored scratch folder ``build/figures/<name>``, so that interactive runs never overwrite
    the tracked figures that ``dvc repro`` produces."""
    path = resolve(out_dir) if out_dir is not None else ROOT / "build" / "figures" / name
    path.mkdir(parents=True, exist_ok=True)
    print(f"writing to {path}")
    return path


def save_figure(fig: plt.Figure, out: Path, stem: str, dpi: int = 150) -> None:
    """``<stem>.png`` and ``<stem>.pdf``, each written atomically; the PDF carries no creation date, so
    the same data give the same bytes."""
    atomic_write(out / f"{stem}.png", lambda f: fig.savefig(f, format="png", dpi=dpi))
    atomic_write(out / f"{stem}.pdf", lambda f: fig.savefig(f, format="pdf", metadata={"CreationDate": None}))
