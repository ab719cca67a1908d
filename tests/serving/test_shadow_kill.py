"""Shadow mode while the challenger's process is killed: users never notice, and every shadow copy is accounted for.

Requests flow before, during and after the SIGKILL. Each user request must get the champion's answer (200),
and the store must hold, for each request, its served champion row and exactly one shadow row: the
challenger's answer, or (once it is gone) the failure, stored as an error and never as served.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pyrocast.serving.store import PredictionStore
from tests.serving.test_gateway import predict_many
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


def _by_request(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["request_id"], []).append(r)
    return out


def test_killed_challenger_in_shadow_mode(gw: ServingStack, jpeg: bytes) -> None:
    gw.set_rollout("shadow", {"sample": 1.0})
    assert gw.challenger is not None
    tag = f"shadow-kill-{uuid.uuid4().hex[:8]}"
    store = PredictionStore(gw.settings.store_database_url)
    try:
        before = predict_many(gw, [tag] * 20, jpeg)
        # Shadow copies run in the background: let these finish before the kill, so they must all succeed.
        assert wait_for(lambda: store.count(client_id=tag, variant="shadow") >= 20, timeout=30)
        with ThreadPoolExecutor(1) as pool:  # requests in flight while the challenger dies
            during = pool.submit(predict_many, gw, [tag] * 120, jpeg)
            # Kill once some of this wave's shadow copies are stored: the rest of the wave meets a dead challenger.
            wait_for(lambda: store.count(client_id=tag, variant="shadow") >= 30 or during.done(), timeout=30)
            gw.challenger.kill()
            answers = before + during.result()
        after = predict_many(gw, [tag] * 20, jpeg)
        answers += after
        assert all(a["variant"] == "champion" and a["model"]["version"] == "1" for a in answers), {
            (a["variant"], a["model"]["version"]) for a in answers
        }
        assert all(a["label"] == "wildfire" for a in answers)  # the champion's answer, not the challenger's

        n = len(answers)
        assert wait_for(lambda: store.count(client_id=tag, variant="shadow") >= n, timeout=30), "shadow copies lost"
        rows = _by_request(store.rows(client_id=tag))
        assert set(rows) == {a["request_id"] for a in answers}
        shadow_of: dict[str, dict[str, Any]] = {}
        for rid, rs in rows.items():
            served = [r for r in rs if r["served"]]
            shadow = [r for r in rs if r["variant"] == "shadow"]
            assert len(served) == 1 and served[0]["variant"] == "champion" and served[0]["model_version"] == "1", rs
            assert len(shadow) == 1 and not shadow[0]["served"], rs  # none lost, none doubled, never served
            shadow_of[rid] = shadow[0]
            if shadow[0]["error"] is None:
                assert shadow[0]["model_version"] == "2" and shadow[0]["label"] == "nowildfire", rs
            else:
                assert shadow[0]["probability"] is None and shadow[0]["label"] is None, rs
        assert all(shadow_of[a["request_id"]]["error"] is None for a in before)
        wave = [shadow_of[a["request_id"]]["error"] is None for a in answers[20:-20]]
        assert any(wave) and not all(wave), "the challenger was not killed while the wave's shadow copies flowed"
        errors = [shadow_of[a["request_id"]]["error"] for a in after]
        assert all(errors), "shadow copies sent to a dead challenger were not recorded as errors"
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        assert 'outcome="error",variant="shadow"' in metrics
        health = httpx.get(f"{gw.url}/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["backends"]["challenger"]["up"] is False
    finally:
        store.close()
        gw.start_challenger()  # for the tests that follow
