"""Coordinates: parsing tile file names, distances, and the km grid used for spatial splits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pyrocast.errors import InvalidInputError

EARTH_RADIUS_KM = 6371.0088
_NAME = re.compile(r"^(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class LonLat:
    lon: float
    lat: float

    def __post_init__(self) -> None:
        check_coordinates(self.lon, self.lat)

    def stem(self) -> str:
        """The dataset file stem for this place, `{lon},{lat}` with up to 6 decimals (about 0.1 m)."""
        return f"{coord_text(self.lon)},{coord_text(self.lat)}"


def coord_text(x: float) -> str:
    """A coordinate as people and file names write it: up to 6 decimals, no trailing zeros, never -0."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def check_coordinates(lon: float, lat: float) -> None:
    """Raise InvalidInputError unless lon/lat are finite and on Earth."""
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise InvalidInputError(f"coordinates must be finite numbers, got lon={lon!r} lat={lat!r}")
    if not -180.0 <= lon <= 180.0:
        raise InvalidInputError(f"longitude {lon} is outside [-180, 180]", "longitude comes first in file names")
    if not -90.0 <= lat <= 90.0:
        raise InvalidInputError(f"latitude {lat} is outside [-90, 90]", "longitude comes first in file names")


def parse_stem(stem: str) -> LonLat:
    """Parse a tile file stem `{lon},{lat}` (longitude first, as in the Kaggle dataset)."""
    m = _NAME.match(stem.strip())
    if not m:
        raise InvalidInputError(f"file name {stem!r} is not '{{lon}},{{lat}}'", "e.g. -73.535,45.480806.jpg")
    return LonLat(float(m.group(1)), float(m.group(2)))


def haversine_km(a: LonLat, b: LonLat) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def grid_cell(p: LonLat, cell_km: float) -> tuple[int, int]:
    """The (row, col) of the cell_km x cell_km cell that holds p (equal-area-ish: columns shrink with lat)."""
    km_per_deg_lat = math.pi * EARTH_RADIUS_KM / 180.0
    row = math.floor(p.lat * km_per_deg_lat / cell_km)
    # Columns are measured at the row's reference latitude so a cell keeps one width.
    ref_lat = (row + 0.5) * cell_km / km_per_deg_lat
    km_per_deg_lon = km_per_deg_lat * max(math.cos(math.radians(ref_lat)), 1e-6)
    col = math.floor(p.lon * km_per_deg_lon / cell_km)
    return row, col
