"""The prediction store on both of its backends: SQLite (the default) and a real PostgreSQL server.

The contract checks run on each backend (`store_url`); outages are PostgreSQL's own tests: the server is
really stopped and started again while the store keeps writing.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from pyrocast.serving.store import STAT_COLUMNS, PredictionStore
from pyrocast.settings import Settings
from tests.support.postgres import PostgresServer
from tests.support.store_rows import reopened, row


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'p.db'}"
    return request.getfixturevalue("postgres_url")


def test_concurrent_producers_and_readers_lose_nothing(store_url: str) -> None:
    store = PredictionStore(store_url, batch_size=200, interval_s=0.02).start()
    producers, per_producer = 4, 400
    stop = threading.Event()
    seen: list[int] = []

    def produce(p: int) -> None:
        for i in range(per_producer):
            n = p * per_producer + i
            store.put_prediction(row(n, client_id=f"c{p}"))
            if i % 10 == 0:
                store.put_feedback({"request_id": f"r{n}", "correct": True, "true_label": "wildfire", "source": "user"})

    def read() -> None:  # the dashboards read while the gateway writes
        while not stop.is_set():
            seen.append(store.count())

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.flush(30)
    stop.set()
    reader.join()
    total = producers * per_producer
    assert store.count() == total and store.count("feedback") == total // 10
    assert store.written["predictions"] == total and store.write_errors == 0
    rows = store.rows()
    assert len({r["id"] for r in rows}) == total
    assert {r["request_id"] for r in rows} == {f"r{n}" for n in range(total)}
    assert store.count(client_id="c3") == per_producer
    assert seen == sorted(seen) and seen[-1] <= total  # readers only ever saw whole committed batches grow
    store.close()


def test_replicas_racing_for_one_claim_write_one_event(store_url: str) -> None:
    stores = [PredictionStore(store_url) for _ in range(2)]  # two gateway replicas' stores
    start = threading.Barrier(8)
    won: list[int | None] = []

    def race(i: int) -> None:
        start.wait()
        won.append(stores[i % 2].add_event("canary-step", "canary", {"i": i}, claim="canary@5.0:canary-step:2"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 8 and sum(w is not None for w in won) == 1
    assert [e["action"] for e in stores[0].events()] == ["canary-step"]
    for s in stores:
        s.close()


def test_close_drains_the_queue_and_a_restart_loses_nothing(store_url: str) -> None:
    store = PredictionStore(store_url, interval_s=5.0).start()  # a long batching window: rows still queued at close
    stats = {c: round(0.01 * k, 6) for k, c in enumerate(STAT_COLUMNS)}
    full = row(0, lon=-73.56, lat=45.5, tile_sha256="ab" * 32, width=350, height=350, client_id="c", **stats)
    store.put_prediction(dict(full))
    for i in range(1, 300):
        store.put_prediction(row(i, served=i % 2 == 0))
    store.put_feedback({"request_id": "r1", "correct": False, "true_label": "nowildfire", "source": "user"})
    store.add_event("ab", "ab", {"mode": "ab", "weights": [0.9, 0.1]}, reason="start", champion_version="1")
    store.close()

    again = PredictionStore(store_url)
    assert again.count() == 300 and again.count("feedback") == 1
    assert again.count(served=True) == 150 and again.count(served=False) == 150
    back = again.predictions_for("r0")[0]
    assert {k: back[k] for k in full} == full  # floats, booleans, coordinates and statistics round-trip
    assert again.feedback_for("r1")[0]["correct"] is False
    assert again.last_state() == {"mode": "ab", "weights": [0.9, 0.1]}
    assert again.events()[0]["reason"] == "start"
    event_id, _ = again.latest_event()  # type: ignore[misc]
    assert again.latest_event_id() == event_id and again.add_event("champion-only", "champion", {}) > event_id
    again.close()


def test_timestamps_come_back_as_utc_on_every_backend(store_url: str) -> None:
    store = PredictionStore(store_url)
    noon = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    store.put_prediction(row(1, ts=noon.astimezone(timezone(timedelta(hours=-4)))))  # 08:00-04:00 is noon UTC
    store.put_prediction(row(2, ts=noon.replace(tzinfo=None) + timedelta(minutes=1)))  # naive: taken as UTC
    store.put_prediction(row(3))
    store.flush()
    first, second, third = store.rows()
    assert first["ts"] == noon and first["ts"].utcoffset() == timedelta(0)
    assert second["ts"] == noon + timedelta(minutes=1) and second["ts"].tzinfo is not None
    assert abs(third["ts"] - datetime.now(UTC)) < timedelta(minutes=5)
    store.add_event("champion-only", "champion", {"mode": "champion"})
    assert store.events()[0]["ts"].utcoffset() == timedelta(0)
    store.close()


def test_text_any_backend_would_refuse_is_fitted_not_lost(store_url: str) -> None:
    # PostgreSQL refuses strings longer than the column and NUL characters, and would refuse the whole batch;
    # SQLite takes both. The store fits such values so that both keep every row.
    store = PredictionStore(store_url, batch_size=50).start()
    for i in range(20):
        store.put_prediction(row(i))
    store.put_prediction(row(20, client_id="x" * 300, error="backend said \x00\x01 garbage", model_version="v" * 80))
    store.put_feedback({"request_id": "r20", "correct": True, "source": "user", "client_id": "y" * 200})
    assert store.flush(30)
    assert store.count() == 21 and store.count("feedback") == 1 and store.write_errors == 0
    odd = store.predictions_for("r20")[0]
    assert odd["client_id"] == "x" * 128 and odd["model_version"] == "v" * 64
    assert "\x00" not in odd["error"] and odd["error"].startswith("backend said ")
    assert store.feedback_for("r20")[0]["client_id"] == "y" * 128
    store.close()


def test_the_store_url_setting_reaches_postgresql(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgres://")  # the form many hosting providers give
    monkeypatch.setenv("PYROCAST_STORE_URL", plain)
    url = Settings().store_database_url
    assert url == postgres_url
    store = PredictionStore(url).start()
    store.put_prediction(row(1))
    assert store.flush(10) and store.engine.dialect.name == "postgresql" and store.count() == 1
    store.close()


def test_postgresql_gets_native_types(postgres_url: str) -> None:
    PredictionStore(postgres_url).close()
    engine = create_engine(postgres_url)
    cols = {c["name"]: c["type"] for c in inspect(engine).get_columns("predictions")}
    indexes = {i["name"] for i in inspect(engine).get_indexes("predictions")}
    engine.dispose()
    assert cols["ts"].timezone is True  # timestamptz: an instant, not a wall-clock time
    assert type(cols["served"]).__name__ == "BOOLEAN" and type(cols["probability"]).__name__ == "DOUBLE_PRECISION"
    assert {"ix_predictions_request", "ix_predictions_version_ts", "ix_predictions_tile"} <= indexes


def test_a_postgresql_outage_is_retried_and_nothing_is_lost(postgres_server: PostgresServer, postgres_url: str) -> None:
    store = PredictionStore(postgres_url, interval_s=0.02).start()
    store.put_prediction(row(0))
    assert store.flush(10)
    with postgres_server.down():
        for i in range(1, 101):
            store.put_prediction(row(i))
        time.sleep(0.8)  # the writer fails and backs off meanwhile
        assert store.queue_depth == 100
    assert store.flush(30)  # the server is back: the retries write every row
    assert store.count() == 101 and store.write_errors >= 1
    store.put_prediction(row(101))  # and the pool's connections are fresh again
    assert store.flush(10) and store.count() == 102
    store.close()


def test_rows_spilled_during_an_outage_at_shutdown_are_written_on_the_next_start(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(postgres_url, spill_path=spill)  # no writer thread: close() drains synchronously
    with postgres_server.down():
        for i in range(30):
            store.put_prediction(row(i, ts=datetime(2026, 6, 1, 12, 0, i, tzinfo=UTC)))
        store.put_feedback({"request_id": "r3", "correct": True, "source": "user"})
        store.close()  # the gateway stops while the database is down
        assert len(spill.read_text().splitlines()) == 31
    again = reopened(postgres_url, spill_path=spill)
    assert again.count() == 30 and again.count("feedback") == 1 and not spill.exists()
    assert again.predictions_for("r7")[0]["ts"] == datetime(2026, 6, 1, 12, 0, 7, tzinfo=UTC)
    again.close()


def test_canary_calls_are_the_challengers_since_the_plan_with_the_champions_answers(store_url: str) -> None:
    store = PredictionStore(store_url).start()
    start = datetime.now(UTC)
    canary = {"variant": "challenger", "model_version": "2", "rollout_mode": "canary", "label": "nowildfire"}
    rows = [
        row(0, **canary, ts=start - timedelta(seconds=5)),  # before the plan
        row(1, **{**canary, "model_version": "3"}),  # another challenger
        row(2, **{**canary, "rollout_mode": "ab"}),  # another experiment
        row(3, **canary),
        row(4, **canary),
        row(4, variant="champion-compare", served=False, label="wildfire"),  # the champion's answer to r4
        row(5, **{**canary, "model_version": None, "label": None, "error": "ConnectError: refused", "served": False}),
        row(6, variant="champion"),
    ]
    for r in rows:
        store.put_prediction(r)
    assert store.flush()
    calls = store.canary_calls("2", start, limit=10)
    assert [c["request_id"] for c in calls] == ["r5", "r4", "r3"]  # newest first
    assert [c["champion_label"] for c in calls] == [None, "wildfire", None]
    assert calls[0]["error"] == "ConnectError: refused"
    assert [c["request_id"] for c in store.canary_calls("2", start, limit=2)] == ["r5", "r4"]
    store.close()
