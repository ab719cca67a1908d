"""`SyntheticRegion`: the embedded default imagery provider, label oracle and fire feed."""

from __future__ import annotations

import math
import operator
from datetime import datetime

import numpy as np
from PIL import Image

from pyrocast.data.synthetic import feed, scenarios
from pyrocast.data.synthetic.landscape import DEVELOPED_SHARE, Landscape
from pyrocast.data.synthetic.mercator import TILE_PX, lonlat_to_world, xyz_scale
from pyrocast.data.synthetic.noise import Grid, key_of
from pyrocast.data.synthetic.paint import add_detail, paint, paint_town, tone
from pyrocast.errors import InvalidInputError
from pyrocast.geo import LonLat, check_coordinates
from pyrocast.settings import Region

LABELS = ("wildfire", "nowildfire")
MIN_ZOOM, MAX_ZOOM = 5, 15
MAX_TILE = 2048
# Places handed out are exactly what label_at says, boundary tiles included: no margin, so mixed tiles
# exist in both classes (as in the Kaggle set) and the task is learnable but not trivial.
WILD_MAX_SHARE = DEVELOPED_SHARE
DEV_MIN_SHARE = DEVELOPED_SHARE
MAX_WATER_SHARE = 0.6
NEAR_TOWN_SHARE = 0.5  # of nowildfire places drawn around towns (as the Kaggle set's extra city tiles)


class SyntheticRegion:
    """A seeded procedural landscape over a region, rendered like zoom-15 satellite imagery.

    Same region + seed: same land, labels, towns and feed. The scenario changes the look only.
    """

    def __init__(self, region: Region | None = None, seed: int = 42, scenario: str = "baseline") -> None:
        self.region = region or Region()
        if not (self.region.lon_min < self.region.lon_max and self.region.lat_min < self.region.lat_max):
            raise InvalidInputError(f"region {self.region.name!r} has empty bounds", "check lon/lat min < max")
        self.seed = int(seed)
        self.scenario = scenarios.get_scenario(scenario)
        self.landscape = Landscape(self.region, self.seed)

    # --- rendering --------------------------------------------------------------------------------
    def _render(self, grid: Grid) -> np.ndarray:
        """Paint a grid to uint8 HWC.

        Full-resolution grids are painted at half resolution, upsampled, and given full-resolution canopy
        and grain (4x less work, and the softness of real imagery); towns are painted at full resolution
        because a house is only a few pixels wide.
        """
        ls = self.landscape
        if grid.step == 1.0:
            half = grid.coarsen(2)
            img_h, kind_h, z_h = paint(ls, half, self.scenario.land, towns=False)
            kind = grid.nearest(kind_h, half)
            img = add_detail(grid.up(img_h, half), kind, grid, self.seed)
            if (z_h.core | z_h.suburb).any():
                paint_town(ls, grid, ls.zones(grid), img, kind)
        else:
            img, kind, _ = paint(ls, grid, self.scenario.land)
        img = tone(ls, grid, img)
        img = scenarios.apply(self.scenario, ls, grid, img, kind)
        return np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))

    def render_tile(self, lon: float, lat: float, size: int = 350) -> Image.Image:
        """An RGB size x size tile centred on (lon, lat) at zoom 15 (about 3.3 m per pixel at 46° N).

        The land goes on past the region's bounds (without towns); providers decide what they serve.
        """
        check_coordinates(lon, lat)
        if not 1 <= size <= MAX_TILE:
            raise InvalidInputError(f"tile size {size} is outside 1..{MAX_TILE}")
        cx, cy = lonlat_to_world(lon, lat)
        x0, y0 = math.floor(cx - size / 2 + 0.5), math.floor(cy - size / 2 + 0.5)
        return Image.fromarray(self._render(Grid.window(float(x0), float(y0), size, size)), "RGB")

    def render_xyz(self, z: int, x: int, y: int) -> Image.Image:
        """The 256x256 web-mercator map tile z/x/y (zooms 5..15); zoom 15 matches `render_tile` pixel for pixel."""
        try:
            z, x, y = operator.index(z), operator.index(x), operator.index(y)
        except TypeError:
            raise InvalidInputError(f"tile {z}/{x}/{y} is not made of whole numbers") from None
        if not MIN_ZOOM <= z <= MAX_ZOOM:
            raise InvalidInputError(f"zoom {z!r} is outside {MIN_ZOOM}..{MAX_ZOOM}", "the synthetic map has zooms 5-15")
        n = 2**z
        if not (0 <= x < n and 0 <= y < n):
            raise InvalidInputError(f"tile {z}/{x}/{y} does not exist", f"x and y must lie in 0..{n - 1} at zoom {z}")
        s = xyz_scale(z)
        # pixel i of the tile covers world units [origin + i*s, origin + (i+1)*s); sample its centre
        off = (s - 1) / 2.0
        grid = Grid.window(x * TILE_PX * s + off, y * TILE_PX * s + off, TILE_PX, TILE_PX, float(s))
        return Image.fromarray(self._render(grid), "RGB")

    # --- labels and places ------------------------------------------------------------------------
    def developed_share(self, lon: float, lat: float) -> float:
        """Share of the tile footprint at (lon, lat) that is town, suburb or farmland."""
        check_coordinates(lon, lat)
        return self.landscape.developed_share(*lonlat_to_world(lon, lat))

    def label_at(self, lon: float, lat: float) -> str:
        """Ground truth: "nowildfire" where the tile is mostly town, suburb or farmland, else "wildfire"."""
        return "nowildfire" if self.developed_share(lon, lat) >= DEVELOPED_SHARE else "wildfire"

    @property
    def towns(self) -> list[tuple[str, LonLat]]:
        """Named towns and villages of the region (real towns at their real places, seeded villages)."""
        return [(t.name, LonLat(t.lon, t.lat)) for t in self.landscape.towns]

    def sample_places(self, label: str, n: int, rng: np.random.Generator) -> list[LonLat]:
        """n places whose tiles clearly show `label` (and are not mostly water), drawn with rng.

        Candidates are drawn in fixed-size batches, so a larger n extends the list a smaller n gave.
        """
        if label not in LABELS:
            raise InvalidInputError(f"label {label!r} is not one of {LABELS}")
        if n < 0:
            raise InvalidInputError(f"cannot sample a negative number of places ({n})")
        r, ls = self.region, self.landscape
        weights = np.array([t.radius_km for t in ls.towns], float)
        weights = weights / weights.sum() if len(weights) else weights
        out: list[LonLat] = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 200 * (n + 10):
                raise InvalidInputError(
                    f"could not find {n} {label} places in region {r.name!r}", "is the region large enough?"
                )
            if label == "nowildfire" and len(weights) and rng.random() < NEAR_TOWN_SHARE:
                t = ls.towns[int(rng.choice(len(weights), p=weights))]
                ang, dist = rng.uniform(0, 2 * math.pi), abs(rng.normal(0, 1.1 * t.radius_km))
                lon = t.lon + dist * math.cos(ang) / (111.0 * math.cos(math.radians(t.lat)))
                lat = t.lat + dist * math.sin(ang) / 111.0
            else:
                lon, lat = rng.uniform(r.lon_min, r.lon_max), rng.uniform(r.lat_min, r.lat_max)
            lon, lat = round(float(lon), 6), round(float(lat), 6)
            if not r.contains(lon, lat):
                continue
            x, y = lonlat_to_world(lon, lat)
            share, water = ls.footprint(x, y)
            if (label == "wildfire" and share >= WILD_MAX_SHARE) or (label == "nowildfire" and share < DEV_MIN_SHARE):
                continue
            if water > MAX_WATER_SHARE:
                continue
            out.append(LonLat(lon, lat))
        return out

    # --- fire feed --------------------------------------------------------------------------------
    def fire_feed_csv(self, now: datetime, days: int = 7, n_fires: int = 40) -> str:
        """An active-fires CSV in the CWFIS layout whose fires lie in fire-prone (wildfire) land.

        The fires depend on the seed and the day of `now`; about 30% started before the window and a few
        have an empty start date, as in the real feed.
        """
        if days < 1:
            raise InvalidInputError(f"days must be at least 1, got {days}")
        if n_fires < 0:
            raise InvalidInputError(f"n_fires must be >= 0, got {n_fires}")
        rng = np.random.default_rng([key_of(self.seed, "fires") % 2**32, now.toordinal()])
        places = self.sample_places("wildfire", n_fires, rng)
        return feed.to_csv(feed.fire_rows(places, now, days, rng))
