"""The map page under real use: slow answers, quick changes of mind, double-clicks, window sizes, phones.

The same stack as test_browser.py (conftest.py). A slow gateway is recreated by holding requests in the browser
(`Hold`) and letting them go in the order the test needs, so every race is deterministic. Each test opens its
own browser context, so the rows of its client id in the prediction store are its own.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pyrocast.webapp import app as webapp_app
from pyrocast.webapp.app import COOKIE, create_app
from tests.support.browser_pages import Hold, Live, Tab, open_tab, served_row, until, wait_js
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

A = (46.25, -73.5)
B = (46.3, -72.4)


# --- helpers ---------------------------------------------------------------------------------------------------
def open_map(live: Live, tab: Tab) -> Any:
    page = tab.page
    page.goto(live.url + "/")
    page.wait_for_selector(".leaflet-tile-loaded", timeout=30_000)
    return page


def request_id(page: Any) -> str:
    return page.inner_text("#request-id").strip()


def ask(page: Any, lat: float, lon: float) -> str:
    """Type a place, press Enter, wait for its answer; its request id."""
    before = request_id(page) if page.locator("#result").is_visible() else ""
    page.fill("#lat", str(lat))
    page.fill("#lon", str(lon))
    page.press("#lon", "Enter")
    place = f"{lat:.5f}, {lon:.5f}"
    until(
        page,
        lambda: (
            page.locator("#result").is_visible()
            and page.inner_text("#place").strip() == place
            and request_id(page) != before
        ),
        30,
        f"the answer for {place}",
    )
    return request_id(page)


def map_point(page: Any, fx: float, fy: float) -> tuple[float, float]:
    box = page.locator("#map").bounding_box()
    assert box is not None
    return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy


def client_id(tab: Tab) -> str:
    return {c["name"]: c["value"] for c in tab.context.cookies()}[COOKIE]


def web_rows(live: Live, tab: Tab) -> list[dict[str, Any]]:
    """The predictions this tab's browser (its cookie) caused, from the store."""
    return live.store.rows("predictions", client_id=client_id(tab), served=True)


def markers(page: Any) -> int:
    # The place marker is the map's only interactive vector (the region outline is not interactive).
    return page.locator("#map path.leaflet-interactive").count()


def tile_zoom(page: Any) -> int:
    srcs = page.evaluate("[...document.querySelectorAll('img.leaflet-tile-loaded')].map(i => i.src)")
    return max(int(m.group(1)) for s in srcs if (m := re.search(r"/tiles/(\d+)/", s)))


# --- 1. a validation error ends the previous place's story ---------------------------------------------------
def test_an_invalid_place_hides_the_answer_and_cancels_the_pending_one(live: Live, tab: Tab) -> None:
    page = open_map(live, tab)
    ask(page, *A)

    # An answer on screen, then a place outside the region: the answer goes, focus goes to the field to fix.
    page.fill("#lat", "49.1")
    page.press("#lon", "Enter")
    assert "outside the region southern-quebec" in page.inner_text("#predict-error")
    assert page.locator("#result").is_hidden()
    assert page.evaluate("document.activeElement.id") == "lat"
    assert markers(page) == 0

    # A valid click still pending, then letters in the latitude: the click's answer must never be drawn.
    hold = Hold(page, "**/api/predict")
    page.mouse.click(*map_point(page, 0.5, 0.5))
    hold.wait(1)
    assert page.locator("#busy").is_visible()
    page.fill("#lat", "abc")
    page.press("#lat", "Enter")
    assert "Latitude must be a number" in page.inner_text("#predict-error")
    assert page.locator("#busy").is_hidden()
    assert page.evaluate("document.activeElement.id") == "lat"
    late = hold.release(0)
    assert late.status == 200
    page.wait_for_timeout(300)  # time for the page to (wrongly) draw the late answer
    assert page.locator("#result").is_hidden()
    assert "Latitude must be a number" in page.inner_text("#predict-error")
    assert page.locator("#busy").is_hidden() and markers(page) == 0
    # The late answer was real (stored, for this browser); the page just does not show it any more.
    row = served_row(live, late.json()["request_id"])
    assert row["source"] == "web" and row["client_id"] == client_id(tab)
    tab.assert_clean()


# --- 2. a feedback confirmation belongs to the answer it was sent for ------------------------------------------
def test_feedback_confirmation_stays_with_its_answer(live: Live, tab: Tab) -> None:
    page = open_map(live, tab)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/feedback") else None)
    first = ask(page, *A)
    feedback = Hold(page, "**/api/feedback")
    page.click("#fb-right")
    feedback.wait(1)
    second = ask(page, *B)  # a new answer while the verdict on the first is still being saved
    assert second != first
    saved = feedback.release(0)
    assert saved.status == 200 and saved.json()["request_id"] == first
    page.wait_for_timeout(300)
    assert request_id(page) == second
    assert "Thanks" not in page.inner_text("#fb-message")
    assert page.is_enabled("#fb-right") and page.is_enabled("#fb-wrong")
    # The store holds the verdict on the first answer only.
    fb = wait_for(lambda: live.store.feedback_for(first), what="the first answer's feedback")
    assert len(fb) == 1 and fb[0]["correct"] is True and fb[0]["true_label"] == "wildfire"
    assert live.store.feedback_for(second) == []

    # While a new answer loads, the old one cannot be judged.
    feedback.stop()
    pending = Hold(page, "**/api/predict")
    page.fill("#lat", "45.9")
    page.fill("#lon", "-74.2")
    page.press("#lon", "Enter")
    pending.wait(1)
    assert page.is_disabled("#fb-right") and page.is_disabled("#fb-wrong")
    page.click("#fb-wrong", force=True)  # a click on the greyed answer does nothing
    pending.release(0)
    until(page, lambda: request_id(page) not in (first, second), 30, "the third answer")
    assert page.is_enabled("#fb-right") and page.is_enabled("#fb-wrong")
    assert len(sent) == 1  # only the verdict on the first answer ever left the page
    tab.assert_clean()


def test_a_verdict_can_be_changed_and_every_verdict_stays_stored(live: Live, tab: Tab) -> None:
    page = open_map(live, tab)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/feedback") else None)
    rid = ask(page, *A)  # champion v1 says wildfire
    page.click("#fb-wrong")
    until(page, lambda: "Thanks, saved" in page.inner_text("#fb-message"), 15, "the first confirmation")
    said = page.inner_text("#fb-message")
    assert "the answer was wrong, so this place is recorded as nowildfire" in said and "Press Right" in said
    assert page.get_attribute("#fb-wrong", "aria-pressed") == "true"
    assert page.get_attribute("#fb-right", "aria-pressed") == "false"
    assert page.is_enabled("#fb-right") and page.is_enabled("#fb-wrong")  # a mind may change

    page.click("#fb-right")
    until(page, lambda: page.inner_text("#fb-message").startswith("Changed"), 15, "the second confirmation")
    said = page.inner_text("#fb-message")
    assert "the answer was right, so this place is recorded as wildfire" in said
    assert "2 verdicts on this answer stay stored as history; the newest one counts" in said
    assert page.get_attribute("#fb-right", "aria-pressed") == "true"
    assert page.get_attribute("#fb-wrong", "aria-pressed") == "false"
    page.click("#fb-right")  # the stored verdict again: said, not sent twice
    assert page.inner_text("#fb-message").startswith("Already saved: the answer was right")
    assert len(sent) == 2

    # The store keeps both verdicts in the order given; the request's label is the newest.
    rows = wait_for(lambda: len(live.store.feedback_for(rid)) == 2 and live.store.feedback_for(rid), what="2 rows")
    assert [(f["correct"], f["true_label"], f["source"]) for f in rows] == [
        (False, "nowildfire", "user"),
        (True, "wildfire", "user"),
    ]
    label = live.store.label_of(rid)
    assert label is not None and label["id"] == rows[1]["id"]
    # The feedback page shows both, the replaced one marked.
    page.goto(live.url + "/feedback")
    mine = page.locator(f'#feedback-table tr[data-request-id="{rid}"]')
    assert mine.count() == 2
    assert "right" in mine.nth(0).inner_text() and "superseded" not in mine.nth(0).inner_text()
    assert "wrong" in mine.nth(1).inner_text() and "superseded" in mine.nth(1).inner_text()
    tab.assert_clean()


def test_a_verdict_outranked_by_ground_truth_is_said_to_be_kept_as_history(live: Live, tab: Tab) -> None:
    """A person is not told "your newest verdict counts" when the place's replayed test label outranks verdicts."""
    page = open_map(live, tab)
    rid = ask(page, *A)  # champion v1 says wildfire
    r = httpx.post(
        f"{live.stack.url}/v1/feedback",
        json={"request_id": rid, "label": "nowildfire", "source": "replay"},
        headers=live.stack.admin,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    page.click("#fb-right")
    until(page, lambda: page.inner_text("#fb-message").startswith("Stored"), 15, "the confirmation")
    said = page.inner_text("#fb-message")
    assert said == (
        "Stored; the ground truth for this place (replayed test label: nowildfire) outranks verdicts, "
        "so yours is kept as history."
    ), said
    assert "counts" not in said and "recorded as" not in said
    page.click("#fb-right")  # the stored verdict again: the same truth, not "recorded as wildfire"
    assert page.inner_text("#fb-message").startswith("Already saved; the ground truth for this place")
    label = wait_for(lambda: len(live.store.feedback_for(rid)) == 2 and live.store.label_of(rid), what="2 rows")
    assert (label["source"], label["true_label"]) == ("replay", "nowildfire")
    tab.assert_clean()


# --- 3. zooming is not choosing ------------------------------------------------------------------------------
def test_double_click_zooms_and_predicts_at_most_once(live: Live, tab: Tab) -> None:
    page = open_map(live, tab)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/predict") else None)
    zoom = tile_zoom(page)
    page.mouse.dblclick(*map_point(page, 0.5, 0.5))
    until(page, lambda: tile_zoom(page) == zoom + 1, 15, "the map to zoom in")
    page.wait_for_timeout(300)
    # The first click of the pair answers at once (no waiting to see whether a second follows); the second not.
    assert len(sent) == 1
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    wait_for(lambda: web_rows(live, tab), what="the double-click's prediction in the store")
    page.wait_for_timeout(300)
    assert len(web_rows(live, tab)) == 1

    # A single click elsewhere still predicts, straight away.
    with page.expect_request("**/api/predict", timeout=2_000):
        page.mouse.click(*map_point(page, 0.3, 0.4))
    until(page, lambda: len(sent) == 2, 5, "the single click's prediction")
    tab.assert_clean()


# --- 4. Enter replaces a pending request ---------------------------------------------------------------------
def test_enter_while_busy_replaces_the_pending_request(live: Live, tab: Tab) -> None:
    page = open_map(live, tab)
    hold = Hold(page, "**/api/predict")
    page.mouse.click(*map_point(page, 0.55, 0.5))
    hold.wait(1)
    page.fill("#lat", str(B[0]))
    page.fill("#lon", str(B[1]))
    page.press("#lon", "Enter")
    hold.wait(2, timeout=3)  # a disabled submit button would swallow Enter: no second request
    assert page.is_enabled("#predict-btn")
    assert page.get_attribute("#panel", "aria-busy") == "true" and page.locator("#busy").is_visible()

    # The typed place answers first; the click's answer comes late and must not replace it.
    typed = hold.release(1).json()
    until(page, lambda: page.locator("#result").is_visible(), 30, "the typed place's answer")
    hold.release(0)
    page.wait_for_timeout(300)
    assert page.inner_text("#place").strip() == "46.30000, -72.40000"
    assert request_id(page) == typed["request_id"]
    assert page.get_attribute("#panel", "aria-busy") == "false" and page.locator("#busy").is_hidden()
    row = served_row(live, typed["request_id"])
    assert (row["lat"], row["lon"]) == pytest.approx(B, abs=1e-9)
    tab.assert_clean()


# --- 5. the map asks only for tiles the server has -----------------------------------------------------------
@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
def test_no_refused_tiles_at_common_window_sizes(live: Live, chromium: Any, size: tuple[int, int]) -> None:
    with open_tab(chromium, *size) as t:
        page = t.page
        tiles: list[tuple[str, int]] = []
        page.on("response", lambda r: tiles.append((r.url, r.status)) if "/tiles/" in r.url else None)
        page.goto(live.url + "/")
        page.wait_for_load_state("networkidle")
        if not page.locator(".leaflet-control-zoom-out.leaflet-disabled").count():  # disabled where no less zoom fits
            page.click(".leaflet-control-zoom-out")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(300)
        page.wait_for_load_state("networkidle")
        assert [u for u, status in tiles if status == 200], "no tile was loaded at all"
        assert [u for u, status in tiles if status >= 400] == []
        # No grey strips: at the fitted zoom the view was wider than the tiles the server has (bands at the sides
        # at both sizes), and zooming out widened them. Every point of the map, edges included, shows a tile.
        uncovered = page.evaluate(
            """() => {
              const r = document.getElementById("map").getBoundingClientRect();
              const out = [];  // tiles ignore the pointer: found by where they are drawn, not elementsFromPoint
              const tiles = [...document.querySelectorAll("img.leaflet-tile-loaded")]
                .filter(i => getComputedStyle(i).opacity !== "0").map(i => i.getBoundingClientRect());
              for (const fx of [0, 0.25, 0.5, 0.75, 1]) for (const fy of [0, 0.25, 0.5, 0.75, 1]) {
                const x = r.left + 3 + fx * (r.width - 6), y = r.top + 3 + fy * (r.height - 6);
                const hit = tiles.some(t => t.left <= x && x <= t.right && t.top <= y && y <= t.bottom);
                if (!hit) out.push([Math.round(x), Math.round(y)]);
              }
              return out;
            }"""
        )
        assert uncovered == [], f"grey where no tile is, at {uncovered} (window {size})"
        t.assert_clean()


# --- 7. the models page fits a phone -------------------------------------------------------------------------
@pytest.fixture
def models_html(live: Live, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The models page with a registry of two versions (the real template and app; the registry listing faked,
    since a real MLflow store costs seconds and the test is about layout)."""
    versions = [
        {
            "version": str(v),
            "aliases": aliases,
            "created": f"2025-01-0{v}T10:00:00+00:00",
            "run_id": "r" * 32,
            "accuracy": 0.9 + v / 100,
            "f1": 0.9,
            "roc_auc": 0.97,
            "ece": 0.03,
            "n_test": 1200,
            "decision": "promoted",
            "reason": "better on the test split",
            "artifacts": "verified",
            "profile": "quick",
            "data_version": "0123456789abcdef",
        }
        for v, aliases in ((2, ["challenger"]), (1, ["champion"]))
    ]
    snapshot = {"versions": versions, "error": None, "empty": None}
    monkeypatch.setattr(webapp_app, "registry_snapshot", lambda settings: snapshot)
    with TestClient(create_app(live.stack.settings, gateway=live.stack.url)) as c:
        html = c.get("/models").text
    assert 'id="registry-table"' in html
    yield html


def test_models_page_has_no_sideways_scroll_on_a_phone(live: Live, chromium: Any, models_html: str) -> None:
    with open_tab(chromium, 390, 844) as t:
        page = t.page
        page.route(live.url + "/models", lambda r: r.fulfill(status=200, content_type="text/html", body=models_html))
        page.goto(live.url + "/models")
        page.wait_for_selector("#registry-table")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.evaluate("window.scrollTo(600, 0)")
        assert page.evaluate("window.scrollX") == 0
        # The wide table scrolls inside its own box instead.
        wrap = "document.querySelector('#registry-table').parentElement"
        assert page.evaluate(f"{wrap}.scrollWidth > {wrap}.clientWidth")
        t.assert_clean()


# --- 9. the answer panel scrolls on its own ------------------------------------------------------------------
def test_answer_panel_scrolls_inside_a_screen_high_layout(live: Live, chromium: Any) -> None:
    with open_tab(chromium, 1366, 768) as t:
        page = open_map(live, t)
        map_before = page.locator("#map").bounding_box()
        ask(page, *A)
        assert page.evaluate("document.documentElement.scrollHeight") <= 768
        assert page.evaluate("(p => p.scrollHeight > p.clientHeight)(document.getElementById('panel'))")
        assert page.locator("#map").bounding_box() == map_before  # the map did not stretch
        topbar = page.locator(".topbar").bounding_box()
        assert topbar is not None and map_before is not None
        assert map_before["height"] == pytest.approx(768 - topbar["height"], abs=1)
        # The feedback buttons are reached by scrolling the panel, and the map stays where it is.
        page.locator("#fb-right").scroll_into_view_if_needed()
        assert page.evaluate("document.getElementById('panel').scrollTop") > 0
        assert page.evaluate("window.scrollY") == 0
        assert page.locator("#map").bounding_box() == map_before
        t.assert_clean()


# --- 11. typed places are brought into view ------------------------------------------------------------------
def test_typed_place_outside_the_view_pans_the_map(live: Live, tab: Tab) -> None:
    page = tab.page
    blank = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 200, 200)).save(blank, format="JPEG")
    # Deep zooms would render dozens of real tiles; the test is about where the map looks, not what it shows.
    page.route("**/tiles/**", lambda r: r.fulfill(status=200, content_type="image/jpeg", body=blank.getvalue()))
    open_map(live, tab)
    for _ in range(4):
        page.click(".leaflet-control-zoom-in")
        page.wait_for_timeout(300)
    ask(page, 45.2, -75.8)  # the region's south-west corner, far outside the zoomed-in view
    area = page.locator("#map").bounding_box()
    assert area is not None

    def marker_in_view() -> bool:
        dot = page.locator("#map path.leaflet-interactive").bounding_box()
        return (
            dot is not None
            and area["x"] <= dot["x"] <= area["x"] + area["width"] - dot["width"]
            and (area["y"] <= dot["y"] <= area["y"] + area["height"] - dot["height"])
        )

    until(page, marker_in_view, 5, "the marker in view")
    tab.assert_clean()


# --- 12. a tile the gateway cannot give ----------------------------------------------------------------------
def test_missing_tile_shows_a_note_not_a_broken_image(live: Live, tab: Tab) -> None:
    page = tab.page
    tile_api = re.compile(r"/api/tile\?")
    page.route(tile_api, lambda r: r.fulfill(status=503, content_type="application/json", body='{"error": "down"}'))
    open_map(live, tab)
    ask(page, *A)
    page.wait_for_selector("#tile-missing:not([hidden])", timeout=10_000)
    assert page.locator("#tile-img").is_hidden()
    assert "no tile" in page.inner_text("#tile-missing")
    # The next answer gets its tile back.
    page.unroute(tile_api)
    ask(page, *B)
    wait_js(page, "document.getElementById('tile-img').naturalWidth > 0", 15)
    assert page.locator("#tile-img").is_visible() and page.locator("#tile-missing").is_hidden()
    tab.assert_clean(allow=lambda e: "status of 503" in e)


def test_the_address_names_the_place_so_a_reload_or_a_link_shows_it_again(live: Live, tab: Tab) -> None:
    page = tab.page
    page.goto(live.url + f"/?lat={B[0]}&lon={B[1]}")
    until(page, lambda: page.locator("#result").is_visible(), 30, "the linked place's answer")
    assert page.inner_text("#place").strip() == f"{B[0]:.5f}, {B[1]:.5f}"
    ask(page, *A)
    assert page.url.endswith(f"/?lat={A[0]:.5f}&lon={A[1]:.5f}"), page.url
    page.reload()
    until(page, lambda: page.locator("#result").is_visible(), 30, "the answer after a reload")
    assert page.inner_text("#place").strip() == f"{A[0]:.5f}, {A[1]:.5f}"
    # The link, the typed place, the reload: one prediction each (the store writes in the background).
    wait_for(lambda: len(web_rows(live, tab)) >= 3, timeout=20, what="three stored predictions")
    assert len(web_rows(live, tab)) == 3
    page.goto(live.url + "/?lat=91&lon=-73")  # a bad link is an error like a bad typed place
    until(page, lambda: page.locator("#predict-error").is_visible(), 10, "the error for latitude 91")
    assert "not on Earth" in page.inner_text("#predict-error")
