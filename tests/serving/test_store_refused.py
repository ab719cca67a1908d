"""Spilled rows the database refuses for what they hold, on real SQLite and PostgreSQL: they are kept aside with
the reason and what to do, the other rows of their spill file are written, nothing is lost or written twice, and
the refused rows, once corrected and appended to the spill file as the log says, are written too."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from pyrocast.serving.store import PredictionStore, utcnow
from tests.support.disks import fill_up, tmpfs
from tests.support.store_rows import leftover_claim, reopened, row
from tests.support.waiting import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    return str(request.getfixturevalue("postgres_url"))  # skips where PostgreSQL is not installed


def _line(table: str, data: dict[str, Any]) -> str:
    """A spill line as the store writes it."""
    return json.dumps({"table": table, "row": {"ts": utcnow().isoformat(), **data}}) + "\n"


GOOD = [
    ("predictions", row(0)),
    ("predictions", row(1)),
    ("feedback", {"request_id": "r1", "correct": True, "true_label": "wildfire", "source": "user"}),
    ("predictions", row(2)),
    ("predictions", row(3)),
]
# Refused by both databases: a NOT NULL column left empty, values their column cannot take.
BAD = [
    ("predictions", row(90, request_id=None)),
    ("predictions", row(91, served="yes")),
    ("feedback", {"request_id": "r2", "correct": True, "source": None}),
    ("predictions", row(92, lat="north")),
]


def _counts(url: str) -> tuple[list[str], int]:
    store = PredictionStore(url, emergency_dir=None)
    try:
        return [r["request_id"] for r in store.rows()], store.count("feedback")
    finally:
        store.close()


def test_refused_spilled_rows_are_kept_aside_and_the_rest_of_their_file_is_written(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyrocast.serving.store")
    spill = tmp_path / "predictions-spill.jsonl"
    lines = [_line(t, r) for t, r in (GOOD[0], BAD[0], GOOD[1], GOOD[2], BAD[1], BAD[2], GOOD[3], BAD[3], GOOD[4])]
    assert len(lines) == len(GOOD) + len(BAD)
    spill.write_text("".join(lines))
    original = spill.read_bytes()

    store = reopened(store_url, spill_path=spill, emergency_dir=None)  # a start writes the spill file
    assert store.trouble() is None and store.written == {"predictions": 4, "feedback": 1, "rollout_events": 0}
    store.start()
    store.put_prediction(row(5))  # the store is not stuck behind the refused rows
    assert store.flush(10)
    store.close()
    assert _counts(store_url) == (["r0", "r1", "r2", "r3", "r5"], 1)
    assert not spill.exists() and not list(tmp_path.glob("predictions-spill.jsonl.replaying*"))

    (aside,) = tmp_path.glob("predictions-spill.jsonl.refused-*")
    kept = [json.loads(line) for line in aside.read_text().splitlines()]
    assert [(k["table"], k["row"].get("request_id")) for k in kept] == [(t, r["request_id"]) for t, r in BAD]
    assert [k["row"].get("served") for k in kept[:2]] == [True, "yes"] and kept[3]["row"]["lat"] == "north"
    assert "IntegrityError" in kept[0]["refused"] or "NotNullViolation" in kept[0]["refused"]
    assert "Not a boolean value: 'yes'" in kept[1]["refused"]
    (critical,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "refuses 4 of the 9 rows spilled in" in critical and str(aside) in critical
    assert f"correct them and append them to {spill}" in critical
    assert "wrote 5 spilled rows" in caplog.text

    # Never written twice: the same file left by a process that died after its commit, before removing it.
    leftover_claim(store_url, spill, original)
    PredictionStore(store_url, spill_path=spill, emergency_dir=None).close()
    assert _counts(store_url) == (["r0", "r1", "r2", "r3", "r5"], 1)
    assert list(tmp_path.glob("predictions-spill.jsonl*")) == [aside]

    # What the log says to do: correct the refused rows and append them to the spill file; the next start (or a
    # running gateway, within 5 s) writes them.
    kept[0]["row"]["request_id"] = "r90"
    kept[1]["row"]["served"] = True
    kept[2]["row"]["source"] = "user"
    kept[3]["row"]["lat"] = 46.2
    spill.write_text("".join(json.dumps(k) + "\n" for k in kept))  # (their "refused" field is ignored)
    PredictionStore(store_url, spill_path=spill, emergency_dir=None).close()
    ids, feedback = _counts(store_url)
    assert ids == ["r0", "r1", "r2", "r3", "r5", "r90", "r91", "r92"] and feedback == 2
    assert list(tmp_path.glob("predictions-spill.jsonl*")) == [aside]  # nothing refused this time


def test_refused_rows_that_cannot_be_set_aside_on_a_full_disk_wait_in_the_spill_file(tmp_path: Path) -> None:
    """Setting the refused rows aside needs disk space: on a full disk the store still opens (the gateway starts),
    writes nothing of the file (its rows and its key go in together or not at all), and writes it once there is
    space."""
    with tmpfs(tmp_path / "small") as small:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
        spill = small / "predictions-spill.jsonl"
        spill.write_text("".join(_line(t, r) for t, r in GOOD + BAD))
        filler = fill_up(small)
        store = reopened(url, spill_path=spill, held_retry_s=0.2, emergency_dir=None)
        trouble = store.trouble()
        assert trouble is not None and "No space left on device" in trouble, trouble
        assert store.count() == 0 and store.count("feedback") == 0
        # The file waits whole, claimed (never put back: under another claim its committed chunks would be written
        # again); the hidden lock file beside it is the store's.
        waiting = sorted(p.name for p in small.iterdir() if not p.name.startswith("."))
        assert waiting[0] == "filler" and len(waiting) == 2 and waiting[1].startswith(f"{spill.name}.replaying-")
        store.start()
        filler.unlink()  # space again: the writer, looking every 0.2 s, writes the file
        assert wait_for(lambda: store.count() == 4, 10), "the spill file was not written once there was space"
        assert store.count("feedback") == 1 and wait_for(lambda: store.trouble() is None, 5), store.trouble()
        assert not spill.exists()
        assert len(list(small.glob("predictions-spill.jsonl.refused-*"))) == 1
        store.close()


def test_a_spill_file_whose_torn_lines_cannot_be_kept_aside_on_a_full_disk_is_written_once(tmp_path: Path) -> None:
    """Its rows committed, a spill file whose torn lines found no space was put back under its first name (the
    store's start failed with the OSError): claimed again under another, its rows would be written twice. Now it
    stays claimed until the lines fit, and its rows are written once."""
    with tmpfs(tmp_path / "small") as small:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
        spill = small / "predictions-spill.jsonl"
        spill.write_text("".join(_line(t, r) for t, r in GOOD) + '{"table": "predictions", "row": {"req')
        filler = fill_up(small)
        store = reopened(url, spill_path=spill, held_retry_s=0.2, emergency_dir=None)
        assert store.count() == 4 and store.count("feedback") == 1
        assert not spill.exists() and len(list(small.glob("predictions-spill.jsonl.replaying-*"))) == 1
        store.start()
        filler.unlink()
        assert wait_for(lambda: len(list(small.glob("predictions-spill.jsonl.bad-*"))) == 1, 10)
        assert wait_for(lambda: not list(small.glob("predictions-spill.jsonl.replaying*")), 5)
        assert store.count() == 4 and store.count("feedback") == 1  # written once
        store.close()


def _received(store: PredictionStore, rows: list[tuple[str, dict[str, Any]]]) -> None:
    for table, data in rows:
        (store.put_prediction if table == "predictions" else store.put_feedback)(dict(data))


MIXED = [GOOD[0], BAD[0], GOOD[1], GOOD[2], BAD[1], BAD[2], GOOD[3], BAD[3], GOOD[4]]


def test_a_refused_row_received_is_set_aside_at_once_and_its_batch_written(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database refuses for what it holds, in a batch from the gateway (not a spill file): the batch is
    sifted at once, with no retry (it went through about 20 s of retries as an outage before reaching the spill
    file), and the store is never in trouble."""
    caplog.set_level(logging.INFO, logger="pyrocast.serving.store")
    spill = tmp_path / "predictions-spill.jsonl"
    store = PredictionStore(store_url, spill_path=spill, emergency_dir=None)
    _received(store, MIXED)  # queued before the writer starts: one batch
    store.start()
    assert store.flush(5), "the batch waited: retried as an outage"
    assert store.write_errors == 0 and store.refused == 4 and store.dropped == 0
    trouble = store.trouble()  # on call hears of it (/healthz) until a batch is taken whole
    assert trouble is not None and "refuses rows for what they hold" in trouble and "4 rows set aside" in trouble
    store.put_prediction(row(5))
    assert store.flush(5) and store.trouble() is None
    store.close()
    assert _counts(store_url) == (["r0", "r1", "r2", "r3", "r5"], 1)
    assert not spill.exists()
    (aside,) = tmp_path.glob("predictions-spill.jsonl.refused-*")
    kept = [json.loads(line) for line in aside.read_text().splitlines()]
    assert [(k["table"], k["row"].get("request_id")) for k in kept] == [(t, r["request_id"]) for t, r in BAD]
    (critical,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "refuses 4 of the 9 rows received for what they hold" in critical and str(aside) in critical


def test_received_rows_whose_refused_part_cannot_be_set_aside_are_written_once_there_is_space(
    store_url: str, tmp_path: Path
) -> None:
    """Setting refused rows aside on a full disk fails: nothing of their batch is written meanwhile, and once there
    is space the good rows are written exactly once and the refused ones set aside once."""
    with tmpfs(tmp_path / "small") as small:
        spill = small / "predictions-spill.jsonl"
        filler = fill_up(small)
        store = PredictionStore(
            store_url, spill_path=spill, retries=2, retry_delay_s=0.05, held_retry_s=0.2, emergency_dir=None
        )
        _received(store, MIXED)
        store.start()
        assert wait_for(lambda: store.held == len(MIXED), 10), "the batch was neither written nor held"
        assert store.count() == 0 and store.count("feedback") == 0
        trouble = store.trouble()
        assert trouble is not None and "No space left on device" in trouble, trouble
        filler.unlink()
        assert wait_for(lambda: store.count() == 4, 10), "the good rows were not written once there was space"
        assert store.flush(5) and store.refused == 4
        store.put_prediction(row(5))  # a batch taken whole: the refusal is no longer a standing trouble
        assert store.flush(5) and wait_for(lambda: store.trouble() is None, 5), store.trouble()
        store.close()
        assert _counts(store_url) == (["r0", "r1", "r2", "r3", "r5"], 1)
        assert len(list(small.glob("predictions-spill.jsonl.refused-*"))) == 1


def test_a_sifted_batch_is_one_transaction(store_url: str) -> None:
    """Rows sifted in savepoints are written with their transaction or not at all (pysqlite commits a savepoint
    opened outside a transaction at its release)."""
    from sqlalchemy import func, select

    from pyrocast.serving.store import _insert_sifted, predictions

    store = PredictionStore(store_url, emergency_dir=None)
    try:
        with contextlib.suppress(RuntimeError), store.engine.begin() as conn:
            rows = [("predictions", {"ts": utcnow(), **r}) for _, r in (GOOD[0], GOOD[1])]
            written, refused = _insert_sifted(conn, rows)
            assert written == {"predictions": 2} and not refused
            raise RuntimeError("the database went away before the commit")
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 0
    finally:
        store.close()


def test_refused_rows_received_with_no_spill_file_are_counted_lost_once_and_logged_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyrocast.serving.store")
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    store = PredictionStore(url, emergency_dir=None)
    _received(store, MIXED)
    store.start()
    assert store.flush(5) and store.dropped == 4 and store.refused == 4
    store.close()
    assert _counts(url) == (["r0", "r1", "r2", "r3"], 1)
    (lost,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "refuses 4 of 9 rows received" in lost and "no spill file is set: they are LOST" in lost
    assert '"request_id": "r91"' in lost and '"lat": "north"' in lost  # the log keeps what they were
    assert not list(tmp_path.glob("*.refused-*"))


def test_an_idle_store_writes_rows_appended_to_its_spill_file(store_url: str, tmp_path: Path) -> None:
    """What the runbook says to do with corrected refused rows: append them to the spill file, and the running
    gateway writes them within `held_retry_s`, with no traffic to wake its writer (it waited for the next row)."""
    spill = tmp_path / "predictions-spill.jsonl"
    store = PredictionStore(store_url, spill_path=spill, held_retry_s=0.2, emergency_dir=None).start()
    try:
        store.put_prediction(row(0))
        assert store.flush(5)
        time.sleep(0.5)  # the writer idle
        spill.write_text(_line("predictions", row(7)))
        assert wait_for(lambda: store.count() == 2, 10), "the appended rows waited for traffic"
        assert wait_for(lambda: not spill.exists(), 5)
    finally:
        store.close()


def test_rows_set_aside_from_a_batch_whose_commit_fails_are_set_aside_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database's disk fills up under a sifted batch: its refused rows were set aside before the commit, which
    then fails. That set-aside file goes (the batch comes back whole, is spilled after its retries and sifted again
    from the spill file): the refused rows end up in one file, not in two, and the log names only that one."""
    spill = tmp_path / "predictions-spill.jsonl"
    with tmpfs(tmp_path / "small", "size=2m") as small:
        url = f"sqlite:///{small / 'predictions.db'}"
        store = PredictionStore(
            url, spill_path=spill, retries=2, retry_delay_s=0.05, held_retry_s=0.3, emergency_dir=None
        )
        filler = fill_up(small)
        _received(store, MIXED)
        store.start()
        assert wait_for(lambda: spill.exists() and store.queue_depth == 0, 15), store.trouble()
        assert "full" in (store.trouble() or ""), store.trouble()  # the commit, not the rows, was refused
        assert store.count() == 0
        filler.unlink()
        assert wait_for(lambda: store.count() == 4, 10), "the spilled batch was not written once there was space"
        store.close()
        assert _counts(url) == (["r0", "r1", "r2", "r3"], 1)
    (aside,) = tmp_path.glob("predictions-spill.jsonl.refused-*")
    kept = [json.loads(line)["row"].get("request_id") for line in aside.read_text().splitlines()]
    assert kept == [r["request_id"] for _, r in BAD]
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "rows spilled in" in said and str(aside) in said, said


def test_refused_rows_appended_again_after_the_database_is_fixed_are_written(tmp_path: Path) -> None:
    """Appended before the database was fixed, refused rows are refused again into a file of the same bytes; appended
    once more after the fix, they were skipped as "written before" (a replay was known by its bytes alone) and
    never written. A spill file is now known by the name it was claimed under."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'p.db'}"
    spill = tmp_path / "predictions-spill.jsonl"
    store = PredictionStore(url, spill_path=spill, emergency_dir=None)
    with store.engine.begin() as conn:  # a rule of the database's refusing a row, as a NOT NULL added by hand would
        conn.execute(
            text(
                "CREATE TRIGGER no_bad BEFORE INSERT ON predictions WHEN NEW.client_id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by rule'); END"
            )
        )
    store.put_prediction(row(1, client_id="bad"))
    store.close()
    (first,) = tmp_path.glob("predictions-spill.jsonl.refused-*")
    spill.write_bytes(first.read_bytes())  # appended too early: refused again
    PredictionStore(url, spill_path=spill, emergency_dir=None).close()
    asides = list(tmp_path.glob("predictions-spill.jsonl.refused-*"))
    assert len(asides) == 2 and len({a.read_bytes() for a in asides}) == 1
    fixed = PredictionStore(url, spill_path=spill, emergency_dir=None)
    with fixed.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER no_bad"))
    fixed.close()
    spill.write_bytes(first.read_bytes())  # appended again, as the log says, once the database takes them
    again = reopened(url, spill_path=spill, emergency_dir=None)
    assert again.count() == 1 and not spill.exists()
    again.close()
