"""The web app without a running gateway: validation, clear errors when services are down, pages, static files.

The app runs in-process (FastAPI's TestClient, lifespan included); its gateway URL points at a free port where
nothing listens, which is exactly what a user sees when the services are not started.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pyrocast.errors import InvalidInputError
from pyrocast.monitoring.live import MIN_COVER
from pyrocast.ports import free_port
from pyrocast.serving.procs import start_process
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import ImagerySettings, Settings
from pyrocast.webapp.app import COOKIE, check_place, create_app
from tests.support.store_rows import row

INSIDE = {"lat": 46.2, "lon": -73.5}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")
    with TestClient(app) as c:
        yield c


def test_check_place_accepts_the_region_and_explains_refusals(settings: Settings) -> None:
    assert check_place(settings, 46.2, -73.5) == (46.2, -73.5)
    cases = {
        (200.0, -73.5): "Latitude 200 is not on Earth",
        (46.0, -200.0): "Longitude -200 is not on Earth",
        (50.0, -73.5): "outside the region southern-quebec",
        (46.0, -80.0): "outside the region southern-quebec",
        (math.nan, -73.5): "finite numbers",
    }
    for (lat, lon), expected in cases.items():
        with pytest.raises(InvalidInputError, match=expected):
            check_place(settings, lat, lon)
    # With real imagery the service area is where the models were trained (the province), not the synthetic region.
    real = settings.model_copy(
        update={"imagery": ImagerySettings(provider="xyz", xyz_url="http://127.0.0.1:1/{z}/{x}/{y}.jpg")}
    )
    assert check_place(real, 50.0, -73.5) == (50.0, -73.5)
    with pytest.raises(InvalidInputError, match="outside the region quebec"):
        check_place(real, 40.0, -73.5)


def test_api_validation_messages(client: TestClient) -> None:
    bad = {
        "lat 200": ({"lat": 200, "lon": -73.5}, "Latitude 200 is not on Earth"),
        "outside": ({"lat": 49.0, "lon": -73.5}, "outside the region"),
        "text": ({"lat": "abc", "lon": -73.5}, "Latitude must be a number"),
        "missing": ({"lon": -73.5}, "Latitude is missing"),
        "extra": ({**INSIDE, "model": "x"}, "model"),
    }
    for name, (body, expected) in bad.items():
        r = client.post("/api/predict", json=body)
        assert r.status_code == 422, name
        assert expected in r.json()["error"], (name, r.json())
    r = client.post("/api/feedback", json={"request_id": "abc"})
    assert r.status_code == 422
    assert "right or wrong" in r.json()["error"]
    r = client.post("/api/feedback", json={"request_id": "abc", "correct": True, "label": "maybe"})
    assert r.status_code == 422
    for body in (b"[" * 5000, b"{x"):  # nested too deep, or not JSON at all: one status, one message
        r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "The request body is not valid JSON.", r.text
    r = client.post("/api/predict", content=b" " * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"], r.text  # never read
    chunks = (b" " * 10_000 for _ in range(10))  # no Content-Length: counted as it comes, read by FastAPI
    r = client.post("/api/feedback", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"], r.text
    r = client.post("/api/feedback", json={"request_id": "abc", "correct": "yes"})  # as strict as the gateway
    assert r.status_code == 422 and r.json()["error"] == "Verdict must be true or false.", r.json()
    r = client.get("/api/tile", params={"lat": 95, "lon": -73.5})
    assert r.status_code == 422


def test_gateway_down_gives_clear_messages_not_stack_traces(client: TestClient) -> None:
    for method, path, body in (
        ("POST", "/api/predict", INSIDE),
        ("POST", "/api/explain", INSIDE),
        ("POST", "/api/feedback", {"request_id": "abc", "correct": True}),
    ):
        r = client.request(method, path, json=body)
        assert r.status_code == 503, path
        err = r.json()
        assert "prediction service is not running" in err["error"]
        assert "pyrocast up" in err["hint"]
    assert client.get("/api/tile", params=INSIDE).status_code == 503
    status = client.get("/api/status").json()
    assert status["gateway"] == "down"
    # Pages still render and say what is wrong.
    page = client.get("/models")
    assert page.status_code == 200
    assert "Rollout state unavailable" in page.text
    assert "No model registry yet" in page.text
    for path in ("/", "/feedback", "/models", "/monitoring"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "Traceback" not in r.text
        assert 'aria-current="page"' in r.text


def test_client_id_cookie_is_set_once_and_kept(client: TestClient) -> None:
    r = client.get("/")
    cid = r.cookies.get(COOKIE)
    assert cid and re.fullmatch(r"[0-9a-f]{32}", cid)
    assert "httponly" in r.headers["set-cookie"].lower()
    again = client.get("/feedback")
    assert COOKIE not in again.headers.get("set-cookie", "")
    # A forged or malformed id is replaced.
    client.cookies.set(COOKIE, "<script>")
    r = client.get("/")
    assert re.fullmatch(r"[0-9a-f]{32}", r.cookies.get(COOKIE))


def test_pages_load_nothing_from_outside(client: TestClient) -> None:
    for path in ("/", "/feedback", "/models", "/monitoring"):
        html = client.get(path).text
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            # Links out are allowed only to the local MLflow UI; everything loaded comes from this origin.
            assert url.startswith(("/", "#")) or url.startswith("http://127.0.0.1:"), (path, url)
        loaded = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', html)
        assert all(u.startswith("/") for u in loaded), (path, loaded)
        assert not re.search(r'\son[a-z]+="', html), path  # no inline handlers: the policy below forbids them
    # The browser is told the same: this origin only (the policy is what makes chromium refuse the rest).
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "img-src 'self' data: blob:;" in csp
    assert client.get("/api/status").headers["x-content-type-options"] == "nosniff"


def test_vendor_and_app_static_files(client: TestClient) -> None:
    leaflet = client.get("/static/vendor/leaflet/leaflet.js")
    assert leaflet.status_code == 200 and "Leaflet" in leaflet.text[:500]
    assert client.get("/static/vendor/leaflet/leaflet.css").status_code == 200
    plotly = client.get("/static/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert plotly.headers["content-type"].startswith("text/javascript")
    for f in ("app.css", "common.js", "map.js", "monitoring.js", "feedback.js", "favicon.svg"):
        assert client.get(f"/static/app/{f}").status_code == 200, f


def test_unknown_page_and_bad_window(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404
    assert "Page not found" in r.text and "<nav" in r.text
    assert client.get("/api/nowhere").json() == {"error": "Page not found."}
    r = client.get("/monitoring", params={"window": "forever"})
    assert r.status_code == 400
    assert "window &#39;forever&#39; is not understood" in r.text
    r = client.get("/api/monitoring", params={"window": "forever"})
    assert r.status_code == 422 and "not understood" in r.json()["error"]


def test_feedback_and_monitoring_pages_show_the_store(settings: Settings, client: TestClient) -> None:
    store = PredictionStore(settings.store_database_url).start()
    now = datetime.now(UTC)
    for i in range(12):
        store.put_prediction(
            {
                "ts": now - timedelta(minutes=i),
                "request_id": f"req{i}",
                "served": True,
                "variant": "champion" if i % 4 else "challenger",
                "model_name": "pyrocast-wildfire",
                "model_version": "3" if i % 4 else "4",
                "source": "web",
                "lat": 46.0 + i / 100,
                "lon": -73.5,
                "probability": 0.8,
                "label": "wildfire",
                "latency_ms": 10.0 + i,
            }
        )
    for i in range(6):
        truth = "wildfire" if i < 5 else "nowildfire"
        store.put_feedback(
            {
                "request_id": f"req{i}",
                "correct": truth == "wildfire",
                "true_label": truth,
                "served_label": "wildfire",
                "model_version": "3" if i % 4 else "4",
                "source": "user",
            }
        )
    store.close()

    data = client.get("/api/monitoring", params={"window": "1h"}).json()
    assert data["requests"]["total"] == 12
    assert data["traffic"]["totals"] == {"challenger": 3, "champion": 9}
    assert data["latency"]["overall"]["n"] == 12
    assert data["accuracy"]["versions"]["3"]["n"] == 4
    assert data["accuracy"]["versions"]["4"]["n"] == 2

    page = client.get("/feedback").text
    assert page.count("<tr data-request-id=") == 6
    assert "/api/tile?lat=46.05&amp;lon=-73.5" in page
    assert "Model v3" in page
    rows = client.get("/api/feedback", params={"limit": 2}).json()
    assert [r["request_id"] for r in rows] == ["req5", "req4"]
    assert rows[0]["correct"] is False

    mon = client.get("/monitoring", params={"window": "6h"}).text
    assert 'id="monitoring-data"' in mon
    assert 'aria-current="true" class="active">6h<' in mon


def test_labelled_requests_count_requests_not_the_shadow_copies_judged_with_them(
    settings: Settings, client: TestClient
) -> None:
    """Two labelled requests in shadow mode are two labelled requests, with two copies judged too (the figure said
    4 "labelled answers" under "feedback and replayed labels")."""
    from tests.support.store_rows import row

    store = PredictionStore(settings.store_database_url).start()
    for i in range(2):
        store.put_prediction(row(i, source="web"))
        store.put_prediction(row(i, source="web", served=False, variant="challenger", model_version="2"))
        store.put_feedback(
            {
                "request_id": f"r{i}",
                "correct": True,
                "true_label": "wildfire",
                "served_label": "wildfire",
                "model_version": "1",
                "source": "user",
            }
        )
    store.close()
    page = client.get("/monitoring", params={"window": "1h"}).text
    assert '<p class="big" id="kpi-labelled">2</p>' in page, page
    assert "2 shadow or comparison copies judged too" in page
    feedback = client.get("/feedback").text
    assert "accuracy on 2 labelled answers in the last 7 days (0 served, 2 shadow or comparison copies)" in feedback


def test_feedback_page_marks_the_rows_that_no_longer_give_the_label(settings: Settings, client: TestClient) -> None:
    store = PredictionStore(settings.store_database_url).start()
    now = datetime.now(UTC)
    for rid in ("changed", "known"):
        store.put_prediction(row(0, ts=now, request_id=rid, source="web", probability=0.8))
    verdicts = [
        ("changed", False, "nowildfire", "user"),  # then changed: the newest verdict counts
        ("changed", True, "wildfire", "user"),
        ("known", None, "nowildfire", "replay"),  # ground truth outranks the later verdict
        ("known", True, "wildfire", "user"),
    ]
    for i, (rid, correct, truth, source) in enumerate(verdicts):
        store.put_feedback(
            {"ts": now + timedelta(seconds=i), "request_id": rid, "correct": correct, "true_label": truth}
            | {"served_label": "wildfire", "model_version": "1", "source": source}
        )
    store.close()
    page = client.get("/feedback").text
    rows = page.split("<tr data-request-id=")[1:]  # newest first
    assert [("superseded" in r, r.split('"')[1]) for r in rows] == [
        (True, "known"),  # the user's verdict under the replayed label
        (False, "known"),
        (False, "changed"),
        (True, "changed"),
    ]
    api = client.get("/api/feedback").json()
    assert [(r["request_id"], r["source"], r["counts"]) for r in api] == [
        ("known", "user", False),
        ("known", "replay", True),
        ("changed", "user", True),
        ("changed", "user", False),
    ]


def test_pyrocast_serve_webapp_command(settings: Settings) -> None:
    """`pyrocast serve webapp` runs the app in the foreground on the port asked for."""
    exe = Path(sys.executable).with_name("pyrocast")
    port = free_port()
    proc = start_process(
        "webapp-cli",
        [str(exe), "serve", "webapp", "--port", str(port), "--data-dir", str(settings.root)],
        url=f"http://127.0.0.1:{port}",
        log_path=settings.root / "logs" / "webapp-cli.log",
        health_path="/healthz",
        timeout=60,
    )
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/models", timeout=30)
        assert r.status_code == 200 and "<h1>Models</h1>" in r.text
    finally:
        proc.stop()
    assert "web app on http://127.0.0.1:" in proc.log_tail()


def test_models_page_lists_registry_versions_with_metrics_and_mlflow_links(settings: Settings, tmp_path: Path) -> None:
    from pyrocast.registry import models
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client
    from tests.support.mlflow_db import seed_mlflow_db
    from tests.support.onnx_standin import make_standin_bundle

    seed_mlflow_db(settings)
    client = get_client(settings)
    for i, acc in enumerate((0.91, 0.94)):
        run = client.create_run(ensure_experiment(settings, client))
        for k, v in {"test_accuracy": acc, "test_f1": acc - 0.01, "test_roc_auc": 0.97, "test_n": 120}.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_tag(run.info.run_id, "pyrocast.profile", "quick")
        models.register_bundle(settings, run.info.run_id, make_standin_bundle(tmp_path / f"b{i}", "good"))
    models.set_alias(settings, "champion", "1")
    models.set_alias(settings, "challenger", "2")

    with TestClient(create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")) as c:
        html = c.get("/models").text
    table = html[html.index('id="registry-table"') :]
    rows = [r for r in re.findall(r"<tr>(.*?)</tr>", table, re.S) if 'scope="row"' in r]
    assert [re.search(r"<th scope=\"row\">(v\d+)</th>", r).group(1) for r in rows] == ["v2", "v1"]
    assert "challenger" in rows[0] and "94.0%" in rows[0] and "0.930" in rows[0]
    assert "champion" in rows[1] and "91.0%" in rows[1] and ">120<" in rows[1]
    assert f"http://127.0.0.1:{settings.mlflow.port}/#/models/{settings.mlflow.model_name}/versions/1" in rows[1]
    # Seen from other machines: the links follow mlflow.ui_url.
    settings.mlflow.ui_url = "https://mlflow.example.org/"
    with TestClient(create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")) as c:
        page = c.get("/models").text
    assert f"https://mlflow.example.org/#/models/{settings.mlflow.model_name}/versions/1" in page
    assert f"127.0.0.1:{settings.mlflow.port}" not in page


def test_unreadable_prediction_store_is_reported_not_crashed(settings: Settings) -> None:
    db = settings.root / "predictions.db"
    db.write_bytes(b"this is not a database" * 100)
    with TestClient(create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")) as c:
        page = c.get("/feedback")
        assert page.status_code == 503
        assert "A service is unavailable" in page.text
        assert "The prediction store (sqlite:///" in page.text and "cannot be read" in page.text
        api = c.get("/api/monitoring")
        assert api.status_code == 503 and "PYROCAST_STORE_URL" in api.json()["hint"]
        assert c.get("/").status_code == 200  # the map does not need the store


def test_framework_validation_messages_are_plain_words(client: TestClient) -> None:
    """What FastAPI/pydantic say ('Input should be a valid integer', '0 JSON decode error') never reaches people."""
    r = client.get("/feedback", params={"limit": "abc"})
    assert r.status_code == 400 and "Limit must be a whole number." in r.text
    assert "Input should be" not in r.text
    assert "Limit must be at most 500." in client.get("/feedback", params={"limit": 501}).text
    assert client.get("/api/feedback", params={"limit": 0}).json() == {"error": "Limit must be at least 1."}
    r = client.post("/api/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "The request body is not valid JSON."}
    r = client.post("/api/predict", json={**INSIDE, "x": 1})
    assert r.json() == {"error": "'x' is not an expected field."}
    # A boolean is not a latitude (lax parsing would read `true` as 1).
    r = client.post("/api/predict", json={"lat": True, "lon": -73.5})
    assert r.status_code == 422 and r.json()["error"] == "Latitude must be a number, like 46.25."
    r = client.post("/api/feedback", json={"request_id": "abc", "label": "maybe"})
    assert r.json()["error"] == "Label must be 'wildfire' or 'nowildfire'."


def test_map_page_config_and_help_line(client: TestClient, settings: Settings) -> None:
    """The map's tile bounds come from the server's own margin, and the help line writes numbers like the errors."""
    from pyrocast.webapp.tiles import MARGIN_DEG

    html = client.get("/").text
    config = json.loads(re.search(r'<script id="map-config" type="application/json">(.*?)</script>', html, re.S)[1])
    r = settings.region
    assert config["tile_margin_deg"] == MARGIN_DEG
    assert config["tile_region"] == {
        "lat_min": r.lat_min,
        "lat_max": r.lat_max,
        "lon_min": r.lon_min,
        "lon_max": r.lon_max,
    }
    assert "Latitude 45 to 47.5, longitude -76 to -71." in html
    assert 'id="fb-label"' not in html  # the verdict alone says the true label (two labels)


def test_running_the_module_gives_no_runpy_warning(tmp_path: Path) -> None:
    """`python -m pyrocast.webapp.app` (how `pyrocast up` starts it): the package must not import the module
    first, or runpy warns at the top of the web app's log."""
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "pyrocast.webapp.app", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning" not in out.stderr and "--port" in out.stdout


def test_monitoring_json_gives_each_bucket_its_start_and_end(settings: Settings, client: TestClient) -> None:
    """Every chart reads where its buckets begin and end: the first at the window's start, the last at its end
    (now), the seconds each covers, and rates over those seconds (the bucket running now is not a drop)."""
    store = PredictionStore(settings.store_database_url).start()
    now = datetime.now(UTC)
    for i in range(5):
        store.put_prediction(row(i, ts=now - timedelta(seconds=i), source="web", latency_ms=5.0))
    store.close()
    data = client.get("/api/monitoring", params={"window": "15m"}).json()
    for part in ("requests", "latency", "traffic", "accuracy"):
        d = data[part]
        assert d["start"][0] == data["since"] and d["end"][-1] == data["until"], part
        assert d["start"][1:] == d["end"][:-1], part
        assert all(0 < s <= data["bucket_s"] for s in d["seconds"]), part
    req = data["requests"]
    assert sum(req["requests"]) == 5
    # Which case this run meets depends on where now falls in its bucket; each is checked as it comes.
    for n, s, ok, rate in zip(req["requests"], req["seconds"], req["rated"], req["rate_per_s"], strict=True):
        assert ok == (s >= MIN_COVER * data["bucket_s"])
        if ok:
            assert rate == pytest.approx(n / s, rel=1e-3)
        else:  # a sliver of a bucket gets its count and no rate (one request over 1 s is not 60/min)
            assert rate is None


def test_models_page_tells_a_missing_challenger_from_a_down_champion(settings: Settings) -> None:
    """A real gateway with no model service behind it: the champion that should answer is an alarm (red), the
    challenger nobody assigned is not (grey, "not running"), and no calls show as "–", not "0.0%"."""
    from pyrocast.serving import procs
    from pyrocast.settings import ServingSettings

    ports = [free_port() for _ in range(4)]
    serving = ServingSettings(
        champion_port=ports[0], challenger_port=ports[1], explainer_port=ports[2], gateway_port=ports[3]
    )
    s = settings.model_copy(update={"serving": serving})
    gateway = procs.start_gateway(s)
    try:
        with TestClient(create_app(s, gateway=gateway.url)) as c:
            html = c.get("/models").text
    finally:
        gateway.stop()
    champion = re.search(r'id="champion-card">(.*?)</div>', html, re.S)[1]
    challenger = re.search(r'id="challenger-card">(.*?)</div>', html, re.S)[1]
    assert 'class="pill down">not answering' in champion
    assert 'class="pill idle">not running' in challenger and "not answering" not in challenger
    stats = re.search(r'id="stats-title">(.*?)</section>', html, re.S)[1]
    assert "since the last rollout change or this gateway's start" in stats and "at most 200" in stats
    rows = {m[0]: m[1] for m in re.findall(r'<th scope="row">([^<]+)</th>(.*?)</tr>', stats, re.S)}
    assert set(rows) >= {"champion", "challenger"}
    cells = re.findall(r"<td>(.*?)</td>", rows["challenger"])
    assert cells == ["0", "0", "–", "–", "–", "0", "–"]


def test_models_page_registry_table_follows_a_promote_and_a_rollback_at_once(tmp_path: Path) -> None:
    """The registry listing is cached for REGISTRY_TTL_S, but a promote or rollback must not leave the table
    saying the opposite of the rollout cards above it (a real gateway moving real MLflow aliases)."""
    from tests.support.serving import start_stack

    def aliases(html: str) -> dict[str, str]:
        table = html[html.index('id="registry-table"') :]
        rows = [r for r in re.findall(r"<tr>(.*?)</tr>", table, re.S) if 'scope="row"' in r]
        out = {}
        for r in rows:
            version = re.search(r'<th scope="row">v(\d+)</th>', r)[1]
            for a in re.findall(r'<span class="badge [a-z]+">([a-z]+)</span>', r):
                out[a] = version
        return out

    stack = start_stack(tmp_path, explainer=False, registry=True)
    try:
        with TestClient(create_app(stack.settings, gateway=stack.url)) as c:
            assert aliases(c.get("/models").text) == {"champion": "1", "challenger": "2"}
            assert stack.set_rollout("promote", {"reason": "webapp cache test"})["state"]["champion"]["version"] == "2"
            assert aliases(c.get("/models").text) == {"champion": "2", "challenger": "1"}
            stack.set_rollout("rollback", {"reason": "webapp cache test"})
            assert aliases(c.get("/models").text) == {"champion": "1", "challenger": "2"}
    finally:
        stack.stop()


def test_an_unexpected_error_is_a_plain_page_with_the_security_headers(settings: Settings) -> None:
    app = create_app(settings, gateway=f"http://127.0.0.1:{free_port()}")

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    app.add_api_route("/api/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        for path in ("/boom", "/api/boom"):
            r = c.get(path)
            assert r.status_code == 500 and "a bug" not in r.text and "Traceback" not in r.text
            assert r.headers["x-frame-options"] == "DENY" and "default-src" in r.headers["content-security-policy"]


def test_a_few_errors_among_many_never_read_as_none() -> None:
    from pyrocast.webapp.app import _pct

    assert _pct(3 / 7000) == "<0.1%" and _pct(0.0) == "0.0%" and _pct(0.0123) == "1.2%" and _pct(None) == "–"


def test_the_monitoring_cache_keeps_one_entry_per_span_and_drops_expired_ones(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any spelling of a window is accepted ("1h", "60m", "1.0001h"): each was a full scan kept in memory forever."""
    import pyrocast.webapp.app as webapp

    for window in ("1h", "60m", "1h"):
        assert client.get("/api/monitoring", params={"window": window}).json()["window"] == window
    cache = client.app.state.web.monitoring  # type: ignore[attr-defined]
    assert list(cache) == [3600.0]
    monkeypatch.setattr(webapp, "MONITORING_TTL_S", 0.0)  # everything cached has expired
    for window in ("1.0001h", "1.0002h", "15m"):
        client.get("/api/monitoring", params={"window": window}).raise_for_status()
    assert list(cache) == [900.0]
