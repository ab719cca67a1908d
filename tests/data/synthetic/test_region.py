"""The synthetic region: determinism, tile geometry, XYZ consistency, labels, scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from pyrocast.data.synthetic import SCENARIOS, SyntheticRegion
from pyrocast.data.synthetic.mercator import TILE_PX, lonlat_to_world, world_to_lonlat
from pyrocast.errors import InvalidInputError
from pyrocast.settings import Region

MONTREAL = (-73.567, 45.503)


@pytest.fixture(scope="module")
def region() -> SyntheticRegion:
    return SyntheticRegion(Region(), seed=42)


def px(img) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_tile_other_seed_other_tile(region: SyntheticRegion) -> None:
    again = SyntheticRegion(Region(), seed=42)
    other = SyntheticRegion(Region(), seed=7)
    for lon, lat in (MONTREAL, (-74.6, 46.9), (-72.9, 45.9)):
        a = px(region.render_tile(lon, lat))
        assert np.array_equal(a, px(again.render_tile(lon, lat)))
        assert np.abs(a - px(other.render_tile(lon, lat))).mean() > 5


def test_tiles_are_rgb_of_the_asked_size(region: SyntheticRegion) -> None:
    img = region.render_tile(-73.2, 46.1)
    assert img.mode == "RGB" and img.size == (350, 350)
    assert region.render_tile(-73.2, 46.1, size=128).size == (128, 128)
    # a tile is not flat: it has structure
    assert px(img).std() > 8


def test_bad_tile_requests_say_what_is_wrong(region: SyntheticRegion) -> None:
    with pytest.raises(InvalidInputError, match="size"):
        region.render_tile(-73.2, 46.1, size=0)
    with pytest.raises(InvalidInputError, match="latitude"):
        region.render_tile(-73.2, 123.0)
    with pytest.raises(InvalidInputError, match="zoom"):
        region.render_xyz(4, 0, 0)
    with pytest.raises(InvalidInputError, match="zoom"):
        region.render_xyz(16, 0, 0)
    with pytest.raises(InvalidInputError, match="does not exist"):
        region.render_xyz(6, 64, 0)
    with pytest.raises(InvalidInputError, match="whole numbers"):
        region.render_xyz(6, 1.5, 0)  # type: ignore[arg-type]
    assert region.render_xyz(np.int64(6), np.int64(18), np.int64(22)).size == (256, 256)
    with pytest.raises(InvalidInputError, match="scenario"):
        SyntheticRegion(Region(), scenario="mars")


def test_zoom_15_map_tile_is_the_tile_at_its_centre(region: SyntheticRegion) -> None:
    x, y = lonlat_to_world(*MONTREAL)
    tx, ty = int(x // TILE_PX), int(y // TILE_PX)
    xyz = px(region.render_xyz(15, tx, ty))
    assert xyz.shape == (256, 256, 3)
    lon, lat = world_to_lonlat((tx + 0.5) * TILE_PX, (ty + 0.5) * TILE_PX)
    assert np.array_equal(xyz, px(region.render_tile(lon, lat, size=256)))
    # and a 350 tile around the same centre contains it
    big = px(region.render_tile(lon, lat))
    assert np.array_equal(big[47:303, 47:303], xyz)


@pytest.mark.parametrize("z", [14, 12, 9])
def test_lower_zooms_are_coarser_renderings_of_the_same_land(region: SyntheticRegion, z: int) -> None:
    # the area covered by one zoom-z tile, seen as 256x256 zoom-15 tiles averaged down, has the same colours
    x, y = lonlat_to_world(-72.9, 45.9)
    s = 2 ** (15 - z)
    tx, ty = int(x // (TILE_PX * s)), int(y // (TILE_PX * s))
    low = px(region.render_xyz(z, tx, ty)).reshape(-1, 3).mean(0)
    x0, y0 = tx * TILE_PX * s, ty * TILE_PX * s
    samples = [
        px(
            region.render_tile(
                *world_to_lonlat(x0 + (i + 0.5) * TILE_PX * s / 3, y0 + (j + 0.5) * TILE_PX * s / 3), 128
            )
        )
        for i in range(3)
        for j in range(3)
    ]
    high = np.concatenate([p.reshape(-1, 3) for p in samples]).mean(0)
    assert np.abs(low - high).max() < 25, (low, high)


def test_labels_follow_the_land(region: SyntheticRegion) -> None:
    assert region.label_at(*MONTREAL) == "nowildfire"
    rng = np.random.default_rng(0)
    for label in ("wildfire", "nowildfire"):
        places = region.sample_places(label, 12, rng)
        assert len(places) == 12
        assert all(region.label_at(p.lon, p.lat) == label for p in places)
        assert all(region.region.contains(p.lon, p.lat) for p in places)
        assert all(type(p.lon) is float and type(p.lat) is float for p in places)
    with pytest.raises(InvalidInputError, match="label"):
        region.sample_places("fire", 1, rng)


def test_sampling_is_deterministic_and_extends(region: SyntheticRegion) -> None:
    a = region.sample_places("nowildfire", 5, np.random.default_rng(3))
    b = region.sample_places("nowildfire", 8, np.random.default_rng(3))
    assert b[:5] == a


def test_towns_are_named_and_inside(region: SyntheticRegion) -> None:
    towns = region.towns
    names = [n for n, _ in towns]
    assert {"Montréal", "Trois-Rivières", "Sherbrooke", "Québec"} <= set(names)
    assert len(names) == len(set(names)) > 50
    assert all(region.region.contains(p.lon, p.lat) for _, p in towns)
    assert SyntheticRegion(Region(), seed=42).towns == towns


def test_a_small_other_region_still_has_towns_and_both_labels() -> None:
    small = SyntheticRegion(Region(name="laurentides", lon_min=-75.0, lon_max=-74.0, lat_min=46.0, lat_max=46.6), 1)
    assert small.towns
    rng = np.random.default_rng(1)
    assert len(small.sample_places("wildfire", 2, rng)) == len(small.sample_places("nowildfire", 2, rng)) == 2


@pytest.mark.parametrize("name", [s for s in SCENARIOS if s != "baseline"])
def test_scenarios_change_the_look_not_the_labels(region: SyntheticRegion, name: str) -> None:
    other = SyntheticRegion(Region(), seed=42, scenario=name)
    places = [MONTREAL, (-74.6, 46.9), (-72.9, 45.9)]
    diff = np.mean([np.abs(px(region.render_tile(*p)) - px(other.render_tile(*p))).mean() for p in places])
    assert diff > 6, f"{name} looks like baseline (mean abs difference {diff:.1f})"
    assert [other.label_at(*p) for p in places] == [region.label_at(*p) for p in places]
