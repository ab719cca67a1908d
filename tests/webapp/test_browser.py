"""The web app end to end: real classifiers, explainer, gateway and web app processes, driven by a real chromium.

One serving stack for the package (conftest.py: champion v1 always says wildfire, challenger v2 never does) and
the web app in front of it. The browser clicks the map, reads the answer, asks for the heatmap, sends feedback,
and the test checks the rows in the prediction store. Every request the pages make is watched: none may leave 127.0.0.1,
and the console must stay free of errors. Screenshots go to /tmp/pyrocast-webapp-*.png.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import ServingSettings, Settings
from pyrocast.webapp.app import COOKIE
from tests.serving.conftest import encode, tile_image
from tests.support import store_rows
from tests.support.browser_pages import Live, Tab, open_tab, served_row, wait_js
from tests.support.waiting import wait_for
from tests.support.webapp import start_webapp

pytestmark = pytest.mark.integration
SHOTS = "/tmp/pyrocast-webapp-{}.png"


# --- the map ---------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_click_the_map_read_the_answer_send_feedback(live: Live, tab: Tab) -> None:
    page = tab.page
    page.goto(live.url + "/")
    page.wait_for_selector(".leaflet-tile-loaded", timeout=30_000)
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.5)

    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    lat, lon = float(page.input_value("#lat")), float(page.input_value("#lon"))
    assert 45.0 <= lat <= 47.5 and -76.0 <= lon <= -71.0
    request_id = page.inner_text("#request-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert page.inner_text("#label-badge").strip() == "wildfire"  # champion v1 says wildfire to everything
    assert page.inner_text("#model").strip() == "pyrocast-test v1"
    assert page.inner_text("#variant").strip() == "champion"
    shown = float(page.inner_text("#prob-value").strip().rstrip("%"))
    assert re.fullmatch(r"\d+(\.\d)? ms", page.inner_text("#latency").strip())

    # What the page shows is what the gateway stored, with the browser's client id and source "web".
    row = served_row(live, request_id)
    assert row["model_version"] == "1" and row["label"] == "wildfire" and row["source"] == "web"
    assert shown == pytest.approx(100 * row["probability"], abs=0.051)
    assert (row["lat"], row["lon"]) == pytest.approx((lat, lon), abs=1e-5)
    cookie = {c["name"]: c["value"] for c in tab.context.cookies()}[COOKIE]
    assert row["client_id"] == cookie

    # The tile and its heatmap.
    wait_js(page, "document.getElementById('tile-img').naturalWidth > 0", 15)
    page.wait_for_selector("#heat-toggle:not([disabled])", timeout=60_000)
    assert "explains model v1" in page.inner_text("#heat-state")
    assert page.locator("#heat-img").is_hidden()
    page.check("#heat-toggle")
    assert page.locator("#heat-img").is_visible()
    assert page.evaluate("document.getElementById('heat-img').naturalWidth") > 0
    page.screenshot(path=SHOTS.format("map"))

    # Wrong: with two labels that says the place is nowildfire, which the page explains before the click and
    # the gateway stores as the true label (there is no label to pick, so none can contradict the verdict).
    assert page.locator("#fb-label").count() == 0
    assert "Wrong: the place is nowildfire" in page.inner_text("#fb-explain")
    page.click("#fb-wrong")
    page.wait_for_selector("#fb-message.ok-text", timeout=15_000)
    assert "wrong" in page.inner_text("#fb-message") and "nowildfire" in page.inner_text("#fb-message")
    fb = wait_for(lambda: live.store.feedback_for(request_id), what="feedback in the store")
    assert len(fb) == 1
    assert fb[0]["correct"] is False
    assert fb[0]["true_label"] == "nowildfire" and fb[0]["served_label"] == "wildfire" and fb[0]["label"] is None
    assert fb[0]["model_version"] == "1" and fb[0]["source"] == "user" and fb[0]["client_id"] == cookie
    # The stored verdict shows as pressed; the other stays open (test_map_behaviour: changing a verdict).
    assert page.get_attribute("#fb-wrong", "aria-pressed") == "true" and page.is_enabled("#fb-right")
    assert page.inner_text("#gateway-status").strip() == "Live · champion v1"
    tab.assert_clean()


@pytest.mark.browser
def test_typed_coordinates_are_validated_before_anything_is_sent(live: Live, tab: Tab) -> None:
    page = tab.page
    page.goto(live.url + "/")
    page.fill("#lat", "200")
    page.fill("#lon", "-73.5")
    page.click("#predict-btn")
    assert "Latitude 200 is not on Earth" in page.inner_text("#predict-error")
    assert page.get_attribute("#lat", "aria-invalid") == "true"
    page.fill("#lat", "49.1")
    page.click("#predict-btn")
    assert "outside the region southern-quebec" in page.inner_text("#predict-error")
    page.fill("#lat", "forty")
    page.click("#predict-btn")
    assert "Latitude must be a number" in page.inner_text("#predict-error")
    assert not any("/api/predict" in u for u in tab.requests), "invalid input reached the server"
    # The server refuses the same input on its own (a client without the page's checks).
    status, body = page.evaluate(
        """async () => { const r = await fetch('/api/predict', {method: 'POST',
             headers: {'Content-Type': 'application/json'}, body: JSON.stringify({lat: 200, lon: -73.5})});
             return [r.status, await r.json()]; }"""
    )
    assert status == 422 and "not on Earth" in body["error"]
    # A valid typed place then works.
    page.fill("#lat", "46.3")
    page.fill("#lon", "-72.4")
    page.press("#lon", "Enter")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.locator("#predict-error").is_hidden()
    assert page.inner_text("#place").strip() == "46.30000, -72.40000"
    # The only console error allowed is the browser's note about the deliberate 422 above.
    tab.assert_clean(allow=lambda e: "status of 422" in e)


# --- the other pages -------------------------------------------------------------------------------------------
def test_sticky_ab_and_feedback_through_the_api(live: Live) -> None:
    """Through the web app's API: an A/B split keeps one browser (cookie) on one variant; feedback is stored."""
    live.stack.set_rollout("ab", {"champion": 1, "challenger": 1})
    try:
        seen: dict[str, set[str]] = {}
        # At least twelve browsers, two requests each, until both sides were seen (random cookies and salt:
        # all of forty on one side has odds 1 in 2**39).
        for n in range(40):
            if n >= 12 and len(set().union(*seen.values())) == 2:
                break
            with httpx.Client(base_url=live.url, timeout=30) as c:
                for i in range(2):
                    r = c.post("/api/predict", json={"lat": 46.0 + i / 50, "lon": -73.0 - i / 50})
                    assert r.status_code == 200, r.text
                    d = r.json()
                    seen.setdefault(c.cookies[COOKIE], set()).add(d["variant"])
                    f = c.post("/api/feedback", json={"request_id": d["request_id"], "label": "wildfire"})
                    assert f.status_code == 200, f.text
                    assert f.json()["correct"] == (d["label"] == "wildfire")
        assert all(len(v) == 1 for v in seen.values()), seen  # sticky: one variant per client
        assert set().union(*seen.values()) == {"champion", "challenger"}, seen  # and the split is real
    finally:
        live.stack.set_rollout("champion", {"reason": "webapp test done"})
    data = httpx.get(live.url + "/api/monitoring", params={"window": "15m"}, timeout=30).json()
    assert data["requests"]["total"] >= 20
    assert sum(data["traffic"]["totals"].values()) >= 20
    assert data["latency"]["overall"]["p50"] is not None
    versions = data["accuracy"]["versions"]
    assert sum(v["n"] for v in versions.values()) >= 20
    if "2" in versions:  # challenger v2 says nowildfire: wrong on every wildfire label
        assert versions["2"]["accuracy"] == 0.0


@pytest.mark.browser
def test_feedback_models_and_monitoring_pages(live: Live, tab: Tab) -> None:
    # Some traffic of our own so every page has something to show.
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for i in range(3):
            d = c.post("/api/predict", json={"lat": 45.6 + i / 10, "lon": -74.0}).json()
            c.post("/api/feedback", json={"request_id": d["request_id"], "correct": i != 1})
    # An image uploaded with the coordinates of the last place: its row must not show that place's tile.
    other = encode(tile_image(7))
    up = httpx.post(
        f"{live.stack.url}/v1/predict",
        files={"image": ("t.jpg", other, "image/jpeg")},
        data={"lat": "45.8", "lon": "-74.0"},
        timeout=30,
    ).json()
    httpx.post(f"{live.stack.url}/v1/feedback", json={"request_id": up["request_id"], "correct": False}, timeout=30)
    # The gateway writes in the background: the pages read the store once the last row is there.
    wait_for(lambda: live.store.feedback_for(up["request_id"]), what="the last feedback in the store")
    page = tab.page

    page.goto(live.url + "/feedback")
    page.wait_for_selector("#feedback-table")
    rows = page.locator("#feedback-table tbody tr")
    assert rows.first.get_attribute("data-request-id") == up["request_id"]
    second = rows.nth(1)
    assert second.get_attribute("data-request-id") == d["request_id"]
    assert "right" in second.inner_text() and "v1" in second.inner_text()
    wait_js(
        page, "[...document.querySelectorAll('#feedback-table img')].slice(0, 4).every(i => i.naturalWidth > 0)", 20
    )
    shown = [
        httpx.get(live.url + str(rows.nth(k).locator("img").get_attribute("src")), timeout=30).headers["content-type"]
        for k in (0, 1)
    ]
    assert shown == ["image/svg+xml", "image/jpeg"], shown  # the upload's placeholder, the place's own tile
    page.screenshot(path=SHOTS.format("feedback"), full_page=True)

    page.goto(live.url + "/models")
    assert "v1" in page.inner_text("#champion-card") and "serving" in page.inner_text("#champion-card")
    assert "v2" in page.inner_text("#challenger-card")
    assert page.inner_text("#rollout-mode").strip() == "champion"
    assert "No model registry yet" in page.inner_text("main")
    page.screenshot(path=SHOTS.format("models"), full_page=True)

    page.goto(live.url + "/monitoring?window=15m")
    wait_js(page, "document.querySelectorAll('.js-plotly-plot').length === 4", 20)
    assert int(page.inner_text("#kpi-requests")) >= 3
    assert page.locator("#accuracy-table tbody tr").count() >= 1
    assert "v1" in page.inner_text("#accuracy-table")
    page.screenshot(path=SHOTS.format("monitoring"), full_page=True)
    tab.assert_clean()


@pytest.mark.browser
def test_monitoring_says_utc_and_labels_what_it_draws(live: Live, tab: Tab) -> None:
    """One time zone (UTC, as on the feedback and models pages), readable bucket widths, hover text on the rollout
    lines, and a request rate averaged over the time the data covers."""
    live.stack.set_rollout("champion", {"reason": "monitoring labels test"})
    wait_for(
        lambda: httpx.get(live.url + "/api/monitoring", params={"window": "1h"}, timeout=30).json()["events"],
        timeout=15,
        what="the rollout event in the monitoring data",
    )
    page = tab.page
    page.goto(live.url + "/monitoring?window=1h")
    wait_js(page, "document.querySelectorAll('.js-plotly-plot').length === 4", 20)
    data = page.evaluate("JSON.parse(document.getElementById('monitoring-data').textContent)")
    assert data["bucket_s"] == 60
    layout = "document.getElementById('chart-{}').layout"
    for chart in ("requests", "latency", "traffic", "accuracy"):
        assert page.evaluate(layout.format(chart) + ".xaxis.title.text") == "time (UTC)"
    assert page.evaluate(layout.format("traffic") + ".yaxis.title.text") == "answers per minute"
    hover = page.evaluate(
        "document.getElementById('chart-requests').data.filter(t => t.name === 'rollout').map(t => t.hovertext)"
    )
    assert hover and any("rollout champion" in h and "monitoring labels test" in h for h in hover[0])
    assert page.inner_text("#updated").strip() == f"Updated {data['until'][11:19]} UTC."
    assert re.fullmatch(
        r"([\d.]+ per (second|minute|hour) over|\d+ requests? in) the last \d+(\.\d)? (s|min|h)",
        page.inner_text("#kpi-rate"),
    )
    tab.assert_clean()


@pytest.mark.browser
def test_monitoring_charts_say_when_they_are_empty(live: Live, tab: Tab, settings: Settings) -> None:
    """An empty store: every chart says so inside it (the page is rendered by an app over an empty store)."""
    from fastapi.testclient import TestClient

    from pyrocast.webapp.app import create_app

    with TestClient(create_app(settings, gateway=live.stack.url)) as c:
        html = c.get("/monitoring", params={"window": "15m"}).text
    page = tab.page
    page.route(
        live.url + "/monitoring?window=15m", lambda r: r.fulfill(status=200, content_type="text/html", body=html)
    )
    page.goto(live.url + "/monitoring?window=15m")
    wait_js(page, "document.querySelectorAll('.js-plotly-plot').length === 4", 20)
    for chart in ("requests", "latency", "traffic", "accuracy"):
        notes = page.evaluate(f"document.getElementById('chart-{chart}').layout.annotations.map(a => a.text)")
        assert notes == ["No data yet in this window"], chart
        assert "No data yet" in page.inner_text(f"#chart-{chart}")
    assert page.evaluate("document.getElementById('chart-traffic').layout.yaxis.title.text") == "answers per 15 s"
    assert page.inner_text("#kpi-rate") == "no requests in this window"
    tab.assert_clean()


# The monitoring page over rows of our own at a fixed "now": bucket edges and tick positions are the same at every
# run. The page's embedded data and its refreshes are the overview of those rows (both routes fulfilled here).
GEOMETRY = """(id) => {
  const el = document.getElementById(id);
  const area = el.querySelector('.nsewdrag').getBoundingClientRect();  // the plot area
  const box = (e) => { const b = e.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top,
                                                                    bottom: b.bottom, x: (b.left + b.right) / 2}; };
  // Each drawn trace group carries its data (d3's binding): overlaid axes draw in layers of their own.
  const traces = [...el.querySelectorAll('.scatterlayer .trace')];
  const points = (name) => { const g = traces.find(g => g.__data__ && g.__data__[0].trace.name === name);
                             return g ? [...g.querySelectorAll('.points path')].map(box) : []; };
  const bars = [...el.querySelectorAll('.barlayer .point path')].map(box).filter(b => b.right > b.left);
  return {area: {left: area.left, right: area.right}, bars, points: Object.fromEntries(
    el.data.filter(t => t.type !== 'bar').map(t => [t.name, points(t.name)]))};
}"""
LABELS = """(id) => {
  const el = document.getElementById(id);
  const boxes = (sel) => [...el.querySelectorAll(sel)].map(e => [e.textContent, e.getBoundingClientRect()])
    .filter(([, b]) => b.width > 0).map(([t, b]) => ({t, left: b.left, right: b.right, top: b.top, bottom: b.bottom}));
  return {y: boxes('.ytick text'), x: boxes('.xtick text'), title: boxes('.g-ytitle text'),
          legend: boxes('.legend .traces')};
}"""


def show_monitoring(live: Live, tab: Tab, tmp_path: Path, window: str, now: datetime, fill: Any) -> dict[str, Any]:
    """Fill a store of our own with `fill(store)`, and show the page for its overview at `now`; returns the data."""
    from pyrocast.monitoring.live import overview

    store = PredictionStore(f"sqlite:///{tmp_path / 'crafted.db'}").start()
    fill(store)
    assert store.flush(10)
    data = overview(store.engine, window, now=now)
    store.close()
    text = json.dumps(data)
    safe = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    html = httpx.get(live.url + "/monitoring", params={"window": window}, timeout=30).text
    html, n = re.subn(
        r'(<script id="monitoring-data" type="application/json">).*?(</script>)',
        lambda m: m.group(1) + safe + m.group(2),
        html,
        flags=re.S,
    )
    assert n == 1
    page = tab.page
    url = f"{live.url}/monitoring?window={window}"
    page.route(url, lambda r: r.fulfill(status=200, content_type="text/html", body=html))
    page.route("**/api/monitoring?*", lambda r: r.fulfill(status=200, content_type="application/json", body=text))
    page.goto(url)
    wait_js(page, "document.querySelectorAll('.js-plotly-plot').length === 4", 20)
    return data


def answer(ts: datetime, i: int, **kw: Any) -> dict[str, Any]:
    """A served champion answer of version 1 at `ts` (any field overridden)."""
    return store_rows.row(i, **{"ts": ts, "request_id": f"q{i}", "source": "web", "latency_ms": 10.0 + i % 7, **kw})


@pytest.mark.browser
def test_monitoring_bars_and_points_sit_on_their_bucket_and_end_now(live: Live, tab: Tab, tmp_path: Path) -> None:
    """One rule for every chart: a bucket is drawn over [start, end) inside the window, bars centred on its middle
    with its width, line points on the same middle; the bucket running now ends now, not in the future. (Bars
    were centred on the bucket's start, half a bucket early, while the request line stepped from it.)"""
    now = datetime(2026, 6, 1, 12, 0, 7, tzinfo=UTC)  # 7 s into a 15 s bucket
    gap = (datetime(2026, 6, 1, 11, 55, 15, tzinfo=UTC), datetime(2026, 6, 1, 11, 56, 0, tzinfo=UTC))

    def fill(store: PredictionStore) -> None:
        for i in range(180):  # one answer every 5 s over the 15 minutes, each labelled, but none in the gap
            ts = now - timedelta(seconds=1 + 5 * i)
            if not gap[0] <= ts < gap[1]:
                store.put_prediction(answer(ts, i))
                store.put_feedback({"request_id": f"q{i}", "true_label": "wildfire", "source": "replay"})

    data = show_monitoring(live, tab, tmp_path, "15m", now, fill)
    assert data["bucket_s"] == 15 and data["until"] == "2026-06-01T12:00:07Z"
    since, until = datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"])
    last_start = datetime.fromisoformat(data["traffic"]["start"][-1])
    assert last_start == datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    page = tab.page
    for chart in ("requests", "latency", "traffic", "accuracy"):
        assert page.evaluate(f"document.getElementById('chart-{chart}').layout.xaxis.range") == [
            data["since"],
            data["until"],
        ]

    def timer(geometry: dict[str, Any]) -> Any:
        """Pixels to seconds before `until` (the x axis runs from `since` to `until` across the plot area)."""
        left, right = geometry["area"]["left"], geometry["area"]["right"]
        per_px = (until - since).total_seconds() / (right - left)
        return lambda px: (right - px) * per_px, per_px

    traffic = page.evaluate(GEOMETRY, "chart-traffic")
    before, per_px = timer(traffic)
    last = max(traffic["bars"], key=lambda b: b["right"])
    tolerance = 1.5 * per_px  # a pixel and a half, in seconds
    assert before(last["right"]) == pytest.approx(0, abs=tolerance), "the last bar must end now"
    assert before(last["left"]) == pytest.approx(7, abs=tolerance), "the last bar must start at its bucket's start"
    assert before(last["x"]) == pytest.approx(3.5, abs=tolerance)
    # Every line's last point sits on the same middle as the last bar.
    for chart, name in (("requests", "requests"), ("latency", "p50"), ("accuracy", "v1")):
        g = page.evaluate(GEOMETRY, f"chart-{chart}")
        at, px = timer(g)
        assert g["points"][name], f"{chart}: no points drawn for {name}"
        assert at(g["points"][name][-1]["x"]) == pytest.approx(3.5, abs=1.5 * px), chart
    # A whole bucket inside the window: the one before spans [11:59:45, 12:00:00).
    previous = sorted(traffic["bars"], key=lambda b: b["right"])[-2]
    assert before(previous["left"]) == pytest.approx(22, abs=tolerance)
    assert before(previous["right"]) == pytest.approx(7, abs=tolerance)

    # The hover names the bucket under the pointer and gives its own values: in the first bucket of the gap, no
    # answers (plotly's unified hover gave the neighbouring bucket's latency there).
    latency = page.locator("#chart-latency")
    latency.scroll_into_view_if_needed()
    area = page.locator("#chart-latency .nsewdrag").bounding_box()
    assert area is not None
    mid = gap[0] + timedelta(seconds=7.5)
    x = area["x"] + area["width"] * (mid - since).total_seconds() / (until - since).total_seconds()
    page.mouse.move(x, area["y"] + area["height"] / 2)
    hover = "[...document.querySelectorAll('#chart-latency .hoverlayer text')].map(t => t.textContent).join(' | ')"
    wait_js(page, hover.replace(".join(' | ')", ".length > 0"), 5)
    text = page.evaluate(hover)
    assert "11:55:15–11:55:30 UTC" in text and "no answers" in text and "p50" not in text, text
    page.mouse.move(x - area["width"] * 15 / 900, area["y"] + area["height"] / 2)  # one bucket earlier
    wait_js(page, f"({hover}).includes('11:55:00–11:55:15 UTC')", 5)
    assert "p50" in page.evaluate(hover)
    tab.assert_clean()


@pytest.mark.browser
def test_monitoring_a_bucket_that_just_began_is_no_spike(live: Live, tab: Tab, tmp_path: Path) -> None:
    """1.5 s into a minute, one request in the running bucket drew 30 per minute beside a steady 1 and switched
    the axis to "per second". It has no rate (a gap, no bar) and its hover says what it holds; the unit follows
    whole buckets; the window's first bucket (58.5 s, partial but rated) is drawn hollow and hatched."""
    now = datetime(2026, 6, 1, 12, 0, 1, 500_000, tzinfo=UTC)

    def fill(store: PredictionStore) -> None:
        for i in range(30):  # one answer a minute, then one in the second running now
            store.put_prediction(answer(now - timedelta(seconds=31 + 60 * i), i))
        store.put_prediction(answer(now - timedelta(seconds=0.3), 99))

    data = show_monitoring(live, tab, tmp_path, "1h", now, fill)
    assert data["until"] == "2026-06-01T12:00:01.500Z" and data["requests"]["requests"][-1] == 1
    page = tab.page
    chart = "document.getElementById('chart-{}')"
    assert page.evaluate(chart.format("requests") + ".layout.yaxis.title.text") == "requests per minute"
    line = page.evaluate(chart.format("requests") + ".data.find(t => t.name === 'requests')")
    assert line["y"][-1] is None and line["y"][-2] == pytest.approx(1, rel=1e-3)
    assert max(y for y in line["y"] if y is not None) == pytest.approx(1, rel=1e-3)
    assert line["marker"]["symbol"][0] == "circle-open" and line["marker"]["symbol"][1] == "circle"
    bars = page.evaluate(chart.format("traffic") + ".data.find(t => t.type === 'bar')")
    assert bars["y"][-1] is None and max(y for y in bars["y"] if y is not None) <= 60 / 58.5 + 1e-9
    assert bars["marker"]["pattern"]["shape"][0] == "/" and bars["marker"]["pattern"]["shape"][1] == ""
    hover = page.evaluate(chart.format("requests") + ".data[0].text.at(-1)")
    assert "partial: 1 request in 1.5 s" in hover, hover
    tab.assert_clean()


@pytest.mark.browser
@pytest.mark.parametrize("size", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_monitoring_tick_labels_do_not_overlap(
    live: Live, chromium: Any, tmp_path: Path, size: tuple[int, int]
) -> None:
    """No y tick label runs into another, into the x labels (the first x label near the left edge hit the "0"),
    into the axis title or into the legend; and rates are written in a unit people read ("per hour"), never
    "100µ" per second."""
    now = datetime(2026, 6, 1, 20, 31, 0, tzinfo=UTC)  # the first midnight of the 7 d window is 3.5 h in

    def fill(store: PredictionStore) -> None:
        store.put_prediction(answer(now - timedelta(days=2), 0))
        store.put_feedback({"request_id": "q0", "true_label": "wildfire", "source": "replay"})

    with open_tab(chromium, width=size[0], height=size[1]) as tab:
        show_monitoring(live, tab, tmp_path, "7d", now, fill)
        page = tab.page

        def hit(a: dict[str, Any], b: dict[str, Any]) -> bool:
            return (
                a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]
            )

        for chart in ("requests", "latency", "traffic", "accuracy"):
            labels = page.evaluate(LABELS, f"chart-{chart}")
            ys = labels["y"]
            assert len(ys) >= 2, f"{chart}: no y tick labels"
            clashes = [
                (a["t"], b["t"])
                for i, a in enumerate(ys)
                for b in ys[i + 1 :] + labels["x"] + labels["title"] + labels["legend"]
                if hit(a, b)
            ]
            assert clashes == [], f"{chart} at {size}: overlapping labels {clashes}"
            assert not any("µ" in y["t"] or "μ" in y["t"] for y in ys), (chart, [y["t"] for y in ys])
        assert page.evaluate("document.getElementById('chart-requests').layout.yaxis.title.text") == (
            "requests per hour"
        )
        page.screenshot(path=SHOTS.format(f"monitoring-7d-{size[0]}"), full_page=True)
        tab.assert_clean()


@pytest.mark.browser
def test_monitoring_empty_charts_say_what_is_missing(live: Live, tab: Tab, tmp_path: Path) -> None:
    """Requests that all failed have no latency and no answers, and labels come later: each empty chart says
    which (it said "No data yet" beside a request chart full of failures), with no legend and no made-up scale."""
    now = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)

    def fill(store: PredictionStore) -> None:
        for i in range(4):
            store.put_prediction(
                answer(now - timedelta(minutes=2 + i), i, served=False, label=None, latency_ms=None, error="down")
            )

    show_monitoring(live, tab, tmp_path, "15m", now, fill)
    page = tab.page
    layout = "document.getElementById('chart-{}').layout"
    notes = {
        c: page.evaluate(layout.format(c) + ".annotations.map(a => a.text)")
        for c in ("requests", "latency", "traffic", "accuracy")
    }
    assert notes["requests"] == []
    assert notes["latency"] == notes["traffic"] == ["No answers in this window:<br>all 4 requests failed"]
    assert notes["accuracy"] == ["No labelled answers in this window yet"]
    assert "all 4 requests failed" in page.inner_text("#chart-traffic")
    for chart in ("latency", "traffic", "accuracy"):
        assert page.evaluate(layout.format(chart) + ".showlegend") is False, chart
        assert page.locator(f"#chart-{chart} .ytick text").count() == 0, chart
    tab.assert_clean()


# --- services down ---------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_clear_messages_when_the_model_service_or_the_gateway_is_down(
    live: Live, tab: Tab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A gateway whose model services are not running, and a web app in front of it.
    ports = [free_port() for _ in range(4)]
    root = tmp_path_factory.mktemp("down")
    s = Settings(
        data_dir=root / "data",
        serving=ServingSettings(
            champion_port=ports[0], challenger_port=ports[1], explainer_port=ports[2], gateway_port=ports[3]
        ),
    )
    s.ensure_dirs()
    gateway = procs.start_gateway(s, wait=False)
    web = None
    try:
        web = start_webapp(s, wait=False)
        gateway.wait_healthy(60)
        web.wait_healthy(60)
        page = tab.page
        page.goto(web.url + "/")
        page.fill("#lat", "46.2")
        page.fill("#lon", "-73.5")
        page.click("#predict-btn")
        page.wait_for_selector("#predict-error:not([hidden])", timeout=30_000)
        text = page.inner_text("#predict-error")
        assert "A model service is down" in text and "champion model service does not answer" in text
        assert "/healthz names the service that is down" in text  # not "run `pyrocast up`": it would refuse
        heat = httpx.post(f"{web.url}/api/explain", json={"lat": 46.2, "lon": -73.5, "version": "1"}, timeout=30)
        assert heat.status_code == 503, heat.text
        assert "the prediction itself is not affected" in heat.text, heat.text
        assert page.locator("#result").is_hidden()
        page.wait_for_selector("#gateway-status.degraded", timeout=15_000)

        gateway.stop()
        page.click("#predict-btn")
        page.wait_for_selector("#predict-error:has-text('prediction service is not running')", timeout=30_000)
        assert "pyrocast up" in page.inner_text("#predict-error")
        page.wait_for_selector("#gateway-status.down", timeout=15_000)
        page.screenshot(path=SHOTS.format("gateway-down"))
        for path in ("/feedback", "/monitoring", "/models"):
            page.goto(web.url + path)
            assert page.locator("h1").first.is_visible()
            assert "Traceback" not in page.content()
        assert "Rollout state unavailable" in page.inner_text("main")
        assert "prediction service is not running" in page.inner_text("main")
        # The browser notes the 503s it was given; nothing else may go wrong.
        tab.assert_clean(allow=lambda e: "status of 503" in e)
    finally:
        if web is not None:
            web.stop()
        gateway.stop()
