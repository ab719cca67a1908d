"""The gateway with its prediction store on a real PostgreSQL server (`PYROCAST_STORE_URL`), over real processes."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.store import PredictionStore
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


async def _predict(url: str, client_id: str, data: bytes, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        sem = asyncio.Semaphore(8)

        async def one() -> httpx.Response:
            async with sem:
                files = {"image": ("tile.jpg", data, "image/jpeg")}
                return await c.post("/v1/predict", files=files, headers={"X-Client-Id": client_id})

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_gateway_on_postgresql_stores_everything_and_a_restart_keeps_it(
    stack: ServingStack, jpeg: bytes, postgres_url: str
) -> None:
    # A second gateway beside the session's one, on the same model services, storing into PostgreSQL.
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")  # as an operator would write it
    settings = stack.settings.model_copy(update={"store_url": plain})
    port = free_port()
    env = {"PYROCAST_ADMIN_TOKEN": stack.token}
    gw = procs.start_gateway(settings, port=port, env=env)
    try:
        r = httpx.post(f"{gw.url}/v1/rollout/shadow", json={"sample": 1.0}, headers=stack.admin, timeout=30)
        assert r.status_code == 200, r.text
        tag, n = f"pg-{uuid.uuid4().hex[:8]}", 40
        answers = asyncio.run(_predict(gw.url, tag, jpeg, n))
        assert all(a.status_code == 200 for a in answers), answers[0].text
        rid = answers[0].json()["request_id"]
        fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "correct": True}, timeout=30)
        assert fb.status_code == 200, fb.text
        rows = httpx.get(f"{gw.url}/v1/predictions/{rid}", timeout=30).json()
        # A NUL in an id reached PostgreSQL, which refused it: a 503 "the store cannot be read" blamed the store.
        nul = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "ab\u0000cd", "correct": True}, timeout=30)
        assert nul.status_code == 422, nul.text
        assert httpx.get(f"{gw.url}/v1/predictions/ab%00cd", timeout=30).status_code == 422
        assert {r["variant"] for r in rows} <= {"champion", "shadow"} and rows[0]["ts"].endswith("+00:00")

        assert gw.stop() in (0, -signal.SIGTERM), gw.log_tail()  # SIGTERM: a clean shutdown drains the queue
        store = PredictionStore(postgres_url)
        assert store.count(client_id=tag, served=True) == n
        assert store.count(client_id=tag, variant="shadow") == n  # copies in flight at shutdown too
        assert store.feedback_for(rid)[0]["true_label"] == "wildfire"  # champion v1 always says wildfire
        assert store.last_state()["mode"] == "shadow"  # type: ignore[index]
        store.close()

        gw = procs.start_gateway(settings, port=port, env=env)  # the state comes back from PostgreSQL
        assert httpx.get(f"{gw.url}/v1/rollout", timeout=30).json()["mode"] == "shadow"

        # A replica on the same PostgreSQL store: a canary's guardrails see the calls through both (6 compared
        # calls through each, min_requests 10; v2 never agrees with v1).
        replica = procs.start_gateway(settings, port=free_port(), env=env)
        try:
            guard = {"max_disagreement": 0.2, "min_requests": 10, "max_p95_ms": 60000}
            plan = {"steps": [1.0], "step_seconds": 600, "guardrails": guard}
            r = httpx.post(f"{gw.url}/v1/rollout/canary", json=plan, headers=stack.admin, timeout=30)
            assert r.status_code == 200, r.text
            assert wait_for(lambda: httpx.get(f"{replica.url}/v1/rollout", timeout=10).json()["mode"] == "canary")
            for url in (gw.url, replica.url):
                answers = asyncio.run(_predict(url, f"{tag}-canary", jpeg, 6))
                assert all(a.json()["variant"] == "challenger" for a in answers), answers[0].text
            view = wait_for(
                lambda: (v := httpx.get(f"{replica.url}/v1/rollout", timeout=10).json())["mode"] == "champion" and v
            )
            assert view and "across all gateways" in view["state"]["stopped_reason"], view
        finally:
            replica.stop()
    finally:
        gw.stop()
