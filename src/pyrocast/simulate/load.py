"""`pyrocast load`: a shaped, bounded Locust run against the gateway, reported per stage.

Locust runs headless in a subprocess (`python -m locust -f simulate/locustfile.py`), in its own process group:
gevent's monkey-patching stays out of this process, and stopping the group stops every greenlet's socket. The
run is bounded twice: the shape ends after `duration` seconds, and the process group is killed if it has not
ended a few seconds later. Tiles come from the held-back test split (or another split) through
`evaluation_view`; only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.percentiles import percentile
from pyrocast.report import uncut_table
from pyrocast.settings import Settings
from pyrocast.simulate.gateway import check_gateway, gateway_url
from pyrocast.simulate.shapes import Stage, build_stages, stage_index, total_duration

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PLAN_ENV = "PYROCAST_LOAD_PLAN"
GRACE_S = 30.0  # start-up (imports, tile bodies) plus stop of a run, beyond the shape's own duration


def pick_tiles(
    settings: Settings, split: str = "test", limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Tiles of a split as {path, lat, lon, label, rel}, shuffled with `seed`, at most `limit`.

    Read through `evaluation_view`: replaying held-back tiles as production traffic is evaluation, never training.
    """
    from pyrocast.data.access import evaluation_view
    from pyrocast.data.layout import SPLITS

    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    view = evaluation_view(settings.dataset_dir)
    records = view.records(split)
    if not records:
        raise InvalidInputError(
            f"the {split} split of {settings.dataset_dir} has no tiles",
            "render or import tiles and run `pyrocast data split`, or run `pyrocast demo --no-serve`",
        )
    random.Random(seed).shuffle(records)
    if limit is not None:
        records = records[: max(limit, 0)]
    return [{"path": str(view.path(r)), "rel": r.path, "lat": r.lat, "lon": r.lon, "label": r.label} for r in records]


# --- results ---------------------------------------------------------------------------------------------------
@dataclass
class StageStats:
    """What one stage of the shape (or the whole run) saw."""

    name: str
    users: int | None
    seconds: float
    requests: int
    failures: int
    throughput_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    variants: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _stats(name: str, users: int | None, seconds: float, samples: list[list[Any]]) -> StageStats:
    ok = [s for s in samples if s[2]]
    bad = [s for s in samples if not s[2]]
    # Latency percentiles of every answered request, failed ones included: a slow 503 is still slow.
    ms = [float(s[1]) for s in samples]
    return StageStats(
        name=name,
        users=users,
        seconds=round(seconds, 2),
        requests=len(samples),
        failures=len(bad),
        throughput_rps=round(len(ok) / seconds, 2) if seconds > 0 else 0.0,
        p50_ms=percentile(ms, 50, 2),
        p95_ms=percentile(ms, 95, 2),
        p99_ms=percentile(ms, 99, 2),
        variants=dict(Counter(str(s[4]) for s in ok).most_common()),
        errors=dict(Counter(str(s[4])[:160] for s in bad).most_common(5)),
    )


def run_end(stages: list[Stage], end_s: float | None) -> float:
    """When the run ended, in seconds from its start: where it was stopped, at the latest the shape's end."""
    return total_duration(stages) if end_s is None else min(end_s, total_duration(stages))


def within_run(stages: list[Stage], samples: list[list[Any]], end_s: float | None) -> list[list[Any]]:
    """The samples of requests started before the run's end (`run_end`): the ones its figures count."""
    end = run_end(stages, end_s)
    return [s for s in samples if float(s[0]) < end]


def summarize(
    stages: list[Stage], samples: list[list[Any]], end_s: float | None
) -> tuple[list[StageStats], StageStats]:
    """Per-stage and overall statistics of samples `[start s, ms, ok, kind, variant|error, version, users]`.

    A request belongs to the stage in which it started; a stage's time is cut at the run's end (`end_s`), so a
    run stopped early reports the throughput it really had. Requests started at or after that end are left out
    (`late_requests`): Locust checks its shape about once a second, and counted in a time capped at the end they
    added up to a second of traffic to the last stage (10.9 req/s reported for 10). The total's users are the
    most that were running (the 7th field, Locust's count when the request started), else the most of any stage
    that began.
    """
    end = run_end(stages, end_s)
    samples = within_run(stages, samples, end_s)
    by_stage: dict[int, list[list[Any]]] = {i: [] for i in range(len(stages))}
    for s in samples:
        i = stage_index(stages, max(float(s[0]), 0.0))
        by_stage[len(stages) - 1 if i is None else i].append(s)
    per = [
        _stats(st.name, st.users, max(min(st.end_s, end) - st.start_s, 0.0), by_stage[i]) for i, st in enumerate(stages)
    ]
    running = [int(s[6]) for s in samples if len(s) > 6 and s[6] is not None]
    begun = [st.users for st in stages if st.start_s < end] or [st.users for st in stages[:1]]
    total = _stats("total", max(running) if running else max(begun, default=None), end, samples)
    return per, total


@dataclass
class LoadResult:
    """A finished load run."""

    shape: str
    host: str
    users: int
    duration_s: float
    stages: list[StageStats]
    total: StageStats
    by_kind: dict[str, int]
    started_at: str
    wall_s: float
    log_path: Path
    stopped_early: bool = False
    interrupted: bool = False  # Ctrl-C (a script sees exit code 130)
    late_requests: int = 0  # started after the run's end, left out of the statistics

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "host": self.host,
            "users": self.users,
            "duration_s": self.duration_s,
            "started_at": self.started_at,
            "wall_s": round(self.wall_s, 2),
            "stopped_early": self.stopped_early,
            "late_requests": self.late_requests,
            "by_kind": self.by_kind,
            "stages": [asdict(s) for s in self.stages],
            "total": asdict(self.total),
            "log": str(self.log_path),
        }

    def render(self, console: Console) -> None:
        rows = []
        for s in [*self.stages, self.total]:
            err = f"{s.failures} ({100 * s.error_rate:.1f}%)" if s.failures else "0"
            unreached = self.stopped_early and s is not self.total and s.seconds == 0 and not s.requests
            cells = [
                f"{s.name} (not reached)" if unreached else s.name,
                str(s.users or "-"),
                "-" if unreached else f"{s.seconds:g}",
                str(s.requests),
                f"{s.throughput_rps:.1f}",
                *(f"{v:.1f}" if v is not None else "-" for v in (s.p50_ms, s.p95_ms, s.p99_ms)),
                err,
            ]
            rows.append((cells, "bold" if s is self.total else ""))
        users = f"{self.users} user" + ("" if self.users == 1 else "s")
        title = f"Load test · {self.shape}, up to {users}, {self.duration_s:g} s against {self.host}"
        columns = ("stage", "users", "s", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
        console.print(uncut_table(title, columns, rows))
        if self.total.variants:
            console.print("answered by: " + ", ".join(f"{k} {v}" for k, v in self.total.variants.items()))
        if self.by_kind:
            console.print("requests: " + ", ".join(f"{k} {v}" for k, v in self.by_kind.items()))
        for msg, n in self.total.errors.items():
            console.print(f"[red]{n} x[/red] {msg}", highlight=False)
        if self.late_requests:
            console.print(
                f"{self.late_requests} request(s) started after the run's end (Locust checks its shape about once a "
                "second): left out of these figures"
            )
        if self.stopped_early:
            console.print("[yellow]the run was stopped before its end[/yellow]")
        console.print(f"locust log: {self.log_path}")


# --- running ---------------------------------------------------------------------------------------------------
def _stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT first (Locust then writes its samples), SIGKILL to the group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def run_load(
    settings: Settings,
    shape: str = "constant",
    users: int = 10,
    duration_s: float = 30.0,
    host: str | None = None,
    *,
    split: str = "test",
    tiles: int = 200,
    coordinates_share: float = 0.25,
    wait_s: tuple[float, float] = (0.1, 0.5),
    timeout_s: float = 30.0,
    seed: int = 0,
    on_progress: Callable[[float, str], None] | None = None,
) -> LoadResult:
    """Run Locust headless with `shape` and return per-stage statistics; blocks for about `duration_s`.

    `on_progress(elapsed_s, stage name)` is called about twice a second (for a progress bar).
    """
    stages = build_stages(shape, users, duration_s)
    url = gateway_url(settings, host)
    if not 0.0 <= coordinates_share <= 1.0:
        raise InvalidInputError(f"the share of coordinate requests must be within 0..1, got {coordinates_share}")
    if tiles < 1:
        raise InvalidInputError(f"--tiles must be at least 1, got {tiles}")
    lo, hi = wait_s
    if not 0.0 <= lo <= hi:
        raise InvalidInputError(f"think time must satisfy 0 <= min <= max, got {lo}..{hi}")
    chosen = pick_tiles(settings, split, tiles, seed)
    check_gateway(url)  # a dead gateway would otherwise cost the whole duration and report 100% errors

    run_dir = settings.root / "load"
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_path = settings.root / "logs" / f"load-{stamp}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="load-", dir=run_dir) as tmp:
        out = Path(tmp) / "samples.json"
        plan = {
            "shape": shape,
            "stages": [s.as_dict() for s in stages],
            "tiles": [{k: t[k] for k in ("path", "lat", "lon")} for t in chosen],
            "coordinates_share": coordinates_share,
            "wait": [lo, hi],
            "timeout_s": timeout_s,
            "out": str(out),
            "client_prefix": "load",
        }
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            url,
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
            # Users a stage (or the end) stops finish the request they are waiting for: killed mid-request, the
            # gateway answered requests the report never counted (3 of 68 in a 10 s spike).
            "--stop-timeout",
            f"{min(timeout_s, 10.0):g}",
        ]
        env = {**os.environ, PLAN_ENV: str(plan_path), "PYTHONUNBUFFERED": "1"}
        total = total_duration(stages)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.monotonic()
        stopped_early = interrupted = False
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        try:
            deadline = t0 + total + GRACE_S
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                if time.monotonic() > deadline:
                    stopped_early = True
                    break
                if on_progress is not None:
                    i = stage_index(stages, elapsed)
                    on_progress(min(elapsed, total), stages[i].name if i is not None else "finishing")
                time.sleep(0.5)
        except KeyboardInterrupt:
            # Ctrl-C ends the run early but still reports what was measured (Locust writes on SIGINT).
            stopped_early = interrupted = True
        finally:
            _stop_group(proc)
        wall = time.monotonic() - t0
        if not out.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise PyrocastError(f"locust wrote no results (exit code {proc.returncode}); end of {log_path}:\n{tail}")
        data = json.loads(out.read_text())
    samples = data["samples"]
    per, overall = summarize(stages, samples, data.get("end_s"))
    counted = within_run(stages, samples, data.get("end_s"))
    return LoadResult(
        shape=shape,
        host=url,
        users=users,
        duration_s=duration_s,
        stages=per,
        total=overall,
        by_kind=dict(Counter(s[3] for s in counted)),
        started_at=started_at,
        wall_s=wall,
        log_path=log_path,
        stopped_early=stopped_early or (data.get("end_s") or 0) < total - 1.5,
        interrupted=interrupted,
        late_requests=len(samples) - len(counted),
    )
