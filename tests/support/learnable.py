"""Learnable 350 px tiles in the Kaggle layout, for training tests: wildfire tiles are dark and green-brown
with coarse texture, nowildfire tiles light gray with fine texture (a small CNN separates them in a few epochs).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pyrocast.model.data import clear_cache, prepare_dataset
from pyrocast.settings import Settings
from tests.support.tiles import write_labelled

PX = 350


def learnable_jpeg(label: int, rng: np.random.Generator) -> bytes:
    cells = 7 if label else 35  # coarse vs fine texture
    base = np.array([70, 80, 45]) if label else np.array([150, 150, 145])
    small = np.clip(rng.normal(base, 25, (cells, cells, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(small).resize((PX, PX), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_learnable_tiles(
    root: Path, per_split: dict[str, int], seed: int = 0, wildfire_share: float = 0.5
) -> list[Path]:
    """`per_split` tiles per split folder under root, `wildfire_share` of each wildfire; places ~10 km apart."""
    return write_labelled(
        root, per_split, learnable_jpeg, seed=seed, wildfire_share=wildfire_share, columns=30, step_deg=0.13
    )


def prepared_learnable(settings: Settings, folder: Path, per_split: dict[str, int]) -> Path:
    """Learnable tiles written to `folder` and prepared as a training dataset (decoded-array cache cleared)."""
    write_learnable_tiles(folder, per_split)
    clear_cache()
    return prepare_dataset(settings, folder)
