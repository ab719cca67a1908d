"""A small cron daemon: run ingest + train on a cron expression until stopped.

`run_schedule` sleeps until the next time the expression names (local time, like cron; a sixth field gives
seconds), runs the job, and repeats. A failing job is logged and the schedule goes on; Ctrl-C or SIGTERM
stops it cleanly between (or during) runs. Runs never overlap: a run that outlasts its slot skips the
slots it missed rather than queueing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ScheduleResult:
    runs: int = 0
    failures: int = 0
    stopped_by: str = "max-runs"  # max-runs | once | signal | stop-event
    results: list[Any] = field(default_factory=list)


def parse_cron(expr: str) -> str:
    """The expression if croniter accepts it (5 fields, or 6 with seconds last), else InvalidInputError."""
    from croniter import croniter

    expr = " ".join(expr.split())
    if not expr or not croniter.is_valid(expr):
        raise InvalidInputError(
            f"{expr!r} is not a cron expression", 'use five fields "min hour day month weekday", e.g. "0 3 * * *"'
        )
    return expr


def next_run(expr: str, after: datetime | None = None) -> datetime:
    """The first time after `after` (default: now, local time) that the expression names."""
    from croniter import croniter

    after = after or datetime.now().astimezone()
    return croniter(parse_cron(expr), after).get_next(datetime)


def run_schedule(
    expr: str,
    job: Callable[[], Any],
    *,
    max_runs: int | None = None,
    once: bool = False,
    stop: threading.Event | None = None,
    on_wait: Callable[[datetime], None] | None = None,
) -> ScheduleResult:
    """Run `job` at every time `expr` names, until `max_runs` runs, `stop` is set, or Ctrl-C.

    `once` runs the job immediately, one time, and returns (for CI and for trying a schedule out).
    """
    expr = parse_cron(expr)
    if max_runs is not None and max_runs < 1:
        raise InvalidInputError("--max-runs must be at least 1")
    stop = stop or threading.Event()
    result = ScheduleResult()

    def _run() -> None:
        result.runs += 1
        t0 = time.perf_counter()
        try:
            result.results.append(job())
            log.info("scheduled run %d finished in %.1f s", result.runs, time.perf_counter() - t0)
        except PyrocastError as exc:
            result.failures += 1
            log.error("scheduled run %d failed: %s", result.runs, exc)
        except Exception as exc:  # the daemon outlives one bad run; the next slot tries again
            result.failures += 1
            log.exception("scheduled run %d crashed: %s", result.runs, exc)

    if once:
        _run()
        result.stopped_by = "once"
        return result
    try:
        while max_runs is None or result.runs < max_runs:
            due = next_run(expr)
            if on_wait:
                on_wait(due)
            # Event.wait is interruptible by Ctrl-C and by a SIGTERM handler that sets `stop`.
            while not stop.is_set():
                left = (due - datetime.now().astimezone()).total_seconds()
                if left <= 0:
                    break
                stop.wait(min(left, 1.0))
            if stop.is_set():
                result.stopped_by = "stop-event"
                return result
            _run()
    except KeyboardInterrupt:
        result.stopped_by = "signal"
        return result
    result.stopped_by = "max-runs"
    return result


def ingest_and_train(settings: Settings, profile: str = "quick", data: Path | None = None) -> dict[str, Any]:
    """The scheduled job: ingest new labelled tiles, split them, record the data version, then train.

    With `data` (a Kaggle-layout folder) the ingest, split and version steps are skipped and that folder is
    trained on. New tiles are split with the stable spatial split (tiles already assigned keep their split),
    so today's test tiles stay held out tomorrow.
    """
    from pyrocast.pipelines.training import run_training

    done: dict[str, Any] = {}
    if data is None:
        from pyrocast.data.ingest import ingest
        from pyrocast.data.layout import Dataset
        from pyrocast.data.split import split_dataset

        done["ingest"] = ingest(Dataset(settings.dataset_dir), settings).as_dict()
        done["split"] = split_dataset(Dataset(settings.dataset_dir), settings).as_dict()
        try:
            from pyrocast.data.version import record_version

            done["version"] = record_version(settings).as_dict()
        except PyrocastError as exc:  # an unversioned run is still worth training; lineage will say so
            log.warning("dataset version not recorded: %s", exc)
    outcome = run_training(settings, profile=profile, data=data)
    done["training"] = outcome.as_dict()
    log.info("scheduled training %s: version %s, %s", outcome.run_name, outcome.version, outcome.verdict)
    return done
