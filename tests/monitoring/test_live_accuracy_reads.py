"""Live accuracy reads the labels of the window's requests only (through the feedback request index), not the whole
feedback table on every monitoring refresh; its numbers are those of the whole table's labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event

from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore
from tests.support.store_rows import row

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_live_accuracy_looks_up_the_windows_labels_only(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}").start()
    try:
        # 300 answers over 10 hours (wildfire), each labelled (every third one nowildfire), some relabelled.
        for i in range(300):
            ago = timedelta(minutes=2 * i + 1)
            store.put_prediction(row(i, ts=NOW - ago))
            truth = "nowildfire" if i % 3 == 0 else "wildfire"
            store.put_feedback({"ts": NOW - ago / 2, "request_id": f"r{i}", "true_label": truth, "source": "user"})
            if i % 5 == 0:  # an earlier opinion, inserted later: the label stays `truth`
                store.put_feedback({"ts": NOW - ago, "request_id": f"r{i}", "true_label": "wildfire", "source": "user"})
        assert store.flush(10)
        statements: list[tuple[str, object]] = []

        def seen(_conn, _cur, statement, params, _ctx, _many) -> None:  # type: ignore[no-untyped-def]
            statements.append((statement, params))

        event.listen(store.engine, "before_cursor_execute", seen)
        v1 = live.live_accuracy(store.engine, live.make_span("1h", now=NOW))["versions"]["1"]
        event.remove(store.engine, "before_cursor_execute", seen)
        # The last hour holds r0..r29 (minutes 1..59): 10 of them nowildfire.
        assert (v1["n"], v1["correct"]) == (30, 20)
        (statement, params), *_ = [s for s in statements if "feedback" in s[0]]
        with store.engine.connect() as conn:
            plan = [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)]  # type: ignore[arg-type]
        assert not any(step.startswith("SCAN feedback") for step in plan), plan  # not the whole table
        assert any(step.startswith("SEARCH feedback USING INDEX ix_feedback_request") for step in plan), plan
    finally:
        store.close()
