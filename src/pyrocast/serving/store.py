"""The prediction store: every prediction (shadow ones included), feedback and rollout events, via SQLAlchemy.

SQLite in WAL mode under the data directory by default, PostgreSQL by URL (`PYROCAST_STORE_URL`). The gateway
never waits for the database: rows go to a queue that a background thread writes in batches, and `close()`
drains the queue, so a clean shutdown (SIGTERM) loses nothing. Rows that cannot be written (the database is down
and stays down through the retries) are spilled to a JSON-lines file beside it and written once the database
takes rows again (the writer looks every few seconds), or at the next start. A store whose database cannot be
reached when it opens still opens: it is an outage like any other, and the tables are created once the database
answers.
When the spill cannot be written either (a full disk), the rows are held in memory (up to `MAX_HELD`) and
retried every few seconds, and the spill file is cut back to its last whole line: nothing half-written is left.
Rows still held when the store closes go to a memory-backed file in /dev/shm, replayed by the next start.
A spill file torn by a crash is replayed up to its last whole line; the torn rest is kept aside in a `.bad` file.
Rows the database refuses for what they hold (a NOT NULL column left empty, a value its column cannot take), in a
spill file or in a batch just received, are kept aside with the reason in a `.refused-<digest>` file beside the
spill file, at once (no retry can help), and the other rows are written; `refused` counts them.

Tables (times are UTC):
- `predictions`: one row per model call. `served` says whether the user got this answer; `variant` is
  champion | challenger | champion-fallback | shadow | champion-compare; the model's name and version; client id,
  source (api, web, replay, load), coordinates, the tile's sha256 and image statistics (drift features);
  probability, label, latency, error; `ood`: whether the tile was out of the answering model's training
  distribution (`pyrocast.monitoring.novelty`; null where the model has no reference) and `ood_stats`, which
  statistics were out of range.
  Columns added after a table's first release (`ADDED_COLUMNS`) are added to an older database when it opens.
- `feedback`: verdicts and delayed labels per request id. `true_label` is derived when only `correct` is given
  (from the served label), so accuracy can be computed for every variant that saw the request. Every row is kept
  (history); the label of a request is its latest ground-truth row (source replay or feed) if any, else its
  latest user verdict, latest by `ts` (when given, not when inserted): `request_labels`, the one definition every
  reader uses.
- `rollout_events`: every rollout change (who/what/why) with a snapshot of the state; the last snapshot is the
  state a restarted gateway resumes.
- `rollout_claims`: one row per change that time decides (a canary step, a guardrail stop, a completion), keyed
  by the plan and the change, so that of several gateway replicas on one store exactly one records it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
from PIL import Image
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, ProgrammingError, StatementError

from pyrocast.data.layout import CLASSES, atomic_write
from pyrocast.database import create_schema, sqlalchemy_url
from pyrocast.errors import PyrocastError
from pyrocast.imaging import FULL_SIZE, TRANSPARENT
from pyrocast.registry.mlflow_store import redact
from pyrocast.serving.warn_every import WarnEvery

log = logging.getLogger(__name__)

LABELS = CLASSES
SOURCES = ("api", "web", "replay", "load")
# Feedback sources. Ground truth (the held-out labels `pyrocast replay` sends back, a later fire feed) is known,
# not judged: it outranks any user's verdict, and a gateway with an admin token takes it only from its holder.
USER_FEEDBACK = "user"
GROUND_TRUTH_SOURCES = ("replay", "feed")
FEEDBACK_SOURCES = (USER_FEEDBACK, *GROUND_TRUTH_SOURCES)

# Drift features computed on every tile, on a 64x64 subsample (the statistics barely move, the cost drops 30x).
STAT_COLUMNS = (
    "mean_r",  # mean red, 0-1
    "mean_g",
    "mean_b",
    "std_r",  # per-channel standard deviation, 0-1
    "std_g",
    "std_b",
    "brightness",  # mean luma (Rec. 601), 0-1
    "contrast",  # luma standard deviation
    "saturation",  # mean HSV saturation
    "greenness",  # mean G / (R + G + B): vegetation
    "bright_fraction",  # share of pixels with luma > 0.9: clouds, snow, smoke
    "dark_fraction",  # share of pixels with luma < 0.1: shadows, water, burn scars
    "sharpness",  # mean absolute luma gradient: blur, haze, resolution changes
)

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("served", Boolean, nullable=False),
    Column("variant", String(32), nullable=False),
    Column("rollout_mode", String(16)),
    Column("model_name", String(128)),
    Column("model_version", String(64)),
    Column("precision", String(8)),
    Column("client_id", String(128)),
    Column("source", String(16), nullable=False),
    Column("lon", Float),
    Column("lat", Float),
    Column("tile_sha256", String(64)),
    Column("width", Integer),
    Column("height", Integer),
    *(Column(c, Float) for c in STAT_COLUMNS),
    Column("ood", Boolean),  # out of the model's training distribution; null: the model has no reference
    Column("ood_stats", String(300)),  # the statistics out of range, comma-separated
    Column("probability", Float),
    Column("label", String(16)),
    Column("latency_ms", Float),
    Column("error", Text),
    Index("ix_predictions_request", "request_id"),
    Index("ix_predictions_ts", "ts"),
    Index("ix_predictions_version_ts", "model_version", "ts"),
    Index("ix_predictions_variant_ts", "variant", "ts"),
    Index("ix_predictions_tile", "tile_sha256"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("correct", Boolean),
    Column("label", String(16)),
    Column("true_label", String(16)),
    Column("served_label", String(16)),
    Column("model_version", String(64)),
    Column("source", String(16), nullable=False),
    Column("client_id", String(128)),
    Index("ix_feedback_request", "request_id"),
    Index("ix_feedback_ts", "ts"),
)

rollout_events = Table(
    "rollout_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("action", String(32), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("reason", Text),
    Column("champion_version", String(64)),
    Column("challenger_version", String(64)),
    Column("state", Text),
    Index("ix_rollout_events_ts", "ts"),
)

# A change that time decides, claimed by the replica that records it (the key names the plan and the change).
rollout_claims = Table(
    "rollout_claims",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("event_id", Integer),
)

# One row per spill file written to the database, keyed by the digest of its bytes and committed with its rows:
# a process that dies after the commit but before removing the file does not write the file's rows again.
spill_replays = Table(
    "spill_replays",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("rows", Integer),
)

TABLES = {"predictions": predictions, "feedback": feedback, "rollout_events": rollout_events}


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_labels(*where: Any) -> Select:
    """The label of each labelled request: one row (request_id, true_label, source, id of the feedback row).

    It is the request's latest ground-truth row (`GROUND_TRUTH_SOURCES`) if it has one, else its latest user
    verdict. "Latest" is by `ts` (when the verdict was given), the id only breaking ties: ids are insert order,
    and a verdict spilled by one replica and replayed later gets a higher id than a newer one written meanwhile.
    `where` narrows the feedback rows read (e.g. to some request ids). One window-function pass (ROW_NUMBER,
    SQLite 3.25+ and PostgreSQL), portable to both.
    """
    f = feedback.c
    is_truth = case((f.source.in_(GROUND_TRUTH_SOURCES), 1), else_=0)
    rank = func.row_number().over(partition_by=f.request_id, order_by=(is_truth.desc(), f.ts.desc(), f.id.desc()))
    ranked = (
        select(f.request_id, f.true_label, f.source, f.id, rank.label("rank"))
        .where(f.true_label.is_not(None), *where)
        .subquery()
    )
    r = ranked.c
    return select(r.request_id, r.true_label, r.source, r.id).where(r.rank == 1)


def image_stats(img: Image.Image) -> dict[str, float]:
    """Drift features of a tile (see STAT_COLUMNS), plus its width and height."""
    w, h = img.info.get(FULL_SIZE, img.size)  # as sent, not as decoded at a reduced scale
    # Nearest-neighbour subsampling keeps the pixel distribution (a smoothing resize would shrink std/contrast).
    thumb = img.convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
    # Channel planes (3, N): numpy's reductions along a length-3 inner axis cost 5-10x more than along rows,
    # and this runs for every request (0.8 ms -> 0.2 ms per tile).
    planes = np.asarray(thumb, dtype=np.float32).reshape(-1, 3).T.copy() / 255.0
    r, g, b = planes
    mean = planes.mean(axis=1)
    std = planes.std(axis=1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    grid = luma.reshape(64, 64)
    sharp = (np.abs(np.diff(grid, axis=1)).mean() + np.abs(np.diff(grid, axis=0)).mean()) / 2
    total = float(planes.sum())
    values = (
        *mean.tolist(),
        *std.tolist(),
        float(luma.mean()),
        float(luma.std()),
        float(sat.mean()),
        float(g.sum() / total) if total > 0 else 1 / 3,
        float((luma > 0.9).mean()),
        float((luma < 0.1).mean()),
        float(sharp),
    )
    out: dict[str, Any] = {k: round(float(v), 6) for k, v in zip(STAT_COLUMNS, values, strict=True)}
    out["width"], out["height"] = w, h
    if TRANSPARENT in img.info:  # not a stored column: read by the out-of-distribution check only
        out[TRANSPARENT] = round(float(img.info[TRANSPARENT]), 6)
    return out


# How long a statement waits for a lock another connection holds (SQLite: its busy timeout). Shorter than what
# `close` waits for the writer: a write stuck behind a lock at shutdown fails in time to be spilled (at 30 s, a
# Ctrl-C of `pyrocast up` abandoned it after 15 s and lost its rows).
LOCK_TIMEOUT_S = 10.0
SLOW_WRITE_S = 3.0  # a database call running this long is said in `trouble` (/healthz) before it fails


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL mode, a busy timeout and a created parent folder."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": LOCK_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: durable across process crashes, fsync only at checkpoints.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")
            cur.close()

        @event.listens_for(engine, "handle_error")
        def _reopen_when_read_only(ctx) -> None:  # type: ignore[no-untyped-def]
            # SQLite opens a file it may not write read-only, without a word; pooled, that connection kept refusing
            # writes after the file became writable again (the gateway never caught up without a restart). Treated
            # as a lost connection, the pool drops it and the next attempt opens the file anew.
            if "readonly database" in str(ctx.original_exception):
                ctx.is_disconnect = True

        return engine
    url = sqlalchemy_url(url)
    if url.startswith(("postgresql+psycopg://", "postgresql+psycopg2://")):
        # libpq settings: a lock held by someone else (an operator's open transaction, a backup) fails a statement
        # after LOCK_TIMEOUT_S like SQLite's busy timeout, instead of holding the writer (and every row queued
        # behind it, in memory) for as long as the lock lasts; the writer then spills and retries as in an outage.
        # Added to what the URL sets (?options=-csearch_path%3D...): connect_args replace the URL's, not merge.
        query = make_url(url).query
        given = query.get("options")
        given = " ".join(given) if isinstance(given, tuple) else given
        lock = f"-c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}"
        args: dict[str, Any] = {"options": f"{given} {lock}" if given else lock}
        if "connect_timeout" not in query:
            args["connect_timeout"] = 10
        return create_engine(url, pool_pre_ping=True, connect_args=args)
    return create_engine(url, pool_pre_ping=True)


# Columns added after their table's first release: a database created before lacks them, and an insert naming
# them would fail (every row spilled). All nullable: older rows read as "not known".
ADDED_COLUMNS = {"predictions": ("ood", "ood_stats")}


# How long an ALTER TABLE may wait for its table's lock on PostgreSQL. It needs the table to itself: queued
# behind a long read, it would queue every insert (and read) behind it in turn, for as long as that read lasts.
ALTER_LOCK_TIMEOUT_S = 5.0
ALTER_ATTEMPTS = 3


class _ReplayCut(Exception):
    """close() was called while spilled rows were written back: the rest waits, claimed, for the next start."""


class StoreSchemaError(PyrocastError):
    """The store's tables lack columns this version writes, and this process may not (or could not) add them."""


def create_tables(engine: Engine, *, migrate: bool = True) -> None:
    """Create the store's tables where missing (safe when several processes start on one database at once),
    then, with `migrate` (the writer: the gateway), add the columns an older database lacks.

    Readers (the web app's monitoring) pass `migrate=False`: they never ALTER a table (they select none of
    `ADDED_COLUMNS`), so a reader without the rights, or on a read-only file, still reads."""
    create_schema(lambda: metadata.create_all(engine))
    if migrate:
        add_missing_columns(engine)


def add_missing_columns(
    engine: Engine, *, lock_timeout_s: float = ALTER_LOCK_TIMEOUT_S, attempts: int = ALTER_ATTEMPTS
) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for each of `ADDED_COLUMNS` a table lacks; the columns added ("table.column").

    Safe when several processes open one older database at once: a column another process has just added is
    taken as added (SQLite has no ADD COLUMN IF NOT EXISTS). On PostgreSQL each ALTER waits at most
    `lock_timeout_s` for the table's lock, `attempts` times. Raises `StoreSchemaError` naming the statements to
    run as the table's owner when the database refuses them (no rights, a read-only file) or the lock never
    comes; an unreachable database raises its OperationalError (an outage, not a schema problem).
    """
    from sqlalchemy import inspect, text

    postgres = engine.dialect.name == "postgresql"
    missing = []
    for name, columns in ADDED_COLUMNS.items():
        have = {c["name"] for c in inspect(engine).get_columns(name)}
        missing += [(name, TABLES[name].c[c]) for c in columns if c not in have]
    statements = [
        f"ALTER TABLE {name} ADD COLUMN {col.name} {col.type.compile(dialect=engine.dialect)}" for name, col in missing
    ]
    added = []
    for i, ((name, col), ddl) in enumerate(zip(missing, statements, strict=True)):
        for attempt in range(1, attempts + 1):
            try:
                with engine.begin() as conn:
                    if postgres:  # LOCAL: for this transaction only, the pooled connection keeps its defaults
                        conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
                    conn.execute(text(ddl))
            except (OperationalError, ProgrammingError) as exc:
                # Raises the database's own error if it cannot even be inspected now: it is down, an outage.
                if col.name in {c["name"] for c in inspect(engine).get_columns(name)}:
                    break  # another process added it meanwhile
                lock_wait = getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available: lock_timeout
                if lock_wait and attempt < attempts:
                    log.warning("prediction store: %s waited %.0f s for its lock, trying again", ddl, lock_timeout_s)
                    continue
                todo = ";\n  ".join(statements[i:])
                why = (
                    f"the table stayed locked by other sessions ({attempts} waits of {lock_timeout_s:g} s)"
                    if lock_wait
                    else brief_error(exc)
                )
                raise StoreSchemaError(
                    f"the prediction store's table {name} lacks columns this version writes, and adding them "
                    f"failed: {why}. Run as the table's owner:\n  {todo};",
                    "then start again"
                    + ("; a long transaction holds the lock (see pg_stat_activity)" if lock_wait else ""),
                ) from exc
            log.info("prediction store: added column %s.%s (a database created by an older version)", name, col.name)
            added.append(f"{name}.{col.name}")
            break
    return added


WARN_EVERY_S = 30.0  # store trouble that repeats (every write attempt of an outage) is logged this often
MAX_HELD = 100_000  # rows kept in memory while neither the database nor the spill file takes them (~100 MB)
REPLAY_CHUNK = 5000  # spill lines written per transaction (a long outage's file, read as it is written back)
# Where rows still held at shutdown go when the database and the disk refuse them: memory-backed, so a full disk
# does not stop it; it outlives the process (not a reboot), and the next start on the same store replays it.
EMERGENCY_DIR = Path("/dev/shm")


def emergency_spill_path(url: str, spill_path: Path | None, directory: Path | None) -> Path | None:
    """The store's last-resort spill file in `directory` (None where there is none), named by a digest of the
    store's identity (never the URL itself: it may carry a password)."""
    if directory is None or not directory.is_dir():
        return None
    identity = str(spill_path.resolve()) if spill_path is not None else url
    return directory / f"pyrocast-spill-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsonl"


class PredictionStore:
    """The store and its background writer. `put_*` never block; `flush()` waits until written.

    `retries` write attempts per batch, `retry_delay_s` doubling up to 5 s between them, then the spill file;
    rows nobody took are retried every `held_retry_s`, and those still held at `close()` go to a spill file in
    `emergency_dir` (memory-backed /dev/shm by default; None: none), which the next start replays too.
    Once a batch has gone through all its retries the store is in an outage: later batches get one attempt each
    before the spill file (the writer would otherwise fall 20 s behind per batch), and the writer tries the
    database every `held_retry_s` while rows wait in a spill file, writing them there and then.
    Spill files earlier runs left are written back by the writer once started (without one, by `flush` or
    `close`), not by the constructor.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 500,
        interval_s: float = 0.1,
        spill_path: Path | None = None,
        retries: int = 8,
        retry_delay_s: float = 0.2,
        held_retry_s: float = 5.0,
        emergency_dir: Path | None = EMERGENCY_DIR,
    ) -> None:
        self.url = url
        self.shown_url = redact(url)  # the only form of the URL that reaches a log or an answer: no password
        self.engine = make_engine(url)
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.spill_path = spill_path
        self.emergency_path = emergency_spill_path(url, spill_path, emergency_dir)
        # Appends to and claims of both spill files, between processes (`_exclusive`): a hidden file beside the spill
        # file, in the data directory; without a spill file there is no folder to share.
        # A device standing for one (/dev/full in the tests) gets no lock file beside it.
        shared = spill_path is not None and (spill_path.is_file() or not spill_path.exists())
        self._lock_path = spill_path.with_name(f".{spill_path.name}.lock") if shared and spill_path else None
        # Claimed files whose rows are written but whose torn lines found no space: not re-read before this time.
        self._torn_waiting: dict[Path, float] = {}
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.held_retry_s = held_retry_s
        self._held: list[tuple[str, dict[str, Any]]] = []  # taken by neither the database nor the spill file
        self.dropped = 0  # rows given up (logged): beyond MAX_HELD, or refused with no spill file to keep them in
        self.refused = 0  # rows the database refused for what they hold, set aside (or, with no spill file, dropped)
        self._refused_since_whole = 0  # ... since the last batch the database took whole
        self._last_refusal = ""
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._pending = 0  # rows taken from the queue but not yet committed
        # Rows put and rows done since start: rows are done in the order they were put, so a flush waits for the
        # rows put before it only (waiting for an empty queue never ended under steady traffic).
        self._put_total = 0
        self._done_total = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # close() was called: spill rather than retry (the kill grace is short)
        self.written = {name: 0 for name in TABLES}
        self.write_errors = 0
        self._warn = WarnEvery(WARN_EVERY_S, log)
        self._ready = False  # the tables are known to exist
        self._outage_since: float | None = None  # when the first attempt that failed since the last success began
        self._attempt_started: float | None = None  # when the database call running now began (None: none runs)
        self._outage_failures = 0
        self._traced = False  # a traceback was logged in this outage (one is enough)
        self._last_error = ""
        self._spilled_since_ok = 0
        # Spill files an earlier run left are written back by the writer, first thing: not here, where a long
        # outage's file (100,000 rows: about 12 s) held up the gateway's start. (claimed file, rows so far, since)
        self._replaying: tuple[Path, int, float] | None = None
        self._replay_cut = False  # close() cut a write-back short: later rows go to the spill file, behind its rest
        try:
            create_tables(self.engine)
            self._ready = True
        except OperationalError as exc:  # unreachable, not broken: serve meanwhile (a corrupt file still raises)
            self._outage_since = time.monotonic()
            self._last_error = brief_error(exc)
            log.warning(
                "prediction store at %s cannot be reached (%s): check PYROCAST_STORE_URL and the database. "
                "Predictions are answered meanwhile: their rows go to %s and are written once the database "
                "takes rows (tried every %.0f s)",
                self.shown_url,
                self._last_error,
                f"the spill file {spill_path}" if spill_path is not None else "memory",
                held_retry_s,
            )
        except StoreSchemaError:  # the gateway may not add the columns it writes: every row would be refused
            self.engine.dispose()
            raise

    # --- writing ------------------------------------------------------------------------------------------------
    def start(self) -> PredictionStore:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-store-writer", daemon=True)
            self._thread.start()
        return self

    def put_prediction(self, row: dict[str, Any]) -> None:
        self._put("predictions", row)

    def put_feedback(self, row: dict[str, Any]) -> None:
        self._put("feedback", row)

    def _put(self, table: str, row: dict[str, Any]) -> None:
        row.setdefault("ts", utcnow())
        with self._lock:
            self._pending += 1
            self._put_total += 1
        self._queue.put((table, row))

    @property
    def queue_depth(self) -> int:
        return self._pending

    @property
    def held(self) -> int:
        """Rows neither written nor spilled, held in memory until the database or the disk takes them."""
        return len(self._held)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row put so far is committed or spilled (or `timeout`); True when they all are. Rows
        put meanwhile are not waited for."""
        if self._thread is None:
            self._drain_sync()
            return True
        deadline = time.monotonic() + timeout
        with self._idle:
            target = self._put_total
            while self._done_total < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.5))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, stop the writer thread; spill what cannot be written.

        A writer retrying a refusing database goes straight to the spill file once this is called: its retries
        (about 16 s) plus the queue's last attempt could outlast the 25 s `pyrocast up` gives a gateway to stop.
        timeout: how long to wait for the writer (default: past `LOCK_TIMEOUT_S`, so a write waiting on a lock
        fails and is spilled rather than abandoned)."""
        timeout = LOCK_TIMEOUT_S + 5.0 if timeout is None else timeout
        self._closing.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abandon_writer(timeout)
                return
            self._thread = None
        self._drain_sync()
        if self._outage_since is not None and self._spill_waiting():  # the rate-limited lines may have skipped it
            log.error(
                "prediction store at %s refuses rows at shutdown: rows wait in %s; the next start writes them",
                self.shown_url,
                self.spill_path,
            )
        if self._held and self.emergency_path is not None and self._spill(self._held, self.emergency_path):
            log.error(
                "prediction store: the database and the spill file refused %d rows at shutdown; they are in %s "
                "(memory: it survives this process, not a reboot) and the next start on this store writes them",
                len(self._held),
                self.emergency_path,
            )
            self._held = []
        if self._held:
            self.dropped += len(self._held)
            log.critical(
                "prediction store: %d rows LOST at shutdown: neither the database nor the spill file %s took them",
                len(self._held),
                self.spill_path,
            )
            self._held = []
        self.engine.dispose()

    def _abandon_writer(self, waited: float) -> None:
        """The writer is stuck in a database call past `waited` s: spill what is still queued from here (the writer
        is not taking from the queue), never write alongside it."""
        batch = self._take_queued()
        spilled = bool(batch) and self._spill(batch)
        if spilled:
            self._done(len(batch))
        self._queue.put(None)  # so that the writer stops if its call ever returns
        log.critical(
            "prediction store at %s: the writer is stuck in a database call after %.0f s; %d queued rows %s; the "
            "rows of the batch it is writing (about %d) are lost if the call never returns",
            self.shown_url,
            waited,
            len(batch),
            f"spilled to {self.spill_path}" if spilled else ("LOST" if batch else "none"),
            self._pending,
        )
        if batch and not spilled:
            self.dropped += len(batch)

    def _run(self) -> None:
        if self._spill_waiting():  # an earlier run's spilled rows, before this run's (rows queue meanwhile)
            self._write_with_retry([], final=False)
        while True:
            # Never an untimed wait: rows appended to the spill file by hand (corrected refused rows) are written
            # within `held_retry_s` on an idle gateway too, as OPERATIONS.md says (a stat call each time).
            try:
                item = self._queue.get(timeout=self.held_retry_s)
            except queue.Empty:
                self._write_with_retry([], final=False)  # only what waits: held rows, spill files, the tables
                continue
            if item is None:
                return
            batch = [item]
            stop = False
            deadline = time.monotonic() + self.interval_s
            # Gather a batch: whatever arrives within `interval_s`, up to `batch_size` rows.
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(left, 0.0)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write_with_retry(batch, final=False)
            if stop:
                return

    def _take_queued(self) -> list[tuple[str, dict[str, Any]]]:
        """Every row still in the queue (the writer's stop sentinel left out)."""
        batch: list[tuple[str, dict[str, Any]]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
        return batch

    def _drain_sync(self) -> None:
        self._write_with_retry(self._take_queued(), final=True)  # with the held rows, if any

    def _write_with_retry(self, batch: list[tuple[str, dict[str, Any]]], final: bool) -> None:
        """Write what waits in spill files, then held rows and `batch`; retry, then spill, then hold.

        Never raises (the writer thread must live). Spilled rows go first, so rows reach the database in the
        order they came."""
        batch, self._held = self._held + batch, []
        waiting = self._spill_waiting() and not self._replay_cut
        if not batch and not waiting and self._ready:
            return
        delay = self.retry_delay_s
        if self._replay_cut:  # rows written now would overtake the spilled rows left for the next start
            attempts = 0
        elif self._outage_since is not None and self._closing.is_set():
            # Shutting down in an outage: another attempt could wait out a lock again (LOCK_TIMEOUT_S) past what
            # close waits, and rows abandoned in a call are lost with the process. The next start writes the file.
            attempts = 0
        elif self._outage_since is not None:
            attempts = 1
        else:
            attempts = min(3, self.retries) if final else self.retries
        written = False
        for attempt in range(attempts):
            self._attempt_started = time.monotonic()
            try:
                if not self._ready:
                    create_tables(self.engine)
                    self._ready = True
                if waiting:
                    self._replay_spill()
                    waiting = False
                if batch:
                    self._write(batch)
                written = True
                break
            except _ReplayCut:
                break
            except Exception as exc:  # the database may be locked or down: retry, never lose the rows
                self._failed(exc, attempt + 1)
                self._attempt_started = None
                if attempt + 1 < attempts:
                    if final:  # the drain at close: its few short retries
                        time.sleep(delay)
                    elif self._closing.wait(delay):
                        break  # shutting down: to the spill file now, not after the retries
                    delay = min(delay * 2, 5.0)
            finally:
                self._attempt_started = None
        if not written:
            if not batch:
                return
            if not self._spill(batch):
                self._hold(batch)
                return
            if self._replay_cut:  # not an outage: said once, by the cut
                self._done(len(batch))
                return
            self._spilled_since_ok += len(batch)
            self._warn(
                "spill",
                "prediction store: %d rows spilled to %s (%d since the database last took rows); they are written "
                "once it takes rows again",
                len(batch),
                self.spill_path,
                self._spilled_since_ok,
                level=logging.ERROR,
            )
            self._done(len(batch))
            return
        self._recovered()
        self._done(len(batch))

    def _done(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            self._done_total += n
            self._idle.notify_all()

    def _failed(self, exc: BaseException, attempt: int) -> None:
        """Count and (rate-limited) log a failed attempt; the outage's first logged line carries the traceback."""
        self.write_errors += 1
        self._last_error = brief_error(exc)
        if self._outage_since is None:  # from when the failed call began: a lock's wait is part of the outage
            self._outage_since = self._attempt_started or time.monotonic()
        self._outage_failures += 1
        logged = self._warn(
            "write",
            "prediction store at %s refuses writes (attempt %d: %s); rows are retried, then spilled",
            self.shown_url,
            attempt,
            self._last_error,
            exc_info=None if self._traced else exc,
        )
        self._traced = self._traced or logged

    def _recovered(self) -> None:
        if self._outage_since is not None:
            # The whole outage's count: the rate-limited spill line showed only its first batch (3 rows of 320).
            log.warning(
                "prediction store at %s takes rows again after %.0f s (%d failed attempts; %d rows spilled "
                "meanwhile, written now)",
                self.shown_url,
                time.monotonic() - self._outage_since,
                self._outage_failures,
                self._spilled_since_ok,
            )
        self._outage_since = None
        self._outage_failures = 0
        self._traced = False
        self._spilled_since_ok = 0

    def trouble(self) -> str | None:
        """What is wrong while the store refuses writes (its last attempt failed, or rows were spilled or held
        since its last successful write, or its writer has waited `SLOW_WRITE_S` on the database); None while it
        takes them."""
        started = self._attempt_started
        replaying = self._replaying
        if replaying is not None and self._outage_since is None and time.monotonic() - replaying[2] > SLOW_WRITE_S:
            claimed, rows, since = replaying
            return (
                f"the prediction store ({self.shown_url}) is writing back rows an earlier run spilled ({claimed}): "
                f"{rows} written in {time.monotonic() - since:.0f} s; this run's {self.queue_depth} rows wait behind "
                "them, and the monitoring figures leave both out until they are written"
            )
        if started is not None and self._outage_since is None and (waited := time.monotonic() - started) > SLOW_WRITE_S:
            # Not failed yet, but every row queues behind this call (a lock another connection holds: up to
            # LOCK_TIMEOUT_S): on call sees it now, not once the call fails.
            return (
                f"the prediction store ({self.shown_url}) has kept its writer waiting {waited:.0f} s (a lock another "
                f"connection holds, or a slow database): {self.queue_depth} rows wait to be written"
            )
        if self._refused_since_whole and self._outage_since is None and not self._spilled_since_ok and not self._held:
            return (
                f"the prediction store ({self.shown_url}) refuses rows for what they hold ({self._last_refusal}): "
                f"{self._refused_since_whole} rows set aside since it last took a batch whole, beside "
                f"{self.spill_path or 'nothing (no spill file: lost)'}"
            )
        if self._outage_since is None and not self._spilled_since_ok and not self._held:
            return None
        parts = []
        if self._spilled_since_ok:
            parts.append(f"{self._spilled_since_ok} rows spilled to {self.spill_path}")
        if self._held:
            parts.append(f"{len(self._held)} rows held in memory")
        if self._spill_waiting() and not self._spilled_since_ok:
            parts.append("rows wait in the spill file")
        held = ", ".join(parts) or "rows wait in the queue"
        return (
            f"the prediction store ({self.shown_url}) refuses writes ({self._last_error}): {held}; they are written "
            "once it takes rows again"
        )

    def _hold(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        over = len(batch) - MAX_HELD
        if over > 0:  # memory is the last resort: beyond it the oldest rows go, loudly
            self.dropped += over
            self._warn(
                "lost",
                "prediction store: %d rows LOST (more than %d held in memory; %d lost since start)",
                over,
                MAX_HELD,
                self.dropped,
                level=logging.CRITICAL,
            )
            self._done(over)
            batch = batch[over:]
        self._held = batch

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Write `batch` in one transaction. Where the database refuses a row for what it holds, no retry can help
        (retried as an outage, it kept its whole batch out for about 20 s before the spill file took it): the
        batch is written again at once, sifted, and the refused rows are set aside with the reason."""
        refused: list[tuple[tuple[str, dict[str, Any]], str]] = []
        try:
            with self.engine.begin() as conn:
                counts = _insert(conn, batch)
        except StatementError as exc:
            if not _refuses_content(exc):
                raise
            aside: Path | None = None
            try:
                with self.engine.begin() as conn:
                    counts, refused = _insert_sifted(conn, batch)
                    if refused and self.spill_path is not None:
                        # Before the commit, so a crash after it loses none of them; a full disk raises, and the
                        # batch goes back whole to be tried again.
                        digest = hashlib.sha256(_refused_lines(refused).encode()).hexdigest()
                        aside = self._set_aside(self.spill_path, digest, refused)
            except BaseException:
                if aside is not None:  # not committed: the rows go back with the batch, and are set aside again
                    aside.unlink(missing_ok=True)
                raise
            if aside is not None and self.spill_path is not None:
                self._say_set_aside(self.spill_path, aside, refused, len(batch), "received")
            if refused and self.spill_path is None:  # nowhere to keep them: the log is their last record
                self.dropped += len(refused)
                log.critical(
                    "prediction store: the database refuses %d of %d rows received for what they hold (%s) and no "
                    "spill file is set: they are LOST; they were: %s",
                    len(refused),
                    len(batch),
                    refused[0][1],
                    _refused_lines(refused).strip(),
                )
        self._note_refused(refused)
        for name, n in counts.items():
            self.written[name] += n

    def _note_refused(self, refused: list[tuple[tuple[str, dict[str, Any]], str]]) -> None:
        """Count rows refused for what they hold; `trouble()` says so until a batch is taken whole."""
        self.refused += len(refused)
        self._refused_since_whole = self._refused_since_whole + len(refused) if refused else 0
        if refused:
            self._last_refusal = refused[0][1]

    def _spill(self, batch: list[tuple[str, dict[str, Any]]], path: Path | None = None) -> bool:
        """Append the rows to the spill file (or `path`), whole lines or nothing; False when it cannot be written."""
        path = path or self.spill_path
        why = "no spill file is set"
        if path is not None:
            data = "".join(
                json.dumps({"table": table, "row": row}, default=_json_default) + "\n" for table, row in batch
            ).encode()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with self._exclusive():  # never into a file another process is renaming to write it back
                    _append_whole(path, data)
                return True
            except OSError as exc:
                why = f"the spill file {path} cannot be written ({exc.strerror or exc})"
        self._warn(
            "hold",
            "prediction store: %d rows could not be written to the database and %s: holding them in memory "
            "(%d in all) and retrying every %.0f s (free disk space, or bring the database back)",
            len(batch),
            why,
            len(self._held) + len(batch),
            self.held_retry_s,
            level=logging.ERROR,
        )
        return False

    # --- spill files: one code path for the start and for a database that comes back ----------------------------
    def _spill_files(self) -> list[Path]:
        return [p for p in (self.spill_path, self.emergency_path) if p is not None]

    def _spill_waiting(self) -> bool:
        return any(p.is_file() or _claimed_files(p) for p in self._spill_files())

    def _replay_spill(self) -> int:
        """Write every spill file's rows (oldest first); raises when the database refuses (nothing is lost)."""
        n = 0
        for path in self._spill_files():
            n += self._replay(path)
        return n

    def _replay(self, path: Path) -> int:
        """Write the rows of the spill file `path`; the number written.

        The file is first renamed aside under a name of its own (`.replaying-<id>`), so rows spilled meanwhile
        start a new file and the one being written never changes. Its rows are written in chunks, each committed
        with a key naming the claimed file and the chunk: a replay cut short by a crash is finished first, never
        written twice, and rows appended again later (corrected refused rows, the same bytes) are a new file. A file
        the database refuses waits under its claimed name. One process's rename never takes a file another is
        appending to (`_exclusive`), and one process at a time writes a claimed file back (a lock on the file)."""
        # Files claimed before first, oldest first (rows keep their order); one that fails raises here, so that an
        # outage leaves at most one claimed file beside the spill file.
        now = time.monotonic()
        n = sum(
            self._replay_claimed(claimed, path)
            for claimed in _claimed_files(path)
            if self._torn_waiting.get(claimed, 0.0) <= now  # rows written, torn lines waiting for space: not each batch
        )
        if not path.is_file():  # nothing spilled; and a device standing for a spill file (/dev/full) is never moved
            return n
        with self.engine.connect() as conn:  # unreachable: the file stays as it is, and grows, under its own name
            conn.exec_driver_sql("SELECT 1")
        try:
            f = path.open("r+b")
        except FileNotFoundError:  # another process claimed it a moment ago
            return n
        with f:
            # Locked before it is renamed: another process finding it claimed leaves it to this one.
            if not self._lock_file(f.fileno()):
                return n
            # The chunk size in the name too: a release with another REPLAY_CHUNK finds the same chunks under its keys.
            claimed = path.with_name(f"{path.name}.replaying-{uuid.uuid4().hex[:16]}-{REPLAY_CHUNK}")
            with self._exclusive():  # no process appends to the file while it is renamed
                if not _same_file(f.fileno(), path):  # claimed and written back by another process meanwhile
                    return n
                os.replace(path, claimed)
            # Never put back under its first name, even refused: claimed again under another, the chunks committed
            # under this one (or by a commit whose answer was lost) would be written again. It waits claimed.
            return n + self._replay_claimed(claimed, path, f)

    def _replay_claimed(self, claimed: Path, path: Path, locked: BinaryIO | None = None) -> int:
        """Write a claimed spill file chunk by chunk (REPLAY_CHUNK lines per transaction, read as it goes: a long
        outage's file is not held in memory), then keep its unreadable lines aside and remove it. A file another
        process is writing back (it holds the file's lock), or has just removed, is left to it. `locked`: the file,
        open and locked by the caller."""
        ident = claimed.name.rpartition(".replaying")[2].lstrip("-")
        n, already, torn = 0, 0, []
        if locked is not None:
            f = locked
        else:
            try:
                f = claimed.open("r+b")  # writable: an exclusive lock on NFS needs it
            except FileNotFoundError:
                return 0
        with f:
            if locked is None and (not self._lock_file(f.fileno()) or not _same_file(f.fileno(), claimed)):
                return 0
            # A file claimed by an earlier version (`.replaying`, no id) was keyed by its digest, in one transaction.
            _, dash, size = ident.rpartition("-")
            chunks = _line_chunks(f, None if not ident else int(size) if dash and size.isdigit() else REPLAY_CHUNK)
            since = time.monotonic()
            self._replaying = (claimed, 0, since)
            try:
                for index, lines in enumerate(chunks):
                    if self._closing.is_set() and self._thread is not None:
                        # The writer is asked to stop (`pyrocast up` gives a gateway 25 s): the chunks written are
                        # keyed, so the next start writes the rest of this file, and only the rest.
                        self._cut_replay(claimed, n)
                    batch, bad = _spill_rows(lines)
                    torn += bad
                    key = f"spill:{ident}:{index}" if ident else f"spill:{hashlib.sha256(b''.join(lines)).hexdigest()}"
                    written = self._replay_chunk(path, key, batch)
                    if written is None:
                        already += 1
                        continue
                    n += sum(written.values())
                    self._replaying = (claimed, n, since)
            finally:
                self._replaying = None
            if torn:  # named by the claimed file, written whole before it goes: a second file never replaces the first
                aside = path.with_name(f"{path.name}.bad-{ident or int(time.time())}")
                try:
                    atomic_write(aside, b"\n".join(torn) + b"\n")
                except OSError as exc:  # a full disk: the claimed file stays (its rows are written) until they fit
                    self._warn(
                        "bad-lines",
                        "prediction store: %d unreadable spill lines cannot be kept aside in %s (%s): %s, whose rows "
                        "are written, stays until they can",
                        len(torn),
                        aside,
                        exc.strerror or exc,
                        claimed,
                        level=logging.ERROR,
                    )
                    self._torn_waiting[claimed] = time.monotonic() + self.held_retry_s
                    return n
                self._torn_waiting.pop(claimed, None)
                log.warning("prediction store: %d unreadable spill lines kept aside in %s", len(torn), aside)
            claimed.unlink(missing_ok=True)  # while its lock is held: nobody else has it open for writing back
        if already and not n:
            log.warning("prediction store: the spilled rows in %s were written before; file removed", claimed)
        else:
            log.warning("prediction store: wrote %d spilled rows (from %s)", n, path)
        return n

    def _cut_replay(self, claimed: Path, n: int) -> NoReturn:
        self._replay_cut = True
        log.warning(
            "prediction store: stopping while spilled rows are written back: %d written from %s, the rest wait there, "
            "and rows of this run not written yet go to %s; the next start writes both (rows keep their times)",
            n,
            claimed,
            self.spill_path or self.emergency_path,
        )
        raise _ReplayCut

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Appending to a spill file and renaming it to write it back, one process at a time (replicas may share a
        data directory): a lock file beside the spill file, held for an append or a rename only. Where it cannot be
        locked (a file system without locks), said once, and done without."""
        if self._lock_path is None:
            yield
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._warn(
                "spill-lock",
                "prediction store: %s cannot be opened to lock the spill file (%s)",
                self._lock_path,
                exc,
                level=logging.WARNING,
            )
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                self._warn(
                    "spill-lock",
                    "prediction store: %s cannot be locked (%s): spilling without the lock",
                    self._lock_path,
                    exc,
                    level=logging.WARNING,
                )
            yield
        finally:
            os.close(fd)  # releases the lock

    def _lock_file(self, fd: int) -> bool:
        """Take a claimed spill file's lock without waiting; False when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:  # no locks on this file system: write it back all the same
            self._warn(
                "spill-lock", "prediction store: a claimed spill file cannot be locked (%s)", exc, level=logging.WARNING
            )
        return True

    def _replay_chunk(self, path: Path, key: str, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, int] | None:
        """Write one chunk of a spill file with its key, in one transaction; None when the key says it was written."""
        written: dict[str, int] | None = None
        refused: list[tuple[tuple[str, dict[str, Any]], str]] = []
        aside: Path | None = None
        with self.engine.begin() as conn:
            done = conn.execute(select(spill_replays.c.key).where(spill_replays.c.key == key)).first()
            if done is None:
                # The key first: a write opens the transaction (pysqlite opens one only then), so that the savepoints
                # below nest in it instead of committing on their own.
                conn.execute(insert(spill_replays).values(key=key, ts=utcnow(), rows=len(batch)))
                written, refused = _insert_sifted(conn, batch)
                if refused:  # written before the commit: a crash between the two loses nothing
                    aside = self._set_aside(path, hashlib.sha256(key.encode()).hexdigest(), refused)
        if written is None:
            return None
        if aside is not None:
            self._say_set_aside(path, aside, refused, len(batch))
        self.refused += len(refused)  # counted, not a standing trouble: a file replayed once, said in its own line
        for name, k in written.items():
            self.written[name] += k
        return written

    def _set_aside(self, path: Path, digest: str, refused: list[tuple[tuple[str, dict[str, Any]], str]]) -> Path:
        """Keep the rows the database refuses for what they hold in `<spill>.refused-<digest>`, each with the reason.

        Retrying them cannot help, and tried before every batch they kept every later row out (the store looked
        down for good). The name comes from the spill file's digest: a replay repeated after a crash rewrites the
        same file. The lines are spill lines (plus "refused"): corrected, they can be appended to the spill file.
        """
        aside = path.with_name(f"{path.name}.refused-{digest[:16]}")
        lines = [
            json.dumps({"table": table, "row": row, "refused": why}, default=_json_default) + "\n"
            for (table, row), why in refused
        ]
        atomic_write(aside, "".join(lines).encode())
        return aside

    def _say_set_aside(
        self,
        path: Path,
        aside: Path,
        refused: list[tuple[tuple[str, dict[str, Any]], str]],
        of: int,
        came: str = "spilled in {path}",
    ) -> None:
        """Tell on call where refused rows were kept, once their batch is committed (before, the file may go again).

        At most one line every 30 s per source (a schema at odds with this version refuses every batch); the glob
        names the files the lines held back made."""
        self._warn(
            f"refused-{came.split()[0]}",
            "prediction store: the database refuses %d of the %d rows %s for what they hold (%s); the "
            "others are written. The refused rows are kept in %s (all such files: %s.refused-*), each with the "
            "reason: correct them and append them to %s to have them written (or delete the file)",
            len(refused),
            of,
            came.format(path=path),
            refused[0][1],
            aside,
            path,
            path,
            level=logging.CRITICAL,
        )

    # --- rollout events (rare; written synchronously so the state survives a crash) -----------------------------
    def add_event(
        self,
        action: str,
        mode: str,
        state: dict[str, Any],
        reason: str | None = None,
        champion_version: str | None = None,
        challenger_version: str | None = None,
        claim: str | None = None,
        at: float | None = None,
    ) -> int | None:
        """Write a rollout event with its state snapshot; returns its id (ids grow with every event).

        claim: a key naming a change that time decides (several gateway replicas decide it at once). The event is
        written only by the first to claim the key, in the same transaction; the others get None and write nothing.
        at: when the change took effect (seconds since the epoch), where that was before now.
        """
        row = {
            "ts": utcnow() if at is None else datetime.fromtimestamp(at, UTC),
            "action": action,
            "mode": mode,
            "reason": reason,
            "champion_version": champion_version,
            "challenger_version": challenger_version,
            "state": json.dumps(state, default=_json_default),
        }
        try:
            with self.engine.begin() as conn:  # the event and its claim together, or neither
                event_id = conn.execute(
                    insert(rollout_events).values(**_fit(rollout_events, row))
                ).inserted_primary_key[0]
                if claim is not None:
                    conn.execute(insert(rollout_claims).values(key=claim[:200], ts=row["ts"], event_id=event_id))
        except IntegrityError:
            if claim is None:
                raise
            return None  # another replica claimed this change first (its event is, or will be, the record)
        self.written["rollout_events"] += 1
        return int(event_id)

    def last_state(self) -> dict[str, Any] | None:
        """The state snapshot of the most recent rollout event (None on a fresh store)."""
        latest = self.latest_event()
        return latest[1] if latest else None

    def latest_event(self) -> tuple[int, dict[str, Any] | None] | None:
        """(id, state snapshot) of the most recent rollout event, or None on a fresh store."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(rollout_events.c.id, rollout_events.c.state).order_by(rollout_events.c.id.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return int(row[0]), (json.loads(row[1]) if row[1] else None)

    def latest_event_id(self) -> int:
        """The id of the most recent rollout event (0 on a fresh store): cheap enough to poll."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(rollout_events.c.id))).scalar() or 0)

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent rollout events first (without the state snapshots)."""
        cols = [c for c in rollout_events.c if c.name != "state"]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(rollout_events.c.id.desc()).limit(limit)).mappings().all()
        return [_read(r) for r in rows]

    # --- reading ------------------------------------------------------------------------------------------------
    def predictions_for(self, request_id: str) -> list[dict[str, Any]]:
        """Every stored row of one request (served answer, shadow copy, fallback attempt, ...)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(predictions).where(predictions.c.request_id == request_id).order_by(predictions.c.id)
            ).mappings()
            return [_read(r) for r in rows]

    def canary_calls(self, version: str, since: datetime, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` challenger calls of a canary since `since`, from every gateway on this store.

        Each: error (None when it answered), latency_ms, label, champion_label (the champion's answer to the
        same request, where it was compared) and t (its time, seconds since the epoch). Calls that failed before the
        challenger's version was known count as its own.
        """
        p = predictions.c
        calls = (
            select(p.request_id, p.error, p.latency_ms, p.label, p.ts)
            .where(
                p.variant == "challenger",
                p.rollout_mode == "canary",
                p.ts >= _utc(since),
                or_(p.model_version == version, p.model_version.is_(None)),
            )
            .order_by(p.ts.desc(), p.id.desc())  # newest first along ix_predictions_variant_ts: O(limit) reads
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(calls).mappings()]
            answered = [r["request_id"] for r in rows if r["error"] is None]
            compared: dict[str, str] = {}
            for i in range(0, len(answered), 500):  # bound the IN list for every backend
                chunk = answered[i : i + 500]
                q = select(p.request_id, p.label).where(p.variant == "champion-compare", p.request_id.in_(chunk))
                compared.update({r.request_id: r.label for r in conn.execute(q) if r.label is not None})
        for r in rows:
            r["champion_label"] = compared.get(r["request_id"])
            r["t"] = _utc(r.pop("ts")).timestamp()
        return rows

    def label_of(self, request_id: str) -> dict[str, Any] | None:
        """The label that counts for a request (`request_labels`): its feedback row, or None when unlabelled."""
        f = feedback.c
        with self.engine.connect() as conn:
            chosen = conn.execute(request_labels(f.request_id == request_id)).first()
            if chosen is None:
                return None
            return _read(conn.execute(select(feedback).where(f.id == chosen.id)).mappings().one())

    def feedback_for(self, request_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id)
            ).mappings()
            return [_read(r) for r in rows]

    def count(self, table: str = "predictions", **where: Any) -> int:
        t = TABLES[table]
        q = select(func.count()).select_from(t)
        for k, v in where.items():
            q = q.where(t.c[k] == v)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def rows(self, table: str = "predictions", limit: int | None = None, **where: Any) -> list[dict[str, Any]]:
        """Rows of a table, oldest first, filtered by equality on columns."""
        t = TABLES[table]
        q = select(t).order_by(t.c.id)
        for k, v in where.items():
            q = q.where(t.c[k] == v)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_read(r) for r in conn.execute(q).mappings()]


def _insert(conn: Any, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """Insert the rows in the connection's transaction; rows per table."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for table, row in batch:
        by_table.setdefault(table, []).append(row)
    # Predictions first: a feedback row in the same batch refers to one of them.
    for name in ("predictions", "feedback", "rollout_events"):
        rows = by_table.get(name)
        if rows:
            conn.execute(insert(TABLES[name]), [_fit(TABLES[name], r) for r in rows])
    return {name: len(rows) for name, rows in by_table.items()}


# What a database answers for a row it will never take, whatever the retries: a constraint (NOT NULL), a value its
# column cannot hold (PostgreSQL's DataError), or one SQLAlchemy cannot even turn into a parameter (a StatementError
# that is no database error: "yes" for a boolean, "north" for a float on SQLite).
def _refuses_content(exc: BaseException) -> bool:
    return isinstance(exc, (DataError, IntegrityError)) or (
        isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
    )


def _insert_sifted(
    conn: Any, batch: list[tuple[str, dict[str, Any]]]
) -> tuple[dict[str, int], list[tuple[tuple[str, dict[str, Any]], str]]]:
    """Insert the rows the database takes, in savepoints, halving a group it refuses down to the single rows at
    fault: (rows written per table, the refused rows with the reason). Any other error (the database gone) is
    raised: the transaction then writes nothing."""
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        # pysqlite opens its transaction only at the first INSERT: a savepoint before one is a transaction of its
        # own, committed at its release. (A first group refused leaves its savepoint open, which hid this.)
        conn.exec_driver_sql("BEGIN")
    written: dict[str, int] = {}
    refused: list[tuple[tuple[str, dict[str, Any]], str]] = []
    groups = [batch]
    while groups:
        group = groups.pop()
        try:
            with conn.begin_nested():
                counts = _insert(conn, group)
        except StatementError as exc:
            if not _refuses_content(exc):
                raise
            if len(group) == 1:
                refused.append((group[0], brief_error(exc)))
            else:  # the first half is popped first: rows keep their order
                groups += [group[len(group) // 2 :], group[: len(group) // 2]]
            continue
        for name, n in counts.items():
            written[name] = written.get(name, 0) + n
    return written, refused


def _refused_lines(refused: list[tuple[tuple[str, dict[str, Any]], str]]) -> str:
    """The refused rows as spill lines (what names their set-aside file, and what the log keeps without one)."""
    return "".join(json.dumps({"table": t, "row": r}, default=_json_default) + "\n" for (t, r), _ in refused)


def _claimed_files(path: Path) -> list[Path]:
    """The spill file's claimed copies being (or left from being) written to the database, oldest first."""
    found: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f"{path.name}.replaying*"):
            with contextlib.suppress(OSError):  # removed meanwhile by the process that wrote it back
                if p.is_file():
                    found.append((p.stat().st_mtime, p))
    return [p for _, p in sorted(found)]


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the open file `fd` (not removed, nor replaced, by the process that wrote it back)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _line_chunks(f: Any, size: int | None) -> Iterator[list[bytes]]:
    """A file's lines in lists of `size` (all in one list when None); a last line without its newline included."""
    chunk: list[bytes] = []
    for line in f:
        chunk.append(line)
        if size is not None and len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _spill_rows(lines: list[bytes]) -> tuple[list[tuple[str, dict[str, Any]]], list[bytes]]:
    """The rows in spill lines, and the lines that are none (torn by a crash or a full disk mid-write)."""
    batch, torn = [], []
    for raw in lines:
        line = raw.rstrip(b"\n")
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            row = rec["row"]
            if isinstance(row.get("ts"), str):
                row["ts"] = datetime.fromisoformat(row["ts"])
            if rec["table"] not in TABLES:  # no table to write it to: kept with the unreadable lines, not dropped
                raise KeyError(rec["table"])
            batch.append((str(rec["table"]), row))
        except (ValueError, KeyError, TypeError, AttributeError):
            torn.append(line)
    return batch, torn


def brief_error(exc: BaseException) -> str:
    """An exception in one line: the driver's first line, without SQLAlchemy's statement, parameters (row data)
    and link, or psycopg's second and third lines."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _fit(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A row as every backend takes it: the table's columns only, times as UTC instants (naive ones are UTC),
    strings clipped to their column's length and without NUL characters. SQLite stores such strings as they
    are; PostgreSQL refuses them, and with them the whole batch (retried, then spilled, then refused again)."""
    out: dict[str, Any] = {}
    for col in table.c:
        if col.name == "id":
            continue
        value = row.get(col.name)
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            length = getattr(col.type, "length", None)
            if length is not None and len(value) > length:
                value = value[:length]
        elif isinstance(value, datetime):
            value = _utc(value)
        out[col.name] = value
    return out


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _read(row: Any) -> dict[str, Any]:
    """A row read back, its time a UTC instant on every backend (SQLite returns naive UTC, PostgreSQL the
    time in the session's time zone)."""
    out = dict(row)
    if isinstance(out.get("ts"), datetime):
        out["ts"] = _utc(out["ts"])
    return out


def _append_whole(path: Path, data: bytes) -> None:
    """Append `data` to `path` and sync it; on failure cut the file back to where it was (no half line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):  # a device that cannot be truncated has kept nothing either
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _json_default(obj: object) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
