"""Explanations: integrated gradients (torch) and occlusion over the served ONNX graph."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyrocast.errors import InvalidInputError
from pyrocast.model.bundle import OnnxClassifier
from pyrocast.model.explain import (
    choose_examples,
    explain_tiles,
    integrated_gradients,
    normalize_heat,
    occlusion_onnx,
    overlay_png,
)
from tests.support.tiny_training import SIZE, tiles, tiny_bundle, tiny_trained


def _check_heat(h: np.ndarray) -> None:
    assert h.shape == (SIZE, SIZE) and h.dtype == np.float32
    assert np.all(np.isfinite(h)) and h.min() >= 0.0 and h.max() <= 1.0
    assert h.max() > 0.0  # something mattered


def test_integrated_gradients_heat() -> None:
    trained = tiny_trained()
    images, _ = tiles(2, seed=8)
    for img in images:
        _check_heat(integrated_gradients(trained, img, n_steps=8))
    # A bare module with an explicit spec works too, and a fixed target is honoured.
    _check_heat(integrated_gradients(trained.module, images[0], trained.spec, target=0, n_steps=8))


def test_occlusion_over_onnx_finds_the_evidence() -> None:
    clf = OnnxClassifier(tiny_bundle(), "fp32")
    ev, _ = tiles(2, seed=3)
    # A town tile with a forest patch in its top-left quarter: P(wildfire) comes from that patch.
    town, forest = tiles(2, seed=20)[0][1], tiles(2, seed=20)[0][0]
    mixed = town.copy()
    mixed.paste(forest.crop((0, 0, 32, 32)), (0, 0))
    heat = occlusion_onnx(clf, mixed, target=1, window=8, stride=4)
    _check_heat(heat)
    assert heat[:16, :16].mean() > heat[16:, 16:].mean()
    _check_heat(occlusion_onnx(clf, ev[0]))  # defaults: predicted class, window ~ size / 7
    with pytest.raises(InvalidInputError, match="window"):
        occlusion_onnx(clf, ev[0], window=64)


def test_overlay_png_is_a_png_of_the_tile_size() -> None:
    img = tiles(1)[0][0]
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[:8, :8] = 1.0
    data = overlay_png(img, heat)
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "PNG" and out.size == img.size
        a = np.asarray(out.convert("RGB"), dtype=float)
    # Cold regions show the tile itself; hot regions are tinted.
    assert np.abs(a[-10:, -10:] - np.asarray(img, dtype=float)[-10:, -10:]).max() <= 1
    assert np.abs(a[:5, :5] - np.asarray(img, dtype=float)[:5, :5]).mean() > 10
    with pytest.raises(InvalidInputError):
        overlay_png(img, np.zeros(5))


def test_normalize_heat_handles_nan_and_zero() -> None:
    assert normalize_heat(np.zeros((4, 4))).max() == 0.0
    h = normalize_heat(np.array([[np.nan, 1.0], [2.0, -3.0]]), pct=100)
    assert h.tolist() == [[0.0, 0.5], [1.0, 0.0]]


def test_choose_examples_puts_mistakes_first() -> None:
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.95, 0.6, 0.4])
    picked = choose_examples(y, p, k=4)
    assert picked[:2] == [3, 1]  # the confident mistakes, most confident first
    assert set(picked[2:]) == {0, 2}


def test_explain_tiles_writes_titled_pngs(tmp_path: Path) -> None:
    images, labels = tiles(3, seed=6)
    paths = explain_tiles(tiny_trained(), images, labels, tmp_path / "explain", n_steps=8)
    assert len(paths) == 3
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > im.size[1]
    assert paths[0].name.endswith("_wildfire.png") and paths[1].name.endswith("_nowildfire.png")
