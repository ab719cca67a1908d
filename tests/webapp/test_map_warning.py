"""The map page shows the gateway's out-of-distribution warning next to the prediction (real stack, chromium).

A stack of its own: the champion's bundle carries a drift reference of synthetic-region tiles (a model trained on
the default data), and the gateway's imagery comes from a folder (`imagery.provider = folder`) where one place
has an all-black tile, as an imagery server gives for a place it has no picture of, and another an ordinary tile
of the region. The web app itself is configured as usual (synthetic map tiles).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pyrocast.data.synthetic.region import SyntheticRegion
from pyrocast.geo import LonLat
from pyrocast.monitoring.novelty import Novelty
from pyrocast.serving.store import PredictionStore, image_stats
from tests.support.browser_pages import Live, Tab, served_row, until
from tests.support.novelty import bundles_with_reference, synthetic_places, synthetic_reference
from tests.support.serving import start_stack
from tests.support.webapp import start_webapp

pytestmark = [pytest.mark.integration, pytest.mark.browser]

BLANK = (46.25, -73.5)  # lat, lon


@pytest.fixture(scope="module")
def ood_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, tuple[float, float]]]:
    """The stack and web app, and an ordinary place (lat, lon) whose tile the champion's ranges accept."""
    root = tmp_path_factory.mktemp("map-warning")
    reference = synthetic_reference(60, seed=1)
    novelty = Novelty.from_reference(reference)
    assert novelty is not None
    region = SyntheticRegion()
    folder = root / "imagery" / "train" / "nowildfire"
    folder.mkdir(parents=True)
    # An ordinary place, held out of the reference; checked here so that the test says why if it were not.
    _, lon, lat = synthetic_places(2, seed=7)[0]
    tile = region.render_tile(lon, lat)
    assert novelty.check(image_stats(tile)) == []
    tile.save(folder / f"{LonLat(lon, lat).stem()}.jpg", quality=95)
    region.render_tile(BLANK[1], BLANK[0]).point(lambda _: 0).save(folder / f"{LonLat(BLANK[1], BLANK[0]).stem()}.jpg")

    stack = start_stack(root, explainer=False, gateway=False, bundles=bundles_with_reference(root / "b", reference))
    web = None
    try:
        imagery = stack.settings.imagery.model_copy(update={"provider": "folder", "folder": root / "imagery"})
        stack.extra_env = {"PYROCAST_IMAGERY": imagery.model_dump_json()}
        stack.start_gateway()
        web = start_webapp(stack.settings, port=stack.settings.serving.webapp_port)
        store = PredictionStore(stack.settings.store_database_url)  # a reader; the gateway writes
        yield Live(stack, web, store), (lat, lon)
        store.engine.dispose()
    finally:
        if web is not None:
            web.stop()
        stack.stop()


def _ask(page: Any, lat: float, lon: float) -> str:
    """Type a place, press Enter, wait for its answer; its request id."""
    place = f"{lat:.5f}, {lon:.5f}"
    page.fill("#lat", str(lat))
    page.fill("#lon", str(lon))
    page.press("#lon", "Enter")
    until(
        page,
        lambda: (
            page.locator("#result").is_visible()
            and page.inner_text("#place").strip() == place
            and page.locator("#busy").is_hidden()
        ),
        30,
        f"the answer for {place}",
    )
    return page.inner_text("#request-id").strip()


def test_the_warning_stands_next_to_a_doubtful_answer_and_goes_with_it(
    ood_live: tuple[Live, tuple[float, float]], tab: Tab
) -> None:
    live, ordinary = ood_live
    page = tab.page
    page.goto(live.url + "/")
    page.wait_for_selector(".leaflet-tile-loaded", timeout=30_000)

    rid = _ask(page, *BLANK)
    warning = page.locator("#ood-warning")
    assert warning.is_visible()
    assert "does not look like the tiles the model was trained on" in warning.inner_text()
    items = page.locator("#ood-list li").all_inner_texts()
    assert any(t.startswith("much darker than the training tiles (mean brightness 0.00;") for t in items), items
    # Right under the verdict (badge and probability), above the tile: read together with the number it qualifies.
    verdict, box, figure = (page.locator(s).bounding_box() for s in (".verdict", "#ood-warning", ".tile-figure"))
    assert verdict and box and figure and verdict["y"] < box["y"] < figure["y"]
    assert "ood" in (page.get_attribute("#result", "class") or "")
    assert served_row(live, rid)["ood"] is True

    # The next answer, for an ordinary place, carries no warning: the old one must not linger next to it.
    rid = _ask(page, *ordinary)
    assert warning.is_hidden() and page.locator("#ood-list li").count() == 0
    assert "ood" not in (page.get_attribute("#result", "class") or "").split()
    assert served_row(live, rid)["ood"] is False
    # The two heatmap requests get 503 (no explainer runs in this stack); nothing else may fail.
    assert sum("status of 503" in e for e in tab.errors) <= 2
    tab.assert_clean(allow=lambda e: "status of 503" in e)
