"""A prediction store created by an older version gets the columns added since (out-of-distribution flags) when it
opens, on SQLite and on a real PostgreSQL; its old rows read as "not known", new rows carry the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import create_engine, inspect, text

from pyrocast.serving.store import ADDED_COLUMNS, PredictionStore, add_missing_columns, create_tables
from tests.support.store_rows import row


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'p.db'}"
    return request.getfixturevalue("postgres_url")


def _older_store(url: str) -> None:
    """A store as the version before the columns created it, with one row."""
    engine = create_engine(url)
    create_tables(engine)
    with engine.begin() as conn:
        for table, columns in ADDED_COLUMNS.items():
            for col in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
        conn.execute(
            text(
                "INSERT INTO predictions (ts, request_id, served, variant, source) "
                "VALUES (CURRENT_TIMESTAMP, 'old', true, 'champion', 'api')"
            )
        )
    assert "ood" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    engine.dispose()


def test_an_older_store_gets_the_new_columns_when_it_opens(store_url: str) -> None:
    _older_store(store_url)
    store = PredictionStore(store_url).start()
    try:
        store.put_prediction(row(1, ood=True, ood_stats="brightness,contrast"))
        store.put_prediction(row(2, ood=False))
        assert store.flush(10)
        assert store.write_errors == 0 and store.written["predictions"] == 2  # nothing spilled
        by_id = {r["request_id"]: r for r in store.rows("predictions")}
        assert by_id["old"]["ood"] is None and by_id["old"]["ood_stats"] is None  # not known, not "in distribution"
        assert by_id["r1"]["ood"] is True and by_id["r1"]["ood_stats"] == "brightness,contrast"
        assert by_id["r2"]["ood"] is False
        assert store.count(ood=True) == 1
        # A second process opening the same store (or this one again) finds nothing to add.
        assert add_missing_columns(store.engine) == []
    finally:
        store.close()


def test_a_column_added_by_another_process_meanwhile_is_not_an_error(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _older_store(store_url)
    engine = create_engine(store_url)
    real_inspect = sqlalchemy.inspect

    class Stale:
        """What this process saw just before another one added `ood` (its ALTER then meets a duplicate)."""

        def __init__(self, columns: list[dict]) -> None:
            self.columns = columns

        def get_columns(self, _name: str) -> list[dict]:
            return self.columns

    looks = []

    def looked_too_early(subject: object) -> object:
        looks.append(subject)
        if len(looks) > 1:
            return real_inspect(subject)
        columns = real_inspect(subject).get_columns("predictions")
        with engine.begin() as conn:  # the other process
            conn.execute(text("ALTER TABLE predictions ADD COLUMN ood BOOLEAN"))
        return Stale(columns)

    monkeypatch.setattr(sqlalchemy, "inspect", looked_too_early)
    try:
        assert add_missing_columns(engine) == ["predictions.ood_stats"]
        monkeypatch.undo()
        assert {"ood", "ood_stats"} <= {c["name"] for c in inspect(engine).get_columns("predictions")}
    finally:
        engine.dispose()
