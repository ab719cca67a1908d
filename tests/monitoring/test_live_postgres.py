"""Live monitoring on PostgreSQL: the same traffic stored in SQLite and in a real PostgreSQL server gives the same
charts, numbers and feedback lists (the queries have a PostgreSQL branch for epoch seconds and bucketing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
VARIANTS = ("champion", "champion", "challenger", "champion-fallback", "shadow", "champion-compare")


def traffic(seed: int = 0, n: int = 400) -> tuple[list[dict], list[dict]]:
    """Predictions over the last two hours (several variants and versions, failures, bucket-edge times) and
    labels for a third of the requests."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for i in range(n):
        # Every 7th request lands exactly on a minute boundary: the edge cases of integer bucketing.
        ago = float(rng.integers(0, 120)) * 60 if i % 7 == 0 else float(rng.uniform(0, 7200))
        variant = VARIANTS[int(rng.integers(0, len(VARIANTS)))]
        failed = rng.random() < 0.05
        preds.append(
            {
                "ts": NOW - timedelta(seconds=ago),
                "request_id": f"r{i}",
                "served": variant not in ("shadow", "champion-compare") and not failed,
                "variant": variant,
                "model_name": "pyrocast-wildfire",
                "model_version": ("1", "2", "10")[int(rng.integers(0, 3))],
                "source": ("api", "web", "replay")[int(rng.integers(0, 3))],
                "lat": 46.0,
                "lon": -73.5,
                "probability": None if failed else float(rng.random()),
                "label": None if failed else ("wildfire", "nowildfire")[int(rng.integers(0, 2))],
                "latency_ms": None if failed else round(float(rng.gamma(2.0, 8.0)), 3),
                "error": "backend down" if failed else None,
            }
        )
        if i % 3 == 0 and not failed:
            truth = ("wildfire", "nowildfire")[int(rng.integers(0, 2))]
            labels.append(
                {"ts": NOW - timedelta(seconds=ago / 2), "request_id": f"r{i}", "true_label": truth, "source": "user"}
            )
    return preds, labels


def filled(url: str) -> PredictionStore:
    store = PredictionStore(url).start()
    preds, labels = traffic()
    for p in preds:
        store.put_prediction(dict(p))
    for lab in labels:
        store.put_feedback(dict(lab))
    assert store.flush(30)
    return store


@pytest.mark.parametrize(("window", "bucket_s"), [("1h", None), ("2h", 60), ("15m", 10)])
def test_postgresql_and_sqlite_give_the_same_overview(
    tmp_path: Path, postgres_url: str, window: str, bucket_s: int | None
) -> None:
    sqlite, pg = filled(f"sqlite:///{tmp_path / 'p.db'}"), filled(postgres_url)
    sqlite.add_event("canary", "canary", {"mode": "canary"}, reason="test")
    pg.add_event("canary", "canary", {"mode": "canary"}, reason="test")
    try:
        now = datetime.now(UTC) if window == "15m" else NOW  # the event was written now: one window sees it
        a = live.overview(sqlite.engine, window, now=now, bucket_s=bucket_s)
        b = live.overview(pg.engine, window, now=now, bucket_s=bucket_s)
        assert b == a
        if now == NOW:  # not an empty comparison: the window holds traffic, failures and labelled answers
            assert a["requests"]["total"] > 50 and a["requests"]["failed"] > 0
            assert a["accuracy"]["versions"] and a["latency"]["overall"]["n"] > 0
        else:
            assert [e["action"] for e in b["events"]] == ["canary"]
        assert live.recent_feedback(pg.engine, 200) == live.recent_feedback(sqlite.engine, 200)
    finally:
        sqlite.close()
        pg.close()
