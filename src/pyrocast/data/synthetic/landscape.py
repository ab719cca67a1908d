"""Where things are: land-use zones (town core, suburb, farmland, wild land), water, and the labels.

Zones are smooth fields of world coordinates, so the label of a place and the look of its tile come from
the same numbers. A place is `nowildfire` when enough of its tile footprint is developed land (town,
suburb or farmland, as in the Kaggle dataset's towns and fields; woodlots and parks inside them count as
forest) and `wildfire` otherwise (forest, wetland, burns, remote land: where fires are recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyrocast.data.synthetic.geography import (
    SegmentIndex,
    Town,
    distance,
    highway_segments,
    make_towns,
    powerline_segments,
    river_segments,
    segments_near,
    world_bounds,
)
from pyrocast.data.synthetic.mercator import km_to_units
from pyrocast.data.synthetic.noise import Grid, fbm, key_of
from pyrocast.settings import Region

# Share of the footprint that must be developed for a place to count as `nowildfire`.
DEVELOPED_SHARE = 0.3
LABEL_SAMPLES = 9  # the footprint is judged on a LABEL_SAMPLES x LABEL_SAMPLES grid of points
# Woodlots and town parks: developed zones left to the forest (they count as forest for the label).
WOODS_SCALE, WOODS_LEVEL = 200.0, 1.1


@dataclass
class Zones:
    """Zone fields on a grid (arrays of the grid's shape)."""

    urban: np.ndarray  # town intensity, ~0 far from towns, >0.6 in a core
    core: np.ndarray  # bool
    suburb: np.ndarray  # bool
    farm: np.ndarray  # bool
    lowland: np.ndarray  # 1 along the big rivers, fading to 0 ~60 km away (farmland plains vs the Shield)
    town_reach: np.ndarray  # like `urban` but wider: how close a town is (remoteness = 1 - town_reach)

    @property
    def developed(self) -> np.ndarray:
        return self.core | self.suburb | self.farm


class Landscape:
    """The seeded world: geography plus the zone fields."""

    def __init__(self, region: Region, seed: int) -> None:
        self.region = region
        self.seed = seed
        self.towns: list[Town] = make_towns(region, seed)
        self.rivers = SegmentIndex(river_segments())
        self.highways = SegmentIndex(highway_segments(self.towns, seed))
        self.powerlines = SegmentIndex(powerline_segments(region, seed))
        self._town_xyr = np.array([(t.x, t.y, t.r) for t in self.towns], np.float64).reshape(-1, 3)
        self._keys: dict[str, int] = {}
        self._macro = _MacroRaster(self)

    def key(self, name: str) -> int:
        k = self._keys.get(name)
        if k is None:
            k = self._keys[name] = key_of(self.seed, name)
        return k

    def fbm(self, grid: Grid, scale: float, name: str, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
        return fbm(grid, scale, self.key(name), octaves, gain)

    def macro(self, grid: Grid, name: str) -> np.ndarray:
        """A slow region-wide field ("lowland", "north") on a grid."""
        return self._macro.sample(grid, name)

    def towns_near(self, grid: Grid, reach: float) -> list[Town]:
        x, y, r = self._town_xyr.T
        pad = reach * r
        hit = (x + pad >= grid.xs[0]) & (x - pad <= grid.xs[-1]) & (y + pad >= grid.ys[0]) & (y - pad <= grid.ys[-1])
        return [self.towns[i] for i in np.flatnonzero(hit)]

    def zones(self, grid: Grid) -> Zones:
        cg = grid.coarse()
        X, Y = cg.xs[None, :], cg.ys[:, None]
        inten = np.zeros(cg.shape, np.float32)
        reach = np.zeros(cg.shape, np.float32)
        for t in self.towns_near(grid, 4.0):
            d2 = ((X - t.x) ** 2 + (Y - t.y) ** 2) / (t.r * t.r)
            np.maximum(inten, np.exp(-d2), out=inten)
            np.maximum(reach, np.exp(-d2 / 9.0), out=reach)
        urban = grid.up(inten) * (1.0 + 0.32 * self.fbm(grid, 1100, "urban", 3))
        town_reach = grid.up(reach)
        lowland = self.macro(grid, "lowland")
        agri = (
            1.35 * lowland
            - 0.62
            + 0.42 * self.fbm(grid, 5000, "agri", 3)
            + 0.75 * town_reach
            - 0.25 * self.macro(grid, "north")
        )
        core = urban > 0.62
        suburb = (urban > 0.22) & ~core
        farm = (agri > 0.0) & ~core & ~suburb
        return Zones(urban, core, suburb, farm, lowland, town_reach)

    def woods(self, grid: Grid, z: Zones, jitter: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(woodlots in farmland, parks and woods in towns): developed zones the forest keeps.

        `jitter` (a canopy texture, when painting) makes their edges ragged; labels use none.
        """
        woodlot = z.farm & (self.fbm(grid, WOODS_SCALE, "woodlot", 3) + jitter > WOODS_LEVEL)
        park = (z.core | z.suburb) & (self.fbm(grid, WOODS_SCALE, "park", 3) + jitter > WOODS_LEVEL)
        return woodlot, park

    # --- labels -------------------------------------------------------------------------------
    def footprint(self, x: float, y: float, size: int = 350) -> tuple[float, float]:
        """(developed share, water share) of the size x size footprint centred on (x, y).

        Developed means town, suburb or farmland; judged on a LABEL_SAMPLES x LABEL_SAMPLES grid of points.
        """
        step = size / LABEL_SAMPLES
        off = -size / 2 + step / 2
        g = Grid.window(x + off, y + off, LABEL_SAMPLES, LABEL_SAMPLES, step)
        z = self.zones(g)
        woodlot, park = self.woods(g, z)
        return float((z.developed & ~woodlot & ~park).mean()), float(self.water(g, z)[0].mean())

    def developed_share(self, x: float, y: float, size: int = 350) -> float:
        """Share of the footprint centred on (x, y) that is town, suburb or farmland (woods inside excluded)."""
        step = size / LABEL_SAMPLES
        off = -size / 2 + step / 2
        g = Grid.window(x + off, y + off, LABEL_SAMPLES, LABEL_SAMPLES, step)
        z = self.zones(g)
        woodlot, park = self.woods(g, z)
        return float((z.developed & ~woodlot & ~park).mean())

    # --- water (shared by painting and sampling) -----------------------------------------------
    def lake_threshold(self, zones: Zones, lake_shift: float = 0.0) -> np.ndarray:
        # The Shield (away from the river plains) holds far more lakes than the farmland lowlands.
        return 2.05 - 0.75 * (1.0 - zones.lowland) + lake_shift

    def water(self, grid: Grid, zones: Zones, lake_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(water mask, depth 0..1, lake field minus threshold)."""
        lake = self.fbm(grid, 750, "lake", 4) - self.lake_threshold(zones, lake_shift)
        depth = np.clip(lake / 0.6, 0.0, 1.0)
        water = lake > 0
        near = segments_near(self.rivers, grid.xs[0], grid.ys[0], grid.xs[-1], grid.ys[-1], pad=600)
        if near:
            d = distance(grid.xs, grid.ys, near, relative=True) + 0.12 * self.fbm(grid, 350, "shore", 3)
            big = d < 1.0
            water |= big
            depth = np.where(big, np.maximum(depth, np.clip((1.0 - d) * 3.0, 0, 1)), depth)
        return water, depth, lake


class _MacroRaster:
    """Slow, region-wide fields precomputed once on a 2 km raster and sampled bilinearly."""

    CELL_KM = 2.0

    def __init__(self, ls: Landscape) -> None:
        x0, y0, x1, y1 = world_bounds(ls.region)
        pad = km_to_units(40)
        cell = km_to_units(self.CELL_KM)
        self.x0, self.y0, self.cell = x0 - pad, y0 - pad, cell
        nx = math.ceil((x1 - x0 + 2 * pad) / cell) + 1
        ny = math.ceil((y1 - y0 + 2 * pad) / cell) + 1
        xs = self.x0 + cell * np.arange(nx)
        ys = self.y0 + cell * np.arange(ny)
        d = distance(xs, ys, ls.rivers.segs)
        self.fields = {
            # farmland plains hug the St. Lawrence and the Ottawa
            "lowland": np.exp(-((d / km_to_units(38)) ** 2)).astype(np.float32),
            # 0 in the south of the region, 1 at its northern edge (more forest, lakes and conifers)
            "north": np.broadcast_to(np.clip((y1 - ys[:, None]) / (y1 - y0), 0, 1), (ny, nx)).astype(np.float32),
        }

    def sample(self, grid: Grid, name: str) -> np.ndarray:
        cg = grid.coarse()
        f = self.fields[name]

        def idx(a: np.ndarray, o: float, n: int) -> tuple[np.ndarray, np.ndarray]:
            t = np.clip((a - o) / self.cell, 0, n - 1.001)
            i = np.floor(t).astype(np.int64)
            return i, (t - i).astype(np.float32)

        iy, fy = idx(cg.ys, self.y0, f.shape[0])
        ix, fx = idx(cg.xs, self.x0, f.shape[1])
        rows = f[iy] + (f[iy + 1] - f[iy]) * fy[:, None]
        vals = rows[:, ix] + (rows[:, ix + 1] - rows[:, ix]) * fx[None, :]
        return grid.up(vals)
