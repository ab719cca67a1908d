"""Database URLs and schema creation shared by the store, Optuna and MLflow."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from pyrocast.database import create_schema, release_abandoned_sqlite, sqlalchemy_url


def test_plain_postgresql_urls_get_the_installed_driver() -> None:
    assert sqlalchemy_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    for kept in ("postgresql+psycopg2://u@h/db", "sqlite:///x.db", "mysql://u@h/db"):
        assert sqlalchemy_url(kept) == kept


def test_schema_creation_retries_once_after_losing_a_race() -> None:
    calls: list[int] = []

    def lose_then_find_tables() -> str:
        calls.append(1)
        if len(calls) == 1:  # what SQLAlchemy raises when another process created the type first
            raise IntegrityError("CREATE TABLE predictions", {}, Exception("duplicate key (pg_type)"))
        return "schema"

    assert create_schema(lose_then_find_tables) == "schema"
    assert len(calls) == 2


def test_schema_creation_gives_up_after_the_second_failure() -> None:
    def always() -> None:
        raise IntegrityError("CREATE TABLE predictions", {}, Exception("still failing"))

    with pytest.raises(IntegrityError):
        create_schema(always)


def test_a_transaction_abandoned_by_ctrl_c_is_rolled_back_and_the_file_writable_again(tmp_path: Path) -> None:
    """What a Ctrl-C inside SQLAlchemy's connection return leaves: a connection in a write transaction that
    nothing will finish. Every other writer then fails with 'database is locked' until it is rolled back."""
    path = tmp_path / "mlflow.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tags (k TEXT)"))
    stuck = engine.raw_connection()  # checked out and never returned, as after the interrupt
    stuck.cursor().execute("INSERT INTO tags VALUES ('half-written')")
    other = sqlite3.connect(path, timeout=0.2)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("INSERT INTO tags VALUES ('killed')")
    assert release_abandoned_sqlite() >= 1
    other.execute("INSERT INTO tags VALUES ('killed')")
    other.commit()
    assert [r[0] for r in other.execute("SELECT k FROM tags")] == ["killed"]  # the abandoned row is gone
    other.close()
    stuck.close()
    engine.dispose()
