"""Behavioural checks on models whose behaviour is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyrocast.errors import InvalidInputError
from pyrocast.model.behaviour import GEOMETRIC, behavioural_checks, paste_centre


def _tiles(n: int = 12, size: int = 32) -> tuple[list[Image.Image], np.ndarray]:
    """Greenish textured 'forest' tiles (label 1) and greyish 'town' tiles (label 0)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        base = np.array([60, 140, 50]) if label else np.array([130, 125, 120])
        arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr))
        labels.append(label)
    return images, np.array(labels)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def greenness(images: list[Image.Image]) -> np.ndarray:
    """A global-average model: depends on channel means only, so exactly invariant to flips and rotations."""
    a = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    return _sigmoid((a[..., 1].mean(axis=(1, 2)) - a[..., 0].mean(axis=(1, 2))) / 10.0)


def left_heavy(images: list[Image.Image]) -> np.ndarray:
    """Looks at the left half only (in green): flips and rotations change what it sees."""
    a = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    w = a.shape[2]
    return _sigmoid((a[:, :, : w // 2, 1].mean(axis=(1, 2)) - 100.0) / 5.0)


def test_global_average_model_is_invariant() -> None:
    images, labels = _tiles()
    r = behavioural_checks(greenness, images, labels)
    assert r["n"] == len(images)
    for name in GEOMETRIC:
        assert r["invariance"][name]["max_abs_dp"] < 1e-9
        assert r["invariance"][name]["flip_rate"] == 0.0
    assert r["geometric"]["max_abs_dp"] < 1e-9
    # Brightness does move a colour-difference model: the photometric checks are measured, not assumed.
    assert r["invariance"]["brightness_+10%"]["mean_abs_dp"] > 0
    # A town patch makes a forest less green and vice versa: the expected direction, never violated.
    d = r["directional"]
    assert d["town_patch_in_wildfire_tile"]["mean_dp"] < 0
    assert d["wildfire_patch_in_town_tile"]["mean_dp"] > 0
    assert d["town_patch_in_wildfire_tile"]["violation_rate"] == 0.0
    assert d["wildfire_patch_in_town_tile"]["violation_rate"] == 0.0


def test_position_dependent_model_is_caught() -> None:
    rng = np.random.default_rng(1)
    # Tiles green on the left, grey on the right: a horizontal flip shows this model a different scene.
    images = []
    for _ in range(8):
        arr = np.empty((32, 32, 3), np.uint8)
        arr[:, :16] = np.clip(np.array([60, 160, 50]) + rng.normal(0, 10, (32, 16, 3)), 0, 255)
        arr[:, 16:] = np.clip(np.array([120, 60, 60]) + rng.normal(0, 10, (32, 16, 3)), 0, 255)
        images.append(Image.fromarray(arr))
    r = behavioural_checks(left_heavy, images, np.ones(8, int))
    assert r["invariance"]["flip_horizontal"]["flip_rate"] == 1.0
    assert r["invariance"]["flip_horizontal"]["max_abs_dp"] > 0.9
    assert r["invariance"]["flip_vertical"]["max_abs_dp"] < 1e-9  # the left half stays the left half
    assert r["geometric"]["flip_rate"] == 1.0
    assert r["directional"] == {"skipped": "needs tiles of both classes"}


def test_directional_violation_is_counted() -> None:
    images, labels = _tiles()

    def backwards(ims: list[Image.Image]) -> np.ndarray:  # less green = more wildfire, unsaturated
        a = np.stack([np.asarray(im, dtype=np.float64) for im in ims])
        return 1.0 - _sigmoid((a[..., 1].mean(axis=(1, 2)) - a[..., 0].mean(axis=(1, 2))) / 40.0 - 1.0)

    r = behavioural_checks(backwards, images, labels)
    assert r["directional"]["town_patch_in_wildfire_tile"]["violation_rate"] == 1.0


def test_paste_centre_keeps_the_border() -> None:
    a = Image.new("RGB", (40, 40), (0, 255, 0))
    b = Image.new("RGB", (40, 40), (255, 0, 0))
    m = np.asarray(paste_centre(a, b))
    assert tuple(m[0, 0]) == (0, 255, 0) and tuple(m[20, 20]) == (255, 0, 0)
    assert (m[..., 0] == 255).sum() == 20 * 20


def test_bad_input() -> None:
    with pytest.raises(InvalidInputError):
        behavioural_checks(greenness, [], [])
    images, _ = _tiles(4)
    with pytest.raises(InvalidInputError, match="labels"):
        behavioural_checks(greenness, images, [1, 0])
