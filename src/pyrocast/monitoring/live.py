"""Live monitoring: plain queries over the prediction store (request rate, latency, traffic, live accuracy).

Every function takes a SQLAlchemy `Engine` on the store (`open_engine(settings)`) and a `Span` (a time window
cut into buckets, `make_span("1h")`), and returns plain dicts and lists, ready for JSON and plotly.

Definitions (the store's tables are described in `pyrocast.serving.store`):
- a *request* is one request id with at least one user-facing row (variant champion, challenger or
  champion-fallback); it *failed* when none of its rows was served. Its time is its earliest row.
- *latency* is `latency_ms` of served rows: the gateway's call to the model service, HTTP hop included
  (the tile fetch and the gateway's own work are not in it).
- *traffic per variant* counts served answers per variant; shadow copies and champion comparisons are
  counted apart (`copies`), since no user saw them.
- *live accuracy* of a model version: every labelled answer it gave (served, shadow or comparison) to a request
  that later got a true label (user feedback, replayed test labels, the fire feed), judged against the label of
  that request (`serving.store.request_labels`): its latest ground truth (replay, feed) if any, else its latest
  user verdict. Series are bucketed by the time of the prediction, not of the label.

SQL stays portable (SQLite and PostgreSQL): rows are filtered and bucketed in SQL (whole epoch seconds, integer
division), one pass over the window's predictions (`scan`) serves requests, latency and traffic, and numpy
computes the exact percentiles that SQLite cannot. Accuracy is counted in SQL (a join and a GROUP BY).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Engine, and_, case, cast, extract, func, select

from pyrocast.errors import InvalidInputError
from pyrocast.model.metrics import wilson_interval
from pyrocast.percentiles import percentile
from pyrocast.serving.store import (
    create_tables,
    feedback,
    make_engine,
    predictions,
    request_labels,
    rollout_events,
)
from pyrocast.settings import Settings

USER_VARIANTS = ("champion", "challenger", "champion-fallback")
COPY_VARIANTS = ("shadow", "champion-compare")
PERCENTILES = (50, 95, 99)
# Bucket widths (seconds) a chart may use: round numbers people read at a glance.
NICE_BUCKETS = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 60
# A bucket the window holds for less than this share of its width (the one that just began, or a sliver at the
# window's start) gets no rate: one request in its first 2 s of a minute read as 30 per minute beside a steady 1.
MIN_COVER = 0.25
MAX_WINDOW = timedelta(days=90)
MIN_WINDOW = timedelta(seconds=10)
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# --- windows and buckets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """A time window [since, until) cut into buckets of `bucket_s` seconds aligned on the epoch."""

    since: datetime
    until: datetime
    bucket_s: int

    @property
    def first(self) -> int:
        """The absolute number (epoch seconds // bucket_s) of the bucket holding `since`."""
        return int(_epoch(self.since) // self.bucket_s)

    def index(self, ts: datetime) -> int:
        """The bucket number of `ts` (0 = the bucket holding `since`)."""
        return int(_epoch(ts) // self.bucket_s) - self.first

    @property
    def n_buckets(self) -> int:
        return self.index(self.until - timedelta(microseconds=1)) + 1

    def edges(self) -> list[str]:
        """ISO times of the buckets' nominal starts on the epoch grid (UTC), one per bucket."""
        first = _epoch(self.since) // self.bucket_s * self.bucket_s
        return [_iso(datetime.fromtimestamp(first + i * self.bucket_s, UTC)) for i in range(self.n_buckets)]

    def bounds(self) -> list[tuple[datetime, datetime]]:
        """Each bucket's [start, end) as far as the window holds it: the first starts at `since` when the window
        does not begin on a grid edge, and the last ends at `until` (now), never in the future."""
        first = _epoch(self.since) // self.bucket_s * self.bucket_s
        out = []
        for i in range(self.n_buckets):
            start = datetime.fromtimestamp(first + i * self.bucket_s, UTC)
            out.append((max(start, self.since), min(start + timedelta(seconds=self.bucket_s), self.until)))
        return out

    def rated(self) -> list[bool]:
        """Whether each bucket covers enough of its width (`MIN_COVER`) for a rate: a count over a sliver of a
        bucket is noise blown up, not a rate."""
        return [(z - a).total_seconds() >= MIN_COVER * self.bucket_s for a, z in self.bounds()]

    def axis(self) -> dict[str, list[Any]]:
        """What a chart needs to place each bucket: `start` and `end` (ISO, UTC, milliseconds where the window's
        ends fall inside a second; drawn over [start, end), so a bar and a line of one bucket meet at its middle),
        `seconds` it covers, `rated` (whether it covers enough for a rate, `MIN_COVER`), and `t`, the nominal grid
        starts (kept for older readers)."""
        b = self.bounds()
        return {
            "t": self.edges(),
            "start": [_iso_ms(a) for a, _ in b],
            "end": [_iso_ms(z) for _, z in b],
            "seconds": [round((z - a).total_seconds(), 3) for a, z in b],
            "rated": self.rated(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"since": _iso_ms(self.since), "until": _iso_ms(self.until), "bucket_s": self.bucket_s}


def parse_window(text: str | timedelta) -> timedelta:
    """'15m', '1h', '6h', '24h', '7d', '90s' (or a timedelta) -> timedelta, between 10 s and 90 days."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    else:
        m = _WINDOW.match(str(text))
        if not m:
            raise InvalidInputError(
                f"window {text!r} is not understood", "use a number and a unit s, m, h or d, e.g. 15m, 1h, 7d"
            )
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    # Compared as seconds: a timedelta of 99999999999 days overflows (a 500 on the monitoring page).
    if not MIN_WINDOW.total_seconds() <= seconds <= MAX_WINDOW.total_seconds():
        raise InvalidInputError(f"window {text!r} is outside 10s..90d", "choose e.g. 15m, 1h, 24h or 7d")
    return text if isinstance(text, timedelta) else timedelta(seconds=seconds)


def pick_bucket(span_s: float, target_points: int = TARGET_POINTS) -> int:
    """The smallest round bucket width giving at most about `target_points` buckets over `span_s` seconds."""
    for b in NICE_BUCKETS:
        if span_s / b <= target_points:
            return b
    return NICE_BUCKETS[-1]


def make_span(window: str | timedelta = "1h", now: datetime | None = None, bucket_s: int | None = None) -> Span:
    """The window [now - window, now) (or ending at `now`), with a bucket width for about 60 points unless given.

    `until` is the real now, to the microsecond: rounded up, the bucket running now counted a second that had not
    happened yet; rounded down, it lost the rows written in the current second (they are before now, so inside)."""
    span = parse_window(window)
    until = _utc(now) if now is not None else datetime.now(UTC)
    if bucket_s is not None and bucket_s < 1:
        raise InvalidInputError(f"bucket width must be at least 1 s, got {bucket_s}")
    return Span(until - span, until, int(bucket_s or pick_bucket(span.total_seconds())))


def open_engine(settings: Settings) -> Engine:
    """An engine on the prediction store of `settings` (tables created if the gateway never ran).

    A reader never alters a table: the columns an older store lacks are the gateway's to add (it writes them;
    these queries select none of them), so a reader without ALTER rights or on a read-only store still reads."""
    engine = make_engine(settings.store_database_url)
    create_tables(engine, migrate=False)  # idempotent; an empty store then reads as "no traffic yet"
    return engine


# --- queries ---------------------------------------------------------------------------------------------------
def _seconds(engine: Engine, col: Any) -> Any:
    """Whole seconds since the epoch of a timestamp column, in SQL (exact integers: no float rounding at edges)."""
    if engine.dialect.name == "sqlite":  # the store writes naive UTC 'YYYY-MM-DD HH:MM:SS.ffffff'
        # strftime rounds fractions to the millisecond (59.9998 s read as the next second): whole seconds first.
        return cast(func.strftime("%s", func.substr(col, 1, 19)), BigInteger)
    return cast(func.floor(extract("epoch", col)), BigInteger)


def _bucket(engine: Engine, seconds: Any, span: Span) -> Any:
    """The absolute bucket number (seconds // bucket_s, integer division in SQL); `span.first` is the window's."""
    return seconds // span.bucket_s


def _in_window(span: Span) -> Any:
    p = predictions.c
    return and_(p.ts >= span.since, p.ts < span.until)


@dataclass(frozen=True)
class Scan:
    """The window's prediction rows as column arrays (one pass over the table serves several charts)."""

    bucket: np.ndarray  # bucket index within the span (0 = the bucket holding `since`)
    request_id: np.ndarray
    served: np.ndarray  # bool
    variant: np.ndarray
    version: np.ndarray
    source: np.ndarray
    latency_ms: np.ndarray  # float, NaN where unknown
    ok: np.ndarray  # bool: the model answered (no error)
    second: np.ndarray  # whole seconds since the epoch


def scan(engine: Engine, span: Span) -> Scan:
    """Read the window's predictions once (through the time index), for the charts that share them."""
    p = predictions.c
    seconds = _seconds(engine, p.ts)
    k = _bucket(engine, seconds, span)
    q = select(
        k, p.request_id, p.served, p.variant, p.model_version, p.source, p.latency_ms, p.error.is_(None), seconds
    ).where(_in_window(span))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [()] * 9
    return Scan(
        bucket=np.fromiter((int(b) for b in cols[0]), dtype=np.int64, count=n) - span.first,
        request_id=np.array(cols[1], dtype=object),
        served=np.array(cols[2], dtype=bool),
        variant=np.array(cols[3], dtype=object),
        version=np.array([str(v) for v in cols[4]], dtype=object),
        source=np.array(cols[5], dtype=object),
        latency_ms=np.array([np.nan if v is None else v for v in cols[6]], dtype=np.float64),
        ok=np.array(cols[7], dtype=bool),
        second=np.fromiter((int(s) for s in cols[8]), dtype=np.int64, count=n),
    )


def request_rate(engine: Engine, span: Span, rows: Scan | None = None) -> dict[str, Any]:
    """Requests and failed requests per bucket, requests per second, and totals by source."""
    r = rows if rows is not None else scan(engine, span)
    n = span.n_buckets
    user = np.isin(r.variant, USER_VARIANTS)
    ids, inverse = np.unique(r.request_id[user].astype(str), return_inverse=True)
    m = len(ids)
    first = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, r.bucket[user])
    ok = np.zeros(m, dtype=bool)
    np.logical_or.at(ok, inverse, r.served[user])
    source = np.empty(m, dtype=object)
    source[inverse[::-1]] = r.source[user][::-1]  # any row's source (a request has one)
    inside = (first >= 0) & (first < n)
    requests = np.bincount(first[inside], minlength=n)[:n]
    errors = np.bincount(first[inside & ~ok], minlength=n)[:n]
    by_source: dict[str, int] = defaultdict(int)
    for src in source.tolist():
        by_source[str(src)] += 1
    total, failed = int(m), int((~ok).sum())
    seconds = (span.until - span.since).total_seconds()
    axis = span.axis()

    # A partial bucket (the one running now, or the first) is rated over the seconds it covers (over a whole
    # bucket, the running one read as a drop), but only when it covers `MIN_COVER` of its width: over a second
    # or two, one request read as a spike. Those buckets keep their counts and get no rate (None, a gap).
    def per_s(counts: np.ndarray) -> list[float | None]:
        cover = zip(counts, axis["seconds"], axis["rated"], strict=True)
        return [_sig(int(x) / s) if ok else None for x, s, ok in cover]

    return {
        **axis,
        "requests": requests.tolist(),
        "errors": errors.tolist(),
        "rate_per_s": per_s(requests),
        "errors_per_s": per_s(errors),
        "total": total,
        "failed": failed,
        "error_rate": round(failed / total, 4) if total else None,
        "mean_rate_per_s": round(total / seconds, 4) if seconds > 0 else None,
        # When the window's first request came (UTC): a rate over the time traffic covers, not over whole buckets
        # (20 minutes of traffic in a 7 d window's 3 h bucket read as a ninth of its rate).
        "first_at": (
            datetime.fromtimestamp(int(r.second[user].min()), UTC).isoformat().replace("+00:00", "Z")
            if user.any()
            else None
        ),
        "by_source": dict(sorted(by_source.items())),
    }


def latency_percentiles(engine: Engine, span: Span, rows: Scan | None = None) -> dict[str, Any]:
    """p50/p95/p99 of served answers: overall, per variant, per model version, and per bucket."""
    r = rows if rows is not None else scan(engine, span)
    keep = r.served & ~np.isnan(r.latency_ms)
    ms, buckets, variants, versions = r.latency_ms[keep], r.bucket[keep], r.variant[keep], r.version[keep]
    series: dict[str, list[float | None]] = {f"p{q}": [] for q in PERCENTILES}
    order = np.argsort(buckets, kind="stable")
    edges = np.searchsorted(buckets[order], np.arange(span.n_buckets + 1))
    for i in range(span.n_buckets):
        stats = _percentiles(ms[order[edges[i] : edges[i + 1]]])
        for key in series:
            series[key].append(stats[key])
    return {
        "overall": _percentiles(ms),
        "by_variant": {str(v): _percentiles(ms[variants == v]) for v in sorted(set(variants.tolist()))},
        # A version's own answering time: a champion-fallback answer's latency includes the challenger's failed call
        # (what its user waited), which is not the champion's (it has its own variant above).
        "by_version": {
            str(v): _percentiles(ms[(versions == v) & (variants != "champion-fallback")])
            for v in sorted(
                set(versions[variants != "champion-fallback"].tolist()), key=lambda x: _version_key((x, None))
            )
        },
        **span.axis(),
        **series,
    }


def traffic_by_variant(engine: Engine, span: Span, rows: Scan | None = None) -> dict[str, Any]:
    """Served answers per variant per bucket, totals and shares; shadow/comparison copies counted apart."""
    r = rows if rows is not None else scan(engine, span)
    n = span.n_buckets
    answered = r.served & r.ok
    served: dict[str, list[int]] = {}
    for v in sorted(set(r.variant[answered].tolist())):
        b = r.bucket[answered & (r.variant == v)]
        served[str(v)] = np.bincount(b[(b >= 0) & (b < n)], minlength=n)[:n].tolist()
    by_version: dict[str, int] = defaultdict(int)
    for v in r.version[answered].tolist():
        by_version[v] += 1
    copies = {str(v): int(((r.variant == v) & ~r.served & r.ok).sum()) for v in COPY_VARIANTS}
    totals = {k: sum(v) for k, v in served.items()}
    grand = sum(totals.values())
    return {
        **span.axis(),
        "variants": served,
        "totals": totals,
        "shares": {k: round(v / grand, 4) for k, v in totals.items()} if grand else {},
        "by_version": dict(sorted(by_version.items(), key=_version_key)),
        "copies": {k: v for k, v in copies.items() if v},
    }


def live_accuracy(engine: Engine, span: Span) -> dict[str, Any]:
    """Accuracy per model version against delayed labels, overall (with a 95% Wilson interval) and per bucket."""
    p = predictions.c
    # Ground truth outranks opinion, and a user may change a verdict: the store's one rule picks the label.
    # Only for the requests answered inside the window (through the feedback request index), not for the whole
    # feedback table on every refresh. An alias, so the subquery is not correlated to the outer `predictions`.
    in_window = predictions.alias("in_window")
    asked = select(in_window.c.request_id).where(in_window.c.ts >= span.since, in_window.c.ts < span.until)
    labels = request_labels(feedback.c.request_id.in_(asked)).subquery()
    k = _bucket(engine, _seconds(engine, p.ts), span).label("k")
    hit = func.sum(case((p.label == labels.c.true_label, 1), else_=0))
    q = (
        select(p.model_version, k, labels.c.source, p.served, hit, func.count())
        .join(labels, labels.c.request_id == p.request_id)
        .where(_in_window(span), p.label.is_not(None))
        .group_by(p.model_version, k, labels.c.source, p.served)
    )
    hits: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    sources: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    roles: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as conn:
        for version, bucket, src, served, correct, count in conn.execute(q):
            version, count = str(version), int(count)
            cell = hits[version][int(bucket) - span.first]
            cell[0] += int(correct or 0)
            cell[1] += count
            sources[version][str(src)] += count
            roles[version]["served" if served else "copy"] += count
    versions: dict[str, Any] = {}
    for version in sorted(hits, key=lambda v: _version_key((v, None))):
        buckets = hits[version]
        correct = sum(c for c, _ in buckets.values())
        n = sum(m for _, m in buckets.values())
        low, high = wilson_interval(correct, n)
        series_acc: list[float | None] = []
        series_n: list[int] = []
        for i in range(span.n_buckets):
            c, m = buckets.get(i, (0, 0))
            series_acc.append(round(c / m, 4) if m else None)
            series_n.append(m)
        versions[version] = {
            "n": n,
            "correct": correct,
            "accuracy": round(correct / n, 4) if n else None,
            "low": round(low, 4),
            "high": round(high, 4),
            "by_source": dict(sorted(sources[version].items())),
            "served": roles[version].get("served", 0),
            "copies": roles[version].get("copy", 0),
            "accuracy_series": series_acc,
            "n_series": series_n,
        }
    return {**span.axis(), "versions": versions}


def recent_feedback(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest feedback rows, newest first, each with the answer it judges (place, tile, model, variant) and
    `counts`: whether the row is its request's label now (`request_labels`), not one a later row replaced."""
    if not 1 <= limit <= 1000:
        raise InvalidInputError(f"limit {limit} is outside 1..1000")
    f, p = feedback.c, predictions.c
    q = (
        select(
            f.id,
            f.ts,
            f.request_id,
            f.correct,
            f.label,
            f.true_label,
            f.served_label,
            f.model_version,
            f.source,
            p.ts.label("predicted_at"),
            p.model_name,
            p.variant,
            p.probability,
            p.lat,
            p.lon,
            p.tile_sha256,
            p.source.label("predicted_for"),
        )
        .select_from(feedback.outerjoin(predictions, (p.request_id == f.request_id) & p.served.is_(True)))
        .order_by(f.id.desc())
        .limit(limit)
    )
    out = []
    with engine.connect() as conn:
        for r in conn.execute(q).mappings():
            row = dict(r)
            row["ts"] = _iso(_utc(row["ts"]))
            row["predicted_at"] = _iso(_utc(row["predicted_at"])) if row["predicted_at"] else None
            row["correct"] = None if row["correct"] is None else bool(row["correct"])
            out.append(row)
        # The labels of these requests only (at most `limit` of them), not of the whole table.
        ids = sorted({row["request_id"] for row in out})
        counted = {r.id for r in conn.execute(request_labels(f.request_id.in_(ids)))} if ids else set()
    for row in out:
        row["counts"] = row["id"] in counted
    return out


def recent_events(engine: Engine, span: Span, limit: int = 100) -> list[dict[str, Any]]:
    """Rollout events inside the window, oldest first (for marking charts)."""
    e = rollout_events.c
    q = (
        select(e.ts, e.action, e.mode, e.reason, e.champion_version, e.challenger_version)
        .where(e.ts >= span.since, e.ts < span.until)
        .order_by(e.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        r["ts"] = _iso(_utc(r["ts"]))
    return rows[::-1]


def overview(
    engine: Engine, window: str | timedelta = "1h", now: datetime | None = None, bucket_s: int | None = None
) -> dict[str, Any]:
    """Everything the monitoring page shows, for one window."""
    span = make_span(window, now, bucket_s)
    rows = scan(engine, span)
    return {
        "window": window if isinstance(window, str) else f"{int(window.total_seconds())}s",
        **span.to_dict(),
        "requests": request_rate(engine, span, rows),
        "latency": latency_percentiles(engine, span, rows),
        "traffic": traffic_by_variant(engine, span, rows),
        "accuracy": live_accuracy(engine, span),
        "events": recent_events(engine, span),
    }


# --- helpers ---------------------------------------------------------------------------------------------------
def _percentiles(values: np.ndarray) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, **{f"p{q}": None for q in PERCENTILES}, "mean": None}
    out: dict[str, Any] = {"n": int(a.size)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(a, q)
    out["mean"] = round(float(a.mean()), 3)
    return out


def _sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant digits: one request in 3 h is 0.0000926/s (4 decimals made it 0.0001, +8%)."""
    return float(f"{x:.{digits}g}")


def _version_key(item: tuple[str, Any]) -> tuple[int, float, str]:
    """Versions sort numerically when they are numbers ('2' before '10'), else by name, 'None' last."""
    v = item[0]
    if v.isdigit():
        return (0, float(v), "")
    return (1 if v != "None" else 2, math.inf, v)


def _utc(ts: datetime) -> datetime:
    """SQLite gives naive datetimes back; the store writes UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _epoch(ts: datetime) -> float:
    return _utc(ts).timestamp()


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso_ms(ts: datetime) -> str:
    """`_iso`, with milliseconds when `ts` falls inside a second (a window's ends are the real now): rounded to
    whole seconds, the last bucket's drawn end would not be the `until` its rate is over. (Browsers and plotly
    read three digits of a second; the SQL filter keeps the microseconds.)"""
    ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="milliseconds" if ts.microsecond else "seconds").replace("+00:00", "Z")
