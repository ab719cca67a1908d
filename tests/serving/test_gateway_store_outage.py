"""A gateway process whose prediction store (a real PostgreSQL server) is down when it starts: it starts, answers,
says so in /healthz and /v1/rollout, and catches up by itself once the database is back; and one whose SQLite store
is locked by another process: an answer not stored yet is a 503 that says why."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.rollout import ModelRef, RolloutController
from pyrocast.serving.store import PredictionStore
from tests.support.postgres import PostgresServer
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

PASSWORD = "S3cretPassw0rd"  # the test server trusts everyone; it stands for a real store's password


def _get(url: str) -> Any:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_gateway_started_while_its_store_is_down_answers_and_catches_up(
    stack: ServingStack, jpeg: bytes, postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    # The state a gateway saved before the outage: shadow traffic.
    saved = RolloutController()
    saved.set_models(ModelRef(name=stack.model_name, version="1"), ModelRef(name=stack.model_name, version="2"))
    saved.start_shadow(1.0)
    seed = PredictionStore(postgres_url, emergency_dir=None)
    seed.add_event("shadow", "shadow", saved.state.model_dump(mode="json"))
    seed.close()

    # A data directory of its own (its spill file is not the session gateway's), the session's registry.
    mlflow = stack.settings.mlflow.model_copy(update={"tracking_uri": stack.settings.mlflow_tracking_uri})
    url = postgres_url.replace("postgresql+psycopg://postgres@", f"postgresql://postgres:{PASSWORD}@")
    settings = stack.settings.model_copy(update={"data_dir": tmp_path / "data", "store_url": url, "mlflow": mlflow})
    settings.ensure_dirs()
    port = free_port()
    tag = f"down-{uuid.uuid4().hex[:8]}"
    gw: procs.ServiceProcess | None = None
    try:
        with postgres_server.down():
            gw = procs.start_gateway(settings, port=port, env={"PYROCAST_ADMIN_TOKEN": stack.token})
            health = _get(f"{gw.url}/healthz")
            assert health["status"] == "ok"
            assert any("saved rollout state has not been read" in w for w in health["warnings"]), health
            view = _get(f"{gw.url}/v1/rollout")  # answered from memory, not a 500
            assert view["mode"] == "champion" and view["events"] == []
            assert any("cannot be read" in w for w in view["warnings"]), view["warnings"]

            files = {"image": ("tile.jpg", jpeg, "image/jpeg")}
            answers = [
                httpx.post(f"{gw.url}/v1/predict", files=files, headers={"X-Client-Id": tag}, timeout=30)
                for _ in range(5)
            ]
            assert [a.status_code for a in answers] == [200] * 5, answers[0].text
            spill = settings.root / "predictions-spill.jsonl"
            assert wait_for(lambda: spill.is_file() and len(spill.read_text().splitlines()) == 5, 10), gw.log_tail()
            # The writer counts a spill just after writing it: wait for the count, not only the file.
            said = wait_for(lambda: [w for w in _get(f"{gw.url}/healthz")["warnings"] if "5 rows spilled" in w], 10)
            assert said, _get(f"{gw.url}/healthz")
            (refusing,) = said
            assert "refuses writes" in refusing and PASSWORD not in refusing
            # An answer given a moment ago is not "no such prediction" while the store cannot be read.
            r = httpx.get(f"{gw.url}/v1/predictions/{answers[0].json()['request_id']}", timeout=30)
            assert r.status_code == 503 and "cannot be read" in r.json()["detail"]["error"], r.text
            assert PASSWORD not in r.text
            # Feedback on an answer this gateway no longer holds in memory (a restart, 20,000 requests ago): the
            # store must be asked, and cannot be: a 503 that says so (was a bare 500).
            r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "f" * 32, "correct": True}, timeout=30)
            assert r.status_code == 503 and "cannot be read" in r.json()["detail"]["error"], r.text
            assert PASSWORD not in r.text

        # The database is back: no restart, no new request.
        rid = answers[0].json()["request_id"]
        got = wait_for(lambda: httpx.get(f"{gw.url}/v1/predictions/{rid}", timeout=30).status_code == 200, 20)
        assert got, gw.log_tail()
        assert wait_for(lambda: _get(f"{gw.url}/v1/rollout")["mode"] == "shadow", 10), "saved state not taken up"
        assert wait_for(lambda: _get(f"{gw.url}/healthz")["warnings"] == [], 10), _get(f"{gw.url}/healthz")
        assert not spill.exists()
    finally:
        if gw is not None:
            gw.stop()
    log = (settings.root / "logs" / f"gateway-{port}.log").read_text()
    assert PASSWORD not in log
    assert log.count("cannot be reached") == 1 and "PYROCAST_STORE_URL" in log
    assert "wrote 5 spilled rows" in log
    assert log.count("The above exception was the direct cause") <= 1  # one (chained) traceback at most
    store = PredictionStore(postgres_url, emergency_dir=None)
    assert store.count(client_id=tag, served=True) == 5  # each answer stored once
    store.close()


def test_an_answer_not_stored_yet_is_a_503_that_says_why_not_a_404(gw: Any, jpeg: bytes) -> None:
    """Another process holds the SQLite store's write lock (a backup, an operator's open `sqlite3` transaction): the
    gateway answers, its writer waits, and asking for the answer just given is a 503 naming the lagging writer, not
    a false "no such prediction"; once the lock goes, the answer is there."""
    import sqlite3

    db = gw.settings.store_database_url.split(":///", 1)[1]
    holder = sqlite3.connect(db, timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock; readers still read (WAL)
    try:
        with gw.client() as c:
            answer = c.post("/v1/predict", files={"image": ("tile.jpg", jpeg, "image/jpeg")})
            assert answer.status_code == 200, answer.text
            rid = answer.json()["request_id"]
            r = c.get(f"/v1/predictions/{rid}")
            assert r.status_code == 503, r.text
            error = r.json()["detail"]["error"]
            assert "answered but is not stored yet" in error, error
            # Why: the writer behind, or (3 s into the lock) kept waiting by the database
            assert "writer is behind" in error or "kept its writer waiting" in error, error
            assert c.get(f"/v1/predictions/{'0' * 32}").status_code == 404  # never answered: still a 404
    finally:
        holder.rollback()
        holder.close()
    with gw.client() as c:
        assert wait_for(lambda: c.get(f"/v1/predictions/{rid}").status_code == 200, 20), "never stored"
        rows = c.get(f"/v1/predictions/{rid}").json()
    assert [(r["request_id"], r["served"]) for r in rows] == [(rid, True)]
