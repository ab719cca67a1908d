"""Behavioural checks: does the model answer the same for the same place seen another way?

An overhead tile has no "up": a flipped or rotated tile shows the same ground, so P(wildfire) should not
move. Small photometric changes a real pipeline brings (JPEG re-encoding, a slightly brighter acquisition)
should not move it much either. Directional checks go one step further, CheckList style: pasting a patch of
a no-wildfire tile (towns, farmland) into the middle of a wildfire tile (forest) should not raise
P(wildfire), and the reverse should not lower it.

All checks take a `predict_fn(images) -> P(wildfire)` so they run on a torch module, an ONNX graph or a
remote service alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from pyrocast.errors import InvalidInputError
from pyrocast.imaging import to_rgb

PredictFn = Callable[[list[Image.Image]], np.ndarray]

GEOMETRIC: dict[str, Callable[[Image.Image], Image.Image]] = {
    "flip_horizontal": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "flip_vertical": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "rotate_90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rotate_180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rotate_270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


def _jpeg(im: Image.Image, quality: int = 70) -> Image.Image:
    buf = io.BytesIO()
    to_rgb(im).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


PHOTOMETRIC: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q70": _jpeg,
    "brightness_+10%": lambda im: ImageEnhance.Brightness(to_rgb(im)).enhance(1.10),
    "brightness_-10%": lambda im: ImageEnhance.Brightness(to_rgb(im)).enhance(0.90),
}

# A prediction "flips" when it crosses the decision threshold; a directional check "fails" when P moves
# the wrong way by more than this (small wobbles are noise, not a violated expectation).
DIRECTION_TOLERANCE = 0.05


def _stats(base: np.ndarray, moved: np.ndarray, threshold: float) -> dict[str, float]:
    d = np.abs(moved - base)
    return {
        "mean_abs_dp": float(d.mean()),
        "max_abs_dp": float(d.max()),
        "flip_rate": float(np.mean((base >= threshold) != (moved >= threshold))),
    }


def paste_centre(base: Image.Image, donor: Image.Image, fraction: float = 0.5) -> Image.Image:
    """`base` with the central `fraction` x `fraction` square of `donor` pasted over its own centre."""
    base = to_rgb(base).copy()
    donor = to_rgb(donor).resize(base.size, Image.Resampling.BILINEAR)
    w, h = base.size
    pw, ph = max(1, int(w * fraction)), max(1, int(h * fraction))
    box = ((w - pw) // 2, (h - ph) // 2, (w - pw) // 2 + pw, (h - ph) // 2 + ph)
    base.paste(donor.crop(box), box)
    return base


def _directional(
    predict_fn: PredictFn,
    images: Sequence[Image.Image],
    y: np.ndarray,
    base_p: np.ndarray,
    max_pairs: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Paste a patch of the other class into each tile; P(wildfire) must not move toward the donor class."""
    fire = np.flatnonzero(y == 1)
    town = np.flatnonzero(y == 0)
    if fire.size == 0 or town.size == 0:
        return {"skipped": "needs tiles of both classes"}
    out: dict[str, Any] = {}
    for name, receivers, donors, sign in (
        # A town patch in a forest is evidence against wildfire: P must not rise.
        ("town_patch_in_wildfire_tile", fire, town, +1.0),
        # A forest patch in a town is evidence for wildfire: P must not fall.
        ("wildfire_patch_in_town_tile", town, fire, -1.0),
    ):
        recv = receivers[:max_pairs]
        don = rng.choice(donors, size=recv.size, replace=donors.size < recv.size)
        mixed = [paste_centre(images[i], images[j]) for i, j in zip(recv, don, strict=True)]
        p = np.asarray(predict_fn(mixed), dtype=np.float64)
        wrong_way = sign * (p - base_p[recv])  # > 0 means P moved toward the receiver's own class
        out[name] = {
            "n": int(recv.size),
            "mean_dp": float(np.mean(p - base_p[recv])),
            "violation_rate": float(np.mean(wrong_way > DIRECTION_TOLERANCE)),
        }
    return out


def behavioural_checks(
    predict_fn: PredictFn,
    images: Sequence[Image.Image],
    labels: np.ndarray | Sequence[int],
    threshold: float = 0.5,
    max_pairs: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Invariance (flips, 90-degree rotations, JPEG, brightness) and directional checks.

    Returns {"n", "invariance": {transform: {mean_abs_dp, max_abs_dp, flip_rate}}, "geometric": the worst
    of the flips and rotations, "directional": {check: {n, mean_dp, violation_rate}} or {"skipped": why}}.
    """
    images = list(images)
    y = np.asarray(labels).reshape(-1)
    if not images:
        raise InvalidInputError("behavioural checks need at least one tile")
    if y.size != len(images):
        raise InvalidInputError(f"{len(images)} tiles but {y.size} labels")
    base = np.asarray(predict_fn(images), dtype=np.float64)
    inv: dict[str, dict[str, float]] = {}
    for name, fn in {**GEOMETRIC, **PHOTOMETRIC}.items():
        inv[name] = _stats(base, np.asarray(predict_fn([fn(im) for im in images]), dtype=np.float64), threshold)
    geo = [inv[k] for k in GEOMETRIC]
    return {
        "n": len(images),
        "invariance": inv,
        "geometric": {
            "mean_abs_dp": float(np.mean([g["mean_abs_dp"] for g in geo])),
            "max_abs_dp": float(max(g["max_abs_dp"] for g in geo)),
            "flip_rate": float(max(g["flip_rate"] for g in geo)),
        },
        "directional": _directional(predict_fn, images, y, base, max_pairs, np.random.default_rng(seed)),
    }
