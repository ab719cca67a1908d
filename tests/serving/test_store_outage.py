"""The prediction store through database outages, on real databases that refuse (a stopped PostgreSQL server, a
SQLite file opened read-only): it opens while the database is down, writes spilled rows once the database takes
rows again (in order, never twice, without a restart), and logs an outage in a few lines, not one per attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from pyrocast.serving.store import PredictionStore
from tests.support.postgres import PostgresServer
from tests.support.store_rows import leftover_claim, reopened, row

PASSWORD = "S3cretPassw0rd"  # the test server trusts everyone; it stands for a real store's password


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """`check()` once it is truthy without raising (the store's tables may not exist yet while it comes back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := check():
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _store_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pyrocast.serving.store" and r.levelno >= level]


def _unwritable(store: PredictionStore, db: Path) -> None:
    """The database refuses writes from now on (a read-only file system, a PostgreSQL outage)."""
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")


def _writable(store: PredictionStore, db: Path) -> None:
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///{db}")


def test_a_store_opened_while_postgresql_is_down_answers_and_catches_up_when_it_is_back(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = postgres_url.replace("://postgres@", f"://postgres:{PASSWORD}@")
    spill = tmp_path / "spill.jsonl"
    with postgres_server.down():  # e.g. a reboot where PostgreSQL comes up after the gateway
        store = PredictionStore(url, spill_path=spill, held_retry_s=0.2, emergency_dir=None).start()
        for i in range(5):
            store.put_prediction(row(i))
        t0 = time.monotonic()
        assert store.flush(10)
        assert time.monotonic() - t0 < 5  # an outage known from the start: spilled at once, not after 20 s of retries
        assert len(spill.read_text().splitlines()) == 5
        trouble = store.trouble()
        assert trouble is not None and "refuses writes" in trouble and "5 rows spilled" in trouble
        (opened,) = [r for r in _store_lines(caplog) if "cannot be reached" in r.getMessage()]
        assert (
            "PYROCAST_STORE_URL" in opened.getMessage() and f"127.0.0.1:{postgres_server.port}" in opened.getMessage()
        )
    # Back: the writer creates the tables and writes the spilled rows by itself (no new row, no restart).
    assert _eventually(lambda: store.count() == 5), "the spilled rows were not written once PostgreSQL was back"
    assert [r["request_id"] for r in store.rows()] == [f"r{i}" for i in range(5)]
    # The writer says it recovered just after its commit: the rows can be counted a moment before.
    assert not spill.exists() and _eventually(lambda: store.trouble() is None), store.trouble()
    store.put_prediction(row(5))
    assert store.flush(10) and store.count() == 5 + 1
    store.close()
    assert "wrote 5 spilled rows" in caplog.text and "takes rows again" in caplog.text
    assert PASSWORD not in caplog.text  # nor anywhere the URL is shown
    assert trouble is not None and PASSWORD not in trouble


def test_spilled_rows_are_written_before_new_ones_once_the_database_takes_rows_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    db, spill = tmp_path / "p.db", tmp_path / "spill.jsonl"
    store = PredictionStore(f"sqlite:///{db}", spill_path=spill, retries=2, retry_delay_s=0.01, held_retry_s=60)
    store.start()
    store.put_prediction(row(0))
    assert store.flush(10)
    _unwritable(store, db)
    for i in range(1, 6):
        store.put_prediction(row(i))
    assert store.flush(10) and len(spill.read_text().splitlines()) == 5
    assert store.count() == 1
    _writable(store, db)  # the database is back, and the next row comes before the writer's periodic look
    store.put_prediction(row(6))
    assert store.flush(10)
    assert [r["request_id"] for r in store.rows()] == [f"r{i}" for i in range(7)]  # in the order they came
    assert not spill.exists() and "wrote 5 spilled rows" in caplog.text
    store.close()


def test_a_spill_file_written_before_a_crash_is_never_written_twice(tmp_path: Path) -> None:
    db, spill = tmp_path / "p.db", tmp_path / "spill.jsonl"
    url = f"sqlite:///{db}"
    store = PredictionStore(url, spill_path=spill, retries=1, retry_delay_s=0.01, emergency_dir=None)
    _unwritable(store, db)
    for i in range(3):
        store.put_prediction(row(i))
    store.close()
    spilled = spill.read_bytes()
    PredictionStore(url, spill_path=spill, emergency_dir=None).close()  # the next start writes them
    # What a process that died after committing the rows, before removing the file, leaves behind.
    leftover = leftover_claim(url, spill, spilled)
    again = reopened(url, spill_path=spill, emergency_dir=None)
    assert again.count() == 3 and not spill.exists() and not leftover.exists()
    # Cut short after the commit with the file renamed aside, while a later run spilled new rows: the new rows only.
    leftover_claim(url, spill, spilled)
    _unwritable(again, db)
    again.put_prediction(row(3))
    again.close()
    third = reopened(url, spill_path=spill, emergency_dir=None)
    assert [r["request_id"] for r in third.rows()] == ["r0", "r1", "r2", "r3"]
    assert not list(tmp_path.glob("spill.jsonl*"))
    third.close()


def test_an_outage_is_logged_in_a_few_lines_with_one_traceback(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(
        postgres_url, spill_path=spill, retries=3, retry_delay_s=0.01, held_retry_s=0.05, emergency_dir=None
    ).start()
    store.put_prediction(row(0))
    assert store.flush(10)
    caplog.clear()
    with postgres_server.down():
        for batch in range(10):  # ten batches, each retried then spilled, and the writer looking every 50 ms
            for i in range(5):
                store.put_prediction(row(1 + batch * 5 + i))
            assert store.flush(10)
        time.sleep(0.5)
        assert store.write_errors >= 15
        during = _store_lines(caplog)
    assert len(during) <= 2, [r.getMessage() for r in during]  # one line per kind of trouble: refused, spilled
    assert sum(r.exc_info is not None for r in during) == 1  # the traceback once
    assert "(attempt 1: OperationalError" in during[0].getMessage()
    try:
        assert _eventually(lambda: store.count() == 51), "the spilled rows were not written once PostgreSQL was back"

        def after() -> list[str]:
            return [r.getMessage() for r in _store_lines(caplog)[len(during) :]]

        # The writer logs just after its commit: the rows can be counted before the lines are there.
        assert _eventually(lambda: len(after()) >= 2), after()
        lines = after()
        assert len(lines) == 2 and "wrote 50 spilled rows" in lines[0] and "takes rows again" in lines[1], lines
        assert "50 rows spilled meanwhile" in lines[1], lines  # the spill line, rate-limited, said only its first 5
    finally:
        store.close()


def test_closing_while_the_writer_retries_spills_at_once_rather_than_after_the_retries(tmp_path: Path) -> None:
    """The writer's retries of a refusing database take about 16 s: at close they are cut short and the rows go to
    the spill file, so a gateway stopping within `pyrocast up`'s 25 s grace loses nothing to SIGKILL."""
    db, spill = tmp_path / "p.db", tmp_path / "spill.jsonl"
    store = PredictionStore(f"sqlite:///{db}", spill_path=spill, emergency_dir=None).start()  # 8 retries from 0.2 s
    _unwritable(store, db)
    store.put_prediction(row(0))
    assert _eventually(lambda: store.write_errors >= 2, 10), "the writer never tried"
    t = time.monotonic()
    store.close()
    took = time.monotonic() - t
    assert took < 8.0, f"close waited {took:.1f} s for the writer's retries"
    lines = [line for line in spill.read_text().splitlines() if line]
    assert len(lines) == 1 and '"request_id": "r0"' in lines[0]
    again = reopened(f"sqlite:///{db}", spill_path=spill, emergency_dir=None)  # the next start writes it
    assert [r["request_id"] for r in again.rows()] == ["r0"]
    again.close()


def test_a_store_opened_on_a_file_it_may_not_write_catches_up_once_it_may(tmp_path: Path) -> None:
    """SQLite opens a file it may not write read-only, silently: the store must not keep that connection once the
    file is writable again (found by hand: an immutable file at start, and the gateway spilled until restarted)."""
    import shutil
    import subprocess

    db, spill = tmp_path / "p.db", tmp_path / "spill.jsonl"
    PredictionStore(f"sqlite:///{db}", emergency_dir=None).close()  # the tables exist
    # Another reader (the web app) keeps the WAL's -wal and -shm files: SQLite then opens the database itself
    # read-only rather than refusing to open it.
    reader = sqlite3.connect(db)
    reader.execute("PRAGMA journal_mode=WAL").fetchall()
    reader.execute("SELECT count(*) FROM predictions").fetchall()
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on a file system with the immutable flag)")
    try:
        store = PredictionStore(
            f"sqlite:///{db}", spill_path=spill, retries=1, retry_delay_s=0.01, held_retry_s=0.2, emergency_dir=None
        ).start()
        store.put_prediction(row(0))
        spilled = lambda: spill.exists() or any(tmp_path.glob("spill.jsonl.replaying-*"))  # noqa: E731
        assert _eventually(lambda: spilled() and store.write_errors >= 3, 10), "the write was not refused"
        time.sleep(0.5)  # a few more attempts on the pooled read-only connection
    finally:
        subprocess.run([chattr, "-i", str(db)], check=True)
    try:
        # The writer retries every 0.2 s: the next attempts write. Only the store's own state is watched meanwhile
        # (a read would check another connection out of the pool, a fresh one, and could hide the stale one); it
        # says the store takes rows again once the spilled row is committed (the file is renamed before).
        assert _eventually(lambda: store.trouble() is None and not spilled(), 3), f"refused: {store.trouble()}"
        assert store.count() == 1
    finally:
        store.close()
        reader.close()


@contextlib.contextmanager
def _write_lock(url: str) -> Iterator[None]:
    """Another connection holds the write lock on the predictions table while readers still read: an operator's
    open transaction, a backup, a migration waiting on its lock. The store's writer waits inside its INSERT."""
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.split(":///", 1)[1], timeout=30, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.rollback()
            holder.close()
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("LOCK TABLE predictions IN EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_writer_stuck_in_a_database_call_at_close_has_the_queued_rows_spilled(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`close()` does not wait past its timeout for a writer stuck in a database call: the rows still queued go to
    the spill file (never written beside the stuck writer), the log says so, and once the call returns its own
    batch is committed: the next start has every row exactly once."""
    url = f"sqlite:///{tmp_path / 'p.db'}" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(url, spill_path=spill, interval_s=0.01, emergency_dir=None).start()
    store.put_prediction(row(0))
    assert store.flush(10)
    writer = store._thread
    assert writer is not None
    with _write_lock(url):
        store.put_prediction(row(1))
        time.sleep(1.0)  # the writer took row 1 and waits for the lock inside its INSERT
        store.put_prediction(row(2))
        store.put_prediction(row(3))
        t = time.monotonic()
        store.close(timeout=2.0)
        took = time.monotonic() - t
        assert took < 6.0, f"close waited {took:.1f} s for a stuck writer"
        assert [json.loads(line)["row"]["request_id"] for line in spill.read_text().splitlines()] == ["r2", "r3"]
    writer.join(30)  # the lock is gone: the stuck call returns, its batch commits and the writer stops
    assert not writer.is_alive()
    (said,) = [r.getMessage() for r in _store_lines(caplog, logging.CRITICAL)]
    assert "stuck in a database call" in said and "2 queued rows spilled" in said, said
    again = reopened(url, spill_path=spill, emergency_dir=None)  # replays the spill file
    try:
        assert sorted(r["request_id"] for r in again.rows()) == ["r0", "r1", "r2", "r3"]
        assert not spill.exists()
    finally:
        again.close()


def test_a_postgresql_lock_held_by_someone_else_is_an_outage_after_the_lock_timeout_not_a_stuck_writer(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's open transaction holding the table: the writer's INSERT gives up after the lock timeout (as
    SQLite's busy timeout does) and the store says it is in trouble and spills, instead of waiting inside the call
    for as long as the lock lasts with every later row queued in memory. Once the lock goes, every row is written
    exactly once."""
    from pyrocast.serving import store as store_module

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.5)
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(postgres_url, spill_path=spill, interval_s=0.01, retries=2, emergency_dir=None).start()
    try:
        store.put_prediction(row(0))
        assert store.flush(10)
        with _write_lock(postgres_url):
            for i in range(1, 4):
                store.put_prediction(row(i))
            said = _eventually(store.trouble, 10)
            assert "lock" in said.lower(), said
            assert _eventually(spill.exists, 10), "the rows waited in memory behind the lock"
        assert _eventually(lambda: store.trouble() is None and not spill.exists(), 30), store.trouble()
        assert sorted(r["request_id"] for r in store.rows()) == ["r0", "r1", "r2", "r3"]
    finally:
        store.close()


def test_a_clean_close_while_a_lock_holds_the_store_loses_no_row(tmp_path: Path) -> None:
    """Ctrl-C of `pyrocast up` while an operator's transaction holds the SQLite write lock: the writer's batch fails
    on the lock timeout before close stops waiting, and is spilled with the queued rows (close gave up first and
    lost the batch: close waited 15 s, SQLite 30 s). The next start writes every row. Real timeouts (about 10 s):
    what is tested is how they relate."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(url, spill_path=spill, interval_s=0.01, emergency_dir=None).start()
    store.put_prediction(row(0))
    assert store.flush(10)
    with _write_lock(url):
        store.put_prediction(row(1))
        time.sleep(0.3)  # the writer took row 1 and waits for the lock inside its INSERT
        store.put_prediction(row(2))
        store.close()
    assert sorted(json.loads(line)["row"]["request_id"] for line in spill.read_text().splitlines()) == ["r1", "r2"]
    again = reopened(url, spill_path=spill, emergency_dir=None)
    try:
        assert sorted(r["request_id"] for r in again.rows()) == ["r0", "r1", "r2"]
    finally:
        again.close()


def test_a_writer_waiting_on_a_lock_is_said_before_its_write_fails(tmp_path: Path) -> None:
    """Rows queue behind a write waiting on a lock: /healthz (`trouble`) says so after SLOW_WRITE_S, not only once
    the write fails on the lock timeout (on call saw nothing for the first 30-40 s while the queue grew)."""
    from pyrocast.serving.store import LOCK_TIMEOUT_S, SLOW_WRITE_S

    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = PredictionStore(url, spill_path=tmp_path / "spill.jsonl", interval_s=0.01, emergency_dir=None).start()
    try:
        store.put_prediction(row(0))
        assert store.flush(10)
        assert store.trouble() is None
        with _write_lock(url):
            t0 = time.monotonic()
            store.put_prediction(row(1))
            said = _eventually(store.trouble, LOCK_TIMEOUT_S)
            assert time.monotonic() - t0 < LOCK_TIMEOUT_S - 1, "said only once the write failed"
            assert "kept its writer waiting" in said and "rows wait to be written" in said, said
            assert time.monotonic() - t0 >= SLOW_WRITE_S
        assert _eventually(lambda: store.trouble() is None and store.count() == 2, 20), store.trouble()
    finally:
        store.close()


def test_the_lock_timeout_is_added_to_the_options_a_postgresql_url_gives(postgres_url: str) -> None:
    """A URL's own libpq options (a search_path) are kept beside the store's lock timeout: connect_args replace the
    URL's, and the store's tables went to `public`."""
    from pyrocast.serving.store import make_engine

    engine = make_engine(postgres_url + "?options=-csearch_path%3Dpyrocast_test%2Cpublic")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW search_path").scalar() == "pyrocast_test,public"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "10s"
    finally:
        engine.dispose()


def _spilled_by_an_earlier_run(spill: Path, n: int) -> None:
    at = "2026-11-28T10:00:00+00:00"
    spill.write_text("".join(json.dumps({"table": "predictions", "row": row(i, ts=at)}) + "\n" for i in range(n)))


def test_an_earlier_run_s_spill_file_is_written_back_by_the_writer_not_before_the_store_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long outage's spill file (100,000 rows: about 12 s) was written back in the store's constructor, before the
    gateway listened. The writer writes it back first thing: the store opens at once, this run's rows queue behind
    the spilled ones (written after them), and the store's trouble (/healthz) says why they wait."""
    from pyrocast.serving import store as store_module

    monkeypatch.setattr(store_module, "REPLAY_CHUNK", 10)
    monkeypatch.setattr(store_module, "SLOW_WRITE_S", 0.0)
    url, spill = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "spill.jsonl"
    PredictionStore(url, emergency_dir=None).close()  # the tables exist
    _spilled_by_an_earlier_run(spill, 35)
    with _write_lock(url):  # the write-back waits here, so that it is seen under way
        store = PredictionStore(url, spill_path=spill, interval_s=0.01, emergency_dir=None)
        assert store.count() == 0 and spill.exists()  # opened without writing anything back
        store.start()
        store.put_prediction(row(100))
        said = _eventually(lambda: (t := store.trouble()) is not None and "writing back" in t and t, 10)
        assert "rows an earlier run spilled" in said and "this run's 1 rows wait behind them" in said, said
    try:
        assert store.flush(30)
        assert [r["request_id"] for r in store.rows()] == [f"r{i}" for i in range(35)] + ["r100"]
        assert store.trouble() is None and not list(tmp_path.glob("spill.jsonl*"))
    finally:
        store.close()


def test_closing_while_an_earlier_run_s_spill_file_is_written_back_leaves_the_rest_to_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C while a long spill file is written back: the writer stops after the chunk it is writing (a whole
    file could outlast the 25 s `pyrocast up` gives a gateway), this run's rows go to the spill file behind the rest
    of it, and the next start writes both: every row once, in order."""
    import threading

    from pyrocast.serving import store as store_module

    monkeypatch.setattr(store_module, "REPLAY_CHUNK", 10)
    monkeypatch.setattr(store_module, "SLOW_WRITE_S", 0.0)
    url, spill = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "spill.jsonl"
    PredictionStore(url, emergency_dir=None).close()
    _spilled_by_an_earlier_run(spill, 35)
    with _write_lock(url):
        store = PredictionStore(url, spill_path=spill, interval_s=0.01, emergency_dir=None).start()
        store.put_prediction(row(100))
        _eventually(lambda: (t := store.trouble()) is not None and "writing back" in t, 10)
        closing = threading.Thread(target=store.close)
        closing.start()
        _eventually(store._closing.is_set, 10)
    closing.join(30)
    assert not closing.is_alive()
    assert [r["request_id"] for r in store.rows()] == [f"r{i}" for i in range(10)]  # the chunk under way, only
    (claimed,) = tmp_path.glob("spill.jsonl.replaying-*")
    assert [json.loads(line)["row"]["request_id"] for line in spill.read_text().splitlines()] == ["r100"]
    (said,) = [r.getMessage() for r in _store_lines(caplog) if "stopping while" in r.getMessage()]
    assert f"10 written from {claimed}" in said, said
    again = reopened(url, spill_path=spill, emergency_dir=None)
    try:
        assert [r["request_id"] for r in again.rows()] == [f"r{i}" for i in range(35)] + ["r100"]
        assert not list(tmp_path.glob("spill.jsonl*"))
    finally:
        again.close()
