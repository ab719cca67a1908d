"""What every SQL database we open (prediction store, Optuna, MLflow) shares: URL normalisation and a
schema creation that tolerates several processes starting on one fresh database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def sqlalchemy_url(url: str) -> str:
    """A database URL for SQLAlchemy: plain `postgresql://` (or `postgres://`) URLs get psycopg 3, the installed
    driver; SQLAlchemy alone would look for psycopg2. Other URLs, and explicit drivers, are kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def create_schema(create: Callable[[], T]) -> T:
    """`create()` (which creates missing tables), once more if another process created them at the same moment.

    Processes starting together on a fresh database (the gateway and the web app under `pyrocast up`, Optuna
    workers) both CREATE; the loser hits the winner's type or table (PostgreSQL: duplicate pg_type or
    relation). The tables exist by then, so the second attempt only checks them.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        return create()
    except (IntegrityError, ProgrammingError):
        time.sleep(0.2)
        return create()
