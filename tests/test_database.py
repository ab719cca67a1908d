"""Database URLs and schema creation shared by the store, Optuna and MLflow."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from pyrocast.database import create_schema, sqlalchemy_url


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
