"""Web-mercator maths for the synthetic region.

The landscape lives in "world units": global pixel coordinates of web-mercator zoom 15 with 256-pixel
tiles (about 3.3 m at latitude 46). A zoom-15 tile pixel, a Mapbox-like 350x350 tile pixel and one
world unit are the same thing, so tiles and XYZ map tiles agree pixel for pixel.
"""

from __future__ import annotations

import math

WORLD_ZOOM = 15
TILE_PX = 256
WORLD_PX = TILE_PX * 2**WORLD_ZOOM  # world units around the equator
EARTH_CIRCUMFERENCE_M = 40_075_016.686


def lonlat_to_world(lon: float, lat: float) -> tuple[float, float]:
    """(lon, lat) in degrees -> (x, y) in world units (x east, y south)."""
    lat = max(min(lat, 85.05112878), -85.05112878)
    x = (lon + 180.0) / 360.0 * WORLD_PX
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * WORLD_PX
    return x, y


def world_to_lonlat(x: float, y: float) -> tuple[float, float]:
    """(x, y) in world units -> (lon, lat) in degrees."""
    lon = x / WORLD_PX * 360.0 - 180.0
    n = math.pi - 2 * math.pi * y / WORLD_PX
    lat = math.degrees(math.atan(math.sinh(n)))
    return lon, lat


def metres_per_unit(lat: float) -> float:
    """Ground size of one world unit (one zoom-15 pixel) at a latitude."""
    return EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat)) / WORLD_PX


def km_to_units(km: float, lat: float = 46.0) -> float:
    return km * 1000.0 / metres_per_unit(lat)


def xyz_scale(z: int) -> int:
    """World units per pixel of an XYZ tile at zoom z (z <= 15)."""
    return 2 ** (WORLD_ZOOM - z)
