"""The cron daemon: timing, failures that do not stop it, clean stops."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.schedule import next_run, parse_cron, run_schedule


def test_parse_cron() -> None:
    assert parse_cron("0  3 * * *") == "0 3 * * *"
    for bad in ("", "every day", "61 * * * *", "* * *"):
        with pytest.raises(InvalidInputError, match="not a cron expression"):
            parse_cron(bad)


def test_next_run_follows_the_expression() -> None:
    start = datetime(2026, 5, 1, 12, 30).astimezone()
    nxt = next_run("0 3 * * *", start)
    assert (nxt.day, nxt.hour, nxt.minute) == (2, 3, 0)
    assert next_run("*/15 * * * *", start).minute == 45


def test_runs_on_schedule_until_max_runs() -> None:
    times: list[float] = []
    result = run_schedule("* * * * * *", lambda: times.append(time.monotonic()) or len(times), max_runs=2)
    assert result.runs == 2 and result.failures == 0 and result.stopped_by == "max-runs"
    assert result.results == [1, 2]
    assert 0.5 < times[1] - times[0] < 2.0  # one slot per second


def test_a_failing_run_does_not_stop_the_daemon() -> None:
    calls = []

    def job() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise PyrocastError("the MLflow server does not answer")
        if len(calls) == 2:
            raise RuntimeError("unexpected")
        return "ok"

    result = run_schedule("* * * * * *", job, max_runs=3)
    assert (result.runs, result.failures, result.results) == (3, 2, ["ok"])


def test_once_runs_immediately() -> None:
    t0 = time.monotonic()
    result = run_schedule("0 3 * * *", lambda: "done", once=True)
    assert result.results == ["done"] and result.stopped_by == "once"
    assert time.monotonic() - t0 < 1.0


def test_stop_event_ends_the_wait_promptly() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    result = run_schedule("0 3 * * *", lambda: None, stop=stop)  # next run hours away
    assert result.runs == 0 and result.stopped_by == "stop-event"
    assert time.monotonic() - t0 < 2.0


def test_max_runs_must_be_positive() -> None:
    with pytest.raises(InvalidInputError):
        run_schedule("* * * * *", lambda: None, max_runs=0)
