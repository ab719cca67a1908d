"""Live monitoring queries over a real SQLite prediction store filled through the store's own API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pyrocast.errors import InvalidInputError
from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def pred(rid: str, minutes_ago: float, **kw: object) -> dict:
    """A served champion answer of version 1 `minutes_ago` before NOW (override any field)."""
    return {
        "ts": NOW - timedelta(minutes=minutes_ago),
        "request_id": rid,
        "served": True,
        "variant": "champion",
        "model_name": "pyrocast-wildfire",
        "model_version": "1",
        "source": "web",
        "lat": 46.0,
        "lon": -73.5,
        "tile_sha256": "ab" * 32,
        "probability": 0.9,
        "label": "wildfire",
        "latency_ms": 10.0,
        **kw,
    }


def label(rid: str, truth: str, minutes_ago: float = 0.0, source: str = "user", **kw: object) -> dict:
    return {
        "ts": NOW - timedelta(minutes=minutes_ago),
        "request_id": rid,
        "true_label": truth,
        "source": source,
        **kw,
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PredictionStore]:
    s = PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}").start()
    yield s
    s.close()


def engine_of(store: PredictionStore) -> Engine:
    assert store.flush(10)
    return store.engine


def test_parse_window_and_buckets() -> None:
    assert live.parse_window("15m") == timedelta(minutes=15)
    assert live.parse_window("1.5h") == timedelta(minutes=90)
    assert live.parse_window(" 7d ") == timedelta(days=7)
    for bad in ("", "1w", "abc", "5s", "100d", "-1h", "99999999999d", "1e400s"):
        with pytest.raises(InvalidInputError):
            live.parse_window(bad)
    assert live.pick_bucket(3600) == 60
    assert live.pick_bucket(900) == 15
    assert live.pick_bucket(7 * 86400) == 10800
    span = live.make_span("1h", now=NOW)
    assert span.bucket_s == 60
    assert span.n_buckets == 60
    assert span.edges()[0] == "2026-06-01T11:00:00Z"
    assert span.index(NOW - timedelta(seconds=1)) == 59
    # A window that does not start on a bucket edge gets one more (partial) bucket.
    odd = live.make_span("1h", now=NOW + timedelta(seconds=30))
    assert odd.n_buckets == 61
    assert odd.index(odd.since) == 0


def test_buckets_are_cut_at_the_window_so_the_last_one_ends_now() -> None:
    """Every chart places a bucket over [start, end): the first starts at the window's start, the last ends at
    `until` (the real now, not the next whole second), never at the next grid edge in the future; rates use the
    seconds covered."""
    span = live.make_span("1h", now=NOW + timedelta(seconds=29, microseconds=300_000))
    assert span.until == NOW + timedelta(seconds=29, microseconds=300_000)  # rounded up, it counted the future
    axis = span.axis()
    assert len(axis["start"]) == len(axis["end"]) == len(axis["seconds"]) == len(axis["t"]) == 61
    assert axis["start"][0] == "2026-06-01T11:00:29.300Z" == live._iso_ms(span.since)  # not 11:00:00, outside
    assert axis["t"][0] == "2026-06-01T11:00:00Z"  # the grid start, for older readers
    assert axis["start"][1:] == axis["end"][:-1]  # buckets touch: no gaps, no overlaps
    assert axis["end"][-1] == "2026-06-01T12:00:29.300Z" == span.to_dict()["until"]  # not 12:01:00, the future
    assert axis["seconds"][0] == 30.7 and axis["seconds"][-1] == 29.3 and set(axis["seconds"][1:-1]) == {60}
    assert all(axis["rated"])  # both partial buckets cover more than a quarter of a minute
    aligned = live.make_span("15m", now=NOW).axis()
    assert aligned["start"] == aligned["t"] and aligned["end"][-1] == live._iso(NOW)
    assert set(aligned["seconds"]) == {15}


def test_a_partial_bucket_rate_is_over_the_time_it_covers(store: PredictionStore) -> None:
    """Six requests in the 30 s of the minute that is running: 0.2 per second, not 0.1 (a whole minute's worth),
    which drew every live chart's last point as a drop in traffic."""
    now = NOW + timedelta(seconds=30)
    for i in range(6):
        store.put_prediction(pred(f"p{i}", -(i * 5 + 1) / 60))  # 1 to 26 s after NOW: the last 30 s
    store.put_prediction(pred("w", 0.5))  # a whole bucket earlier: 1 request in 60 s
    data = live.request_rate(engine_of(store), live.make_span("1h", now=now))
    assert data["requests"][-1] == 6 and data["rate_per_s"][-1] == pytest.approx(0.2)
    assert data["requests"][-2] == 1 and data["rate_per_s"][-2] == pytest.approx(1 / 60, rel=1e-3)
    assert data["errors_per_s"][-1] == 0
    for part in ("latency", "traffic", "accuracy"):
        assert live.overview(store.engine, "1h", now=now)[part]["end"][-1] == "2026-06-01T12:00:30Z"


def test_a_bucket_that_just_began_is_not_a_spike(store: PredictionStore) -> None:
    """1.5 s into a minute, one request in the running bucket is not "0.5 per second" (30 per minute, beside a
    steady 1 per minute): a bucket covering under a quarter of its width keeps its count but gets no rate. The
    request, written in the current second, is still inside the window (`until` is the real now)."""
    now = NOW + timedelta(seconds=1, microseconds=500_000)
    for i in range(30):
        store.put_prediction(pred(f"s{i}", i + 0.5))  # one per minute
    store.put_prediction(pred("new", -1.2 / 60))  # 12:00:01.2, in the second running now
    span = live.make_span("1h", now=now)
    assert span.until == now
    data = live.request_rate(engine_of(store), span)
    assert data["seconds"][-1] == 1.5 and data["seconds"][0] == 58.5
    assert data["requests"][-1] == 1 and data["total"] == 31  # counted, not lost
    assert data["rated"][-1] is False and data["rate_per_s"][-1] is None and data["errors_per_s"][-1] is None
    assert data["rate_per_s"][-2] == pytest.approx(1 / 60, rel=1e-3)
    steady = 1 / 60
    assert max(r for r in data["rate_per_s"] if r is not None) < 2 * steady  # no spike anywhere
    # The same bucket a few seconds later covers a quarter of its width and is rated over those seconds.
    later = live.request_rate(store.engine, live.make_span("1h", now=NOW + timedelta(seconds=15)))
    assert later["rated"][-1] is True and later["rate_per_s"][-1] == pytest.approx(1 / 15, rel=1e-3)


def test_small_rates_keep_their_digits(store: PredictionStore) -> None:
    """One request in a 3-hour bucket is 0.0000926 per second; four decimals made it 0.0001 (8% too high)."""
    store.put_prediction(pred("one", 2 * 24 * 60))
    data = live.request_rate(engine_of(store), live.make_span("7d", now=NOW))
    assert data["rate_per_s"][data["requests"].index(1)] == pytest.approx(1 / 10800, rel=1e-3)


def test_empty_store_reads_as_no_traffic(settings) -> None:
    engine = live.open_engine(settings)  # creates the tables: the gateway may never have run
    data = live.overview(engine, "1h", now=NOW)
    assert data["requests"]["total"] == 0
    assert data["requests"]["error_rate"] is None
    assert sum(data["requests"]["requests"]) == 0
    assert data["latency"]["overall"] == {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    assert data["traffic"]["totals"] == {}
    assert data["accuracy"]["versions"] == {}
    assert data["events"] == []
    assert live.recent_feedback(engine) == []


def test_request_rate_counts_requests_failures_and_sources(store: PredictionStore) -> None:
    # 30 good requests in the last 30 minutes, one per minute.
    for i in range(30):
        store.put_prediction(pred(f"ok{i}", i + 0.5, source="web" if i % 3 else "replay"))
    # A challenger failure answered by the champion: one request, not failed.
    store.put_prediction(pred("fb", 5.2, variant="challenger", served=False, label=None, error="down"))
    store.put_prediction(pred("fb", 5.1, variant="champion-fallback"))
    # The champion itself failing: a failed request.
    store.put_prediction(pred("bad", 2.5, served=False, label=None, probability=None, error="refused"))
    # A shadow copy is not a request of its own; an old request is outside the window.
    store.put_prediction(pred("ok3", 3.4, variant="shadow", served=False, model_version="2"))
    store.put_prediction(pred("old", 90))
    data = live.request_rate(engine_of(store), live.make_span("1h", now=NOW))
    assert data["total"] == 32
    assert data["failed"] == 1
    assert data["error_rate"] == pytest.approx(1 / 32, abs=1e-4)
    assert sum(data["requests"]) == 32
    assert sum(data["errors"]) == 1
    assert data["errors"][-3] == 1  # 2.5 minutes ago: the third bucket from the end
    assert data["by_source"] == {"replay": 10, "web": 22}
    assert data["rate_per_s"][-1] == pytest.approx(1 / 60, abs=1e-3)
    assert data["mean_rate_per_s"] == pytest.approx(32 / 3600, abs=1e-4)
    # The rate over the time traffic covers starts at the first request (29.5 minutes ago), not its bucket.
    assert data["first_at"] == (NOW - timedelta(minutes=29.5)).isoformat().replace("+00:00", "Z")


def test_latency_percentiles_overall_per_variant_and_per_bucket(store: PredictionStore) -> None:
    # Champion: 1..100 ms within the last 10 minutes; challenger: 200 ms; failures carry no latency.
    for i in range(100):
        store.put_prediction(pred(f"c{i}", (i % 10) + 0.5, latency_ms=float(i + 1)))
    for i in range(20):
        store.put_prediction(pred(f"x{i}", 20.5, variant="challenger", model_version="2", latency_ms=200.0))
    store.put_prediction(pred("s", 1, variant="shadow", served=False, latency_ms=5000.0))
    store.put_prediction(pred("e", 1, served=False, latency_ms=None, error="boom", label=None))
    # A fallback answer: its latency includes the challenger's failed call, its user's wait, not v1's own time.
    store.put_prediction(pred("f", 2, variant="champion-fallback", latency_ms=6000.0))
    data = live.latency_percentiles(engine_of(store), live.make_span("1h", now=NOW))
    assert data["by_variant"]["champion-fallback"]["p50"] == 6000.0
    assert data["by_version"]["1"]["n"] == 100 and data["by_version"]["1"]["p99"] == pytest.approx(99.01)
    assert data["by_variant"]["champion"]["n"] == 100
    assert data["by_variant"]["champion"]["p50"] == pytest.approx(50.5)
    assert data["by_variant"]["champion"]["p99"] == pytest.approx(99.01)
    assert data["by_variant"]["challenger"]["p95"] == 200.0
    assert "shadow" not in data["by_variant"]  # nobody waited for a shadow answer
    assert data["overall"]["n"] == 121  # every answer a user waited for, the fallback too
    assert data["by_version"]["2"]["p50"] == 200.0
    assert list(data["by_version"]) == ["1", "2"]
    assert data["p50"][-21] == 200.0  # the challenger's bucket, 20.5 minutes ago
    assert data["p50"][-30] is None  # an empty bucket has no percentile
    assert len(data["p50"]) == len(data["t"]) == 60


def test_traffic_by_variant_separates_copies(store: PredictionStore) -> None:
    for i in range(30):
        store.put_prediction(pred(f"a{i}", 1))
    for i in range(10):
        store.put_prediction(pred(f"b{i}", 1, variant="challenger", model_version="2"))
        store.put_prediction(pred(f"b{i}", 1, variant="champion-compare", served=False))
    for i in range(5):
        store.put_prediction(pred(f"a{i}", 1, variant="shadow", served=False, model_version="2"))
    store.put_prediction(pred("f", 1, variant="challenger", served=False, error="down", model_version="2"))
    store.put_prediction(pred("f", 1, variant="champion-fallback"))
    data = live.traffic_by_variant(engine_of(store), live.make_span("15m", now=NOW))
    assert data["totals"] == {"challenger": 10, "champion": 30, "champion-fallback": 1}
    assert data["shares"]["challenger"] == pytest.approx(10 / 41, abs=1e-4)
    assert data["copies"] == {"champion-compare": 10, "shadow": 5}
    assert data["by_version"] == {"1": 31, "2": 10}
    assert data["variants"]["champion"][-4] == 30  # 1 minute ago = 4 buckets of 15 s before the end


def test_live_accuracy_per_version_uses_latest_label_and_shadow_answers(store: PredictionStore) -> None:
    # Version 1 serves 10 requests in the window, saying wildfire; version 2 shadows them, saying nowildfire.
    for i in range(10):
        store.put_prediction(pred(f"r{i}", 30 - i))
        store.put_prediction(
            pred(f"r{i}", 30 - i, variant="shadow", served=False, model_version="2", label="nowildfire")
        )
    # The truth: 7 are wildfire (version 1 right), 3 are not (version 2 right).
    for i in range(10):
        store.put_feedback(label(f"r{i}", "wildfire" if i < 7 else "nowildfire", source="replay" if i % 2 else "user"))
    # Then r0 is relabelled nowildfire and corrected back to wildfire: the latest row wins.
    store.put_feedback(label("r0", "nowildfire", minutes_ago=5))
    store.put_feedback(label("r0", "wildfire", minutes_ago=1))
    # A verdict without a label row (correct only) is not used; a request without a label is not judged.
    store.put_prediction(pred("unlabelled", 3))
    store.put_feedback({"request_id": "unlabelled", "correct": True, "source": "user"})
    data = live.live_accuracy(engine_of(store), live.make_span("1h", now=NOW))
    v1, v2 = data["versions"]["1"], data["versions"]["2"]
    assert (v1["n"], v1["correct"], v1["accuracy"]) == (10, 7, 0.7)
    assert (v2["n"], v2["correct"], v2["accuracy"]) == (10, 3, 0.3)
    assert v1["low"] < 0.7 < v1["high"]
    assert v1["served"] == 10 and v1["copies"] == 0
    assert v2["served"] == 0 and v2["copies"] == 10
    assert v1["by_source"] == {"replay": 5, "user": 5}
    assert sum(v1["n_series"]) == 10
    # r0 was predicted 30 minutes ago (bucket -30): correct under its latest label.
    assert v1["accuracy_series"][-30] == 1.0
    assert v1["accuracy_series"][0] is None


def test_ground_truth_outranks_a_users_verdict_and_a_user_may_change_theirs(store: PredictionStore) -> None:
    # Version 1 says wildfire to four requests. g1: replay says nowildfire, then a user insists it was right.
    # g2: a user says wrong, then the feed says wildfire. u1: a user says wrong, then changes to right.
    # u2: a user says right, then wrong. Ground truth wins whenever there is some; else the newest verdict.
    for rid in ("g1", "g2", "u1", "u2"):
        store.put_prediction(pred(rid, 10))
    store.put_feedback(label("g1", "nowildfire", minutes_ago=5, source="replay"))
    store.put_feedback(label("g1", "wildfire", minutes_ago=4))
    store.put_feedback(label("g2", "nowildfire", minutes_ago=5))
    store.put_feedback(label("g2", "wildfire", minutes_ago=4, source="feed"))
    store.put_feedback(label("u1", "nowildfire", minutes_ago=5))
    store.put_feedback(label("u1", "wildfire", minutes_ago=4))
    store.put_feedback(label("u2", "wildfire", minutes_ago=5))
    store.put_feedback(label("u2", "nowildfire", minutes_ago=4))
    v1 = live.live_accuracy(engine_of(store), live.make_span("1h", now=NOW))["versions"]["1"]
    # Right on g2 (feed) and u1 (changed to right); wrong on g1 (replay) and u2 (changed to wrong).
    assert (v1["n"], v1["correct"]) == (4, 2)
    assert v1["by_source"] == {"feed": 1, "replay": 1, "user": 2}
    # The store answers "the label of this request" by the same rule.
    labelled = {rid: store.label_of(rid) for rid in ("g1", "g2", "u1", "u2")}
    assert {rid: (r["true_label"], r["source"]) for rid, r in labelled.items() if r} == {
        "g1": ("nowildfire", "replay"),
        "g2": ("wildfire", "feed"),
        "u1": ("wildfire", "user"),
        "u2": ("nowildfire", "user"),
    }
    assert store.label_of("nobody") is None
    # Every row stays (history); the feedback page says which one is the request's label now.
    rows = live.recent_feedback(store.engine, limit=10)
    assert len(rows) == 8
    counted = {(r["request_id"], r["source"], r["true_label"]) for r in rows if r["counts"]}
    assert counted == {
        ("g1", "replay", "nowildfire"),
        ("g2", "feed", "wildfire"),
        ("u1", "user", "wildfire"),
        ("u2", "user", "nowildfire"),
    }
    assert {r["id"] for r in rows if r["counts"]} == {labelled[rid]["id"] for rid in labelled}


def test_recent_feedback_joins_the_served_answer(store: PredictionStore) -> None:
    store.put_prediction(pred("q1", 3, variant="challenger", served=False, error="down", model_version="2"))
    store.put_prediction(pred("q1", 3, variant="champion-fallback", probability=0.8, lat=46.1, lon=-73.2))
    store.put_feedback(
        label("q1", "nowildfire", correct=False, served_label="wildfire", model_version="1", minutes_ago=1)
    )
    store.put_feedback({"request_id": "gone", "correct": True, "source": "user", "ts": NOW})
    rows = live.recent_feedback(engine_of(store), limit=10)
    assert [r["request_id"] for r in rows] == ["gone", "q1"]
    q1 = rows[1]
    assert q1["correct"] is False
    assert q1["variant"] == "champion-fallback"  # the served row, not the failed challenger attempt
    assert q1["probability"] == 0.8
    assert (q1["lat"], q1["lon"]) == (46.1, -73.2)
    assert q1["ts"] == "2026-06-01T11:59:00Z"
    assert rows[0]["variant"] is None and rows[0]["predicted_at"] is None  # the prediction is not stored
    with pytest.raises(InvalidInputError):
        live.recent_feedback(store.engine, limit=0)


def test_overview_includes_rollout_events_in_the_window(store: PredictionStore) -> None:
    store.add_event("ab", "ab", {"mode": "ab"}, "try v2", "1", "2")
    store.put_prediction(pred("z", 0.1, ts=datetime.now(UTC)))
    data = live.overview(engine_of(store), "15m")
    assert data["window"] == "15m"
    assert [e["action"] for e in data["events"]] == ["ab"]
    assert data["events"][0]["challenger_version"] == "2"
    assert data["requests"]["total"] == 1
    assert set(data) >= {"since", "until", "bucket_s", "requests", "latency", "traffic", "accuracy", "events"}


def test_a_request_a_moment_before_a_bucket_edge_counts_in_its_own_bucket(store: PredictionStore) -> None:
    """SQLite's strftime('%s') rounds to the millisecond: a request 0.2 ms before the window's end fell in the
    bucket after it, outside the window, and was missing from every chart while counted in the totals."""
    store.put_prediction(pred("edge", 0.2 / 60_000))  # 0.2 ms before NOW, the end of the last bucket
    store.put_prediction(pred("mid", 30))
    data = live.request_rate(engine_of(store), live.make_span("1h", now=NOW))
    assert data["total"] == 2
    assert sum(data["requests"]) == 2 and data["requests"][-1] == 1, data["requests"]
