"""The CWFIS active-fires feed: fetch it (URL or file, with retries) and parse it without ever crashing on a row.

The CSV (https://cwfis.cfs.nrcan.gc.ca/downloads/activefires/activefires.csv) has the header
`agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone[, response_type]`, with a leading
space after every comma in names and values. Start dates are local times; the `timezone` column names the zone
(`EDT`, `MDT`, ...), which we use to bring them to UTC. Some rows have an empty start date: they are kept
(their place is still a fire) with `startdate=None`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from pyrocast.errors import InvalidInputError, ServiceUnavailableError
from pyrocast.settings import Settings

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("lat", "lon", "startdate")
OPTIONAL_COLUMNS = ("agency", "firename", "hectares", "stage_of_control", "timezone", "response_type")
STAGES = {"OC": "out of control", "BH": "being held", "UC": "under control", "EX": "extinguished"}
MAX_FEED_BYTES = 64 * 1024 * 1024  # the real file is well under 1 MB; anything this big is not the feed
MAX_RETRY_AFTER_S = 60.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# UTC offsets of the zone abbreviations the feed uses (North America). Unknown or empty zones are taken as UTC.
_TZ_HOURS = {
    "UTC": 0, "GMT": 0, "Z": 0,
    "NDT": -2.5, "NST": -3.5, "ADT": -3, "AST": -4, "EDT": -4, "EST": -5, "CDT": -5, "CST": -6,
    "MDT": -6, "MST": -7, "PDT": -7, "PST": -8, "AKDT": -8, "AKST": -9, "HDT": -9, "HST": -10,
}  # fmt: skip
_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d",
)


@dataclass(slots=True)
class Fire:
    """One fire of the feed. `startdate` is timezone-aware UTC, or None when the feed left it empty."""

    agency: str
    firename: str
    lat: float
    lon: float
    startdate: datetime | None
    hectares: float | None
    stage_of_control: str
    timezone: str
    response_type: str = ""


@dataclass(slots=True)
class FeedProblem:
    """A row that was skipped: its physical line in the file (the header is line 1) and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(slots=True)
class FeedParseResult:
    fires: list[Fire] = field(default_factory=list)
    problems: list[FeedProblem] = field(default_factory=list)
    newest: datetime | None = None  # the latest start date in the feed: how fresh it is

    @property
    def rows(self) -> int:
        """Data rows read (usable or not)."""
        return len(self.fires) + len(self.problems)


# --- parsing ------------------------------------------------------------------------------------------------
def parse_startdate(value: str, tz: str = "") -> datetime:
    """Parse a feed start date to aware UTC; naive times are local to `tz` (an abbreviation like EDT)."""
    v = value.strip()
    dt: datetime | None = None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                dt = datetime.strptime(v, fmt)
                break
            except ValueError:
                continue
    if dt is None:
        raise ValueError(f"start date {value.strip()!r} is not a date (expected e.g. 2024-06-01 14:30:00)")
    if dt.tzinfo is None:
        hours = _TZ_HOURS.get(tz.strip().upper(), 0)
        dt = dt.replace(tzinfo=timezone(timedelta(hours=hours)))
    return dt.astimezone(UTC)


def _float(value: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} {value!r} is not a finite number")
    return x


def _parse_row(row: dict[str, str]) -> Fire:
    lat_s, lon_s = row.get("lat", ""), row.get("lon", "")
    if not lat_s or not lon_s:
        raise ValueError("missing lat or lon")
    lat, lon = _float(lat_s, "latitude"), _float(lon_s, "longitude")
    if not -90 <= lat <= 90:
        raise ValueError(f"latitude {lat} is outside [-90, 90]")
    if not -180 <= lon <= 180:
        raise ValueError(f"longitude {lon} is outside [-180, 180]")
    if lat == 0 and lon == 0:
        raise ValueError("coordinates 0,0 are a placeholder, not a place")
    tz = row.get("timezone", "")
    start = parse_startdate(row["startdate"], tz) if row.get("startdate") else None
    hectares: float | None = None
    if row.get("hectares"):
        hectares = _float(row["hectares"], "hectares")
        if hectares < 0:
            raise ValueError(f"hectares {hectares} is negative")
    return Fire(
        agency=row.get("agency", ""),
        firename=row.get("firename", ""),
        lat=lat,
        lon=lon,
        startdate=start,
        hectares=hectares,
        stage_of_control=row.get("stage_of_control", "").upper(),
        timezone=tz,
        response_type=row.get("response_type", ""),
    )


def parse_feed(text: str) -> FeedParseResult:
    """Parse the CWFIS CSV. A malformed row becomes a FeedProblem and is skipped; it never raises on one.

    Raises InvalidInputError only when the whole text cannot be the feed (empty, or a header without
    lat/lon/startdate, e.g. an HTML error page answered with status 200).
    """
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise InvalidInputError("the fire feed is empty", "check the feed URL or file")
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header: list[str] | None = None
    result = FeedParseResult()
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a NUL byte or an unterminated quote: skip the line, keep going
            result.problems.append(FeedProblem(reader.line_num, f"unreadable CSV: {exc}"))
            continue
        line = reader.line_num
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue  # blank lines (trailing newline, CRLF leftovers)
        if header is None:
            header = [c.lower() for c in cells]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                first = cells[0][:60] if cells else ""
                raise InvalidInputError(
                    f"the fire feed has no {', '.join(missing)} column(s) (first line starts with {first!r})",
                    "expected the CWFIS active-fires CSV: agency, firename, lat, lon, startdate, ...",
                )
            continue
        if len(cells) < len(header):
            absent = header[len(cells) :]
            result.problems.append(FeedProblem(line, f"{len(cells)} fields, missing {', '.join(absent)}"))
            continue
        if len(cells) > len(header) and any(cells[len(header) :]):
            result.problems.append(FeedProblem(line, f"{len(cells)} fields, the header has {len(header)}"))
            continue
        try:
            fire = _parse_row(dict(zip(header, cells, strict=False)))
        except ValueError as exc:
            result.problems.append(FeedProblem(line, str(exc)))
            continue
        result.fires.append(fire)
        if fire.startdate and (result.newest is None or fire.startdate > result.newest):
            result.newest = fire.startdate
    if header is None:
        raise InvalidInputError("the fire feed has no header line", "check the feed URL or file")
    return result


# --- fetching -----------------------------------------------------------------------------------------------
class HttpError(ServiceUnavailableError):
    """A server answered, but not with what we asked for; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, hint: str | None = None, status: int = 0) -> None:
        super().__init__(message, hint)
        self.status = status


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """The URL without its query string and credentials, for messages (a query may carry a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def decode_text(data: bytes) -> str:
    """Feed bytes as text: UTF-8 (with or without BOM), else Windows-1252 (French names in older exports)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def retry_delay(attempt: int, backoff_s: float, retry_after: str | None = None) -> float:
    """Seconds to wait before try `attempt + 1`: exponential backoff, or the server's Retry-After if longer."""
    delay = backoff_s * (2**attempt)
    if retry_after:
        # An HTTP-date Retry-After is rare for this feed: then our own backoff stands.
        with contextlib.suppress(ValueError):
            delay = max(delay, float(retry_after))
    return min(delay, MAX_RETRY_AFTER_S)


def http_get(
    url: str,
    *,
    retries: int,
    backoff_s: float,
    timeout_s: float = 20.0,
    what: str,
    client: httpx.Client | None = None,
    max_bytes: int = MAX_FEED_BYTES,
    shown_url: str | None = None,
    status_hints: dict[int, str] | None = None,
) -> bytes:
    """GET with retries and exponential backoff on 5xx, 429 and connection errors; other 4xx fail at once.

    Raises HttpError (a ServiceUnavailableError) after the last try. Error messages name `shown_url`
    (default: the URL without its query string), never the full URL, which may carry a token.
    """
    shown = shown_url or redact_url(url)
    own = client is None
    c = client or httpx.Client(timeout=timeout_s, follow_redirects=True)
    last, last_status = "", 0
    try:
        for attempt in range(retries + 1):
            retry_after = None
            try:
                r = c.get(url)
            except httpx.TransportError as exc:
                last, last_status = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), 0
            else:
                if r.status_code == 200:
                    if len(r.content) > max_bytes:
                        raise InvalidInputError(f"{what} at {shown} is {len(r.content)} bytes, over {max_bytes}")
                    return r.content
                last, last_status = f"HTTP {r.status_code} {r.reason_phrase}".strip(), r.status_code
                if r.status_code not in RETRY_STATUSES:
                    hint = (status_hints or {}).get(r.status_code) or _hint_for(r.status_code)
                    raise HttpError(f"{what} at {shown} answered {last}", hint, r.status_code)
                retry_after = r.headers.get("retry-after")
            if attempt < retries:
                delay = retry_delay(attempt, backoff_s, retry_after)
                log.info("%s at %s: %s; retrying in %.1f s (%d/%d)", what, shown, last, delay, attempt + 1, retries)
                time.sleep(delay)
        raise HttpError(
            f"{what} at {shown} failed after {retries + 1} tries (last: {last})",
            "the server may be down or rate-limiting: retry later, or use a local file",
            last_status,
        )
    finally:
        if own:
            c.close()


def _hint_for(status: int) -> str:
    if status in (401, 403):
        return "the server refused access: check the credentials or token"
    if status == 404:
        return "check the URL"
    return "check the URL and the server"


def fetch_feed(source: str, settings: Settings) -> str:
    """The feed text from a URL (http/https, with retries and backoff) or a file path."""
    if is_url(source):
        data = http_get(
            source,
            retries=settings.feed.retries,
            backoff_s=settings.feed.backoff_s,
            timeout_s=settings.imagery.timeout_s,
            what="the fire feed",
        )
        return decode_text(data)
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"fire feed file {path} does not exist", "give a CWFIS CSV file or an http(s) URL")
    size = path.stat().st_size
    if size > MAX_FEED_BYTES:
        raise InvalidInputError(f"fire feed file {path} is {size} bytes, over {MAX_FEED_BYTES}")
    return decode_text(path.read_bytes())


def feed_age(newest: datetime | None, now: datetime) -> timedelta | None:
    """How old the newest start date of the feed is at `now` (None for a feed without dates)."""
    return None if newest is None else now - newest


def describe_age(age: timedelta | None) -> str:
    if age is None:
        return "unknown (no start dates)"
    hours = age.total_seconds() / 3600
    if hours < 0:
        return f"newest start date is {-hours:.1f} h in the future"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"
