"""The fixed geography of the synthetic region: named towns, the big rivers, highways, power lines.

Real towns of southern Quebec (and the Ottawa side of the region) keep their real positions; villages are
added on a jittered grid with made-up names so that any region (and any seed) has settlements inside the
forest too. Everything here is in world units (see `mercator`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from pyrocast.data.synthetic.mercator import km_to_units, lonlat_to_world, world_to_lonlat
from pyrocast.data.synthetic.noise import key_of
from pyrocast.settings import Region

# (name, lon, lat, radius km of the built-up area)
REAL_TOWNS: tuple[tuple[str, float, float, float], ...] = (
    ("Montréal", -73.57, 45.50, 11.0),
    ("Laval", -73.72, 45.58, 6.0),
    ("Longueuil", -73.47, 45.53, 5.5),
    ("Québec", -71.25, 46.80, 8.0),
    ("Gatineau", -75.70, 45.48, 5.5),
    ("Ottawa", -75.69, 45.40, 8.0),
    ("Sherbrooke", -71.89, 45.40, 5.0),
    ("Trois-Rivières", -72.56, 46.35, 5.0),
    ("Saint-Jean-sur-Richelieu", -73.26, 45.31, 3.5),
    ("Drummondville", -72.48, 45.88, 3.5),
    ("Saint-Jérôme", -74.00, 45.78, 3.0),
    ("Granby", -72.73, 45.40, 3.0),
    ("Saint-Hyacinthe", -72.96, 45.63, 3.0),
    ("Shawinigan", -72.75, 46.56, 3.0),
    ("Joliette", -73.44, 46.03, 2.5),
    ("Victoriaville", -71.96, 46.06, 2.5),
    ("Sorel-Tracy", -73.11, 46.04, 2.5),
    ("Salaberry-de-Valleyfield", -74.13, 45.25, 2.5),
    ("Cornwall", -74.73, 45.03, 3.0),
    ("Magog", -72.14, 45.27, 2.0),
    ("Thetford Mines", -71.30, 46.09, 2.0),
    ("Mont-Tremblant", -74.59, 46.12, 1.5),
    ("Sainte-Agathe-des-Monts", -74.28, 46.05, 1.5),
    ("Lachute", -74.34, 45.65, 1.6),
    ("Cowansville", -72.75, 45.20, 1.5),
    ("Hawkesbury", -74.61, 45.61, 1.4),
    ("Plessisville", -71.78, 46.22, 1.2),
    ("Louiseville", -72.94, 46.26, 1.2),
    ("Nicolet", -72.61, 46.22, 1.2),
    ("Rawdon", -73.72, 46.04, 1.2),
    ("Mont-Laurier", -75.50, 46.55, 1.6),
    ("Maniwaki", -75.97, 46.38, 1.3),
    ("La Tuque", -72.78, 47.44, 1.5),
    ("Saint-Raymond", -71.84, 46.90, 1.2),
    ("Sainte-Adèle", -74.13, 45.95, 1.3),
    ("Saint-Donat", -74.22, 46.32, 1.0),
    ("Saint-Michel-des-Saints", -73.91, 46.68, 0.9),
    ("Val-des-Sources", -71.94, 45.77, 1.2),
    ("Farnham", -72.98, 45.28, 1.2),
    ("Berthierville", -73.18, 46.08, 1.0),
    ("Papineauville", -75.02, 45.62, 0.9),
    ("Rockland", -75.29, 45.55, 1.2),
    ("Buckingham", -75.42, 45.59, 1.3),
    ("Wakefield", -75.93, 45.64, 0.8),
)

# Big rivers as (lon, lat, width km) polylines: the St. Lawrence (with Lac Saint-Pierre) and the Ottawa.
RIVERS: tuple[tuple[tuple[float, float, float], ...], ...] = (
    (
        (-76.2, 44.78, 2.5),
        (-74.73, 45.00, 1.5),
        (-74.40, 45.12, 3.0),
        (-74.13, 45.23, 1.2),
        (-73.85, 45.40, 4.0),
        (-73.62, 45.42, 1.8),
        (-73.52, 45.47, 1.6),
        (-73.48, 45.62, 1.4),
        (-73.30, 45.85, 1.6),
        (-73.12, 46.02, 2.0),
        (-72.95, 46.15, 9.0),
        (-72.75, 46.23, 8.0),
        (-72.55, 46.32, 1.8),
        (-72.20, 46.45, 2.0),
        (-71.85, 46.60, 1.6),
        (-71.50, 46.70, 1.4),
        (-71.20, 46.80, 1.2),
        (-70.90, 46.92, 3.0),
    ),
    (
        (-76.3, 45.50, 1.2),
        (-75.95, 45.45, 1.0),
        (-75.70, 45.43, 0.8),
        (-75.35, 45.57, 1.0),
        (-74.95, 45.63, 1.2),
        (-74.62, 45.60, 1.0),
        (-74.30, 45.53, 1.5),
        (-74.02, 45.47, 4.0),
        (-73.85, 45.40, 3.0),
    ),
)

_SAINTS = (
    "Saint-Alban",
    "Sainte-Émélie",
    "Saint-Côme",
    "Saint-Zénon",
    "Saint-Boniface",
    "Saint-Cyprien",
    "Saint-Damien",
    "Saint-Édouard",
    "Saint-Gérard",
    "Saint-Hippolyte",
    "Saint-Ignace",
    "Sainte-Lucie",
    "Sainte-Marcelline",
    "Saint-Norbert",
    "Saint-Paulin",
    "Saint-Roch",
    "Saint-Sévère",
    "Saint-Tite",
    "Sainte-Ursule",
    "Saint-Wenceslas",
    "Saint-Adolphe",
    "Sainte-Béatrix",
    "Saint-Calixte",
    "Saint-Élie",
    "Saint-Félix",
    "Saint-Gabriel",
    "Saint-Hubert",
    "Saint-Irénée",
    "Sainte-Justine",
    "Sainte-Clotilde",
    "Saint-Mathieu",
    "Sainte-Perpétue",
    "Saint-Ubalde",
)
_PLACES = (
    "Lac-Brûlé",
    "Lac-Caché",
    "Lac-Vert",
    "Lac-Long",
    "Lac-Rond",
    "Lac-aux-Sables",
    "Lac-des-Îles",
    "Lac-Noir",
    "Val-des-Bois",
    "Val-Joli",
    "Val-Morin",
    "Mont-Carmel",
    "Rivière-Rouge",
    "Rivière-Verte",
    "Grandes-Piles",
    "Notre-Dame-des-Bois",
    "Notre-Dame-du-Laus",
    "L'Ascension",
    "La Minerve",
    "Duhamel",
    "Chertsey",
    "Entrelacs",
)


@dataclass(frozen=True)
class Town:
    name: str
    lon: float
    lat: float
    radius_km: float
    x: float  # world units
    y: float
    r: float  # radius in world units


def _town(name: str, lon: float, lat: float, radius_km: float) -> Town:
    x, y = lonlat_to_world(lon, lat)
    return Town(name, lon, lat, radius_km, x, y, km_to_units(radius_km, lat))


def make_towns(region: Region, seed: int, village_cell_km: float = 18.0) -> list[Town]:
    """Real towns inside the region, plus seeded villages on a jittered grid away from other towns."""
    towns = [_town(*t) for t in REAL_TOWNS if region.contains(t[1], t[2])]
    rng = np.random.default_rng(key_of(seed, "villages") % 2**63)
    lat_step = village_cell_km / 111.0
    lat = region.lat_min
    names: set[str] = {t.name for t in towns}
    while lat < region.lat_max:
        lon_step = village_cell_km / (111.0 * math.cos(math.radians(lat + lat_step / 2)))
        lon = region.lon_min
        while lon < region.lon_max:
            keep, u, v, size, p = rng.random(5)
            vlon, vlat = lon + u * lon_step, lat + v * lat_step
            if keep < 0.45 and region.contains(vlon, vlat):
                near = min((_dist_km(vlon, vlat, t.lon, t.lat) - t.radius_km for t in towns), default=99.0)
                if near > 6.0:
                    pool = _SAINTS if p < 0.6 else _PLACES
                    name = pool[int(rng.random() * len(pool))]
                    while name in names:
                        name += "-Nord" if not name.endswith("-Nord") else "-Sud"
                    names.add(name)
                    towns.append(_town(name, round(vlon, 5), round(vlat, 5), 0.45 + 0.7 * size))
            lon += lon_step
        lat += lat_step
    return towns


def _dist_km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    kx = 111.0 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot((lon1 - lon2) * kx, (lat1 - lat2) * 111.0)


@dataclass(frozen=True)
class Segment:
    """A straight piece of a line feature in world units, with a half width."""

    ax: float
    ay: float
    bx: float
    by: float
    half: float

    def bbox(self, pad: float = 0.0) -> tuple[float, float, float, float]:
        return (
            min(self.ax, self.bx) - self.half - pad,
            min(self.ay, self.by) - self.half - pad,
            max(self.ax, self.bx) + self.half + pad,
            max(self.ay, self.by) + self.half + pad,
        )


def river_segments() -> list[Segment]:
    segs = []
    for line in RIVERS:
        pts = [(*lonlat_to_world(lon, lat), km_to_units(w, lat) / 2) for lon, lat, w in line]
        for (ax, ay, aw), (bx, by, bw) in itertools.pairwise(pts):
            # split long pieces so the width changes gradually along the river
            n = max(1, int(math.hypot(bx - ax, by - ay) / 1500))
            for i in range(n):
                t0, t1 = i / n, (i + 1) / n
                segs.append(
                    Segment(
                        ax + (bx - ax) * t0,
                        ay + (by - ay) * t0,
                        ax + (bx - ax) * t1,
                        ay + (by - ay) * t1,
                        aw + (bw - aw) * (t0 + t1) / 2,
                    )
                )
    return segs


def _wiggly(ax: float, ay: float, bx: float, by: float, rng: np.random.Generator, piece: float, amp: float):  # type: ignore[no-untyped-def]
    """A polyline from a to b with seeded sideways offsets: roads and lines that are not ruler-straight."""
    length = math.hypot(bx - ax, by - ay)
    n = max(1, int(length / piece))
    nx, ny = -(by - ay) / (length or 1), (bx - ax) / (length or 1)
    pts = [(ax, ay)]
    for i in range(1, n):
        t = i / n
        off = rng.normal(0, amp) * math.sin(math.pi * t)
        pts.append((ax + (bx - ax) * t + nx * off, ay + (by - ay) * t + ny * off))
    pts.append((bx, by))
    return pts


def highway_segments(towns: list[Town], seed: int) -> list[Segment]:
    """Roads linking every town to its two nearest neighbours (sorted, deduplicated)."""
    rng = np.random.default_rng(key_of(seed, "highways") % 2**63)
    links: set[tuple[int, int]] = set()
    for i, t in enumerate(towns):
        d = sorted((math.hypot(t.x - u.x, t.y - u.y), j) for j, u in enumerate(towns) if j != i)
        for _, j in d[:2]:
            links.add((min(i, j), max(i, j)))
    segs: list[Segment] = []
    for i, j in sorted(links):
        a, b = towns[i], towns[j]
        big = a.radius_km > 2.5 and b.radius_km > 2.5
        half = 4.5 if big else 2.6
        pts = _wiggly(a.x, a.y, b.x, b.y, rng, piece=1500, amp=250)
        segs += [Segment(p[0], p[1], q[0], q[1], half) for p, q in itertools.pairwise(pts)]
    return segs


def powerline_segments(region: Region, seed: int, n: int = 7) -> list[Segment]:
    """Straight cleared corridors of high-voltage lines crossing the region."""
    rng = np.random.default_rng(key_of(seed, "powerlines") % 2**63)
    x0, y1 = lonlat_to_world(region.lon_min, region.lat_min)
    x1, y0 = lonlat_to_world(region.lon_max, region.lat_max)
    segs: list[Segment] = []
    for _ in range(n):
        ax, bx = rng.uniform(x0, x1, 2)
        ay, by = y0 - 2000, y1 + 2000
        pts = _wiggly(ax, ay, bx, by, rng, piece=8000, amp=1500)
        segs += [Segment(p[0], p[1], q[0], q[1], 9.0) for p, q in itertools.pairwise(pts)]
    return segs


class SegmentIndex:
    """Segments with their bounding boxes in one array, for fast "which segments touch this window"."""

    def __init__(self, segs: list[Segment]) -> None:
        self.segs = segs
        self.boxes = np.array([s.bbox() for s in segs], np.float64).reshape(-1, 4)

    def near(self, x0: float, y0: float, x1: float, y1: float, pad: float) -> list[Segment]:
        b = self.boxes
        hit = (b[:, 2] + pad >= x0) & (b[:, 0] - pad <= x1) & (b[:, 3] + pad >= y0) & (b[:, 1] - pad <= y1)
        return [self.segs[i] for i in np.flatnonzero(hit)]


def segments_near(segs: SegmentIndex, x0: float, y0: float, x1: float, y1: float, pad: float) -> list[Segment]:
    return segs.near(x0, y0, x1, y1, pad)


def distance(xs: np.ndarray, ys: np.ndarray, segs: list[Segment], relative: bool = False) -> np.ndarray:
    """Distance from each grid point to the nearest segment; with `relative`, in units of the half width."""
    best = np.full((len(ys), len(xs)), np.inf, np.float32)
    X = xs[None, :].astype(np.float32)
    Y = ys[:, None].astype(np.float32)
    for s in segs:
        dx, dy = s.bx - s.ax, s.by - s.ay
        ll = dx * dx + dy * dy or 1.0
        t = np.clip(((X - s.ax) * dx + (Y - s.ay) * dy) / ll, 0.0, 1.0)
        d = np.hypot(X - (s.ax + t * dx), Y - (s.ay + t * dy))
        if relative:
            d = d / s.half
        np.minimum(best, d, out=best)
    return best


def world_bounds(region: Region) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the region in world units."""
    x0, y1 = lonlat_to_world(region.lon_min, region.lat_min)
    x1, y0 = lonlat_to_world(region.lon_max, region.lat_max)
    return x0, y0, x1, y1


__all__ = [
    "Segment",
    "Town",
    "distance",
    "highway_segments",
    "make_towns",
    "powerline_segments",
    "river_segments",
    "segments_near",
    "world_bounds",
    "world_to_lonlat",
]
