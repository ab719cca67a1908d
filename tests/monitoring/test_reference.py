"""A model's drift reference: the gateway's statistics of training tiles, written with the bundle, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyrocast.errors import PyrocastError
from pyrocast.monitoring.reference import (
    COLUMNS,
    REFERENCE_FILE,
    read_reference,
    reference_png,
    reference_rows,
    summarize,
    write_reference,
)
from pyrocast.serving.store import STAT_COLUMNS, image_stats
from tests.conftest import REAL_TILES


def _tiles() -> list[tuple[Image.Image, int]]:
    """Real tiles of both classes when the shared folder is there, else green and burnt-looking noise."""
    real = [(p, int(p.parent.name == "wildfire")) for p in sorted(REAL_TILES.glob("*/*/*.jpg"))]
    if real:
        picked = [t for t in real if t[1] == 1][:6] + [t for t in real if t[1] == 0][:6]
        return [(Image.open(p).convert("RGB"), y) for p, y in picked]
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        base = np.array([60, 120, 50]) if i % 2 else np.array([90, 70, 50])
        arr = np.clip(base + rng.normal(0, 25, (350, 350, 3)), 0, 255).astype(np.uint8)
        out.append((Image.fromarray(arr, "RGB"), i % 2))
    return out


def test_rows_are_the_gateways_statistics_of_each_tile_with_its_label(tmp_path: Path) -> None:
    tiles = _tiles()
    rows = reference_rows(iter(tiles))
    assert [r["label"] for r in rows] == ["wildfire" if y else "nowildfire" for _, y in tiles]
    # Column for column what the prediction store records for a served tile: a monitor compares like with like.
    for (img, _), row in zip(tiles, rows, strict=True):
        assert {k: v for k, v in row.items() if k != "label"} == image_stats(img)
    write_reference(rows, tmp_path / REFERENCE_FILE)
    back = read_reference(tmp_path)
    assert back is not None and len(back) == len(rows)
    assert list(back[0]) == list(COLUMNS)
    for a, b in zip(rows, back, strict=True):
        assert a["label"] == b["label"]
        assert all(a[c] == pytest.approx(b[c], abs=1e-9) for c in (*STAT_COLUMNS, "width", "height"))


def test_summary_and_plot(tmp_path: Path) -> None:
    rows = reference_rows(iter(_tiles()))
    summary = summarize(rows)
    assert set(summary) == set(STAT_COLUMNS)
    for col, s in summary.items():
        values = [r[col] for r in rows]
        assert min(values) <= s["p5"] <= s["p50"] <= s["p95"] <= max(values), col
        assert s["mean"] == pytest.approx(float(np.mean(values)), abs=1e-6)
    png = reference_png(rows, tmp_path / "reference.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400


def test_bundles_without_a_reference_and_broken_files_are_told_apart(tmp_path: Path) -> None:
    assert read_reference(tmp_path) is None  # a bundle exported before references existed
    with pytest.raises(PyrocastError, match="at least one tile"):
        write_reference([], tmp_path / REFERENCE_FILE)
    (tmp_path / REFERENCE_FILE).write_text("label,mean_r\nwildfire,0.5\n")
    with pytest.raises(PyrocastError, match="lacks column") as exc:
        read_reference(tmp_path)
    assert "re-export" in (exc.value.hint or "")
