"""Real HTTP servers on 127.0.0.1 (free port, own thread) that speak the protocols Pyrocast talks to.

- `CwfisServer`: serves an active-fires CSV, optionally failing the first N requests (503 by default).
- `MapboxServer`: a stand-in for the Mapbox Static Images API; checks the token and the URL form.
- `XyzServer`: an XYZ tile server whose tiles encode their own global pixel coordinates (lossless PNG), so
  that a stitched crop can be checked pixel by pixel.

Each is a context manager: `with CwfisServer(text) as srv: fetch_feed(srv.url, ...)`.
"""

from __future__ import annotations

import io
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import mercantile
import numpy as np
from PIL import Image

TILE_PX = 256


@dataclass
class Seen:
    """One request the server received."""

    path: str
    query: dict[str, list[str]]
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class ThreadedServer:
    """The lifecycle shared by the local test servers: a threading HTTP server on a free loopback port."""

    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch(self, handler: type[BaseHTTPRequestHandler]) -> Any:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalServer(ThreadedServer):
    """Base: a threading HTTP server on a free loopback port; subclasses implement `answer`."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()

    def delay(self, n: int) -> float:
        """Seconds to wait before sending the answer to request number n (1-based); 0 by default."""
        return 0.0

    # subclasses: return (status, headers, body)
    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def start(self) -> LocalServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                with server._lock:
                    status, headers, body = server.answer(parts.path, query)
                    server.requests.append(Seen(parts.path, query, status, dict(self.headers)))
                    wait = server.delay(len(server.requests))
                if wait:
                    time.sleep(wait)  # outside the lock: other requests are answered meanwhile
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        return self._launch(Handler)


class CwfisServer(LocalServer):
    """Serves `text` at PATH; the first `fail_times` requests get `fail_status` (503 by default)."""

    PATH = "/downloads/activefires/activefires.csv"

    def __init__(
        self,
        text: str,
        fail_times: int = 0,
        fail_status: int = 503,
        retry_after: str | None = None,
        hang_times: int = 0,
        hang_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.text = text
        self.fail_times = fail_times
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.hang_times = hang_times  # the first N requests are answered only after hang_s (client timeouts)
        self.hang_s = hang_s
        self.hit_times: list[float] = []

    def delay(self, n: int) -> float:
        return self.hang_s if n <= self.hang_times else 0.0

    @property
    def url(self) -> str:
        return self.base + self.PATH

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        self.hit_times.append(time.monotonic())
        if path != self.PATH:
            return 404, {"Content-Type": "text/plain"}, b"not found"
        if len(self.hit_times) <= self.fail_times:
            headers = {"Content-Type": "text/plain"}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            return self.fail_status, headers, b"try again later"
        return 200, {"Content-Type": "text/csv; charset=utf-8"}, self.text.encode()


def colour_for(lon: float, lat: float) -> tuple[int, int, int]:
    """A colour that depends on the place, so tests can tell which place an image was made for."""
    return (int(abs(lon) * 1000) % 200 + 20, int(abs(lat) * 1000) % 200 + 20, 128)


class MapboxServer(LocalServer):
    """Mapbox Static Images API stand-in.

    Accepts only `/styles/v1/{owner}/{style}/static/{lon},{lat},{zoom},{bearing}/{w}x{h}` with
    `access_token=<token>`, `attribution=false` and `logo=false`; answers a JPEG of the asked size whose colour
    is `colour_for(lon, lat)`. Wrong token: 401 with Mapbox's JSON message. Bad URL: 422. The first
    `fail_times` requests get 503.
    """

    _PATH = re.compile(
        r"^/styles/v1/(?P<owner>[\w.-]+)/(?P<style>[\w.-]+)/static/"
        r"(?P<lon>-?\d+(?:\.\d+)?),(?P<lat>-?\d+(?:\.\d+)?),(?P<zoom>\d+(?:\.\d+)?),(?P<bearing>-?\d+(?:\.\d+)?)"
        r"/(?P<w>\d+)x(?P<h>\d+)$"
    )

    def __init__(self, token: str, fail_times: int = 0, size_override: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.token = token
        self.fail_times = fail_times
        self.size_override = size_override
        self.hits = 0

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        self.hits += 1
        if self.hits <= self.fail_times:
            return 503, {}, b"upstream busy"
        m = self._PATH.match(path)
        if not m:
            return 422, {"Content-Type": "application/json"}, b'{"message":"Invalid request"}'
        if query.get("access_token") != [self.token]:
            return 401, {"Content-Type": "application/json"}, b'{"message":"Not Authorized - Invalid Token"}'
        if query.get("attribution") != ["false"] or query.get("logo") != ["false"]:
            return 422, {"Content-Type": "application/json"}, b'{"message":"attribution and logo must be false"}'
        lon, lat = float(m["lon"]), float(m["lat"])
        if not (-180 <= lon <= 180 and -85.0511 <= lat <= 85.0511):
            return 422, {"Content-Type": "application/json"}, b'{"message":"Invalid coordinates"}'
        w, h = self.size_override or (int(m["w"]), int(m["h"]))
        buf = io.BytesIO()
        Image.new("RGB", (w, h), colour_for(lon, lat)).save(buf, format="JPEG", quality=95)
        return 200, {"Content-Type": "image/jpeg"}, buf.getvalue()

    def last_point(self) -> tuple[float, float, float, float, int, int]:
        """(lon, lat, zoom, bearing, w, h) of the last well-formed request."""
        for seen in reversed(self.requests):
            m = self._PATH.match(seen.path)
            if m:
                return (
                    float(m["lon"]), float(m["lat"]), float(m["zoom"]), float(m["bearing"]), int(m["w"]), int(m["h"])
                )  # fmt: skip
        raise AssertionError("no well-formed request seen")


def pattern_tile(z: int, x: int, y: int, size: int = TILE_PX) -> Image.Image:
    """A tile whose pixel (i, j) encodes its global pixel position: R = gx % 256, G = gy % 256,
    B = 16 * (x % 16) + (y % 16) (which tile, modulo 16 in each direction)."""
    gx = (np.arange(size) + x * size) % 256
    gy = (np.arange(size) + y * size) % 256
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, :, 0] = gx[None, :]
    arr[:, :, 1] = gy[:, None]
    arr[:, :, 2] = 16 * (x % 16) + (y % 16)
    return Image.fromarray(arr, "RGB")


def decode_pattern(rgb: tuple[int, int, int], size: int = TILE_PX) -> tuple[int, int]:
    """Global pixel position (mod 16 tiles) encoded by `pattern_tile`, for tile size 256."""
    r, g, b = rgb
    tx, ty = b // 16, b % 16
    return tx * size + r, ty * size + g


def global_pixel(lon: float, lat: float, zoom: int, size: int = TILE_PX) -> tuple[float, float]:
    """The point's position in global pixels at `zoom` (Web Mercator), via mercantile."""
    x, y = mercantile.xy(lon, lat)
    left, top = mercantile.xy(-180.0, 85.0511287798066)
    span = 2 * abs(left)
    n = 2**zoom
    return (x - left) / span * n * size, (top - y) / span * n * size


class XyzServer(LocalServer):
    """XYZ tiles at `/{z}/{x}/{y}.{png|jpg}` drawing `pattern_tile`; 404 outside the tile range.

    The first `fail_times` requests get 503; `missing` is a set of (z, x, y) answered with 404.
    """

    _PATH = re.compile(r"^/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)\.(?P<ext>png|jpg|jpeg)$")

    def __init__(self, tile_px: int = TILE_PX, fail_times: int = 0, missing: set[tuple[int, int, int]] | None = None):
        super().__init__()
        self.tile_px = tile_px
        self.fail_times = fail_times
        self.missing = missing or set()
        self.hits = 0

    def template(self, ext: str = "png") -> str:
        return self.base + "/{z}/{x}/{y}." + ext

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        self.hits += 1
        if self.hits <= self.fail_times:
            return 503, {}, b"busy"
        m = self._PATH.match(path)
        if not m:
            return 404, {}, b"no such tile"
        z, x, y = int(m["z"]), int(m["x"]), int(m["y"])
        if not (0 <= x < 2**z and 0 <= y < 2**z) or (z, x, y) in self.missing:
            return 404, {}, b"no such tile"
        buf = io.BytesIO()
        fmt = "PNG" if m["ext"] == "png" else "JPEG"
        pattern_tile(z, x, y, self.tile_px).save(buf, format=fmt)
        return 200, {"Content-Type": f"image/{fmt.lower()}"}, buf.getvalue()

    def tiles_seen(self) -> set[tuple[int, int, int]]:
        out = set()
        for seen in self.requests:
            m = self._PATH.match(seen.path)
            if m and seen.status == 200:
                out.add((int(m["z"]), int(m["x"]), int(m["y"])))
        return out
