"""Upload checks shared by the gateway, the classifier and the explainer: every bad upload is a 4xx that says why.

Accepted: JPEG and PNG, at most `max_bytes`, at most `MAX_PIXELS` pixels, in a mode that converts to RGB
without guessing (RGB, RGBA, grayscale, palette, CMYK, ...). Rejected: empty bodies, non-images, other formats,
truncated files, decompression bombs, and high-bit-depth or float images (16-bit grayscale, float32), whose
scaling to 8-bit RGB is unknown: converting them silently would feed the model nonsense.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from starlette.requests import ClientDisconnect

from pyrocast.errors import InvalidInputError
from pyrocast.imaging import MAX_PIXELS, decode_image, to_rgb

# Multipart framing around a file is a few hundred bytes; the per-file limit is checked exactly later.
MULTIPART_SLACK = 64 * 1024
# A large JPEG upload is decoded at a reduced scale down to this side: models see 350 pixels and heatmaps are drawn
# at 512, and a 4096-pixel photo cost 50 MB and 90 ms of decoding (on the classifier's event loop) against 3 MB and
# 40 ms at 1024.
DRAFT_SIDE = 1024
FORMATS = ("JPEG", "PNG", "MPO")  # MPO: a camera's JPEG with multi-picture data, read as its first frame
# Modes that become RGB without any assumption about the value range.
SAFE_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "La", "RGBa"})


class UploadRejected(InvalidInputError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, hint: str | None = None, status: int = 422) -> None:
        super().__init__(message, hint)
        self.status = status


def check_size(n_bytes: int, max_bytes: int, what: str = "image") -> None:
    """Raise UploadRejected (413) when an upload is larger than `max_bytes`, (400) when it is empty."""
    if n_bytes <= 0:
        raise UploadRejected(f"{what} is empty (0 bytes)", "send a JPEG or PNG file", status=400)
    if n_bytes > max_bytes:
        raise UploadRejected(
            f"{what} is {n_bytes} bytes, over the limit of {max_bytes} bytes",
            "send a smaller tile (tiles are 350x350 JPEGs of 30 to 80 kB)",
            status=413,
        )


def load_upload(data: bytes, *, max_bytes: int, max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    """Check and decode an uploaded image; returns it as RGB or raises UploadRejected with an HTTP status.

    413 too large, 400 empty, 415 not a JPEG/PNG, 422 corrupt, a decompression bomb or an unusable mode.
    """
    check_size(len(data), max_bytes, what)
    try:
        img = decode_image(data, max_pixels=max_pixels, what=what, draft=DRAFT_SIDE)
    except InvalidInputError as exc:
        status = 415 if isinstance(exc.__cause__, UnidentifiedImageError) else 422
        raise UploadRejected(exc.message, "send a JPEG or PNG tile", status=status) from exc
    if img.format not in FORMATS:
        raise UploadRejected(
            f"{what} is {img.format or 'an unknown format'}, not JPEG or PNG", "convert it to JPEG or PNG", status=415
        )
    if img.mode not in SAFE_MODES:
        raise UploadRejected(
            f"{what} has pixel mode {img.mode!r} (high bit depth or floating point), which has no safe 8-bit RGB form",
            "send an 8-bit RGB or grayscale image",
            status=422,
        )
    w, h = img.size
    if w < 8 or h < 8:
        raise UploadRejected(f"{what} is {w}x{h} pixels, too small to classify", "send a 350x350 tile", status=422)
    return to_rgb(img)


def load_upload_file(
    path: Path, *, max_bytes: int, refuse: Callable[[str, HTTPStatus], Exception], what: str = "uploaded image"
) -> Image.Image:
    """`load_upload` on the temporary file a BentoML service was handed, which is removed whatever happens; a bad
    upload raises `refuse(message, status)` (the service's own BentoML error, answered with that status)."""
    try:
        return load_upload(Path(path).read_bytes(), max_bytes=max_bytes, what=what)
    except UploadRejected as exc:
        raise refuse(str(exc), HTTPStatus(exc.status)) from exc
    finally:
        Path(path).unlink(missing_ok=True)


class BodyLimit:
    """ASGI middleware: answer 413 before reading a request body larger than `max_bytes`.

    Checks Content-Length up front and counts the bytes of chunked bodies as they arrive, so that a huge upload
    is refused without being buffered in memory or written to a temporary file.
    """

    def __init__(  # type: ignore[no-untyped-def]
        self,
        app,
        max_bytes: int,
        envelope: str | None = None,
        refuse: Callable[[str, HTTPStatus], Exception] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.envelope = envelope  # the gateway's errors are {"detail": {...}}; the BentoML services' are bare
        # The exception a chunked body past the limit raises inside the app. BentoML answers every exception but
        # its own with a 500 before this middleware could answer: its services pass one of BentoML's, with 413.
        self.refuse = refuse

    def _error(self, payload: dict) -> dict:
        return {self.envelope: payload} if self.envelope else payload

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None:
            try:
                over = int(length) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, self._error({"error": "invalid Content-Length header"}))
                return
            if over:
                # Read and discard the body (without keeping it) so the client sees the 413 instead of a reset
                # connection; a body beyond DRAIN_LIMIT is cut off.
                await _drain(receive, DRAIN_LIMIT)
                await _send_json(send, 413, self._error(too_big(int(length), self.max_bytes)))
                return
        seen = 0
        started = False

        async def guarded_receive():  # type: ignore[no-untyped-def]
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if self.refuse is not None:
                        raise self.refuse(too_big(None, self.max_bytes)["error"], HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                    raise BodyTooLarge(seen)
            return message

        async def tracking_send(message):  # type: ignore[no-untyped-def]
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, self._error(too_big(None, self.max_bytes)))


DRAIN_LIMIT = 256 * 1024 * 1024


async def _drain(receive, limit: int) -> None:  # type: ignore[no-untyped-def]
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyTooLarge(Exception):
    """A chunked body passed the limit while being read (BodyLimit answers 413; parsers must let it through)."""

    def __init__(self, seen: int) -> None:
        super().__init__(seen)
        self.seen = seen


def too_big(n: int | None, limit: int) -> dict:
    """The error body of a request over the size limit (`n` bytes when known)."""
    size = f"of {n} bytes " if n is not None else ""
    return {
        "error": f"request body {size}is over the limit of {limit} bytes",
        "hint": "send a smaller image (tiles are 350x350 JPEGs of 30 to 80 kB); other bodies are far smaller",
    }


async def _send_json(send, status: int, payload: dict) -> None:  # type: ignore[no-untyped-def]
    import json

    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _ClientErrorsInOneLine(logging.Filter):
    """BentoML logs every request its API refuses as ERROR with tracebacks, a client's mistake (an unknown model
    version, a non-image) too: in a service's log it read as the service failing. A 4xx becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ClientDisconnect):
            # The caller went before its request was read: the gateway gives up a call it started early when the
            # tile it sent turns out bad, or its client left. Nothing failed here.
            record.msg = f"{record.getMessage()}: the caller went away before its request was read"
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            return True
        status = getattr(getattr(exc, "error_code", None), "value", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.msg = f"{record.getMessage()}: answered {status}: {exc}"
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    """Log the requests a BentoML service refuses with a 4xx in one INFO line (see `_ClientErrorsInOneLine`)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML's `log_exception` writes
    if not any(isinstance(f, _ClientErrorsInOneLine) for f in logger.filters):
        logger.addFilter(_ClientErrorsInOneLine())
