"""Augmentation for overhead imagery: dihedral views, colour jitter and small crops (numpy and torch ops).

A satellite tile has no "up": its 8 dihedral views (4 rotations by 90 degrees, each optionally mirrored) are
all equally real, so they are the first augmentation and, at prediction time, a free ensemble. Colour jitter
(brightness, contrast, saturation) stands in for sensors, seasons and haze; a small random crop, resized back,
for the zoom and centring of the imagery provider. One knob, `strength` in [0, 1], scales jitter and crops
(0 keeps the dihedral views only).

Augmentation works on uint8 NHWC arrays and returns uint8 NHWC, so the result goes through the one shared
`pyrocast.model.preprocess.normalize` exactly like a served image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

N_VIEWS = 8
# At strength 1: brightness and contrast x[0.7, 1.3], saturation x[0.6, 1.4], crops down to 80% of the side.
MAX_BRIGHTNESS = 0.3
MAX_CONTRAST = 0.3
MAX_SATURATION = 0.4
MAX_CROP = 0.2
_GRAY = torch.tensor([0.299, 0.587, 0.114])


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """View k (0-7) of an image (HWC) or batch (NHWC): k % 4 quarter turns, mirrored first when k >= 4."""
    if not 0 <= k < N_VIEWS:
        raise ValueError(f"dihedral view {k} is not in 0..7")
    h, w = (0, 1) if x.ndim == 3 else (1, 2)
    if k >= 4:
        x = np.flip(x, axis=w)
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(h, w)))


def random_views(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image of an NHWC batch in a random one of its 8 dihedral views."""
    ks = rng.integers(0, N_VIEWS, size=len(x))
    if x.shape[1] != x.shape[2]:  # quarter turns of a non-square image change its shape: keep them apart
        return np.stack([dihedral(img, int(k)) for img, k in zip(x, ks, strict=True)])
    out = np.empty_like(x)
    for k in np.unique(ks):  # one vectorised transform per view rather than one per image
        sel = ks == k
        out[sel] = dihedral(x[sel], int(k))
    return out


def jitter_and_crop(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter and a small random crop (resized back to the input size) of an NHWC uint8 batch."""
    if strength <= 0 or len(x) == 0:
        return x.copy()
    s = float(min(strength, 1.0))
    n = len(x)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)  # NCHW in [0, 1]

    # Crop: an affine grid that zooms in by up to MAX_CROP and shifts within the image, bilinear resampling.
    scale = 1.0 - MAX_CROP * s * rng.random(n)
    shift = (1.0 - scale) * (2.0 * rng.random((2, n)) - 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.from_numpy(scale)
    theta[:, 1, 1] = torch.from_numpy(scale)
    theta[:, 0, 2] = torch.from_numpy(shift[0])
    theta[:, 1, 2] = torch.from_numpy(shift[1])
    grid = F.affine_grid(theta.float(), list(t.shape), align_corners=False)
    t = F.grid_sample(t, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factors(m: float) -> torch.Tensor:
        return torch.from_numpy(1.0 + m * s * (2.0 * rng.random(n) - 1.0)).float().view(n, 1, 1, 1)

    gray = (t * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True)
    t = gray + (t - gray) * factors(MAX_SATURATION)  # saturation around each pixel's gray
    mean = gray.mean(dim=(2, 3), keepdim=True)
    t = mean + (t - mean) * factors(MAX_CONTRAST)  # contrast around the image's mean gray
    t = t * factors(MAX_BRIGHTNESS)
    out = t.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy())


def augment_batch(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A random dihedral view of each image, then colour jitter and crops scaled by `strength` (uint8 NHWC)."""
    return jitter_and_crop(random_views(x, rng), strength, rng)
