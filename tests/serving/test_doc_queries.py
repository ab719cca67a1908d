"""The "Useful queries" of docs/SERVING.md run on a real SQLite store and a real PostgreSQL one (each line's
`-- PostgreSQL:` form there), and agree with the monitoring code and each other."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore
from tests.support.store_rows import row

DOC = Path(__file__).resolve().parents[2] / "docs" / "SERVING.md"
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)


def doc_queries(dialect: str) -> list[str]:
    """The SQL of the "Useful queries" block, each line in the form for `dialect`."""
    doc = DOC.read_text()
    block = doc[doc.index("Useful queries (monitoring)") :]
    block = block[block.index("```sql\n") + 7 :]
    block = block[: block.index("```")]
    lines = []
    for line in block.splitlines():
        code, _, comment = line.partition("--")
        if dialect == "postgresql" and comment.strip().startswith("PostgreSQL:"):
            # "... <SQLite time bucket> AS x,  -- PostgreSQL: <its form>": swap the bucket, keep the alias
            expr = comment.split("PostgreSQL:", 1)[1].strip()
            code, n = re.subn(r"(strftime\([^)]*\)|date\(\w+\.?\w*\))(?=\s+AS\s+\w+,)", lambda _m, e=expr: e, code)
            assert n == 1, line
        lines.append(code.rstrip())
    return [q.strip() for q in "\n".join(lines).split(";") if q.strip()]


def test_the_documented_queries_run_and_agree(store: PredictionStore) -> None:
    # Version 1 answers 6 requests (wildfire) in one hour; 4 are labelled wildfire, 2 nowildfire (one of them by a
    # replayed older verdict that must not win). 2 tiles out of distribution, 3 in, 1 not judged.
    for i in range(6):
        ood = (True, True, False, False, False, None)[i]
        store.put_prediction(row(i, ts=NOW + timedelta(minutes=i), ood=ood, brightness=0.5))
        store.put_feedback(
            {"ts": NOW + timedelta(minutes=10), "request_id": f"r{i}", "source": "user"}
            | {"true_label": "wildfire" if i < 4 else "nowildfire"}
        )
    store.put_feedback({"ts": NOW, "request_id": "r0", "true_label": "nowildfire", "source": "user"})
    assert store.flush(10)
    accuracy, drift, ood = doc_queries(store.engine.dialect.name)
    with store.engine.connect() as conn:
        acc_rows = conn.execute(text(accuracy)).all()
        drift_rows = conn.execute(text(drift)).all()
        ood_rows = conn.execute(text(ood)).all()
    hour = NOW.strftime("%Y-%m-%d %H:00")
    assert [(v, h, round(float(a), 4), n) for v, h, a, n in acc_rows] == [("1", hour, round(4 / 6, 4), 6)]
    v1 = live.live_accuracy(store.engine, live.make_span("1d"))["versions"]["1"]
    assert (v1["n"], v1["accuracy"]) == (6, round(4 / 6, 4))  # the same rule as the monitoring page
    assert [(str(d), float(b)) for d, b, _ in drift_rows] == [(NOW.date().isoformat(), 0.5)]
    assert [(v, str(d), float(share), int(n), judged) for v, d, share, n, judged in ood_rows] == [
        ("1", NOW.date().isoformat(), 0.4, 2, 5)
    ]
