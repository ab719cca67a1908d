"""The label of a request is its latest verdict by the time it was given (`ts`), not by insert order (`id`): a
verdict one gateway replica spilled and replayed later is inserted after newer ones, and must not win. On SQLite
and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore
from tests.support.store_rows import row

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def verdict(rid: str, truth: str, minutes_ago: float, source: str = "user") -> dict:
    return {"ts": NOW - timedelta(minutes=minutes_ago), "request_id": rid, "true_label": truth, "source": source}


def test_the_latest_verdict_is_the_latest_given_not_the_latest_inserted(store: PredictionStore) -> None:
    for i, rid in enumerate(("u", "g", "tie", "mixed")):
        store.put_prediction(row(i, request_id=rid, ts=NOW - timedelta(minutes=30), label="wildfire"))
    # Inserted newest first: the older rows come in last (a replica's spill file replayed), with higher ids.
    store.put_feedback(verdict("u", "wildfire", minutes_ago=1))
    store.put_feedback(verdict("u", "nowildfire", minutes_ago=10))
    store.put_feedback(verdict("g", "wildfire", minutes_ago=2, source="feed"))
    store.put_feedback(verdict("g", "nowildfire", minutes_ago=20, source="replay"))
    # Given at the same moment: the later insert breaks the tie.
    store.put_feedback(verdict("tie", "nowildfire", minutes_ago=3))
    store.put_feedback(verdict("tie", "wildfire", minutes_ago=3))
    # Ground truth still outranks a newer user verdict, whatever the order.
    store.put_feedback(verdict("mixed", "nowildfire", minutes_ago=1))
    store.put_feedback(verdict("mixed", "wildfire", minutes_ago=15, source="replay"))
    assert store.flush(10)
    ids = {(r["request_id"], r["true_label"]): r["id"] for r in store.rows("feedback")}
    assert ids[("u", "nowildfire")] > ids[("u", "wildfire")]  # the older verdict has the higher id

    labels = {rid: store.label_of(rid) for rid in ("u", "g", "tie", "mixed")}
    assert {rid: (r["true_label"], r["source"]) for rid, r in labels.items() if r} == {
        "u": ("wildfire", "user"),
        "g": ("wildfire", "feed"),
        "tie": ("wildfire", "user"),
        "mixed": ("wildfire", "replay"),
    }
    # The monitoring readers use the same rule: every answer (wildfire) is right under the latest verdicts.
    v1 = live.live_accuracy(store.engine, live.make_span("1h", now=NOW))["versions"]["1"]
    assert (v1["n"], v1["correct"]) == (4, 4)
    counted = {(r["request_id"], r["true_label"]) for r in live.recent_feedback(store.engine) if r["counts"]}
    assert counted == {("u", "wildfire"), ("g", "wildfire"), ("tie", "wildfire"), ("mixed", "wildfire")}
