"""Tile files for tests: valid JPEG tiles and each kind of broken file an importer or validator must catch."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pyrocast.geo import LonLat

SIZE = 350


def jpeg_tile(seed: int, size: int = SIZE, mode: str = "RGB") -> bytes:
    """A distinct, valid JPEG (noise + a gradient, so every seed gives different bytes)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, size, dtype=np.float32)[None, :, None]
    arr = np.clip(base + rng.integers(0, 55, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def png_tile(seed: int, size: int = SIZE, mode: str = "RGB") -> bytes:
    img = Image.open(io.BytesIO(jpeg_tile(seed, size))).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gif_tile(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_tile(seed))).convert("P").save(buf, format="GIF")
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def name(i: int, lon0: float = -73.0, lat0: float = 46.0) -> str:
    """A tile file name inside southern Quebec, about 1 km apart per index (no two are near-same).

    Canonical (as the dataset writes it: `LonLat.stem()`), so a test can look the tile up by name.
    """
    return LonLat(round(lon0 + 0.013 * (i % 50), 6), round(lat0 + 0.011 * (i // 50), 6)).stem() + ".jpg"


def write(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def kaggle_folder(root: Path, per_class: int = 4, splits: tuple[str, ...] = ("train", "valid"), seed: int = 0) -> Path:
    """A clean folder in the Kaggle layout: `per_class` tiles per split and class, all distinct places."""
    i = 0
    for split in splits:
        for label in ("wildfire", "nowildfire"):
            for _ in range(per_class):
                write(root, f"{split}/{label}/{name(i)}", jpeg_tile(seed * 10_000 + i))
                i += 1
    return root


def write_labelled(
    root: Path,
    per_split: dict[str, int],
    make_jpeg: Callable[[int, np.random.Generator], bytes],
    *,
    seed: int = 0,
    wildfire_share: float = 0.5,
    columns: int = 40,
    step_deg: float = 0.1,
) -> list[Path]:
    """Tiles in the Kaggle layout under root: each split gets its count, `wildfire_share` of them wildfire, each
    a `make_jpeg(label, rng)` named by its place on a grid of `columns` places `step_deg` apart."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    out: list[Path] = []
    k = 0
    for split, n in per_split.items():
        n_fire = round(n * wildfire_share)
        for i in range(n):
            label = int(i < n_fire)
            lon, lat = -75.5 + (k % columns) * step_deg, 45.2 + (k // columns) * 0.1
            k += 1
            out.append(
                write(
                    root,
                    f"{split}/{'wildfire' if label else 'nowildfire'}/{lon:.4f},{lat:.4f}.jpg",
                    make_jpeg(label, rng),
                )
            )
    return out
