"""Imagery providers against real local servers (Mapbox stand-in, XYZ tiles) and a real tile folder."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from pyrocast.data.imagery import (
    FolderProvider,
    ImageryProvider,
    MapboxProvider,
    NoImageryError,
    XyzProvider,
    make_provider,
)
from pyrocast.errors import InvalidInputError, ServiceUnavailableError
from pyrocast.settings import Settings
from tests.support.servers import MapboxServer, XyzServer, colour_for, decode_pattern

TOKEN = "pk.test-token-0123456789abcdef"


def _with(settings: Settings, **imagery: object) -> Settings:
    return settings.model_copy(
        update={"imagery": settings.imagery.model_copy(update={"retries": 2, "backoff_s": 0.01, **imagery})}
    )


def mercator_pixel(lon: float, lat: float, zoom: int, tile_px: int = 256) -> tuple[float, float]:
    """Independent of the code under test: the textbook Web Mercator formula."""
    n = 2**zoom * tile_px
    x = (lon + 180.0) / 360.0 * n
    la = math.radians(lat)
    y = (1.0 - math.log(math.tan(la) + 1.0 / math.cos(la)) / math.pi) / 2.0 * n
    return x, y


# --- Mapbox -------------------------------------------------------------------------------------------------------
def test_mapbox_requests_the_static_images_url_form(settings: Settings) -> None:
    with MapboxServer(TOKEN) as srv:
        s = _with(settings, mapbox_url=srv.base).model_copy(update={"mapbox_token": SecretStr(TOKEN)})
        p = make_provider(s, "mapbox")
        assert isinstance(p, ImageryProvider) and p.name == "mapbox"
        img = p.fetch(-73.535, 45.480806)
        assert img.size == (350, 350) and img.mode == "RGB"
        # The server painted the colour of the place it was asked for (JPEG: close, not exact).
        assert np.abs(np.asarray(img)[175, 175].astype(int) - colour_for(-73.535, 45.480806)).max() <= 3
        assert srv.last_point() == (-73.535, 45.480806, 15.0, 0.0, 350, 350)
        seen = srv.requests[-1]
        assert seen.path == "/styles/v1/mapbox/satellite-v9/static/-73.535,45.480806,15,0/350x350"
        assert seen.query == {"access_token": [TOKEN], "attribution": ["false"], "logo": ["false"]}


def test_mapbox_without_a_token_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="PYROCAST_MAPBOX_TOKEN"):
        make_provider(settings.model_copy(update={"mapbox_token": None}), "mapbox")


def test_mapbox_token_comes_from_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYROCAST_MAPBOX_TOKEN", TOKEN)
    with MapboxServer(TOKEN) as srv:
        monkeypatch.setenv("PYROCAST_IMAGERY__MAPBOX_URL", srv.base)
        p = make_provider(Settings(), "mapbox")
        assert p.fetch(-72.0, 46.0).size == (350, 350)
        assert TOKEN not in repr(p)


def test_a_wrong_token_is_reported_without_the_token(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "pk.wrong-token-never-shown-42"
    caplog.set_level(logging.DEBUG)  # httpx logs each request URL at INFO: the token must not appear
    # Other modules quiet httpx to WARNING when imported earlier in the session: turn it back up here.
    caplog.set_level(logging.INFO, logger="httpx")
    with MapboxServer(TOKEN) as srv:
        p = MapboxProvider(wrong, base_url=srv.base, retries=2, backoff_s=0.01)
        with pytest.raises(ServiceUnavailableError) as err:
            p.fetch(-72.0, 46.0)
        assert len(srv.requests) == 1  # 401 is not retried
    msg = str(err.value)
    assert "401" in msg and "PYROCAST_MAPBOX_TOKEN" in msg
    assert wrong not in msg
    assert "HTTP Request" in caplog.text  # the request was logged...
    assert wrong not in caplog.text  # ...with the token redacted
    assert "access_token=***" in caplog.text


def test_mapbox_retries_on_503_and_never_shows_the_token(settings: Settings) -> None:
    with MapboxServer(TOKEN, fail_times=2) as srv:
        p = MapboxProvider(TOKEN, base_url=srv.base, retries=2, backoff_s=0.01)
        assert p.fetch(-72.0, 46.0).size == (350, 350)
        assert [r.status for r in srv.requests] == [503, 503, 200]
    with MapboxServer(TOKEN, fail_times=10) as srv:
        p = MapboxProvider(TOKEN, base_url=srv.base, retries=1, backoff_s=0.01)
        with pytest.raises(ServiceUnavailableError, match="after 2 tries") as err:
            p.fetch(-72.0, 46.0)
    assert TOKEN not in str(err.value)
    assert "-72,46,15,0/350x350" in str(err.value)  # says which image failed


def test_mapbox_image_of_the_wrong_size_is_refused(settings: Settings) -> None:
    with MapboxServer(TOKEN, size_override=(700, 700)) as srv:
        p = MapboxProvider(TOKEN, base_url=srv.base)
        with pytest.raises(ServiceUnavailableError, match="700x700 pixels, expected 350x350"):
            p.fetch(-72.0, 46.0)


# --- XYZ ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lon", "lat"),
    [(-73.535, 45.480806), (-72.00001, 46.99999), (-74.9, 45.1)],
)
def test_xyz_crop_is_centred_on_the_point_and_seamless(settings: Settings, lon: float, lat: float) -> None:
    with XyzServer() as srv:
        p = make_provider(_with(settings, xyz_url=srv.template("png")), "xyz")
        img = p.fetch(lon, lat)
        tiles = srv.tiles_seen()
    assert img.size == (350, 350) and img.mode == "RGB"
    # Mapbox zoom 15 counts 512-pixel tiles: with 256-pixel tiles the same ground resolution is tile zoom 16.
    assert {z for z, _, _ in tiles} == {16}
    assert 4 <= len(tiles) <= 9
    arr = np.asarray(img).astype(int)
    gx, gy = mercator_pixel(lon, lat, 16)
    cx, cy = decode_pattern(tuple(arr[175, 175]))
    # The pattern repeats every 16 tiles: compare modulo 4096 pixels.
    assert abs(((cx + 0.5 - gx) + 2048) % 4096 - 2048) <= 1.0
    assert abs(((cy + 0.5 - gy) + 2048) % 4096 - 2048) <= 1.0
    # Seamless: every column and row continues the one before it by exactly one global pixel.
    xs = np.array([decode_pattern(tuple(arr[10, i]))[0] for i in range(350)])
    ys = np.array([decode_pattern(tuple(arr[j, 10]))[1] for j in range(350)])
    assert set(np.diff(xs) % 4096) == {1}
    assert set(np.diff(ys) % 4096) == {1}


def test_xyz_with_512_pixel_tiles_uses_zoom_15(settings: Settings) -> None:
    with XyzServer(tile_px=512) as srv:
        p = XyzProvider(srv.template("png"), zoom=15, retries=0)
        img = p.fetch(-73.535, 45.480806)
        tiles = srv.tiles_seen()
    assert img.size == (350, 350)
    assert p.tile_px == 512
    assert 15 in {z for z, _, _ in tiles}


def test_xyz_jpeg_tiles_and_tile_cache(settings: Settings) -> None:
    with XyzServer() as srv:
        p = XyzProvider(srv.template("jpg"), retries=0)
        p.fetch(-73.5, 45.5)
        first = srv.hits
        p.fetch(-73.5, 45.5)  # same place: every tile comes from the cache
        assert srv.hits == first


def test_xyz_retries_on_5xx(settings: Settings) -> None:
    with XyzServer(fail_times=2) as srv:
        p = XyzProvider(srv.template("png"), retries=3, backoff_s=0.01)
        assert p.fetch(-73.5, 45.5).size == (350, 350)
        assert [r.status for r in srv.requests][:3] == [503, 503, 200]


def test_xyz_missing_tile_is_no_imagery(settings: Settings) -> None:
    lon, lat = -73.5, 45.5
    gx, gy = mercator_pixel(lon, lat, 16)
    with XyzServer(missing={(16, int(gx // 256), int(gy // 256))}) as srv:
        p = XyzProvider(srv.template("png"), retries=0)
        with pytest.raises(NoImageryError, match="no tile 16/"):
            p.fetch(lon, lat)


@pytest.mark.parametrize("template", ["http://x/{z}/{x}.png", "ftp://x/{z}/{x}/{y}.png", "tiles/{z}/{x}/{y}"])
def test_xyz_bad_template_is_a_clear_error(template: str) -> None:
    with pytest.raises(InvalidInputError, match="template"):
        XyzProvider(template)


def test_xyz_without_template_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="XYZ_URL"):
        make_provider(settings, "xyz")


# --- folder -------------------------------------------------------------------------------------------------------
def _tile(path: Path, colour: tuple[int, int, int], size: int = 350) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="JPEG", quality=95)


def test_folder_returns_the_nearest_tile_within_the_radius(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    _tile(root / "train/wildfire/-73.5,45.5.jpg", (200, 30, 30))
    _tile(root / "valid/nowildfire/-73.49,45.5.jpg", (30, 200, 30))  # about 780 m east
    _tile(root / "test/nowildfire/-72,46.jpg", (30, 30, 200))
    (root / "train/wildfire/notes.txt").write_text("not a tile")
    _tile(root / "train/wildfire/abc.jpg", (0, 0, 0))  # not a coordinate: ignored
    p = make_provider(_with(settings, folder=root, folder_radius_m=500.0), "folder")
    assert len(p) == 3
    # 100 m east of the first tile: it is the nearest.
    near = p.fetch(-73.5 + 0.00128, 45.5)
    assert np.asarray(near)[175, 175][0] > 150
    # Just east of the second tile.
    assert np.asarray(p.fetch(-73.4895, 45.5))[175, 175][1] > 150
    path, metres = p.nearest(-72.0, 46.0)
    assert path.name == "-72,46.jpg" and metres < 0.01


def test_folder_says_when_no_tile_is_near(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    _tile(root / "train/wildfire/-73.5,45.5.jpg", (200, 30, 30))
    p = FolderProvider(root, radius_m=500)
    with pytest.raises(NoImageryError, match=r"no tile within 500 m of lat 45.5, lon -73.4") as err:
        p.fetch(-73.4, 45.5)
    assert "-73.5,45.5, 7,794 m away" in str(err.value)  # the nearest is named


def test_folder_without_tiles_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty/train/wildfire").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="holds no tiles"):
        FolderProvider(tmp_path / "empty")


def test_folder_over_the_real_tiles(real_tiles: Path) -> None:
    p = FolderProvider(real_tiles, radius_m=50)
    assert len(p) >= 300
    some = p.paths[7]
    lon, lat = (float(v) for v in some.stem.split(","))
    img = p.fetch(lon + 0.0001, lat)  # about 8 m away
    assert img.size == (350, 350) and img.mode == "RGB"


def test_unknown_provider_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="choose one of synthetic, mapbox, xyz, folder"):
        make_provider(settings, "bing")


# --- synthetic ----------------------------------------------------------------------------------------------------
def test_synthetic_provider_answers_inside_its_region_only(settings: Settings) -> None:
    p = make_provider(settings, "synthetic")
    assert isinstance(p, ImageryProvider) and p.name == "synthetic"
    img = p.fetch(-73.5, 46.2)
    assert img.size == (350, 350) and img.mode == "RGB"
    assert np.asarray(img).std() > 5  # a landscape, not a flat colour
    # Deterministic for the settings' seed.
    assert np.array_equal(np.asarray(make_provider(settings, "synthetic").fetch(-73.5, 46.2)), np.asarray(img))
    with pytest.raises(NoImageryError, match="outside the synthetic region"):
        p.fetch(-60.0, 50.0)
