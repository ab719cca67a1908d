"""The one preprocessing path: shapes, layout and the arithmetic the networks were trained with."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pyrocast.model.preprocess import PreprocessSpec, normalize, preprocess, preprocess_batch


def _textbook(hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    x = (hwc.astype(np.float64) / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
    return np.moveaxis(x, -1, -3)


def test_normalize_is_the_textbook_formula_in_chw_order() -> None:
    spec = PreprocessSpec(size=16)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    for x in (one, batch):
        out = normalize(x, spec)
        assert out.dtype == np.float32
        assert out.flags["C_CONTIGUOUS"]  # ONNX Runtime and torch.from_numpy want contiguous input
        assert out.shape == (*x.shape[:-3], 3, 16, 16)
        np.testing.assert_allclose(out, _textbook(x, spec), atol=1e-5)


def test_preprocess_resizes_converts_and_batches() -> None:
    spec = PreprocessSpec(size=32)
    grey = Image.new("L", (50, 40), 128)  # not RGB, not square: converted and resized
    x = preprocess(grey, spec)
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, 0, 0], (128 / 255 - np.asarray(spec.mean)) / np.asarray(spec.std), atol=1e-5)
    assert preprocess_batch([grey, grey], spec).shape == (2, 3, 32, 32)
    assert preprocess_batch([], spec).shape == (0, 3, 32, 32)
