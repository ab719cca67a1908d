"""Serving bundles that carry a drift reference, for the out-of-distribution warnings' end-to-end tests.

`bundles_with_reference(root, rows)` builds the tiny test bundles (`tests.support.serving.tiny_bundles`: v1 always
says wildfire, v2 never) and writes `rows` as v1's `reference_stats.csv`, as export does; v2 stays without one,
like a bundle exported before references existed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pyrocast.data.synthetic.region import SyntheticRegion
from pyrocast.monitoring.reference import REFERENCE_FILE, reference_rows, write_reference
from tests.support.serving import tiny_bundles


def bundles_with_reference(root: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Tiny bundles v1 (with `rows` as its drift reference) and v2 (without one)."""
    bundles = tiny_bundles(root)
    write_reference(rows, bundles["1"] / REFERENCE_FILE)
    assert not (bundles["2"] / REFERENCE_FILE).exists()
    return bundles


def real_reference(folder: Path) -> list[dict[str, Any]]:
    """Reference rows of every tile under `folder` (`{class}/*.jpg`), as export computes them."""
    tiles: Iterable[tuple[Image.Image, int]] = (
        (Image.open(p).convert("RGB"), int(p.parent.name == "wildfire")) for p in sorted(folder.glob("*/*.jpg"))
    )
    return reference_rows(tiles)


def synthetic_places(n: int, seed: int) -> list[tuple[str, float, float]]:
    """n balanced (label, lon, lat) places of the synthetic region, as `pyrocast data` samples training tiles."""
    region = SyntheticRegion()
    rng = np.random.default_rng(seed)
    return [
        (label, p.lon, p.lat) for label in ("wildfire", "nowildfire") for p in region.sample_places(label, n // 2, rng)
    ]


def synthetic_reference(n: int = 60, seed: int = 1) -> list[dict[str, Any]]:
    """Reference rows of n synthetic-region tiles (a model trained on the default data)."""
    region = SyntheticRegion()
    tiles = ((region.render_tile(lon, lat), int(label == "wildfire")) for label, lon, lat in synthetic_places(n, seed))
    return reference_rows(tiles)
