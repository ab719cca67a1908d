"""The gateway over real processes: predictions, tiles, explanations, feedback, rollout modes, failures, store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.store import PredictionStore
from tests.serving.conftest import encode, tile_image
from tests.support.serving import ServingStack, metric_sum
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

INSIDE = {"lat": 46.2, "lon": -73.4}  # inside the default synthetic region
JSON = {"content-type": "application/json"}


def upload(data: bytes, name: str = "tile.jpg", ctype: str = "image/jpeg") -> dict[str, Any]:
    return {"image": (name, data, ctype)}


async def _many(url: str, clients: list[str | None], data: bytes, concurrency: int = 16) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(cid: str | None) -> httpx.Response:
            headers = {"X-Client-Id": cid} if cid else {}
            async with sem:
                return await c.post("/v1/predict", files=upload(data), headers=headers)

        return await asyncio.gather(*(one(cid) for cid in clients))


def predict_many(stack: ServingStack, clients: list[str | None], data: bytes) -> list[dict[str, Any]]:
    responses = asyncio.run(_many(stack.url, clients, data))
    bad = [r for r in responses if r.status_code != 200]
    assert not bad, bad[0].text
    return [r.json() for r in responses]


def traffic_until(stack: ServingStack, done: Any, data: bytes, timeout: float = 20.0, prefix: str = "t") -> bool:
    """Predictions from fresh clients until `done()`: a canary step ends only once its challenger calls could be
    judged, not on time alone."""
    deadline = time.monotonic() + timeout
    i = 0
    while not done():
        if time.monotonic() > deadline:
            return False
        predict_many(stack, [f"{prefix}-{i}-{k}" for k in range(8)], data)
        i += 1
    return True


def stored(stack: ServingStack, request_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.url}/v1/predictions/{request_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# --- predictions ---------------------------------------------------------------------------------------------
def test_predict_an_uploaded_tile(gw: ServingStack, jpeg: bytes) -> None:
    r = httpx.post(f"{gw.url}/v1/predict", files=upload(jpeg), headers={"X-Client-Id": "alice"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == "champion" and body["model"] == {"name": gw.model_name, "version": "1"}
    assert body["label"] == "wildfire" and 0.5 < body["probability"] <= 1
    assert body["tile_sha256"] == hashlib.sha256(jpeg).hexdigest() and body["latency_ms"] > 0
    (row,) = stored(gw, body["request_id"])
    assert row["served"] and row["client_id"] == "alice" and row["source"] == "api"
    assert row["model_version"] == "1" and row["label"] == "wildfire" and row["error"] is None
    assert row["width"] == 350 and 0 < row["brightness"] < 1 and row["mean_r"] is not None


def test_predict_by_coordinates_and_fetch_the_tile(gw: ServingStack) -> None:
    r = httpx.post(f"{gw.url}/v1/predict", json={**INSIDE, "client_id": "bob", "source": "web"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["lat"], body["lon"]) == (INSIDE["lat"], INSIDE["lon"])
    tile = httpx.get(f"{gw.url}/v1/tile", params=INSIDE, timeout=30)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(tile.content).hexdigest() == body["tile_sha256"]  # the tile the model saw
    (row,) = stored(gw, body["request_id"])
    assert (row["lat"], row["lon"], row["source"], row["client_id"]) == (46.2, -73.4, "web", "bob")


def test_uploaded_tile_may_carry_its_coordinates(gw: ServingStack, jpeg: bytes) -> None:
    r = httpx.post(f"{gw.url}/v1/predict", files=upload(jpeg), data={"lat": "45.9", "lon": "-72.5", "source": "replay"})
    assert r.status_code == 200, r.text
    (row,) = stored(gw, r.json()["request_id"])
    assert (row["lat"], row["lon"], row["source"]) == (45.9, -72.5, "replay")


def test_explain_a_tile_and_a_place(gw: ServingStack, jpeg: bytes) -> None:
    r = httpx.post(f"{gw.url}/v1/explain", files=upload(jpeg), timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["x-model-version"] == "1"
    r = httpx.post(f"{gw.url}/v1/explain", json={**INSIDE, "version": "2"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "2"
    assert gw.explainer is not None
    logged = len(gw.explainer.log_path.read_bytes())
    r = httpx.post(f"{gw.url}/v1/explain", json={**INSIDE, "version": "99"}, timeout=120)
    assert r.status_code == 404 and "99" in r.text
    # A client's mistake is one INFO line in the explainer's log, not an ERROR with tracebacks (read as a failure).
    said = wait_for(lambda: "answered 404" in gw.explainer.log_path.read_bytes()[logged:].decode(errors="replace"))
    log = gw.explainer.log_path.read_bytes()[logged:].decode(errors="replace")
    assert said and "Traceback" not in log and "[ERROR]" not in log, log


def test_explaining_a_role_explains_what_that_role_serves_in_its_precision(gw: ServingStack, jpeg: bytes) -> None:
    """`champion` and `challenger` name the versions this gateway serves in those roles, before and after a
    promotion (the explainer kept a model loaded under the alias "champion": after a promotion it went on explaining
    the old champion), in the precision their classifier scores in."""
    served = httpx.get(f"http://127.0.0.1:{gw.settings.serving.champion_port}/model/info", timeout=10).json()

    def explained(version: str) -> tuple[str, str]:
        r = httpx.post(f"{gw.url}/v1/explain", files=upload(jpeg), data={"version": version}, timeout=120)
        assert r.status_code == 200, r.text
        return r.headers["x-model-version"], r.headers["x-model-precision"]

    assert explained("champion") == ("1", served["precision"])
    assert explained("v1") == ("1", served["precision"])  # "v1" is version 1, in the precision it is served in
    assert explained("challenger")[0] == "2"
    gw.set_rollout("promote", {"reason": "test"})
    try:
        assert explained("champion")[0] == "2"
        assert explained("challenger")[0] == "1"
    finally:
        gw.set_rollout("rollback", {"reason": "test"})


# --- feedback ------------------------------------------------------------------------------------------------
def test_feedback_is_stored_with_the_true_label(gw: ServingStack, jpeg: bytes) -> None:
    rid = httpx.post(f"{gw.url}/v1/predict", files=upload(jpeg)).json()["request_id"]
    r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "correct": False})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "request_id": rid,
        "correct": False,
        "true_label": "nowildfire",
        "served_label": "wildfire",
        "model": {"name": gw.model_name, "version": "1"},
        "counts": True,  # no ground truth for this request: the verdict gives its label
        "request_label": "nowildfire",
        "label_source": "user",
    }
    # Ground truth from replay: the gateway has an admin token, so it needs it (tests/serving/test_feedback_trust.py).
    replay = {"request_id": rid, "label": "wildfire", "source": "replay"}
    r = httpx.post(f"{gw.url}/v1/feedback", json=replay, headers=gw.admin)
    assert r.status_code == 200 and r.json()["correct"] is True
    store = PredictionStore(gw.settings.store_database_url)
    rows = wait_for(lambda: len(store.feedback_for(rid)) == 2 and store.feedback_for(rid))
    assert [(f["true_label"], f["source"], f["model_version"]) for f in rows] == [
        ("nowildfire", "user", "1"),
        ("wildfire", "replay", "1"),
    ]
    store.close()


# --- malformed requests: always a 4xx, never a 500 -----------------------------------------------------------
def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """`data` sent chunked (no Content-Length): the body limit must count it as it arrives."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _bad_requests(stack: ServingStack, jpeg: bytes) -> list[tuple[str, str, dict[str, Any], int]]:
    big = b"\xff\xd8" + b"\0" * (stack.settings.serving.max_upload_bytes + 10)
    multipart_big = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="t.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + big
        + b"\r\n--b--\r\n"
    )
    nested = {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}}
    auth = stack.admin
    json_type = {"content-type": "application/json"}
    return [
        ("nested json", "/v1/predict", nested, 400),
        ("explain nested json", "/v1/explain", nested, 400),
        ("explain version a/b", "/v1/explain", {"json": {**INSIDE, "version": "a/b"}}, 422),
        ("explain 40-digit version", "/v1/explain", {"json": {**INSIDE, "version": "9" * 40}}, 422),
        ("explain version 1;2 upload", "/v1/explain", {"files": upload(jpeg), "data": {"version": "1;2"}}, 422),
        ("multipart lat nan", "/v1/predict", {"files": upload(jpeg), "data": {"lat": "nan", "lon": "-73"}}, 422),
        (
            "chunked huge upload",
            "/v1/predict",
            {"content": _chunks(multipart_big), "headers": {"content-type": "multipart/form-data; boundary=b"}},
            413,
        ),
        (
            "chunked huge feedback",  # read by FastAPI for its model: it called the limit "an error parsing the body"
            "/v1/feedback",
            {"content": _chunks(b" " * (stack.settings.serving.max_upload_bytes + 200_000)), "headers": json_type},
            413,
        ),
        ("feedback correct 'yes'", "/v1/feedback", {"json": {"request_id": "x", "correct": "yes"}}, 422),
        ("feedback correct 0", "/v1/feedback", {"json": {"request_id": "x", "correct": 0}}, 422),
        ("bad json", "/v1/predict", {"content": b"{lat: 1", "headers": {"content-type": "application/json"}}, 400),
        ("empty json body", "/v1/predict", {"content": b"", "headers": {"content-type": "application/json"}}, 422),
        ("json list", "/v1/predict", {"json": [1, 2]}, 422),
        ("missing lon", "/v1/predict", {"json": {"lat": 46.0}}, 422),
        ("lat 200", "/v1/predict", {"json": {"lat": 200, "lon": -73}}, 422),
        ("lon -500", "/v1/predict", {"json": {"lat": 46, "lon": -500}}, 422),
        ("lat not a number", "/v1/predict", {"json": {"lat": "north", "lon": -73}}, 422),
        ("lat true", "/v1/predict", {"json": {"lat": True, "lon": -73}}, 422),
        ("lat a string of digits", "/v1/predict", {"json": {"lat": "46.2", "lon": -73.4}}, 422),
        (
            "lat NaN",
            "/v1/predict",
            {"content": b'{"lat": NaN, "lon": -73}', "headers": {"content-type": "application/json"}},
            400,
        ),
        (
            "feedback NaN",
            "/v1/feedback",
            {"content": b'{"request_id": NaN, "correct": true}', "headers": {"content-type": "application/json"}},
            422,
        ),
        ("unknown field", "/v1/predict", {"json": {"lat": 46, "lon": -73, "zoom": 3}}, 422),
        ("bad source", "/v1/predict", {"json": {"lat": 46, "lon": -73, "source": "spam"}}, 422),
        ("outside imagery", "/v1/predict", {"json": {"lat": 10.0, "lon": 10.0}}, 404),
        ("text body", "/v1/predict", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("non-image upload", "/v1/predict", {"files": upload(b"not an image", "x.txt", "text/plain")}, 415),
        ("empty file", "/v1/predict", {"files": upload(b"")}, 400),
        ("truncated jpeg", "/v1/predict", {"files": upload(jpeg[:500])}, 422),
        ("gif upload", "/v1/predict", {"files": upload(encode(tile_image(0, 64), "GIF"), "x.gif", "image/gif")}, 415),
        (
            "16-bit png",
            "/v1/predict",
            {"files": upload(encode(tile_image(0, 64).convert("I;16"), "PNG"), "x.png")},
            422,
        ),
        ("huge file", "/v1/predict", {"files": upload(big)}, 413),
        ("no image field", "/v1/predict", {"files": {"picture": ("t.jpg", jpeg, "image/jpeg")}}, 422),
        (
            "two files",
            "/v1/predict",
            {"files": [("image", ("a.jpg", jpeg, "image/jpeg")), ("image", ("b.jpg", jpeg, "image/jpeg"))]},
            400,
        ),
        ("lat without lon", "/v1/predict", {"files": upload(jpeg), "data": {"lat": "46"}}, 422),
        (
            "bad multipart",
            "/v1/predict",
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            422,
        ),
        ("tile lat 200", "/v1/tile?lat=200&lon=-73", {"method": "GET"}, 422),
        ("tile missing lon", "/v1/tile?lat=46", {"method": "GET"}, 422),
        ("explain bad json", "/v1/explain", {"content": b"[", "headers": {"content-type": "application/json"}}, 400),
        ("feedback unknown id", "/v1/feedback", {"json": {"request_id": "nope", "correct": True}}, 404),
        ("feedback nested json", "/v1/feedback", nested, 400),
        ("feedback text not json", "/v1/feedback", {"content": b"xx{", "headers": {"content-type": "text/plain"}}, 400),
        (
            "rollout text not json",
            "/v1/rollout/ab",
            {"content": b"xx{", "headers": {**auth, "content-type": "text/plain"}},
            400,
        ),
        ("feedback a JSON string", "/v1/feedback", {"content": b'"{}"', "headers": json_type}, 422),
        (
            "feedback json sent as text",
            "/v1/feedback",
            {"content": b'{"request_id": "x", "correct": true}', "headers": {"content-type": "text/plain"}},
            415,
        ),
        ("wrong method", "/v1/predict", {"method": "GET"}, 405),
        ("feedback no verdict", "/v1/feedback", {"json": {"request_id": "x"}}, 422),
        ("feedback bad label", "/v1/feedback", {"json": {"request_id": "x", "label": "maybe"}}, 422),
        ("feedback bad json", "/v1/feedback", {"content": b"{", "headers": {"content-type": "application/json"}}, 400),
        ("jpeg as the body", "/v1/predict", {"content": jpeg}, 415),
        ("predictions unknown id", "/v1/predictions/nope", {"method": "GET"}, 404),
        ("predictions NUL in id", "/v1/predictions/ab%00cd", {"method": "GET"}, 422),
        ("feedback NUL in id", "/v1/feedback", {"json": {"request_id": "ab\u0000cd", "correct": True}}, 422),
        ("rollout without token", "/v1/rollout/ab", {"json": {"champion": 1, "challenger": 1}}, 401),
        (
            "rollout bad token",
            "/v1/rollout/ab",
            {"json": {"champion": 1, "challenger": 1}, "headers": {"Authorization": "Bearer wrong"}},
            401,
        ),
        ("ab zero weights", "/v1/rollout/ab", {"json": {"champion": 0, "challenger": 0}, "headers": auth}, 422),
        ("ab negative weight", "/v1/rollout/ab", {"json": {"champion": -1, "challenger": 2}, "headers": auth}, 422),
        ("ab missing weight", "/v1/rollout/ab", {"json": {"challenger": 2}, "headers": auth}, 422),
        ("canary decreasing", "/v1/rollout/canary", {"json": {"steps": [0.5, 0.1]}, "headers": auth}, 422),
        ("canary share > 1", "/v1/rollout/canary", {"json": {"steps": [0.5, 2]}, "headers": auth}, 422),
        ("canary step 0 s", "/v1/rollout/canary", {"json": {"step_seconds": 0}, "headers": auth}, 422),
        ("shadow sample 0", "/v1/rollout/shadow", {"json": {"sample": 0}, "headers": auth}, 422),
        ("rollback nothing", "/v1/rollout/rollback", {"headers": auth}, 409),
        ("unknown route", "/v1/nothing", {"method": "GET"}, 404),
    ]


def _enveloped(body: Any) -> bool:
    detail = body.get("detail") if isinstance(body, dict) else None
    return (isinstance(detail, dict) and isinstance(detail.get("error"), str)) or isinstance(detail, list)


def test_malformed_requests_get_a_4xx_never_a_500(gw: ServingStack, jpeg: bytes) -> None:
    failures = []
    with gw.client() as c:
        for name, path, kw, status in _bad_requests(gw, jpeg):
            kw = dict(kw)
            method = kw.pop("method", "POST")
            r = c.request(method, path, **kw)
            if r.status_code != status:
                failures.append(f"{name}: {r.status_code} (expected {status}) {r.text[:200]}")
            elif not _enveloped(r.json()):  # the one error shape of the OpenAPI document, 413s included
                failures.append(f"{name}: not {{'detail': {{'error': ...}}}} (nor a 422's list): {r.text[:200]}")
    assert not failures, "\n".join(failures)
    # Refused before routing (Content-Length over the limit) or while read (chunked): counted for the route.
    metrics = httpx.get(f"{gw.url}/metrics").text
    refused = re.search(r'pyrocast_gateway_http_requests_total\{endpoint="/v1/predict",status="413"\} (\S+)', metrics)
    assert refused is not None and float(refused.group(1)) >= 2, metrics


def test_a_tile_declared_with_a_malformed_type_is_judged_by_its_bytes(gw: ServingStack, jpeg: bytes) -> None:
    """A part's Content-Type with a control character was passed on to the classifier call, which aiohttp refused:
    a 500, nothing stored. The services judge the bytes; the declared type is only passed on when well formed."""
    for declared in (b"image/jpeg\x7f", b"a\x00b", b"image/jpeg; q=1"):
        body = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="t.jpg"\r\nContent-Type: '
            + declared
            + b"\r\n\r\n"
            + jpeg
            + b"\r\n--b--\r\n"
        )
        r = httpx.post(
            f"{gw.url}/v1/predict",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=b"},
            timeout=30,
        )
        assert r.status_code == 200, (declared, r.text)
        rows = httpx.get(f"{gw.url}/v1/predictions/{r.json()['request_id']}", timeout=30).json()
        assert rows and rows[0]["served"], rows


def test_error_messages_say_what_was_wrong(gw: ServingStack, jpeg: bytes) -> None:
    with gw.client() as c:
        r = c.post("/v1/predict", files=upload(jpeg), data={"lat": "nan", "lon": "-73"})
        assert "finite" in r.text, r.text
        r = c.post("/v1/explain", json={**INSIDE, "version": "1;2"})
        assert "'1;2' is not a model version or alias" in r.json()["detail"]["error"]
        r = c.post("/v1/predict", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"})
        assert r.json()["detail"]["error"] == "body is not valid JSON: nested too deeply"
        r = c.post("/v1/predict", content=b'{"lat": ' + b"9" * 5000 + b', "lon": 1}', headers=JSON)
        assert r.json()["detail"]["error"] == "body is not valid JSON: a number in it has more than 4300 digits"
        r = c.post("/v1/feedback", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "lat" not in r.json()["detail"]["hint"], r.text  # not predict's hint
        r = c.post("/v1/predict", json={"lat": 10.0, "lon": 10.0})  # no imagery there
        assert r.status_code == 404 and r.json()["detail"].get("hint", "absent") is not None, r.text  # no null


def test_a_client_id_in_a_utf8_header_is_the_same_client_as_in_the_body(gw: ServingStack) -> None:
    cid = "Zoë-火災"
    with gw.client() as c:
        r = c.post("/v1/predict", files=upload(encode(tile_image(3))), headers={"X-Client-Id": cid.encode()})
        assert r.status_code == 200, r.text
        assert stored(gw, r.json()["request_id"])[0]["client_id"] == cid


def test_a_large_upload_is_explained_at_tile_scale(gw: ServingStack) -> None:
    """Colouring and encoding a 2000-pixel heatmap costs seconds: the heatmap comes back at most 512 wide."""
    from PIL import Image

    with gw.client() as c:
        r = c.post("/v1/explain", files=upload(encode(tile_image(4, size=2000))))
    assert r.status_code == 200, r.text
    assert max(Image.open(io.BytesIO(r.content)).size) == 512


def test_a_refused_upload_stores_nothing_though_its_model_call_had_started(gw: ServingStack, jpeg: bytes) -> None:
    # The first model call starts while the gateway checks the tile: a refused tile must leave no trace of it.
    tag = f"refused-{uuid.uuid4().hex[:8]}"
    bad = [upload(jpeg[:500]), upload(b"not an image", "x.txt", "text/plain"), upload(b"\xff\xd8" + b"\0" * 4000)]
    with gw.client() as c:
        for files in bad * 3:
            r = c.post("/v1/predict", files=files, headers={"X-Client-Id": tag})
            assert r.status_code in (415, 422), r.text
        ok = c.post("/v1/predict", files=upload(jpeg), headers={"X-Client-Id": tag})
    assert ok.status_code == 200 and ok.json()["variant"] == "champion", ok.text  # the champion was not marked down
    store = PredictionStore(gw.settings.store_database_url)
    try:
        assert wait_for(lambda: store.count(client_id=tag) >= 1)
        time.sleep(0.5)  # rows are written in order: anything of the refused requests would be there by now
        assert store.count(client_id=tag) == 1
    finally:
        store.close()
    assert gw.gateway is not None
    assert "never retrieved" not in gw.gateway.log_tail(400)


# --- rollout -------------------------------------------------------------------------------------------------
def test_ab_assignment_is_sticky_and_weights_hold(gw: ServingStack, jpeg: bytes) -> None:
    view = gw.set_rollout("ab", {"champion": 1, "challenger": 1})
    assert view["mode"] == "ab" and view["challenger_share"] == 0.5
    clients = [f"user-{i}" for i in range(200)]
    first = predict_many(gw, clients, jpeg)
    again = predict_many(gw, clients[:60], jpeg)
    assert [a["variant"] for a in first[:60]] == [b["variant"] for b in again]  # same client -> same variant
    on_challenger = sum(a["variant"] == "challenger" for a in first)
    assert 70 <= on_challenger <= 130, on_challenger
    for a in first:
        assert a["model"]["version"] == ("2" if a["variant"] == "challenger" else "1")


def test_shadow_stores_both_and_the_user_gets_the_champion(gw: ServingStack, jpeg: bytes) -> None:
    gw.set_rollout("shadow", {"sample": 1.0})
    answers = predict_many(gw, [f"s{i}" for i in range(10)], jpeg)
    assert all(a["variant"] == "champion" and a["model"]["version"] == "1" for a in answers)
    for a in answers:
        rows = wait_for(lambda a=a: len(stored(gw, a["request_id"])) == 2 and stored(gw, a["request_id"]))
        assert rows, "the shadow copy was not stored"
        by_variant = {r["variant"]: r for r in rows}
        assert by_variant["champion"]["served"] and by_variant["champion"]["model_version"] == "1"
        assert not by_variant["shadow"]["served"] and by_variant["shadow"]["model_version"] == "2"
        assert by_variant["shadow"]["label"] == "nowildfire"
    stats = httpx.get(f"{gw.url}/v1/rollout").json()["state"]["stats"]
    assert stats["challenger"]["compared"] >= 10 and stats["challenger"]["disagreement"] == 1.0
    assert (
        stats["champion"]["requests"] >= 10 and stats["champion"]["p95_ms"] > 0
    )  # what the challenger is read against


def test_canary_ramps_on_schedule(gw: ServingStack, jpeg: bytes) -> None:
    lenient = {"max_disagreement": 1.0, "max_p95_ms": 60000, "min_requests": 3}
    view = gw.set_rollout("canary", {"steps": [0.2, 1.0], "step_seconds": 1.5, "guardrails": lenient})
    assert view["mode"] == "canary" and view["challenger_share"] == 0.2
    t0 = time.monotonic()
    time.sleep(2.0)  # its time is up, but no challenger call judged the step: it goes on
    view = httpx.get(f"{gw.url}/v1/rollout").json()
    assert view["challenger_share"] == 0.2 and view["state"]["canary_step_calls"] == 0, view["state"]
    # The second step takes effect once the ticker (every 0.5 s) has recorded it, not on the clock alone.
    share = lambda: httpx.get(f"{gw.url}/v1/rollout").json()["challenger_share"] == 1.0  # noqa: E731
    assert traffic_until(gw, share, jpeg, prefix="ramp-early")
    assert time.monotonic() - t0 >= 1.4  # not before its time
    events = [e["action"] for e in httpx.get(f"{gw.url}/v1/rollout").json()["events"]][:3]
    assert "canary-step" in events or "canary-complete" in events
    answers = predict_many(gw, [f"ramp-{i}" for i in range(20)], jpeg)
    assert all(a["variant"] == "challenger" for a in answers)  # 100% after the second step


def test_a_completed_canary_promotes_itself_and_moves_the_registry_aliases(gw: ServingStack, jpeg: bytes) -> None:
    from pyrocast.registry.models import aliases

    lenient = {"max_disagreement": 1.0, "max_p95_ms": 60000, "min_requests": 3}
    gw.set_rollout("canary", {"steps": [1.0], "step_seconds": 1.0, "guardrails": lenient, "auto_promote": True})
    assert traffic_until(gw, lambda: httpx.get(f"{gw.url}/v1/rollout").json()["mode"] == "champion", jpeg)
    view = httpx.get(f"{gw.url}/v1/rollout").json()
    assert view["state"]["champion"]["version"] == "2"
    assert view["events"][0]["action"] == "promote" and "registry aliases moved" in view["events"][0]["reason"]
    assert aliases(gw.settings) == {"champion": "2", "challenger": "1"}  # as a manual promotion does


def test_canary_stops_on_a_guardrail(gw: ServingStack, jpeg: bytes) -> None:
    guard = {"max_disagreement": 0.2, "min_requests": 5}
    gw.set_rollout("canary", {"steps": [0.5, 1.0], "step_seconds": 600, "guardrails": guard})
    predict_many(gw, [f"canary-{i}" for i in range(40)], jpeg)
    view = wait_for(lambda: (v := httpx.get(f"{gw.url}/v1/rollout").json())["mode"] == "champion" and v)
    assert view, "the canary was not stopped"
    assert "disagrees" in view["state"]["stopped_reason"]
    assert view["events"][0]["action"] == "guardrail-stop"
    answers = predict_many(gw, [f"canary-{i}" for i in range(10)], jpeg)
    assert all(a["variant"] == "champion" for a in answers)


def test_promote_then_rollback(gw: ServingStack, jpeg: bytes) -> None:
    from pyrocast.registry.models import aliases

    assert aliases(gw.settings) == {"champion": "1", "challenger": "2"}
    view = gw.set_rollout("promote", {"reason": "test"})
    assert view["state"]["champion"]["version"] == "2" and view["state"]["previous_champion"]["version"] == "1"
    assert "registry aliases moved" in view["events"][0]["reason"]
    assert aliases(gw.settings) == {"champion": "2", "challenger": "1"}  # the registry follows
    a = predict_many(gw, ["p1"], jpeg)[0]
    assert (a["variant"], a["model"]["version"]) == ("champion", "2")
    view = gw.set_rollout("rollback")
    assert view["state"]["champion"]["version"] == "1" and view["state"]["previous_champion"] is None
    assert aliases(gw.settings) == {"champion": "1", "challenger": "2"}
    a = predict_many(gw, ["p1"], jpeg)[0]
    assert (a["variant"], a["model"]["version"]) == ("champion", "1")


def test_a_version_its_training_rejected_is_promoted_only_with_force(gw: ServingStack) -> None:
    from pyrocast.registry.mlflow_store import get_client
    from pyrocast.registry.models import TAG_DECISION, TAG_REASON, aliases

    client, name = get_client(gw.settings), gw.model_name
    client.set_model_version_tag(name, "2", TAG_DECISION, "rejected")
    client.set_model_version_tag(name, "2", TAG_REASON, "worse than v1 on the test split")
    try:
        r = httpx.post(f"{gw.url}/v1/rollout/promote", json={"reason": "try"}, headers=gw.admin, timeout=30)
        assert r.status_code == 409, r.text
        assert r.json()["detail"]["error"] == "v2 was rejected when it was trained (worse than v1 on the test split)"
        assert aliases(gw.settings) == {"champion": "1", "challenger": "2"}  # nothing moved
        view = gw.set_rollout("promote", {"reason": "the test split is stale", "force": True})
        assert view["state"]["champion"]["version"] == "2"
        assert "forced: v2 was rejected" in view["events"][0]["reason"]
        gw.set_rollout("rollback")
    finally:
        client.delete_model_version_tag(name, "2", TAG_DECISION)
        client.delete_model_version_tag(name, "2", TAG_REASON)


def test_killed_challenger_gives_fallback_answers_not_errors(gw: ServingStack, jpeg: bytes) -> None:
    gw.set_rollout("ab", {"champion": 0, "challenger": 1})
    assert predict_many(gw, ["k0"], jpeg)[0]["variant"] == "challenger"
    assert gw.challenger is not None and gw.gateway is not None
    logged = len(gw.gateway.log_path.read_text())
    gw.challenger.kill()
    answers = predict_many(gw, [f"k{i}" for i in range(30)], jpeg)  # no error reaches the user
    assert all(a["variant"] == "champion-fallback" and a["model"]["version"] == "1" for a in answers), [
        (a["variant"], a["model"]["version"]) for a in answers
    ]
    rows = stored(gw, answers[0]["request_id"])
    assert any(r["variant"] == "champion-fallback" and r["served"] for r in rows)
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["status"] == "ok" and health["backends"]["challenger"]["up"] is False
    assert any("does not answer during the ab" in w for w in health["warnings"]), health
    assert httpx.head(f"{gw.url}/healthz").status_code == 200
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert "pyrocast_fallbacks_total" in metrics
    # On call reads it in the gateway's log: the challenger went, and its calls fail (said once, not 30 times).
    log = gw.gateway.log_path.read_text()[logged:]
    assert f"classifier at {gw.challenger.url}" in log and "stopped answering" in log, log
    assert log.count("challenger call (challenger) failed") == 1, log
    gw.start_challenger()  # for the tests that follow


def test_metrics_health_and_openapi(gw: ServingStack, jpeg: bytes) -> None:
    predict_many(gw, ["m1"], jpeg)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'pyrocast_predictions_total{model_version="1",outcome="ok",variant="champion"}' in metrics
    assert "pyrocast_gateway_request_seconds_bucket" in metrics
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["status"] == "ok" and health["backends"]["champion"]["model"]["version"] == "1"
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"/v1/feedback", "/v1/rollout", "/v1/rollout/canary", "/v1/tile", "/v1/explain"} <= set(spec["paths"])


def test_nothing_is_lost_across_a_gateway_restart(gw: ServingStack, jpeg: bytes) -> None:
    gw.set_rollout("shadow", {"sample": 1.0})
    tag = f"durable-{uuid.uuid4().hex[:8]}"
    n = 60
    predict_many(gw, [tag] * n, jpeg)
    assert gw.gateway is not None
    code = gw.gateway.stop()  # SIGTERM: a clean shutdown (uvicorn re-raises the signal once it has shut down)
    assert code in (0, -signal.SIGTERM), gw.gateway.log_tail()
    gw.start_gateway()
    store = PredictionStore(gw.settings.store_database_url)
    assert store.count(client_id=tag, served=True) == n
    # Shadow copies in flight at shutdown are finished and stored as well.
    assert store.count(client_id=tag, variant="shadow") == n
    store.close()
    assert httpx.get(f"{gw.url}/v1/rollout").json()["mode"] == "shadow"  # the rollout state survived too


def test_gateway_replicas_on_one_store_follow_each_others_rollout_changes(gw: ServingStack, jpeg: bytes) -> None:
    # Two gateways behind a load balancer: a change made through either one reaches the other within a tick,
    # and a client is routed to the same variant whichever replica answers.
    other = procs.start_gateway(gw.settings, port=free_port(), env={"PYROCAST_ADMIN_TOKEN": gw.token})
    try:
        gw.set_rollout("ab", {"champion": 1, "challenger": 1})
        assert wait_for(lambda: httpx.get(f"{other.url}/v1/rollout", timeout=10).json()["mode"] == "ab", 10)
        clients = [f"replica-{i}" for i in range(24)]
        here = [r["variant"] for r in predict_many(gw, clients, jpeg)]
        there = [
            httpx.post(f"{other.url}/v1/predict", files=upload(jpeg), headers={"X-Client-Id": c}, timeout=30).json()[
                "variant"
            ]
            for c in clients
        ]
        assert here == there and {"champion", "challenger"} <= set(here)
        r = httpx.post(f"{other.url}/v1/rollout/shadow", json={"sample": 1.0}, headers=gw.admin, timeout=30)
        assert r.status_code == 200, r.text
        assert wait_for(lambda: httpx.get(f"{gw.url}/v1/rollout", timeout=10).json()["mode"] == "shadow", 10)
        answer = gw.client().post("/v1/predict", files=upload(jpeg)).json()
        assert answer["variant"] == "champion"
        assert wait_for(lambda: any(row["variant"] == "shadow" for row in stored(gw, answer["request_id"])))
        # A canary judged on both replicas' traffic: 6 compared calls through each stay under min_requests on
        # either one, the 12 through both break the disagreement limit (v2 never agrees with v1). min_requests is
        # all 12: with 10, a tick reading the fleet's calls mid-loop stopped the canary before the last two.
        guard = {"max_disagreement": 0.2, "min_requests": 12, "max_p95_ms": 60000}
        gw.set_rollout("canary", {"steps": [1.0], "step_seconds": 600, "guardrails": guard})
        assert wait_for(lambda: httpx.get(f"{other.url}/v1/rollout", timeout=10).json()["mode"] == "canary", 10)
        assert {a["variant"] for a in predict_many(gw, [f"fleet-{i}" for i in range(6)], jpeg)} == {"challenger"}
        for i in range(6):
            r = httpx.post(
                f"{other.url}/v1/predict", files=upload(jpeg), headers={"X-Client-Id": f"f2-{i}"}, timeout=30
            )
            assert r.json()["variant"] == "challenger", r.text
        view = wait_for(lambda: (v := httpx.get(f"{other.url}/v1/rollout").json())["mode"] == "champion" and v, 15)
        assert view, "the canary was not stopped on both replicas' traffic"
        assert "disagrees" in view["state"]["stopped_reason"], view["state"]["stopped_reason"]
        assert "across all gateways" in view["state"]["stopped_reason"]
        actions = [e["action"] for e in view["events"]]
        assert actions[: actions.index("canary")] == ["guardrail-stop"], actions  # recorded once
        assert wait_for(lambda: httpx.get(f"{gw.url}/v1/rollout").json()["mode"] == "champion", 10)
        # A canary both replicas tick through: each step and the auto-promotion are recorded once, not twice.
        lenient = {"max_disagreement": 1.0, "max_p95_ms": 60000, "min_requests": 3}
        plan = {"steps": [0.5, 1.0], "step_seconds": 1.0, "guardrails": lenient, "auto_promote": True}
        gw.set_rollout("canary", plan)
        promoted = lambda u: httpx.get(f"{u}/v1/rollout").json()["state"]["champion"]["version"] == "2"  # noqa: E731
        assert traffic_until(gw, lambda: promoted(gw.url) and promoted(other.url), jpeg, prefix="both")
        events = [e["action"] for e in httpx.get(f"{gw.url}/v1/rollout").json()["events"]]
        since = events[: events.index("canary")]  # this canary's events (earlier tests promoted too)
        assert since == ["promote", "canary-step"], events
    finally:
        other.stop()


def test_restarted_gateway_follows_the_registry_aliases(gw: ServingStack, jpeg: bytes) -> None:
    from pyrocast.registry.models import aliases, set_alias

    assert gw.gateway is not None
    gw.gateway.stop()
    # While the gateway is down, a training run's decision moves the aliases.
    set_alias(gw.settings, "champion", "2")
    set_alias(gw.settings, "challenger", "1")
    gw.start_gateway()
    view = httpx.get(f"{gw.url}/v1/rollout").json()
    assert view["state"]["champion"]["version"] == "2" and view["state"]["challenger"]["version"] == "1"
    assert "per the registry alias" in view["events"][0]["reason"]
    a = predict_many(gw, ["after-restart"], jpeg)[0]
    assert (a["variant"], a["model"]["version"]) == ("champion", "2")
    gw.set_rollout("promote", {"reason": "back to v1 for the other tests"})
    assert aliases(gw.settings) == {"champion": "1", "challenger": "2"}


def test_the_latency_of_a_place_counts_the_fetch_of_its_tile(gw: ServingStack) -> None:
    """`latency_ms` and the request histogram are the gateway's whole time, a slow imagery provider included (the
    "Slow predictions" alert's runbook points at it)."""
    from tests.support.servers import XyzServer

    class SlowTiles(XyzServer):
        def delay(self, n: int) -> float:
            return 0.3

    with SlowTiles() as tiles:
        imagery = gw.settings.imagery.model_copy(update={"provider": "xyz", "xyz_url": tiles.template("png")})
        settings = gw.settings.model_copy(update={"imagery": imagery})
        with procs.start_gateway(settings, port=free_port(), env={"PYROCAST_ADMIN_TOKEN": gw.token}) as other:
            t = time.perf_counter()
            r = httpx.post(f"{other.url}/v1/predict", json={"lat": 45.48, "lon": -73.53}, timeout=60)
            client_ms = (time.perf_counter() - t) * 1000
            assert r.status_code == 200, r.text
            assert 300 <= r.json()["latency_ms"] <= client_ms, (r.json()["latency_ms"], client_ms)
            assert metric_sum(other.url, "pyrocast_gateway_request_seconds_sum") >= 0.3


def test_imagery_trouble_is_the_imagerys_not_the_clients_nor_a_model_services(gw: ServingStack) -> None:
    """A place's tile that cannot be had is a 502/503 naming the imagery provider (it was a 422 blaming the client,
    with a hint to set an environment variable), and the web app says the imagery is down, not a model service."""
    from fastapi.testclient import TestClient

    from pyrocast.webapp.app import create_app
    from tests.support.servers import XyzServer

    class CorruptTiles(XyzServer):
        oblong = False  # then a whole PNG, of the wrong shape

        def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
            if self.oblong:
                buf = io.BytesIO()
                Image.new("RGB", (256, 128)).save(buf, "PNG")
                return 200, {"Content-Type": "image/png"}, buf.getvalue()
            return 200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 100

    place = {"lat": 46.2, "lon": -73.5}
    env = {"PYROCAST_ADMIN_TOKEN": gw.token}
    with CorruptTiles() as tiles:
        imagery = gw.settings.imagery.model_copy(update={"provider": "xyz", "xyz_url": tiles.template("png")})
        settings = gw.settings.model_copy(update={"imagery": imagery})
        with procs.start_gateway(settings, port=free_port(), env=env) as other:
            r = httpx.post(f"{other.url}/v1/predict", json=place, timeout=60)
            assert r.status_code == 502 and r.json()["detail"]["service"] == "imagery", r.text
            assert "the imagery provider (xyz) sent no usable tile" in r.json()["detail"]["error"]
            with TestClient(create_app(gw.settings, gateway=other.url)) as web:
                shown = web.post("/api/predict", json=place)
            assert shown.status_code == 502 and "satellite imagery is unavailable" in shown.json()["error"], shown.text
            tiles.oblong = True
            r = httpx.post(f"{other.url}/v1/predict", json={"lat": 46.25, "lon": -73.55}, timeout=60)
            assert r.status_code == 502 and "not square" in r.json()["detail"]["error"], r.text
            tiles.stop()
            r = httpx.post(f"{other.url}/v1/predict", json={"lat": 46.3, "lon": -73.6}, timeout=60)
            assert r.status_code == 503 and "(xyz) does not answer" in r.json()["detail"]["error"], r.text
            assert "no tile for a place" in other.log_tail()
    unset = gw.settings.imagery.model_copy(update={"provider": "xyz", "xyz_url": None})
    with procs.start_gateway(gw.settings.model_copy(update={"imagery": unset}), port=free_port(), env=env) as other:
        r = httpx.post(f"{other.url}/v1/predict", json=place, timeout=60)
        detail = r.json()["detail"]
        assert r.status_code == 503 and "not set up on this gateway" in detail["error"], r.text
        assert detail["hint"].startswith("whoever runs Pyrocast: set PYROCAST_IMAGERY__XYZ_URL")


def test_a_refused_upload_leaves_no_error_in_the_classifiers_log(gw: ServingStack, jpeg: bytes) -> None:
    """The gateway starts the model call with the upload's bytes while it checks them, and cancels it when they are
    refused: the classifier logged that caller going away as ERROR with a traceback (read as the service failing)."""
    assert gw.champion is not None
    sof = jpeg.index(b"\xff\xc0")
    bomb = bytearray(jpeg)
    bomb[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2  # 20000x20000 in the header: refused unread
    body = bytes(bomb) + b"\0" * (8 * 1024 * 1024)  # long enough to be cut off mid-read
    logged = len(gw.champion.log_path.read_bytes())
    with gw.client() as c:
        for _ in range(3):
            r = c.post("/v1/predict", files=upload(body))
            assert r.status_code == 422 and "decompression bomb" in r.text, r.text
    time.sleep(1.0)
    log = gw.champion.log_path.read_bytes()[logged:].decode(errors="replace")
    assert "[ERROR]" not in log and "Traceback" not in log, log


def test_the_api_docs_render_from_this_machine_alone(gw: ServingStack) -> None:
    """`/docs` (which `pyrocast up` prints) was blank without the internet: FastAPI's page loads Swagger UI from a CDN.
    Now its files come from the gateway, and a real browser with no other origin renders every public route."""
    from tests.support.webapp import browser

    page_html = httpx.get(f"{gw.url}/docs", timeout=10).text
    assert "cdn." not in page_html and "https://" not in page_html.replace("https://swagger.io", "")
    with browser() as b:
        page = b.new_page()
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(gw.url) else None)
        page.goto(f"{gw.url}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        page.close()
    assert {"/v1/predict", "/v1/feedback", "/v1/rollout"} <= {p.strip() for p in paths}, paths
    assert not outside, outside
