"""`pyrocast replay`: the held-back test tiles sent through the gateway as production traffic.

Each tile is a request from one of `users` simulated clients (client ids `replay-user-<k>`, so a running A/B
test or canary assigns them stickily), paced at `rate` requests per second with at most `concurrency` in
flight, for at most `duration` seconds. After each answer the tile's true label goes back to the gateway as
delayed ground truth (`POST /v1/feedback` with `source: "replay"`, stored apart from users' verdicts and
outranking them), with the admin token when PYROCAST_ADMIN_TOKEN is set: a gateway that has one takes ground
truth only from its holder; ground truth the gateway refused is counted and its reason shown. The
run ends with live accuracy per model version and variant, errors and latency percentiles; under shadow
traffic, also the challenger's accuracy on the copies it answered (read back from the prediction store).

Only 127.0.0.1 is ever contacted (see `gateway.gateway_url`), and never with training tiles: the labels
replay sends back feed live accuracy, which tiles the model was fitted on would inflate.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console

from pyrocast.errors import InvalidInputError
from pyrocast.percentiles import percentile
from pyrocast.report import uncut_table
from pyrocast.settings import Settings
from pyrocast.simulate.gateway import admin_headers, check_gateway, gateway_url
from pyrocast.simulate.load import pick_tiles

By = Literal["image", "coordinates"]
SOURCE = "replay"
SPLITS = ("test", "valid")  # never "train": see the module's docstring


@dataclass
class Outcome:
    """One replayed tile: what the gateway answered (or why it did not) and the true label."""

    tile: str
    client_id: str
    true_label: str
    ok: bool
    label: str | None = None
    probability: float | None = None
    request_id: str | None = None
    variant: str | None = None
    model_version: str | None = None
    latency_ms: float | None = None  # measured here, the HTTP hop included
    error: str | None = None
    feedback_stored: bool = False
    sent_s: float | None = None  # when the request left, in seconds after the replay started
    feedback_error: str | None = None  # why the gateway did not store the true label

    @property
    def correct(self) -> bool:
        return self.ok and self.label == self.true_label


@dataclass
class GroupStats:
    """Live accuracy of one model version (and variant) over the replayed tiles it answered."""

    model_version: str
    variant: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    p50_ms: float | None
    p95_ms: float | None


@dataclass
class ReplayResult:
    """A finished replay."""

    gateway: str
    split: str
    by: str
    planned: int
    outcomes: list[Outcome]
    elapsed_s: float
    rate: float
    stopped: str  # "all planned tiles sent", "duration reached", "interrupted"
    groups: list[GroupStats] = field(default_factory=list)
    versions: list[GroupStats] = field(default_factory=list)
    available: int | None = None  # tiles the split (up to --limit) held: more than planned when rate x duration cut

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def feedback_stored(self) -> int:
        return sum(o.feedback_stored for o in self.outcomes)

    @property
    def achieved_rate(self) -> float | None:
        """Requests sent per second: n sends span n - 1 intervals (None below two sends)."""
        sent = sorted(o.sent_s for o in self.outcomes if o.sent_s is not None)
        if len(sent) < 2 or sent[-1] <= sent[0]:
            return None
        return (len(sent) - 1) / (sent[-1] - sent[0])

    def latency(self, q: float) -> float | None:
        ms = [o.latency_ms for o in self.outcomes if o.latency_ms is not None]
        return percentile(ms, q, 2)

    def switching_clients(self) -> int:
        """Clients answered by more than one model version, fallbacks aside (0 when assignment is sticky)."""
        seen: dict[str, set[str]] = defaultdict(set)
        for o in self.outcomes:
            if o.ok and o.variant != "champion-fallback" and o.model_version:
                seen[o.client_id].add(o.model_version)
        return sum(len(v) > 1 for v in seen.values())

    def error_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = defaultdict(int)
        for o in self.outcomes:
            if not o.ok:
                kinds[(o.error or "?")[:160]] += 1
        return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))

    def feedback_error_kinds(self) -> dict[str, int]:
        """Why ground truth was not stored (e.g. a gateway with an admin token this run did not send), by count."""
        kinds: dict[str, int] = defaultdict(int)
        for o in self.outcomes:
            if o.feedback_error:
                kinds[o.feedback_error[:200]] += 1
        return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "split": self.split,
            "by": self.by,
            "planned": self.planned,
            "sent": self.sent,
            "answered": self.sent - self.errors,
            "errors": self.errors,
            "error_kinds": self.error_kinds(),
            "feedback_stored": self.feedback_stored,
            "feedback_error_kinds": self.feedback_error_kinds(),
            "elapsed_s": round(self.elapsed_s, 2),
            "achieved_rate": None if self.achieved_rate is None else round(self.achieved_rate, 2),
            "target_rate": self.rate,
            "stopped": self.stopped,
            "latency_ms": {"p50": self.latency(50), "p95": self.latency(95)},
            "switching_clients": self.switching_clients(),
            "by_version": [asdict(g) for g in self.versions],
            "by_version_and_variant": [asdict(g) for g in self.groups],
        }

    def render(self, console: Console) -> None:
        rows = [(_row(g), "") for g in self.groups]
        if sum(g.variant != "shadow" for g in self.groups) > len(self.versions):  # a version answered as several
            rows += [(_row(g), "bold") for g in self.versions]
        title = f"Replay of the {self.split} split ({self.by}) through {self.gateway}: live accuracy"
        columns = ("version", "variant", "n", "accuracy", "95% CI", "p50 ms", "p95 ms")
        console.print(uncut_table(title, columns, rows, left=2))
        rate = "-" if self.achieved_rate is None else f"{self.achieved_rate:.1f}"
        console.print(
            f"sent {self.sent} of {self.planned} planned in {self.elapsed_s:.1f} s ({rate}/s, target "
            f"{self.rate:g}/s; {self.stopped}); errors {self.errors}; ground truth accepted by the gateway for "
            f"{self.feedback_stored}; latency p50 {_ms(self.latency(50))} ms, p95 {_ms(self.latency(95))} ms",
            highlight=False,
        )
        if self.available is not None and self.planned < self.available:
            console.print(
                f"{self.available - self.planned} more tiles of the {self.split} split were not sent: --rate x "
                f"--duration planned {self.planned} (raise --duration to send them all)",
                highlight=False,
            )
        switching = self.switching_clients()
        if switching:
            console.print(f"[yellow]{switching} client(s) were answered by more than one model version[/yellow]")
        for msg, n in self.error_kinds().items():
            console.print(f"[red]{n} x[/red] {msg}", highlight=False)
        for msg, n in self.feedback_error_kinds().items():
            console.print(f"[red]{n} x[/red] ground truth not stored: {msg}", highlight=False)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _row(g: GroupStats) -> tuple[str, ...]:
    lo, hi = g.ci95
    return (
        f"v{g.model_version}",
        g.variant,
        str(g.n),
        f"{g.accuracy:.3f}",
        f"{lo:.3f}-{hi:.3f}",
        _ms(g.p50_ms),
        _ms(g.p95_ms),
    )


def accuracy_groups(outcomes: list[Outcome], by_variant: bool = True) -> list[GroupStats]:
    """Live accuracy per model version (and variant) of the answered outcomes, sorted by version."""
    from pyrocast.model.metrics import wilson_interval

    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.ok:
            groups[(o.model_version or "?", (o.variant or "?") if by_variant else "all")].append(o)
    out = []
    for (version, variant), items in groups.items():
        n = len(items)
        correct = sum(o.correct for o in items)
        ms = [o.latency_ms for o in items if o.latency_ms is not None]
        lo, hi = wilson_interval(correct, n)
        out.append(
            GroupStats(
                model_version=version,
                variant=variant,
                n=n,
                correct=correct,
                accuracy=correct / n,
                ci95=(lo, hi),
                p50_ms=percentile(ms, 50, 2),
                p95_ms=percentile(ms, 95, 2),
            )
        )
    return sorted(out, key=lambda g: (_version_key(g.model_version), g.variant))


def _mime(path: str) -> str:
    return "image/png" if path.lower().endswith(".png") else "image/jpeg"


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (10**9, v)


def _refusal(r: httpx.Response) -> str:
    """The gateway's error and hint for a refused call, in one line."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and detail.get("error"):
        hint = f" ({detail['hint']})" if detail.get("hint") else ""
        return f"HTTP {r.status_code}: {detail['error']}{hint}"
    return f"HTTP {r.status_code}: {r.text[:200]}"


async def _one(
    client: httpx.AsyncClient,
    tile: dict[str, Any],
    client_id: str,
    by: By,
    feedback: bool,
    auth: dict[str, str] | None = None,
) -> Outcome:
    o = Outcome(tile=tile["rel"], client_id=client_id, true_label=tile["label"], ok=False)
    t0 = time.perf_counter()
    try:
        if by == "image":
            data = await asyncio.to_thread(Path(tile["path"]).read_bytes)
            r = await client.post(
                "/v1/predict",
                files={"image": (Path(tile["path"]).name, data, _mime(tile["path"]))},
                data={"source": SOURCE, "client_id": client_id, "lat": repr(tile["lat"]), "lon": repr(tile["lon"])},
            )
        else:
            r = await client.post(
                "/v1/predict", json={"lat": tile["lat"], "lon": tile["lon"], "source": SOURCE, "client_id": client_id}
            )
    except httpx.HTTPError as exc:
        o.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return o
    o.latency_ms = round((time.perf_counter() - t0) * 1000, 3)
    if r.status_code != 200:
        o.error = f"HTTP {r.status_code}: {r.text[:200]}"
        return o
    try:
        body = r.json()
        o.request_id, o.label = str(body["request_id"]), str(body["label"])
        o.probability, o.variant = float(body["probability"]), str(body["variant"])
        o.model_version = str(body["model"]["version"])
    except (ValueError, KeyError, TypeError) as exc:
        o.error = f"unexpected answer ({type(exc).__name__}): {r.text[:200]}"
        return o
    o.ok = True
    if feedback:
        # The true label as delayed ground truth, marked as replayed (users' verdicts have source "user"); the
        # admin token (`auth`) proves it comes from whoever runs the gateway.
        try:
            fb = await client.post(
                "/v1/feedback",
                json={"request_id": o.request_id, "label": o.true_label, "source": SOURCE, "client_id": client_id},
                headers=auth,
            )
            o.feedback_stored = fb.status_code == 200
            if not o.feedback_stored:
                o.feedback_error = _refusal(fb)
        except httpx.HTTPError as exc:
            o.feedback_stored = False
            o.feedback_error = type(exc).__name__  # never its text: httpx may quote the token header in it
    return o


async def _replay(
    url: str,
    tiles: list[dict[str, Any]],
    *,
    by: By,
    rate: float,
    duration_s: float,
    users: int,
    concurrency: int,
    feedback: bool,
    timeout_s: float,
    on_done: Callable[[Outcome], None] | None,
    outcomes: list[Outcome],
    auth: dict[str, str] | None = None,
) -> tuple[float, str]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: no proxy from the environment may carry test tiles off this machine.
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, trust_env=False) as client:

        async def run(i: int, tile: dict[str, Any], sent_s: float) -> None:
            client_id = f"replay-user-{i % users}"
            try:
                o = await _one(client, tile, client_id, by, feedback, auth)
            except Exception as exc:  # e.g. a tile deleted meanwhile: counted as an error, the replay goes on
                o = Outcome(tile["rel"], client_id, tile["label"], ok=False, error=f"{type(exc).__name__}: {exc}")
            finally:
                sem.release()
            o.sent_s = sent_s
            outcomes.append(o)
            if on_done is not None:
                on_done(o)

        t0 = time.monotonic()
        stopped = "all planned tiles sent"
        tasks: list[asyncio.Task] = []
        for i, tile in enumerate(tiles):
            # Pacing: request i is due at t0 + i/rate; a full semaphore delays it (bounded concurrency wins).
            due = t0 + i / rate
            now = time.monotonic()
            if due - t0 >= duration_s or now - t0 >= duration_s:
                stopped = "duration reached"
                break
            if due > now:
                await asyncio.sleep(due - now)
            await sem.acquire()
            if time.monotonic() - t0 >= duration_s:
                sem.release()
                stopped = "duration reached"
                break
            tasks.append(asyncio.create_task(run(i, tile, time.monotonic() - t0)))
        if tasks:
            await asyncio.gather(*tasks)
        return time.monotonic() - t0, stopped


def run_replay(
    settings: Settings,
    *,
    split: str = "test",
    rate: float = 5.0,
    duration_s: float = 60.0,
    by: str = "image",
    limit: int | None = None,
    users: int = 20,
    concurrency: int = 8,
    gateway: str | None = None,
    feedback: bool = True,
    seed: int = 0,
    timeout_s: float = 30.0,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> ReplayResult:
    """Replay a split's tiles through the gateway and return live accuracy per model version and variant.

    Stops when every tile (at most `limit`) was sent or after `duration_s` seconds, whichever comes first;
    requests in flight then finish. `on_start(planned)` and `on_done(outcome)` drive a progress bar.
    """
    if by not in ("image", "coordinates"):
        raise InvalidInputError(f"--by must be image or coordinates, got {by!r}")
    for name, value in (("--rate", rate), ("--duration", duration_s)):
        if not (value > 0 and value < float("inf")):
            raise InvalidInputError(f"{name} must be a positive number, got {value}")
    if users < 1 or concurrency < 1:
        raise InvalidInputError("--users and --concurrency must be at least 1")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {limit}")
    if split not in SPLITS:
        use = f"use --split {' or --split '.join(SPLITS)}"
        if split == "train":
            raise InvalidInputError(
                "replay does not send the train split: the model was fitted on those tiles, and their labels "
                "would inflate the live accuracy replay stores",
                use,
            )
        raise InvalidInputError(f"unknown split {split!r}", use)
    url = gateway_url(settings, gateway)
    auth = admin_headers(settings) if feedback else {}  # a token no header can carry fails here, before any work
    tiles = pick_tiles(settings, split, limit, seed)
    check_gateway(url)
    mode = rollout_mode(url)
    available = len(tiles)
    wanted = rate * duration_s  # each finite, their product may not be (1e200 x 1e200): then every tile
    planned = available if wanted >= available else max(1, int(wanted + 0.999))
    tiles = tiles[:planned]
    if on_start is not None:
        on_start(planned)
    stopped = "interrupted"
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    try:
        elapsed, stopped = asyncio.run(
            _replay(
                url,
                tiles,
                by=by,  # type: ignore[arg-type]
                rate=rate,
                duration_s=duration_s,
                users=users,
                concurrency=concurrency,
                feedback=feedback,
                timeout_s=timeout_s,
                on_done=on_done,
                outcomes=outcomes,  # filled as answers come, so an interrupted run still reports them
                auth=auth,
            )
        )
    except KeyboardInterrupt:
        elapsed = time.monotonic() - t0
    result = ReplayResult(url, split, by, planned, outcomes, elapsed, rate, stopped, available=available)
    # In shadow mode the challenger answered copies nobody saw: their accuracy is what shadow traffic is for.
    shadow = shadow_outcomes(url, outcomes, timeout_s) if mode == "shadow" else []
    result.groups = accuracy_groups(outcomes + shadow, by_variant=True)
    result.versions = accuracy_groups(outcomes, by_variant=False)
    return result


def rollout_mode(url: str, timeout_s: float = 10.0) -> str | None:
    """The gateway's rollout mode (champion, ab, canary, shadow), or None when it cannot be read."""
    try:
        return str(httpx.get(f"{url}/v1/rollout", timeout=timeout_s, trust_env=False).json()["mode"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def shadow_outcomes(url: str, outcomes: list[Outcome], timeout_s: float = 30.0) -> list[Outcome]:
    """The challenger's shadow answers to the replayed requests, read back from the prediction store.

    Their latency is left out: it is the model call's, not a client's round trip like the served answers'.
    Copies still in flight or dropped under load are simply missing (n says how many were compared).
    """
    out = []
    with httpx.Client(base_url=url, timeout=timeout_s, trust_env=False) as client:
        for o in outcomes:
            if not (o.ok and o.request_id):
                continue
            try:
                rows = client.get(f"/v1/predictions/{o.request_id}").json()
            except (httpx.HTTPError, ValueError):
                continue
            for row in rows if isinstance(rows, list) else []:
                if row.get("variant") == "shadow" and row.get("label") and row.get("model_version"):
                    out.append(
                        Outcome(
                            tile=o.tile,
                            client_id=o.client_id,
                            true_label=o.true_label,
                            ok=True,
                            label=str(row["label"]),
                            probability=row.get("probability"),
                            request_id=o.request_id,
                            variant="shadow",
                            model_version=str(row["model_version"]),
                        )
                    )
    return out
