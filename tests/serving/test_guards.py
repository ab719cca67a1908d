"""Upload checks: what is converted, what is refused, and with which HTTP status."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pyrocast.serving.guards import UploadRejected, load_upload
from pyrocast.serving.store import image_stats
from tests.serving.conftest import encode, tile_image

LIMIT = 1_000_000


def png(img: Image.Image) -> bytes:
    return encode(img, "PNG")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1"])
def test_safe_modes_become_rgb(mode: str) -> None:
    img = tile_image(3, 64).convert(mode)
    fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
    out = load_upload(encode(img, fmt), max_bytes=LIMIT)
    assert out.mode == "RGB" and out.size == (64, 64)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 megapixels in a few kB
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (b"hello, not an image", 415, "not JPEG or PNG"),
        # Never handed to Ghostscript (Pillow's EPS reader runs it on load): refused before any decoder but two.
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", 415, "not JPEG or PNG"),
        (encode(tile_image(1, 64), "TIFF"), 415, "not JPEG or PNG"),
        (encode(tile_image(1, 64), "GIF"), 415, "not JPEG or PNG"),
        (encode(tile_image(1, 64), "BMP"), 415, "not JPEG or PNG"),
        (encode(tile_image(1, 64))[:300], 422, "truncated"),
        (png(Image.new("I;16", (64, 64))), 422, "pixel mode"),
        (png(Image.new("RGB", (4, 4))), 422, "too small"),
        (b"\xff" * (LIMIT + 1), 413, "over the limit"),
    ],
)
def test_bad_uploads_are_refused_with_a_status(data: bytes, status: int, fragment: str) -> None:
    with pytest.raises(UploadRejected) as info:
        load_upload(data, max_bytes=LIMIT)
    assert info.value.status == status
    assert fragment in str(info.value)


def test_decompression_bomb_is_refused() -> None:
    with pytest.raises(UploadRejected) as info:
        load_upload(_bomb(), max_bytes=LIMIT)
    assert info.value.status == 422 and "bomb" in str(info.value)


def test_a_cameras_multi_picture_jpeg_is_read_as_its_first_frame() -> None:
    buf = io.BytesIO()
    first, second = tile_image(1, 64), tile_image(2, 64)
    first.save(buf, "MPO", save_all=True, append_images=[second])
    out = load_upload(buf.getvalue(), max_bytes=LIMIT)
    assert out.mode == "RGB" and out.size == (64, 64)

    def off(img: Image.Image) -> float:
        return float(np.abs(np.asarray(out, float) - np.asarray(img, float)).mean())

    assert off(first) < off(second) / 2  # the first picture (JPEG-compressed), not the second


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_a_tile_at_full() -> None:
    smooth = Image.new("RGB", (4096, 4096), (90, 120, 60))  # a few kB as JPEG or PNG
    out = load_upload(encode(smooth), max_bytes=LIMIT)
    assert out.size == (1024, 1024)  # 1/16 of the decoding's memory: enough for a 350-pixel model input
    assert load_upload(encode(tile_image(3, 350)), max_bytes=LIMIT).size == (350, 350)
    assert load_upload(encode(smooth, "PNG"), max_bytes=LIMIT).size == (4096, 4096)
    # A phone's 24 Mpx photo: over the pixel limit as sent, 6 Mpx as decoded; its statistics say what was sent.
    photo = load_upload(encode(Image.new("RGB", (6000, 4000), (90, 120, 60))), max_bytes=LIMIT)
    assert photo.size == (3000, 2000)  # the largest reduction that keeps both sides at least 1024
    assert (image_stats(photo)["width"], image_stats(photo)["height"]) == (6000, 4000)
