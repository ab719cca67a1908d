"""Imagery providers: one answer to "what does this coordinate look like?" as a 350x350 RGB tile.

All providers give the look of the Kaggle tiles: Mapbox Static Images at zoom 15, which the Mapbox API counts
in 512-pixel tiles (about 1.7 m per pixel in southern Quebec). An XYZ server of 256-pixel tiles therefore
answers at tile zoom 16 for the same ground resolution (zoom 15 when its tiles are 512 pixels).

- `MapboxProvider`: the Static Images API (token from PYROCAST_MAPBOX_TOKEN; never logged, never in errors).
- `XyzProvider`: any XYZ tile server by URL template; stitches the tiles around the point, crops 350x350.
- `FolderProvider`: a folder in the Kaggle layout; the nearest tile within a radius.
- `SyntheticProvider`: the procedural region (pyrocast.data.synthetic), everywhere inside its bounds.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit

import httpx
import mercantile
import numpy as np
from PIL import Image

from pyrocast.data.feed import HttpError, http_get
from pyrocast.data.layout import IMAGE_SUFFIXES, iter_layout
from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.geo import EARTH_RADIUS_KM, check_coordinates, coord_text, parse_stem
from pyrocast.imaging import TILE_FORMATS, TILE_SIZE, decode_image, to_rgb
from pyrocast.settings import Region, Settings

PROVIDERS = ("synthetic", "mapbox", "xyz", "folder")
MAX_MERCATOR_LAT = 85.0511287798066
# Mapbox zooms count 512-pixel tiles; a zoom-z image has 512 * 2**z pixels around the world.
MAPBOX_TILE_PX = 512


class NoImageryError(PyrocastError):
    """The provider has no image for this place (outside its coverage, no tile near enough)."""


@runtime_checkable
class ImageryProvider(Protocol):
    """Anything that turns a coordinate into a 350x350 RGB image."""

    name: str

    def fetch(self, lon: float, lat: float) -> Image.Image: ...


# --- secrets never reach the logs ------------------------------------------------------------------------------
_TOKEN_IN_TEXT = re.compile(r"(access_token=)[^&\s\"'>]+")


class _RedactTokens(logging.Filter):
    """httpx logs every request URL at INFO: strip `access_token=...` from those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "access_token=" in msg:
            record.msg, record.args = _TOKEN_IN_TEXT.sub(r"\1***", msg), None
        return True


for _name in ("httpx", "httpcore"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactTokens) for f in _logger.filters):
        _logger.addFilter(_RedactTokens())


def _ensure_tile(img: Image.Image, what: str) -> Image.Image:
    img = to_rgb(img)
    if img.size != (TILE_SIZE, TILE_SIZE):
        raise ServiceUnavailableError(
            f"{what} is {img.size[0]}x{img.size[1]} pixels, expected {TILE_SIZE}x{TILE_SIZE}",
            "check that the provider serves 350x350 tiles",
        )
    return img


# --- Mapbox ----------------------------------------------------------------------------------------------------
class MapboxProvider:
    """Mapbox Static Images API: `{base}/styles/v1/{style}/static/{lon},{lat},{zoom},0/350x350?access_token=...`."""

    name = "mapbox"
    bounds: Region | None = None

    def __init__(
        self,
        token: str | None,
        base_url: str = "https://api.mapbox.com",
        style: str = "mapbox/satellite-v9",
        zoom: int = 15,
        timeout_s: float = 20.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if not token:
            raise InvalidInputError(
                "the Mapbox provider needs an access token and none is set",
                "export PYROCAST_MAPBOX_TOKEN=pk.... (never put it in pyrocast.yaml or the code)",
            )
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.style = style.strip("/")
        self.zoom = zoom
        self.retries, self.backoff_s = retries, backoff_s
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True)

    def __repr__(self) -> str:  # never show the token
        return f"MapboxProvider(base_url={self.base_url!r}, style={self.style!r}, zoom={self.zoom})"

    def url_for(self, lon: float, lat: float, token: str | None = None) -> str:
        """The request URL; with `token=None` the shown form, without the token."""
        path = (
            f"{self.base_url}/styles/v1/{self.style}/static/{coord_text(lon)},{coord_text(lat)},{self.zoom},0/350x350"
        )
        if token is None:
            return path
        return path + "?" + urlencode({"access_token": token, "attribution": "false", "logo": "false"})

    def fetch(self, lon: float, lat: float) -> Image.Image:
        check_coordinates(lon, lat)
        shown = self.url_for(lon, lat)
        try:
            data = http_get(
                self.url_for(lon, lat, self._token),
                retries=self.retries,
                backoff_s=self.backoff_s,
                what="Mapbox Static Images",
                client=self._client,
                shown_url=shown,
                status_hints={
                    401: "Mapbox rejected the token: check PYROCAST_MAPBOX_TOKEN",
                    403: "the token lacks access to this style: check PYROCAST_MAPBOX_TOKEN and the style",
                    422: "Mapbox refused the request: check the coordinates and imagery.mapbox_style",
                },
            )
            img = decode_image(
                data, what=f"Mapbox image for ({coord_text(lon)}, {coord_text(lat)})", formats=TILE_FORMATS
            )
            return _ensure_tile(img, f"Mapbox image for ({coord_text(lon)}, {coord_text(lat)})")
        except PyrocastError as exc:
            # Belt and braces: no message leaves this class with the token in it.
            if self._token in str(exc):
                raise type(exc)(str(exc.message).replace(self._token, "***"), exc.hint) from None
            raise

    def close(self) -> None:
        self._client.close()


# --- XYZ tile servers ------------------------------------------------------------------------------------------
class XyzProvider:
    """Any XYZ tile server: fetch the tiles around the point, stitch them, crop 350x350 centred on the point."""

    name = "xyz"
    bounds: Region | None = None

    def __init__(
        self,
        template: str,
        zoom: int = 15,
        timeout_s: float = 20.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        cache_tiles: int = 256,
    ) -> None:
        missing = [k for k in ("{z}", "{x}", "{y}") if k not in template]
        if missing or not template.lower().startswith(("http://", "https://")):
            raise InvalidInputError(
                f"XYZ URL template {template!r} is not an http(s) URL with {{z}}, {{x}} and {{y}}",
                "e.g. https://tiles.example.org/{z}/{x}/{y}.jpg (PYROCAST_IMAGERY__XYZ_URL)",
            )
        self.template = template
        self.zoom = zoom  # in Mapbox's 512-pixel convention, like the Kaggle tiles
        self.retries, self.backoff_s = retries, backoff_s
        self.tile_px: int | None = None  # learnt from the first tile
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True)
        self._cache: OrderedDict[tuple[int, int, int], Image.Image] = OrderedDict()
        self._cache_size = cache_tiles
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="xyz")

    def __repr__(self) -> str:
        return f"XyzProvider({urlsplit(self.template).netloc!r}, zoom={self.zoom})"

    def tile_zoom(self, tile_px: int) -> int:
        """The tile zoom whose pixels match Mapbox zoom `self.zoom` for tiles of `tile_px` pixels."""
        k = math.log2(MAPBOX_TILE_PX / tile_px)
        if tile_px <= 0 or k != int(k):
            raise ServiceUnavailableError(
                f"XYZ tiles are {tile_px} pixels wide; expected 256 or 512", "check imagery.xyz_url"
            )
        return self.zoom + int(k)

    def _tile(self, z: int, x: int, y: int) -> Image.Image:
        key = (z, x, y)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        url = self.template.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))
        try:
            data = http_get(
                url,
                retries=self.retries,
                backoff_s=self.backoff_s,
                what=f"XYZ tile {z}/{x}/{y}",
                client=self._client,
            )
        except HttpError as exc:
            if exc.status in (404, 204):
                raise NoImageryError(
                    f"the tile server has no tile {z}/{x}/{y}", "the point may be outside its coverage"
                ) from None
            raise
        img = to_rgb(decode_image(data, what=f"XYZ tile {z}/{x}/{y}", formats=TILE_FORMATS))
        if img.size[0] != img.size[1]:
            raise ServiceUnavailableError(f"XYZ tile {z}/{x}/{y} is {img.size[0]}x{img.size[1]}, not square")
        with self._lock:
            self._cache[key] = img
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return img

    def fetch(self, lon: float, lat: float) -> Image.Image:
        check_coordinates(lon, lat)
        if abs(lat) > MAX_MERCATOR_LAT:
            raise NoImageryError(f"latitude {lat} is beyond Web Mercator's ±{MAX_MERCATOR_LAT:.4f}")
        px = self.tile_px or 256
        z = self.tile_zoom(px)
        centre = mercantile.tile(lon, lat, z)
        first = self._tile(z, centre.x, centre.y)
        if self.tile_px is None:
            self.tile_px = first.size[0]
            if self.tile_px != px:  # 512-pixel tiles: plan again at the matching zoom
                return self.fetch(lon, lat)
        gx, gy = global_pixel(lon, lat, z, px)
        half = TILE_SIZE // 2
        # The crop's centre (left + 175) is the point, to within half a pixel.
        left, top = round(gx - half), round(gy - half)
        tx0, tx1 = left // px, (left + TILE_SIZE - 1) // px
        ty0, ty1 = top // px, (top + TILE_SIZE - 1) // px
        n = 2**z
        if ty0 < 0 or ty1 >= n:
            raise NoImageryError(f"({lon}, {lat}) is too close to the edge of the Web Mercator world")
        cells = [(tx, ty) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        # x wraps around the antimeridian; y does not.
        tiles = list(self._pool.map(lambda c: self._tile(z, c[0] % n, c[1]), cells))
        canvas = Image.new("RGB", ((tx1 - tx0 + 1) * px, (ty1 - ty0 + 1) * px))
        for (tx, ty), tile in zip(cells, tiles, strict=True):
            if tile.size != (px, px):
                raise ServiceUnavailableError(f"XYZ tile {z}/{tx % n}/{ty} is {tile.size[0]} pixels, others {px}")
            canvas.paste(tile, ((tx - tx0) * px, (ty - ty0) * px))
        ox, oy = left - tx0 * px, top - ty0 * px
        return canvas.crop((ox, oy, ox + TILE_SIZE, oy + TILE_SIZE))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()


def global_pixel(lon: float, lat: float, zoom: int, tile_px: int = 256) -> tuple[float, float]:
    """The point in global pixel coordinates of the Web Mercator world at `zoom` (tiles of `tile_px`)."""
    t = mercantile.tile(lon, lat, zoom)
    b = mercantile.xy_bounds(t)
    x, y = mercantile.xy(lon, lat)
    fx = (x - b.left) / (b.right - b.left)
    fy = (b.top - y) / (b.top - b.bottom)
    return (t.x + fx) * tile_px, (t.y + fy) * tile_px


# --- a dataset folder ------------------------------------------------------------------------------------------
def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.column_stack((np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)))


class FolderProvider:
    """The nearest tile of a folder in the Kaggle layout (`{split}/{class}/{lon},{lat}.jpg`) within a radius."""

    name = "folder"
    bounds: Region | None = None

    def __init__(self, folder: Path, radius_m: float = 500.0) -> None:
        from scipy.spatial import cKDTree

        self.folder = Path(folder).expanduser()
        self.radius_m = radius_m
        paths: list[Path] = []
        coords: list[tuple[float, float]] = []
        seen: set[str] = set()
        for _split, _cls, f in iter_layout(self.folder):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.stem in seen:
                continue
            try:
                p = parse_stem(f.stem)
            except InvalidInputError:
                continue  # validation reports such names; here they just cannot be found by place
            seen.add(f.stem)
            paths.append(f)
            coords.append((p.lon, p.lat))
        if not paths:
            raise InvalidInputError(
                f"{self.folder} holds no tiles named {{lon}},{{lat}}.jpg under {{split}}/{{class}}/",
                "point imagery.folder (PYROCAST_IMAGERY__FOLDER) at a folder in the Kaggle layout",
            )
        self.paths = paths
        arr = np.asarray(coords, dtype=np.float64)
        # Nearest neighbour on the unit sphere: chord length is monotonic in great-circle distance.
        self._tree = cKDTree(_unit_vectors(arr[:, 0], arr[:, 1]))

    def __len__(self) -> int:
        return len(self.paths)

    def nearest(self, lon: float, lat: float) -> tuple[Path, float]:
        """The nearest tile and its distance in metres."""
        check_coordinates(lon, lat)
        chord, i = self._tree.query(_unit_vectors(np.array([lon]), np.array([lat]))[0])
        metres = 2 * math.asin(min(1.0, chord / 2)) * EARTH_RADIUS_KM * 1000
        return self.paths[int(i)], metres

    def fetch(self, lon: float, lat: float) -> Image.Image:
        path, metres = self.nearest(lon, lat)
        if metres > self.radius_m:
            raise NoImageryError(
                f"no tile within {self.radius_m:g} m of lat {coord_text(lat)}, lon {coord_text(lon)} in {self.folder}"
                f" (nearest: {path.stem}, {metres:,.0f} m away)",
                "raise imagery.folder_radius_m or use another provider",
            )
        img = decode_image(path.read_bytes(), what=f"tile {path.name}")
        return _ensure_tile(img, f"tile {path}")


# --- the synthetic region --------------------------------------------------------------------------------------
class SyntheticProvider:
    """The procedural region: answers everywhere inside `settings.region`."""

    name = "synthetic"

    def __init__(self, settings: Settings, seed: int | None = None, scenario: str = "baseline") -> None:
        from pyrocast.data.synthetic import SyntheticRegion  # heavy; only when asked for

        self.bounds: Region | None = settings.region
        self.region = SyntheticRegion(settings.region, settings.seed if seed is None else seed, scenario)

    def fetch(self, lon: float, lat: float) -> Image.Image:
        check_coordinates(lon, lat)
        assert self.bounds is not None
        if not self.bounds.contains(lon, lat):
            b = self.bounds
            raise NoImageryError(
                f"lat {coord_text(lat)}, lon {coord_text(lon)} is outside the synthetic region {b.name}"
                f" (lat {b.lat_min}..{b.lat_max}, lon {b.lon_min}..{b.lon_max})",
                "pick a place inside the region (the web app's map outlines it)",
            )
        return _ensure_tile(self.region.render_tile(lon, lat), "synthetic tile")


def make_provider(settings: Settings, name: str | None = None) -> ImageryProvider:
    """The imagery provider named `name` (default: settings.imagery.provider), configured from settings."""
    name = (name or settings.imagery.provider).strip().lower()
    im = settings.imagery
    if name == "synthetic":
        return SyntheticProvider(settings)
    if name == "mapbox":
        token = settings.mapbox_token.get_secret_value() if settings.mapbox_token else None
        return MapboxProvider(token, im.mapbox_url, im.mapbox_style, im.zoom, im.timeout_s, im.retries, im.backoff_s)
    if name == "xyz":
        if not im.xyz_url:
            raise InvalidInputError(
                "the xyz provider needs a tile URL template and none is set",
                "set PYROCAST_IMAGERY__XYZ_URL=https://host/{z}/{x}/{y}.jpg or imagery.xyz_url in pyrocast.yaml",
            )
        return XyzProvider(im.xyz_url, im.zoom, im.timeout_s, im.retries, im.backoff_s)
    if name == "folder":
        if im.folder is None:
            raise InvalidInputError(
                "the folder provider needs a folder of tiles and none is set",
                "set PYROCAST_IMAGERY__FOLDER=/path/to/tiles (Kaggle layout) or imagery.folder in pyrocast.yaml",
            )
        return FolderProvider(im.folder, im.folder_radius_m)
    raise InvalidInputError(f"unknown imagery provider {name!r}", f"choose one of {', '.join(PROVIDERS)}")
