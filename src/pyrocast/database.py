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


def release_abandoned_sqlite() -> int:
    """Roll back the SQLite transactions a Ctrl-C left open in this process; returns how many.

    ZenML's SIGINT handler queries its database and raises from wherever the main thread was, which can be
    inside SQLAlchemy's return of a connection to its pool: that connection then keeps its write lock on the
    file (MLflow's mlflow.db, ZenML's store) for the life of the process, and every later write here waits out
    the busy timeout and fails ('database is locked'): the interrupted run could not be marked KILLED. Called
    only after an interrupt, when whatever those transactions were doing has been abandoned.
    """
    import gc
    import sqlite3

    gc.collect()  # a connection nobody holds any more is rolled back by SQLAlchemy's finaliser
    released = 0
    for obj in gc.get_objects():
        if type(obj) is sqlite3.Connection:  # not isinstance: it reads __class__, which some objects warn on
            try:
                if obj.in_transaction:
                    obj.rollback()
                    released += 1
            except sqlite3.Error:  # closed, or owned by another thread (check_same_thread): not ours to touch
                continue
    return released
