"""Map tiles of the synthetic region: rendering, the on-disk cache, HTTP caching, refusals."""

from __future__ import annotations

import io
from collections.abc import Iterator

import mercantile
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pyrocast.errors import InvalidInputError
from pyrocast.ports import free_port
from pyrocast.settings import Region, Settings
from pyrocast.webapp.app import create_app
from pyrocast.webapp.tiles import TileRenderer, cache_key, tile_in_region

INSIDE = mercantile.tile(-73.5, 46.2, 12)


def test_tile_in_region() -> None:
    r = Region()
    assert tile_in_region(r, 12, INSIDE.x, INSIDE.y)
    far = mercantile.tile(-120.0, 40.0, 12)
    assert not tile_in_region(r, 12, far.x, far.y)
    assert not tile_in_region(r, 4, 0, 0)  # below the synthetic map's zooms
    assert not tile_in_region(r, 16, 0, 0)
    assert not tile_in_region(r, 12, 2**12, 0)  # no such tile


def test_cache_key_changes_with_region_and_seed() -> None:
    r = Region()
    assert cache_key(r, 42) == cache_key(Region(), 42)
    assert cache_key(r, 42) != cache_key(r, 7)
    assert cache_key(r, 42) != cache_key(r.model_copy(update={"lat_max": 48.0}), 42)
    assert "/" not in cache_key(r.model_copy(update={"name": "a/b c"}), 42)


def test_renderer_caches_on_disk(settings: Settings) -> None:
    tiles = TileRenderer(settings)
    data = tiles.get(12, INSIDE.x, INSIDE.y)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (256, 256)
    assert tiles.path(12, INSIDE.x, INSIDE.y).is_file()
    assert str(tiles.path(12, INSIDE.x, INSIDE.y)).startswith(str(settings.root / "cache" / "xyz"))
    assert tiles.rendered == 1
    # A second renderer (another process, a restart) reads the cache instead of rendering.
    again = TileRenderer(settings)
    assert again.get(12, INSIDE.x, INSIDE.y) == data
    assert again.rendered == 0
    with pytest.raises(InvalidInputError, match="outside the region"):
        tiles.get(12, 0, 0)
    assert len(tiles.overview_tiles((7,))) >= 2


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")) as c:
        yield c


def test_tile_route_http_caching(client: TestClient) -> None:
    url = f"/tiles/12/{INSIDE.x}/{INSIDE.y}.jpg"
    r = client.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert "max-age" in r.headers["cache-control"]
    etag = r.headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert client.get("/tiles/12/0/0.jpg").status_code == 404
    assert client.get("/tiles/3/0/0.jpg").status_code == 404
    assert client.get("/tiles/x/0/0.jpg").status_code == 422


def test_map_uses_a_configured_tile_server_instead(settings: Settings) -> None:
    template = "http://127.0.0.1:9999/{z}/{x}/{y}.png"
    s = settings.model_copy(update={"imagery": settings.imagery.model_copy(update={"xyz_url": template})})
    with TestClient(create_app(s, gateway=f"http://127.0.0.1:{free_port()}")) as c:
        html = c.get("/").text
    assert template in html
