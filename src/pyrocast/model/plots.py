"""Evaluation plots as PNG files: confusion matrix, ROC curve, reliability diagram, slice accuracy.

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot: no global backend
switch, no figure registry to leak, safe in a server thread. Each file is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyrocast.data.layout import atomic_write
from pyrocast.model.metrics import reliability_bins


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Render a figure to a PNG file, atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def confusion_png(cm: dict[str, int], path: Path, title: str = "Confusion matrix") -> Path:
    """2x2 matrix, rows = true class, columns = predicted class, with counts and row shares."""
    m = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = ["nowildfire", "wildfire"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_title(title)
    return save_png(fig, path)


def roc_png(labels: np.ndarray, probs: np.ndarray, path: Path, title: str = "ROC curve") -> Path:
    """ROC curve with its AUC (a note instead when the tiles hold one class only)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, probs)
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc_score(y, probs):.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    return save_png(fig, path)


def reliability_png(
    labels: np.ndarray, probs: np.ndarray, path: Path, ece: float | None = None, title: str = "Reliability"
) -> Path:
    """Wildfire rate against mean P(wildfire) per bin (the diagonal is perfect calibration), counts below."""
    bins = reliability_bins(labels, probs)
    fig = Figure(figsize=(4.2, 5.0))
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    full = [b for b in bins if b["count"]]
    ax.plot([b["mean_prob"] for b in full], [b["frac_wildfire"] for b in full], marker="o", lw=2, label="model")
    ax.set_ylabel("wildfire rate")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    hx.bar(centres, [b["count"] for b in bins], width=0.09, color="tab:grey")
    hx.set_xlabel("P(wildfire)")
    hx.set_ylabel("tiles")
    hx.set_xlim(0, 1)
    return save_png(fig, path)


def slices_png(slices: dict[str, dict[str, dict[str, Any]]], path: Path, title: str = "Accuracy by slice") -> Path:
    """One horizontal bar chart per slicing (e.g. latitude band), accuracy per group with its n."""
    kinds = [k for k, groups in slices.items() if groups]
    heights = [max(1, len(slices[k])) for k in kinds] or [1]
    fig = Figure(figsize=(6.0, 1.0 + 0.45 * sum(heights) + 0.6 * len(heights)), layout="constrained")
    axes = fig.subplots(len(heights), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": heights})[:, 0]
    if not kinds:
        axes[0].text(0.5, 0.5, "no slices", ha="center")
    for ax, kind in zip(axes, kinds, strict=False):
        names = list(slices[kind])
        acc = [slices[kind][g]["accuracy"] for g in names]
        ax.barh(range(len(names)), acc, color="tab:orange")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlim(0, 1.3)
        ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        for i, g in enumerate(names):
            ax.text(min(acc[i], 1.0) + 0.01, i, f"{acc[i]:.2f} (n={slices[kind][g]['n']})", va="center", fontsize=8)
        ax.set_title(kind.replace("_", " "), fontsize=10, loc="left")
        ax.invert_yaxis()
    axes[-1].set_xlabel("accuracy")
    fig.suptitle(title)
    return save_png(fig, path)
