"""XYZ map tiles of the synthetic region for the web app's map, with an on-disk cache.

`/tiles/{z}/{x}/{y}.jpg` is rendered once by `SyntheticRegion.render_xyz` and kept under
`Settings.root/cache/xyz/<region>-<seed>-<bounds hash>/z/x/y.jpg`: the folder name changes with the region or
seed, so a new configuration never shows stale tiles. Rendering is CPU work (0.1-0.4 s a tile), so at most two
tiles render at once, whatever the number of browsers asking; the same tile asked twice renders once.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import mercantile

from pyrocast.data.layout import atomic_write
from pyrocast.errors import InvalidInputError
from pyrocast.settings import Region, Settings

MIN_ZOOM, MAX_ZOOM = 5, 15
JPEG_QUALITY = 85
# Tiles beyond the region (plus this margin, degrees) are not served: the map stops near the region. Wide enough
# that a common window (1280x800 to 1920x1080) sees the whole region at its fitted zoom without grey bands.
MARGIN_DEG = 2.5
MAX_RENDERS = 2


def cache_key(region: Region, seed: int) -> str:
    """The cache folder name for a region and seed (a short hash of the bounds keeps names readable)."""
    bounds = f"{region.lon_min},{region.lat_min},{region.lon_max},{region.lat_max}"
    digest = hashlib.sha256(f"{bounds}:{seed}".encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in region.name)
    return f"{safe}-{seed}-{digest}"


def tile_in_region(region: Region, z: int, x: int, y: int, margin: float = MARGIN_DEG) -> bool:
    """Whether tile z/x/y exists and touches the region (with `margin` degrees around it)."""
    if not MIN_ZOOM <= z <= MAX_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        return False
    b = mercantile.bounds(x, y, z)
    return not (
        b.east < region.lon_min - margin
        or b.west > region.lon_max + margin
        or b.north < region.lat_min - margin
        or b.south > region.lat_max + margin
    )


class TileRenderer:
    """Renders and caches the synthetic region's map tiles; safe to share between request threads."""

    def __init__(self, settings: Settings) -> None:
        self.region = settings.region
        self.seed = settings.seed
        self.key = cache_key(self.region, self.seed)
        self.folder = settings.root / "cache" / "xyz" / self.key
        self._synthetic = None
        self._init_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_RENDERS)
        self._locks: dict[tuple[int, int, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.rendered = 0  # tiles rendered by this process (the rest came from the cache)

    def path(self, z: int, x: int, y: int) -> Path:
        return self.folder / str(z) / str(x) / f"{y}.jpg"

    def etag(self, z: int, x: int, y: int) -> str:
        return f'"{self.key}-{z}-{x}-{y}"'

    def _region(self):  # type: ignore[no-untyped-def]
        with self._init_lock:
            if self._synthetic is None:
                from pyrocast.data.synthetic import SyntheticRegion

                self._synthetic = SyntheticRegion(self.region, self.seed)
            return self._synthetic

    def get(self, z: int, x: int, y: int) -> bytes:
        """The JPEG bytes of tile z/x/y, from the cache or freshly rendered (then cached).

        Raises InvalidInputError for a tile outside zooms 5-15 or away from the region.
        """
        if not tile_in_region(self.region, z, x, y):
            raise InvalidInputError(
                f"map tile {z}/{x}/{y} is outside the region {self.region.name!r} or zooms {MIN_ZOOM}-{MAX_ZOOM}"
            )
        path = self.path(z, x, y)
        if path.is_file():
            return path.read_bytes()
        lock = self._lock_for(z, x, y)
        try:
            with lock:
                if path.is_file():  # another request rendered it while we waited
                    return path.read_bytes()
                with self._slots:
                    img = self._region().render_xyz(z, x, y)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
                data = buf.getvalue()
                atomic_write(path, data)
                self.rendered += 1
        finally:  # a failed render (a full disk) too: the lock is not kept for good (and never a newer one)
            with self._locks_guard:
                if self._locks.get((z, x, y)) is lock:
                    del self._locks[(z, x, y)]
        return data

    def _lock_for(self, z: int, x: int, y: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((z, x, y), threading.Lock())

    def overview_tiles(self, zooms: tuple[int, ...] = (7, 8)) -> list[tuple[int, int, int]]:
        """The tiles the map's first view needs at `zooms`: the region and the margin around it, which a window's
        fitted view shows too (the first visitor waited for those)."""
        r, m = self.region, MARGIN_DEG
        box = (r.lon_min - m, r.lat_min - m, r.lon_max + m, r.lat_max + m)
        return [(t.z, t.x, t.y) for t in mercantile.tiles(*box, list(zooms)) if tile_in_region(r, t.z, t.x, t.y)]

    def warm(self, zooms: tuple[int, ...] = (7, 8), stop: threading.Event | None = None) -> int:
        """Render the overview tiles not cached yet (in the caller's thread); returns how many were rendered."""
        before = self.rendered
        for z, x, y in self.overview_tiles(zooms):
            if stop is not None and stop.is_set():
                break
            self.get(z, x, y)
        return self.rendered - before
