"""Who may send ground truth: `POST /v1/feedback` with source replay or feed needs the admin token when the
gateway has one (it outranks every person's verdict), and is open on a gateway without one (one machine)."""

from __future__ import annotations

import httpx
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.store import PredictionStore
from tests.serving.test_gateway import upload
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

HINT = "send Authorization: Bearer $PYROCAST_ADMIN_TOKEN"


def _predict(url: str, jpeg: bytes) -> str:
    r = httpx.post(f"{url}/v1/predict", files=upload(jpeg), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def test_ground_truth_needs_the_token_only_where_the_gateway_has_one(gw: ServingStack, jpeg: bytes) -> None:
    rid = _predict(gw.url, jpeg)
    feedback = f"{gw.url}/v1/feedback"
    truth = {"request_id": rid, "label": "nowildfire"}
    # Without the token, or with a wrong one: 401 in the rollout endpoints' envelope, and nothing stored.
    refused = [
        httpx.post(feedback, json={**truth, "source": "replay"}, timeout=30),
        httpx.post(feedback, json={**truth, "source": "feed"}, headers={"Authorization": "Bearer nope"}, timeout=30),
        # Checked before the request id is looked up: no probing which requests exist.
        httpx.post(feedback, json={"request_id": "unknown", "label": "wildfire", "source": "replay"}, timeout=30),
    ]
    for r in refused:
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        detail = r.json()["detail"]
        assert "ground truth" in detail["error"] and "admin token" in detail["error"]
        assert detail["hint"] == HINT
    # A person's verdict needs no token; ground truth with it is taken, and outranks a later verdict.
    r = httpx.post(feedback, json={"request_id": rid, "correct": True}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(feedback, json={**truth, "source": "replay"}, headers=gw.admin, timeout=30)
    assert r.status_code == 200 and r.json()["correct"] is False, r.text
    r = httpx.post(feedback, json={"request_id": rid, "correct": True, "source": "user"}, timeout=30)
    assert r.status_code == 200, r.text
    store = PredictionStore(gw.settings.store_database_url)
    try:
        rows = wait_for(lambda: len(store.feedback_for(rid)) == 3 and store.feedback_for(rid), what="3 rows")
        assert [(f["source"], f["true_label"]) for f in rows] == [
            ("user", "wildfire"),
            ("replay", "nowildfire"),
            ("user", "wildfire"),
        ]
        counted = store.label_of(rid)
        assert counted is not None and (counted["source"], counted["true_label"]) == ("replay", "nowildfire")

        # A gateway without a token (the zero-config single machine, `pyrocast demo`) takes ground truth as sent.
        open_gw = procs.start_gateway(gw.settings, port=free_port(), env={"PYROCAST_ADMIN_TOKEN": ""})
        try:
            other = _predict(open_gw.url, jpeg)
            r = httpx.post(
                f"{open_gw.url}/v1/feedback",
                json={"request_id": other, "label": "wildfire", "source": "feed"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            # Rollout changes stay closed there (403: no unauthenticated mode).
            assert httpx.post(f"{open_gw.url}/v1/rollout/champion", json={}, timeout=30).status_code == 403
        finally:
            open_gw.stop()
        assert wait_for(lambda: store.label_of(other), what="the feed's label")["source"] == "feed"
    finally:
        store.close()


def test_the_openapi_says_ground_truth_needs_the_token(gw: ServingStack) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json", timeout=30).json()
    op = spec["paths"]["/v1/feedback"]["post"]
    assert "ground truth" in op["responses"]["401"]["description"]
    assert {"HTTPBearer": []} in op["security"]
    source = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["source"]
    assert "admin token" in source["description"] and "outranks" in source["description"]


def test_the_answer_says_whether_the_verdict_gives_the_label(gw: ServingStack, jpeg: bytes) -> None:
    """A person is not told "your verdict counts" when ground truth outranks it: the answer says what counts."""
    rid = _predict(gw.url, jpeg)  # v1 says wildfire
    feedback = f"{gw.url}/v1/feedback"

    def send(body: dict[str, object], **kw: object) -> dict[str, object]:
        r = httpx.post(feedback, json={"request_id": rid, **body}, timeout=30, **kw)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("counts", "request_label", "label_source")}

    # No ground truth yet: the newest verdict counts.
    assert send({"correct": True}) == {"counts": True, "request_label": "wildfire", "label_source": "user"}
    assert send({"correct": False}) == {"counts": True, "request_label": "nowildfire", "label_source": "user"}
    # Ground truth always counts; sent just before the next verdict (still in the write queue) it outranks it.
    truth = send({"label": "nowildfire", "source": "replay"}, headers=gw.admin)
    assert truth == {"counts": True, "request_label": "nowildfire", "label_source": "replay"}
    assert send({"correct": True}) == {"counts": False, "request_label": "nowildfire", "label_source": "replay"}
    counted = PredictionStore(gw.settings.store_database_url)
    try:
        label = counted.label_of(rid)
        assert label is not None and (label["source"], label["true_label"]) == ("replay", "nowildfire")
    finally:
        counted.close()


def test_the_openapi_documents_whether_a_verdict_counts(gw: ServingStack) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json", timeout=30).json()
    props = spec["components"]["schemas"]["FeedbackResponse"]["properties"]
    assert "outranks" in props["counts"]["description"]
    assert {"request_label", "label_source"} <= set(props)
