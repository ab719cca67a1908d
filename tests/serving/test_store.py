"""The prediction store: batched background writes, nothing lost on close, WAL, spill, events, statistics."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine

from pyrocast.serving.store import STAT_COLUMNS, PredictionStore, image_stats
from tests.support.disks import tmpfs
from tests.support.store_rows import reopened, row


def test_background_writes_are_batched_and_complete(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}", batch_size=100).start()
    for i in range(1000):
        store.put_prediction(row(i))
    assert store.flush(30)
    assert store.count() == 1000
    assert store.queue_depth == 0
    store.close()


def test_a_flush_under_steady_traffic_waits_for_the_rows_put_before_it_only(tmp_path: Path) -> None:
    """`flush` waited for an empty queue: under steady traffic (a replay reads back each answer) the queue never
    emptied and every read waited its whole timeout, holding a worker thread the predictions need too."""
    import threading

    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}").start()
    done = threading.Event()

    def traffic() -> None:  # far more rows than the writer takes in one batching window, without a pause
        i = 1
        while not done.is_set():
            for _ in range(20):
                store.put_prediction(row(i))
                i += 1
            time.sleep(0.005)

    producer = threading.Thread(target=traffic, daemon=True)
    producer.start()
    try:
        time.sleep(0.5)
        mine = row(0)
        store.put_prediction(mine)
        assert store.flush(10.0), "the flush waited for rows put after it"
        assert store.predictions_for(mine["request_id"]), "flushed, yet the row put before it is not written"
    finally:
        done.set()
        producer.join()
        store.close()


def test_close_drains_the_queue_nothing_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = PredictionStore(url, interval_s=5.0).start()  # a long batching window: rows still queued at close
    for i in range(300):
        store.put_prediction(row(i))
    store.put_feedback({"request_id": "r1", "correct": True, "true_label": "wildfire", "source": "user"})
    store.close()
    again = PredictionStore(url)
    assert again.count() == 300
    assert again.count("feedback") == 1
    again.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}").start()
    store.put_prediction(row(0))
    store.flush()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_rows_that_cannot_be_written_are_spilled_then_replayed(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    spill = tmp_path / "spill.jsonl"
    store = PredictionStore(f"sqlite:///{db}", spill_path=spill)
    store.engine.dispose()
    # The database becomes unwritable (a read-only file system, a PostgreSQL outage): rows go to the spill file.
    store.engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    store.put_prediction(row(1))
    store.put_prediction(row(2))
    store.close()
    assert spill.exists() and len(spill.read_text().splitlines()) == 2
    again = reopened(f"sqlite:///{db}", spill_path=spill)  # the next start writes them
    assert again.count() == 2 and not spill.exists()
    again.close()


def test_events_keep_the_last_state(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    assert store.last_state() is None and store.latest_event() is None and store.latest_event_id() == 0
    first = store.add_event("ab", "ab", {"mode": "ab", "x": 1}, reason="test", champion_version="1")
    second = store.add_event("champion-only", "champion", {"mode": "champion"})
    assert second > first  # what other gateways poll for
    assert store.last_state() == {"mode": "champion"}
    assert store.latest_event() == (second, {"mode": "champion"}) and store.latest_event_id() == second
    assert [e["action"] for e in store.events()] == ["champion-only", "ab"]
    store.close()


def test_a_claimed_event_is_written_once_across_stores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    one, two = PredictionStore(url), PredictionStore(url)  # two gateway replicas on one database
    first = one.add_event("canary-step", "canary", {"step": 1}, claim="canary@1.0:canary-step:1")
    assert first is not None
    assert two.add_event("canary-step", "canary", {"step": 1}, claim="canary@1.0:canary-step:1") is None
    assert two.add_event("promote", "champion", {"step": 1}, claim="canary@1.0:promote:1") == first + 1
    assert [e["action"] for e in one.events()] == ["promote", "canary-step"]
    assert two.written["rollout_events"] == 1
    one.close()
    two.close()


def test_image_stats_describe_the_tile() -> None:
    red = Image.new("RGB", (350, 350), (255, 0, 0))
    s = image_stats(red)
    assert set(STAT_COLUMNS) <= set(s) and (s["width"], s["height"]) == (350, 350)
    assert s["mean_r"] == pytest.approx(1.0) and s["mean_g"] == pytest.approx(0.0)
    assert s["saturation"] == pytest.approx(1.0) and s["sharpness"] == pytest.approx(0.0)
    white = image_stats(Image.new("RGB", (100, 100), (255, 255, 255)))
    assert white["bright_fraction"] == 1.0 and white["dark_fraction"] == 0.0
    rng = np.random.default_rng(0)
    noisy = image_stats(Image.fromarray(rng.integers(0, 255, (350, 350, 3), dtype=np.uint8)))
    assert noisy["contrast"] > 0.05 and noisy["sharpness"] > 0.05


def _unwritable(store: PredictionStore, db: Path) -> None:
    """The database refuses writes from now on (a read-only file system, a PostgreSQL outage)."""
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")


def test_database_down_and_disk_full_hold_the_rows_until_the_database_is_back(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to stand for a full disk")
    db = tmp_path / "p.db"
    store = PredictionStore(
        f"sqlite:///{db}", spill_path=Path("/dev/full"), retries=2, retry_delay_s=0.01, held_retry_s=0.2
    ).start()
    store.put_prediction(row(0))
    assert store.flush(10)
    _unwritable(store, db)
    for i in range(1, 11):
        store.put_prediction(row(i))
    # Neither the database nor the disk takes them: held in memory, the writer alive, flush honest about it.
    deadline = time.monotonic() + 10
    while store.held < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.held == 10 and store.queue_depth == 10 and store._thread is not None and store._thread.is_alive()
    assert not store.flush(0.3)
    store.put_prediction(row(11))  # rows keep coming while it is down
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///{db}")  # the database is back
    assert store.flush(10), f"{store.held} rows still held"
    assert store.count() == 12 and store.dropped == 0
    store.close()


def test_a_full_disk_mid_spill_leaves_whole_lines_and_the_next_start_replays_them(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as small:
        db = tmp_path / "p.db"
        spill = small / "spill.jsonl"
        shm = tmp_path / "shm"  # stands for /dev/shm
        shm.mkdir()
        store = PredictionStore(f"sqlite:///{db}", spill_path=spill, retries=1, retry_delay_s=0.01, emergency_dir=shm)
        _unwritable(store, db)
        for i in range(10):  # about 1 kB each: these fit
            store.put_prediction(row(i))
        store.flush()
        spilled = spill.read_bytes()
        for i in range(10, 200):  # these do not: the disk fills up in the middle of the write
            store.put_prediction(row(i))
        store.flush()
        assert store.held == 190
        # The 10 spilled rows wait claimed (the database refused their write-back); the new spill file, cut back
        # to its last whole line, holds nothing.
        (claimed,) = small.glob("spill.jsonl.replaying-*")
        assert claimed.read_bytes() == spilled and (not spill.exists() or spill.read_bytes() == b"")
        store.close()  # the 190 held rows go to the memory-backed emergency file
        assert store.dropped == 0 and store.emergency_path is not None and store.emergency_path.parent == shm
        assert len(store.emergency_path.read_bytes().splitlines()) == 190
        again = reopened(f"sqlite:///{db}", spill_path=spill, emergency_dir=shm)
        assert again.count() == 200 and not spill.exists() and not list(shm.iterdir())
        assert not list(small.glob("spill.jsonl.replaying-*"))
        again.close()


def test_rows_nobody_takes_at_shutdown_are_counted_lost_only_without_an_emergency_file(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to stand for a full disk")
    db, shm = tmp_path / "p.db", tmp_path / "shm"
    for emergency_dir, lost in ((None, 3), (tmp_path / "absent", 3), (shm, 0)):
        shm.mkdir(exist_ok=True)
        store = PredictionStore(
            f"sqlite:///{db}", spill_path=Path("/dev/full"), retries=1, retry_delay_s=0.01, emergency_dir=emergency_dir
        )
        _unwritable(store, db)
        for i in range(3):
            store.put_prediction(row(i))
        store.close()  # no writer thread: close() drains, the database and the disk refuse
        assert store.dropped == lost and store.held == 0
    assert store.emergency_path is not None
    assert re.fullmatch(r"pyrocast-spill-[0-9a-f]{16}\.jsonl", store.emergency_path.name)  # a digest, no URL
    again = reopened(f"sqlite:///{db}", spill_path=Path("/dev/full"), emergency_dir=shm)
    assert again.count() == 3 and not list(shm.iterdir())
    again.close()


def test_a_spill_file_torn_by_a_crash_is_replayed_up_to_its_last_whole_line(tmp_path: Path) -> None:
    db, spill = tmp_path / "p.db", tmp_path / "spill.jsonl"
    store = PredictionStore(f"sqlite:///{db}", spill_path=spill, retries=1, retry_delay_s=0.01)
    _unwritable(store, db)
    store.put_prediction(row(1))
    store.put_prediction(row(2))
    store.close()
    whole = spill.read_bytes()
    spill.write_bytes(whole + whole.splitlines()[0][:57])  # the process died in the middle of a line
    again = reopened(f"sqlite:///{db}", spill_path=spill)
    assert again.count() == 2 and not spill.exists()
    (aside,) = tmp_path.glob("spill.jsonl.bad-*")
    assert aside.read_bytes() == whole.splitlines()[0][:57] + b"\n"  # kept, not dropped
    again.close()


def test_the_writer_does_not_wait_between_batches_it_wrote(tmp_path: Path) -> None:
    """The retry back-off is for failed writes only: after every committed batch the writer slept it (0.2 s), so
    rows waited that much longer to be stored and the writer topped out near 1,600 rows a second."""
    import time

    from tests.support.store_rows import row

    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}", interval_s=0.0, retry_delay_s=2.0).start()
    try:
        store.put_prediction(row(0))
        assert store.flush(10)
        t0 = time.monotonic()
        for i in range(1, 6):
            store.put_prediction(row(i))
            assert store.flush(10)
        took = time.monotonic() - t0
        assert took < 2.0, f"5 batches took {took:.1f} s: the writer waited between them"
    finally:
        store.close()


def test_unreadable_lines_of_two_spill_files_replayed_together_are_both_kept(tmp_path: Path) -> None:
    """A replay cut short by a crash left its claimed file, and the spill file started anew has a torn tail too:
    both files' torn lines were written to one `.bad-<second>` file, the second replacing the first."""
    import json

    def line(i: int) -> str:
        return json.dumps({"table": "predictions", "row": row(i, ts="2026-11-28T10:00:00+00:00")}) + "\n"

    spill = tmp_path / "predictions-spill.jsonl"
    (tmp_path / "predictions-spill.jsonl.replaying-0123456789abcdef").write_text(line(1) + '{"row": {"request_id": "A')
    spill.write_text(line(2) + '{"table": "predictions", "row": {"request_id": "B')
    store = reopened(f"sqlite:///{tmp_path / 'p.db'}", spill_path=spill, emergency_dir=None)
    assert store.count() == 2
    store.close()
    kept = sorted(p.read_text() for p in tmp_path.glob("predictions-spill.jsonl.bad-*"))
    assert len(kept) == 2 and '"A' in kept[0] + kept[1] and '"B' in kept[0] + kept[1], kept


def test_a_long_outage_s_spill_file_is_written_back_in_chunks(tmp_path: Path) -> None:
    """A spill file was read whole and written in one transaction (100,000 rows: 430 MB more memory, 12 s before
    the gateway listened). It is read as it is written, REPLAY_CHUNK lines per transaction, each with its key."""
    import json

    from pyrocast.serving.store import REPLAY_CHUNK

    spill = tmp_path / "predictions-spill.jsonl"
    n = 2 * REPLAY_CHUNK + 7
    at = "2026-11-28T10:00:00+00:00"
    spill.write_text("".join(json.dumps({"table": "predictions", "row": row(i, ts=at)}) + "\n" for i in range(n)))
    store = reopened(f"sqlite:///{tmp_path / 'p.db'}", spill_path=spill, emergency_dir=None)
    assert store.count() == n and not spill.exists()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM spill_replays")]
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == ["0", "1", "2"], keys
    store.close()


def test_a_claimed_spill_file_another_process_is_writing_back_is_left_to_it(tmp_path: Path) -> None:
    """Two gateways starting at once on one data directory both wrote back a leftover claimed file: the second
    failed its start on the replay key (IntegrityError), or on the file the first had just removed. A claimed file is
    now locked while written back, and one another process holds is left to it."""
    import fcntl
    import json

    spill = tmp_path / "predictions-spill.jsonl"
    claimed = tmp_path / "predictions-spill.jsonl.replaying-0123456789abcdef"
    at = "2026-11-28T10:00:00+00:00"
    claimed.write_text("".join(json.dumps({"table": "predictions", "row": row(i, ts=at)}) + "\n" for i in range(3)))
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with claimed.open("r+b") as other:  # the other gateway, writing it back now
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        store = PredictionStore(url, spill_path=spill, held_retry_s=0.2, emergency_dir=None)  # starts
        assert store.count() == 0 and claimed.exists()
        store.start()
        time.sleep(0.5)
        assert store.count() == 0 and store.trouble() is None
    # The other gateway died before it finished: the lock went with it, and this one writes the file back.
    deadline = time.monotonic() + 10
    while claimed.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not claimed.exists() and store.count() == 3
    store.close()
