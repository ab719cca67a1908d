"""Decoding untrusted images: one guarded path for validation, import and serving."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from pyrocast.errors import InvalidInputError

TILE_SIZE = 350
MAX_PIXELS = 4096 * 4096  # beyond this an upload is treated as a decompression bomb
FULL_SIZE = "full_size"  # `decode_image`'s note in `Image.info`: the size as sent (a draft decodes it smaller)
TRANSPARENT = "transparent_fraction"  # `to_rgb`'s note in `Image.info`: the share of (mostly) transparent pixels
# The only decoders untrusted bytes reach: Pillow would otherwise try all of its ~40 readers, EPS among them, which
# runs Ghostscript on whatever PostScript it was sent. A JPEG with multi-picture data opens as MPO (its first frame).
IMAGE_FORMATS = ("JPEG", "PNG")
TILE_FORMATS = (*IMAGE_FORMATS, "WEBP")  # what tile servers send besides
# Read only to name a dataset file's wrong format (a GIF saved as .jpg): plain raster formats, no PostScript.
RASTER_FORMATS = (*TILE_FORMATS, "GIF", "BMP", "TIFF")


def decode_image(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    what: str = "image",
    formats: tuple[str, ...] = IMAGE_FORMATS,
    draft: int | None = None,
) -> Image.Image:
    """Decode bytes into a fully loaded PIL image, or raise InvalidInputError saying what is wrong.

    Catches: empty input, not an image (or not one of `formats`), truncated data, decompression bombs.
    The mode is left as is: callers decide whether a non-RGB image is an error or gets converted. `draft`: a
    JPEG larger than that many pixels a side is decoded at a reduced scale (1/2 to 1/8, never below `draft`).
    """
    if not data:
        raise InvalidInputError(f"{what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            full = img.size
            if draft is not None and img.format in ("JPEG", "MPO"):
                # Before the pixel limit: what is decoded is the reduced image (a 24 Mpx phone photo is 1.5 Mpx).
                img.draft(None, (draft, draft))
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidInputError(
                    f"{what} is {w}x{h} pixels, over the limit of {max_pixels} (decompression bomb?)"
                )
            img.load()
            img.info[FULL_SIZE] = full  # drift statistics record what was sent, not the reduced decode
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message quotes Pillow's own (higher) limit: say ours.
        raise InvalidInputError(f"{what} has more pixels than the limit of {max_pixels} (decompression bomb?)") from exc
    except UnidentifiedImageError as exc:
        accepted = " or ".join([", ".join(formats[:-1]), formats[-1]] if len(formats) > 1 else formats)
        raise InvalidInputError(f"{what} is not {accepted} (an unrecognised or refused format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError(f"{what} is truncated or corrupt: {exc}") from exc
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of an image (alpha is flattened on white, palettes and grayscale expanded)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        alpha = rgba.split()[-1]
        bg.paste(rgba, mask=alpha)
        # Kept for the out-of-distribution check: a transparent image drawn on white otherwise reads as cloud or snow.
        bg.info[TRANSPARENT] = float((np.asarray(alpha) < 128).mean())
        if FULL_SIZE in img.info:
            bg.info[FULL_SIZE] = img.info[FULL_SIZE]
        return bg
    return img.convert("RGB")


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
