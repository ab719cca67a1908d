"""A model's drift reference: the image statistics of tiles it was trained on, stored in its bundle.

The gateway stores the same statistics for every tile it sees (`pyrocast.serving.store.image_stats`, columns
`STAT_COLUMNS`), so a drift monitor can compare what a model serves with what it learned from, column by
column, without the training data (which may have moved, grown or gone since). The file travels with the bundle
into the registry: every served model version carries its own reference.

`reference_stats.csv`: one row per sampled training tile, `label` (wildfire|nowildfire) then `STAT_COLUMNS`,
`width`, `height`. Bundles exported before this file existed have none (`read_reference` returns None).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pyrocast.errors import PyrocastError
from pyrocast.serving.store import LABELS, STAT_COLUMNS, image_stats

REFERENCE_FILE = "reference_stats.csv"
REFERENCE_TILES = 1000  # enough for a two-sample test's power on 13 features; about 1 s of decoding
COLUMNS = ("label", *STAT_COLUMNS, "width", "height")


def reference_rows(tiles: Iterable[tuple[Image.Image, int]]) -> list[dict[str, Any]]:
    """The statistics row of each (tile, label) pair (label 1 = wildfire); tiles are not kept."""
    rows = ({"label": LABELS[int(label)], **image_stats(img)} for img, label in tiles)
    return [{k: r[k] for k in COLUMNS} for r in rows]  # the file's columns only (image_stats may add notes)


def write_reference(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the rows as CSV (header `COLUMNS`); refuses an empty reference, which no test could use."""
    if not rows:
        raise PyrocastError("a drift reference needs at least one tile", "train on a dataset with training tiles")
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_reference(bundle_root: Path) -> list[dict[str, Any]] | None:
    """The reference rows of a bundle folder (numbers as floats), or None for a bundle exported without one."""
    path = Path(bundle_root) / REFERENCE_FILE
    if not path.exists():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise PyrocastError(
                f"{path} lacks column(s) {sorted(missing)}", "re-export the model to rebuild its drift reference"
            )
        return [{k: (v if k == "label" else float(v)) for k, v in row.items()} for row in reader]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per statistic: mean, std and the 5/50/95th percentiles (for the bundle's meta and MLflow)."""
    out: dict[str, dict[str, float]] = {}
    for col in STAT_COLUMNS:
        v = np.asarray([float(r[col]) for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        p5, p50, p95 = np.percentile(v, [5, 50, 95])
        out[col] = {
            "mean": round(float(v.mean()), 6),
            "std": round(float(v.std()), 6),
            "p5": round(float(p5), 6),
            "p50": round(float(p50), 6),
            "p95": round(float(p95), 6),
        }
    return out


def reference_png(rows: list[dict[str, Any]], path: Path, title: str = "Drift reference: training tiles") -> Path:
    """Histograms of every statistic, wildfire and nowildfire tiles overlaid: what 'no drift' looks like."""
    from matplotlib.figure import Figure

    from pyrocast.model.plots import save_png

    cols = 4
    n = len(STAT_COLUMNS)
    fig = Figure(figsize=(3.2 * cols, 2.3 * math.ceil(n / cols)))
    axes = fig.subplots(math.ceil(n / cols), cols)
    flat = np.asarray(axes).reshape(-1)
    for ax, col in zip(flat, STAT_COLUMNS, strict=False):
        for label, color in (("nowildfire", "tab:green"), ("wildfire", "tab:red")):
            v = [float(r[col]) for r in rows if r["label"] == label]
            if v:
                ax.hist(v, bins=30, alpha=0.55, color=color, label=f"{label} ({len(v)})")
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in flat[n:]:
        ax.axis("off")
    flat[0].legend(fontsize=7)
    fig.suptitle(f"{title} ({len(rows)} tiles)")
    fig.tight_layout()
    return save_png(fig, path)
