"""Augmentation: the 8 dihedral views, colour jitter and crops on uint8 NHWC batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyrocast.model.augment import N_VIEWS, augment_batch, dihedral, jitter_and_crop, random_views
from pyrocast.model.networks import dihedral_view


def _batch(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_eight_dihedral_views_are_distinct_and_keep_the_pixels() -> None:
    img = _batch(1)[0]
    views = [dihedral(img, k) for k in range(N_VIEWS)]
    assert len({v.tobytes() for v in views}) == N_VIEWS
    for v in views:
        assert v.shape == img.shape and v.dtype == np.uint8
        assert np.array_equal(np.sort(v, axis=None), np.sort(img, axis=None))
    with pytest.raises(ValueError):
        dihedral(img, 8)


def test_numpy_views_match_the_networks_torch_views() -> None:
    # Training caches views made by `dihedral` (NHWC); the model's test-time augmentation uses `dihedral_view`
    # (NCHW): they must be the same 8 views in the same order.
    x = _batch(2)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    for k in range(N_VIEWS):
        got = dihedral_view(t, k).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, dihedral(x, k)), k


def test_strength_zero_changes_nothing_but_the_view() -> None:
    x = _batch()
    rng = np.random.default_rng(0)
    assert np.array_equal(jitter_and_crop(x, 0.0, rng), x)
    out = random_views(x, np.random.default_rng(1))
    for img, o in zip(x, out, strict=True):
        assert any(np.array_equal(o, dihedral(img, k)) for k in range(N_VIEWS))


def test_jitter_is_seeded_bounded_and_scaled_by_strength() -> None:
    x = np.full((64, 24, 24, 3), 128, np.uint8)
    x[:, :, :12] = 60  # some structure, so contrast and crops have something to act on
    a = augment_batch(x, 1.0, np.random.default_rng(7))
    b = augment_batch(x, 1.0, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == x.shape
    weak = np.abs(jitter_and_crop(x, 0.1, np.random.default_rng(7)).astype(int) - x.astype(int)).mean()
    strong = np.abs(jitter_and_crop(x, 1.0, np.random.default_rng(7)).astype(int) - x.astype(int)).mean()
    assert strong > 0 and weak < strong
    # brightness stays within the documented +-30% (plus contrast/saturation effects on a mid-gray image)
    means = a.reshape(len(a), -1).mean(1)
    assert means.min() > 0.4 * x.mean() and means.max() < 1.6 * x.mean()


def test_empty_batches_pass_through() -> None:
    x = np.zeros((0, 8, 8, 3), np.uint8)
    assert augment_batch(x, 0.5, np.random.default_rng(0)).shape == x.shape
