"""The CWFIS feed: parsing its quirks, reporting malformed rows, fetching with retries from a real local server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from pyrocast.data.feed import (
    HttpError,
    describe_age,
    fetch_feed,
    parse_feed,
    parse_startdate,
    retry_delay,
)
from pyrocast.errors import InvalidInputError, ServiceUnavailableError
from pyrocast.settings import Settings
from tests.support.servers import CwfisServer

# The real file's shape: a space after every comma, in the header and in the values; newer files add response_type.
FEED = """agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone, response_type
qc, 2024-0412, 47.512, -73.201, 2024-06-01 14:30:00, 12.5, OC, EDT, FUL
qc, 2024-0413, 46.901, -72.455, 2024-06-03 09:00:00, 0.1, BH, EDT, MON
on, NIP021, 48.100, -80.300, , 3, UC, EDT, FUL
ab, HWF063, 57.8866, -116.0305, 2024/05/30 17:00:00.000, 1500, EX, MDT, FUL
"""

OLD_FEED = """agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone
qc, 104, 46.5, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT
"""


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with a short backoff so that retry tests stay fast."""
    return settings.model_copy(update={"feed": settings.feed.model_copy(update={"retries": 3, "backoff_s": 0.05})})


def test_leading_spaces_and_columns_are_stripped() -> None:
    res = parse_feed(FEED)
    assert res.problems == []
    assert len(res.fires) == 4
    f = res.fires[0]
    assert (f.agency, f.firename, f.lat, f.lon) == ("qc", "2024-0412", 47.512, -73.201)
    assert (f.hectares, f.stage_of_control, f.timezone, f.response_type) == (12.5, "OC", "EDT", "FUL")
    # Local EDT times become UTC (EDT = UTC-4).
    assert f.startdate == datetime(2024, 6, 1, 18, 30, tzinfo=UTC)


def test_older_files_without_response_type_parse() -> None:
    res = parse_feed(OLD_FEED)
    assert res.problems == [] and len(res.fires) == 1
    assert res.fires[0].response_type == ""


def test_empty_start_date_is_kept_without_a_date() -> None:
    res = parse_feed(FEED)
    nip = next(f for f in res.fires if f.firename == "NIP021")
    assert nip.startdate is None
    # The newest start date ignores the empty one.
    assert res.newest == datetime(2024, 6, 3, 13, 0, tzinfo=UTC)


def test_slash_dates_with_milliseconds_and_mountain_time() -> None:
    res = parse_feed(FEED)
    hwf = next(f for f in res.fires if f.firename == "HWF063")
    assert hwf.startdate == datetime(2024, 5, 30, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2024-06-01T12:00:00Z", "", datetime(2024, 6, 1, 12, tzinfo=UTC)),
        ("2024-06-01 12:00:00+02:00", "EDT", datetime(2024, 6, 1, 10, tzinfo=UTC)),  # explicit offset wins
        ("2024-06-01", "EST", datetime(2024, 6, 1, 5, tzinfo=UTC)),
        ("2024-06-01 12:00", "XYZ", datetime(2024, 6, 1, 12, tzinfo=UTC)),  # unknown zone: UTC
        ("2024-06-01 12:00:00", "NDT", datetime(2024, 6, 1, 14, 30, tzinfo=UTC)),
    ],
)
def test_parse_startdate(value: str, tz: str, expected: datetime) -> None:
    assert parse_startdate(value, tz) == expected


def test_malformed_rows_are_reported_with_line_and_reason_never_raised() -> None:
    text = (
        "agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone\n"  # line 1
        "qc, ok1, 46.5, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT\n"  # 2: good
        "qc, badlat, north, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT\n"  # 3
        "qc, short, 46.5, -74.1\n"  # 4
        "qc, baddate, 46.5, -74.1, yesterday, 2.0, UC, EDT\n"  # 5
        "\n"  # 6: blank, skipped silently
        "qc, farlat, 146.5, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT\n"  # 7
        "qc, null, 0, 0, 2024-06-02 10:00:00, 2.0, UC, EDT\n"  # 8
        "qc, neg, 46.5, -74.1, 2024-06-02 10:00:00, -3, UC, EDT\n"  # 9
        "qc, extra, 46.5, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT, x, y\n"  # 10
        "qc, nan, nan, -74.1, 2024-06-02 10:00:00, 2.0, UC, EDT\n"  # 11
        "qc, ok2, 46.6, -74.2, 2024-06-03 10:00:00, , OC, EDT\n"  # 12: good, no hectares
    )
    res = parse_feed(text)
    assert [f.firename for f in res.fires] == ["ok1", "ok2"]
    assert res.fires[1].hectares is None
    by_line = {p.line: p.reason for p in res.problems}
    assert sorted(by_line) == [3, 4, 5, 7, 8, 9, 10, 11]
    assert "latitude 'north' is not a number" in by_line[3]
    assert "missing" in by_line[4] and "startdate" in by_line[4]
    assert "'yesterday' is not a date" in by_line[5]
    assert "outside [-90, 90]" in by_line[7]
    assert "placeholder" in by_line[8]
    assert "negative" in by_line[9]
    assert "header has 8" in by_line[10]
    assert "finite" in by_line[11]
    assert res.rows == 10
    assert str(res.problems[0]).startswith("line 3: ")


def test_quoted_names_with_commas_and_crlf_and_bom() -> None:
    text = '\ufeffagency, firename, lat, lon, startdate\r\nqc, "Lac-Saint-Jean, nord", 48.5, -72.0, 2024-06-01\r\n'
    res = parse_feed(text)
    assert res.problems == []
    assert res.fires[0].firename == "Lac-Saint-Jean, nord"


@pytest.mark.parametrize(
    "text", ["", "   \n", "<html><body>Service unavailable</body></html>\n", "agency, firename\nqc, x\n"]
)
def test_a_text_that_is_not_the_feed_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidInputError, match="fire feed"):
        parse_feed(text)


def test_describe_age() -> None:
    assert describe_age(None).startswith("unknown")
    assert describe_age(timedelta(hours=5)) == "5.0 h"
    assert describe_age(timedelta(days=9, hours=12)) == "9.5 days"
    assert "future" in describe_age(timedelta(hours=-2))


def test_retry_delay_grows_exponentially_and_honours_retry_after() -> None:
    assert [retry_delay(i, 0.5) for i in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(0, 0.5, "3") == 3.0
    assert retry_delay(0, 0.5, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.5
    assert retry_delay(20, 0.5) == 60.0  # capped


def test_fetch_from_a_file(tmp_path, settings: Settings) -> None:
    p = tmp_path / "activefires.csv"
    p.write_bytes(FEED.encode())
    assert fetch_feed(str(p), settings) == FEED


def test_fetch_decodes_windows_1252_names(tmp_path, settings: Settings) -> None:
    p = tmp_path / "activefires.csv"
    p.write_bytes("agency, firename, lat, lon, startdate\nqc, Rivière, 46.5, -74.1, 2024-06-01\n".encode("cp1252"))
    assert parse_feed(fetch_feed(str(p), settings)).fires[0].firename == "Rivière"


def test_a_missing_file_is_a_clear_error(tmp_path, settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        fetch_feed(str(tmp_path / "nope.csv"), settings)


def test_fetch_retries_with_backoff_until_the_server_answers(fast: Settings) -> None:
    with CwfisServer(FEED, fail_times=2) as srv:
        assert fetch_feed(srv.url, fast) == FEED
        assert [r.status for r in srv.requests] == [503, 503, 200]
        gaps = [b - a for a, b in zip(srv.hit_times, srv.hit_times[1:], strict=False)]
    # Backoff 0.05 s then 0.1 s: each wait at least its share, the second longer than the first.
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095


def test_fetch_retries_on_429_too(fast: Settings) -> None:
    with CwfisServer(FEED, fail_times=1, fail_status=429, retry_after="0") as srv:
        assert fetch_feed(srv.url, fast) == FEED
        assert [r.status for r in srv.requests] == [429, 200]


def test_fetch_gives_a_clear_error_after_the_last_try(fast: Settings) -> None:
    with CwfisServer(FEED, fail_times=100) as srv:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match=r"failed after 4 tries \(last: HTTP 503") as err:
            fetch_feed(srv.url + "?key=secret", fast)
        assert len(srv.requests) == 4
        assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2 - 0.01
    assert "secret" not in str(err.value)  # query strings may carry keys: never shown


def test_a_404_fails_at_once_without_retrying(fast: Settings) -> None:
    with CwfisServer(FEED) as srv:
        with pytest.raises(HttpError, match="answered HTTP 404") as err:
            fetch_feed(srv.base + "/wrong.csv", fast)
        assert err.value.status == 404
        assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_reported(fast: Settings) -> None:
    with CwfisServer(FEED) as srv:
        url = srv.url
    # The server is gone: the port refuses connections.
    with pytest.raises(ServiceUnavailableError, match="ConnectError"):
        fetch_feed(url, fast)


def test_a_server_that_hangs_times_out_and_is_retried(fast: Settings) -> None:
    s = fast.model_copy(update={"imagery": fast.imagery.model_copy(update={"timeout_s": 0.3})})
    with CwfisServer(FEED, hang_times=1, hang_s=2.0) as srv:
        t0 = time.monotonic()
        assert fetch_feed(srv.url, s) == FEED
        assert time.monotonic() - t0 < 1.5  # the client gave up on the hanging answer, not waited it out
        assert len(srv.requests) == 2
