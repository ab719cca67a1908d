"""A prediction store created by an older version gets the columns added since (out-of-distribution flags) when it
opens, on SQLite and on a real PostgreSQL; its old rows read as "not known", new rows carry the flag."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import create_engine, inspect, text

from pyrocast.monitoring import live
from pyrocast.serving.store import (
    ADDED_COLUMNS,
    PredictionStore,
    StoreSchemaError,
    add_missing_columns,
    create_tables,
)
from pyrocast.settings import Settings
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


def _role_without_alter(owner_url: str) -> str:
    """A login role that may read and write the store's rows but not alter its tables (owned by the superuser);
    its URL on the same database."""
    role = f"gw_{uuid.uuid4().hex[:8]}"
    engine = create_engine(owner_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    engine.dispose()
    return owner_url.replace("://postgres@", f"://{role}@", 1)


def test_a_gateway_that_may_not_add_the_columns_stops_with_the_statements_to_run(postgres_url: str) -> None:
    _older_store(postgres_url)
    role_url = _role_without_alter(postgres_url)
    with pytest.raises(StoreSchemaError) as raised:
        PredictionStore(role_url)
    message = str(raised.value)
    assert "InsufficientPrivilege" in message and "owner" in message
    statements = re.findall(r"ALTER TABLE [^;]+", message)
    assert statements == [
        "ALTER TABLE predictions ADD COLUMN ood BOOLEAN",
        "ALTER TABLE predictions ADD COLUMN ood_stats VARCHAR(300)",
    ]
    # Run as the owner, exactly these statements let the gateway start and write the new columns.
    owner = create_engine(postgres_url)
    with owner.begin() as conn:
        for ddl in statements:
            conn.execute(text(ddl))
    owner.dispose()
    store = PredictionStore(role_url).start()
    try:
        store.put_prediction(row(1, ood=True, ood_stats="brightness"))
        assert store.flush(10)
        assert store.write_errors == 0 and store.count(ood=True) == 1
    finally:
        store.close()


def test_a_reader_without_alter_rights_reads_an_older_store(postgres_url: str, settings: Settings) -> None:
    """The web app's monitoring reads an older store as it is: it neither needs nor adds the new columns."""
    _older_store(postgres_url)
    role_url = _role_without_alter(postgres_url)
    engine = live.open_engine(settings.model_copy(update={"store_url": role_url}))
    try:
        data = live.overview(engine, "1h")
        assert data["requests"]["total"] == 1  # the older version's row
        assert live.recent_feedback(engine) == []
    finally:
        engine.dispose()
    assert "ood" not in {c["name"] for c in inspect(create_engine(postgres_url)).get_columns("predictions")}


def test_an_alter_waits_for_its_lock_a_bounded_time(postgres_url: str) -> None:
    """ALTER TABLE needs the table to itself: behind a long read it would queue every insert behind it too, for
    as long as the read lasts. It gives up after its lock timeout (inserts go on), then says what holds it."""
    _older_store(postgres_url)
    engine = create_engine(postgres_url)
    reader = engine.connect()
    reader.execute(text("SELECT count(*) FROM predictions"))  # a long read: its transaction stays open
    inserted = threading.Event()

    def insert_meanwhile() -> None:
        time.sleep(0.1)  # once the ALTER waits for its lock, this insert waits behind it
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO predictions (ts, request_id, served, variant, source) "
                    "VALUES (CURRENT_TIMESTAMP, 'meanwhile', true, 'champion', 'api')"
                )
            )
        inserted.set()

    writer = threading.Thread(target=insert_meanwhile)
    try:
        started = time.monotonic()
        writer.start()
        with pytest.raises(StoreSchemaError, match="locked") as raised:
            add_missing_columns(engine, lock_timeout_s=0.3, attempts=2)
        assert time.monotonic() - started < 5
        assert "ALTER TABLE predictions ADD COLUMN ood BOOLEAN" in str(raised.value)
        assert inserted.wait(5)  # the insert went through while the read still holds its lock
    finally:
        writer.join(10)
        reader.rollback()
        reader.close()
    assert add_missing_columns(engine, lock_timeout_s=0.3) == ["predictions.ood", "predictions.ood_stats"]
    engine.dispose()
