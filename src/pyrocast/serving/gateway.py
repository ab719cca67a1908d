"""The gateway: the one public entry point. Routes predictions between champion and challenger, stores them.

FastAPI + uvicorn, default http://127.0.0.1:8000, OpenAPI at /docs and /openapi.json. Run it with
`pyrocast serve gateway` or `python -m pyrocast.serving.gateway --port 8000`. The API is a contract for the
web app, replay and load tools; see docs/SERVING.md.

Backends are found by URL (Settings.serving: host, champion_port, challenger_port, explainer_port). Each
classifier says which model version it serves (`GET /model/info`); the champion role goes to the backend that
serves the rollout state's champion version, so a promotion survives a gateway restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import aiohttp
import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyrocast.data.layout import atomic_write
from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.imaging import encode_jpeg
from pyrocast.monitoring.novelty import Novelty, sentences
from pyrocast.ports import service_url
from pyrocast.registry.refs import check_model_ref
from pyrocast.serving.guards import MULTIPART_SLACK, BodyLimit, BodyTooLarge, UploadRejected, load_upload, too_big
from pyrocast.serving.rollout import (
    ABPlan,
    CanaryPlan,
    Event,
    ModelRef,
    Role,
    RolloutController,
    RolloutError,
    RolloutState,
    Window,
    step_since,
    stored_state,
    window_of_calls,
)
from pyrocast.serving.store import (
    GROUND_TRUTH_SOURCES,
    LABELS,
    USER_FEEDBACK,
    PredictionStore,
    brief_error,
    image_stats,
)
from pyrocast.serving.warn_every import WarnEvery
from pyrocast.settings import Settings, get_settings

log = logging.getLogger("pyrocast.gateway")

API_VERSION = "1"
Source = Literal["api", "web", "replay", "load"]
Label = Literal["wildfire", "nowildfire"]
Variant = Literal["champion", "challenger", "champion-fallback"]
PROBE_INTERVAL_S = 2.0
GONE_AFTER = 2  # unanswered probes in a row after which a service is not called (nor waited for) until one answers
DOWN_COOLDOWN_S = 2.0
BACKLOG_WARNING = 5000  # rows waiting to be written: the PyrocastStoreBacklog alert's threshold too
WARN_EVERY_S = 30.0  # a trouble that repeats (the store refusing, a model failing) is logged this often
PROMOTE_RETRY_S = 30.0  # a canary's auto-promotion whose registry aliases could not be moved waits this long
MAX_BACKGROUND = 256  # shadow/compare calls in flight; beyond this copies are dropped (and counted)
PREDICT_TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=2.0)
RECENT_REQUESTS = 20_000  # request ids kept in memory for feedback (about 10 MB); older ones are looked up in the store
TILE_CACHE = 256


# --- API models (the contract) ---------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    name: str = Field(..., examples=["pyrocast-wildfire"])
    version: str = Field(..., examples=["3"])


class PredictResponse(BaseModel):
    """One answer. `variant` says which model answered: champion, challenger, or champion-fallback (the
    challenger was chosen but failed, so the champion answered)."""

    request_id: str = Field(..., description="quote it in /v1/feedback")
    probability: float = Field(..., ge=0.0, le=1.0, description="P(wildfire)")
    label: Label
    model: ModelInfo
    variant: Variant
    latency_ms: float = Field(..., description="time spent in the gateway for this request")
    tile_sha256: str
    lat: float | None = None
    lon: float | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="why the answer may not be trusted: how the tile differs from the answering model's training "
        "tiles (out of distribution), most striking first; empty when it looks like them, or when the model's "
        "bundle has no drift reference",
        examples=[["much darker than the training tiles (mean brightness 0.00; training tiles 0.15-0.62)"]],
    )


class CoordinatesRequest(BaseModel):
    """Predict for a place: the gateway fetches its tile from the configured imagery provider."""

    # Strict: JSON numbers only (true would be read as 1, "46.2" as a number).
    lat: float = Field(..., ge=-90.0, le=90.0, allow_inf_nan=False, strict=True, examples=[45.5])
    lon: float = Field(..., ge=-180.0, le=180.0, allow_inf_nan=False, strict=True, examples=[-73.6])
    client_id: str | None = Field(None, max_length=128, description="sticky A/B assignment (or X-Client-Id)")
    source: Source = Field("api", description="who sends the request: api, web, replay or load")

    model_config = {"extra": "forbid"}


class UploadForm(BaseModel):
    """multipart/form-data fields of POST /v1/predict and /v1/explain with an image."""

    image: bytes = Field(..., description="a JPEG or PNG tile", json_schema_extra={"format": "binary"})
    client_id: str | None = Field(None, max_length=128)
    source: Source = "api"
    lat: float | None = Field(None, ge=-90.0, le=90.0, allow_inf_nan=False, description="where the tile is from")
    lon: float | None = Field(None, ge=-180.0, le=180.0, allow_inf_nan=False)


class ExplainCoordinates(CoordinatesRequest):
    version: str | None = Field(None, max_length=64, description="model version to explain (default: champion)")


class FeedbackRequest(BaseModel):
    """A verdict on an answer (`correct`), the true label, or both (they must agree)."""

    request_id: str = Field(..., min_length=1, max_length=64)
    correct: bool | None = Field(None, strict=True, description="true or false (JSON booleans only)")
    label: Label | None = Field(None, description="the true label, when known (e.g. delayed ground truth)")
    source: Literal["user", "replay", "feed"] = Field(
        "user",
        description="user: a person's verdict (the newest one counts). replay, feed: delayed ground truth, which "
        "outranks every verdict; when the gateway has an admin token it needs Authorization: Bearer <token>",
    )
    client_id: str | None = Field(None, max_length=128)

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _something_to_say(self) -> FeedbackRequest:
        if self.correct is None and self.label is None:
            raise ValueError("give `correct` (true/false), `label` (wildfire/nowildfire), or both")
        return self


class FeedbackResponse(BaseModel):
    request_id: str
    correct: bool
    true_label: Label
    served_label: Label
    model: ModelInfo
    counts: bool | None = Field(
        description="this verdict now gives the request's label (live accuracy, the feedback page): true for ground "
        "truth and for a user verdict on a request without ground truth; false for a user verdict when ground truth "
        "(which outranks every verdict) is known, the verdict then being kept as history; null when the store could "
        "not be asked (the verdict is stored all the same)"
    )
    request_label: Label | None = Field(description="the request's label now (null when counts is null)")
    label_source: Literal["user", "replay", "feed"] | None = Field(
        description="where request_label comes from: user (a person's verdict), replay (the held-out test label), "
        "feed (a later fire feed); null when counts is null"
    )


class BackendStatus(BaseModel):
    role: str
    url: str
    up: bool
    model: ModelInfo | None = None
    precision: str | None = None
    source: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded when the champion does not answer")
    backends: dict[str, BackendStatus]
    explainer: BackendStatus | None = Field(
        None, description="the explainer (heatmaps) and whether it answers; null where none runs (serving.explainer)"
    )
    store_queue: int
    warnings: list[str] = Field(default_factory=list, description="what is wrong short of the champion being down")


class RolloutView(BaseModel):
    """The rollout state, what each role serves, live statistics and recent events."""

    mode: str
    challenger_share: float
    state: dict[str, Any]
    backends: dict[str, BackendStatus]
    events: list[dict[str, Any]]
    warnings: list[str] = Field(default_factory=list, description="e.g. an experiment whose challenger is down")


class ReasonBody(BaseModel):
    reason: str | None = Field(None, max_length=500)
    model_config = {"extra": "forbid"}


class PromoteBody(ReasonBody):
    force: bool = Field(
        False, strict=True, description="promote even a version its training run rejected (the reason is recorded)"
    )


class ShadowBody(BaseModel):
    sample: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="share of requests copied")
    model_config = {"extra": "forbid"}


class ErrorResponse(BaseModel):
    detail: Any


class ImageryFailed(ServiceUnavailableError):
    """The imagery provider gave no tile for a valid place: not set up, not answering (503), or what it sent cannot
    be used (502). Its answers carry `"service": "imagery"`, so the web app says what is down."""

    def __init__(self, message: str, hint: str | None = None, status: int = 503) -> None:
        super().__init__(message, hint)
        self.status = status


# --- backends --------------------------------------------------------------------------------------------------
class BackendError(Exception):
    """A backend did not answer usefully. `client_error` means the request was at fault (4xx), not the backend."""

    def __init__(self, message: str, status: int | None = None, client_error: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.client_error = client_error


def _client_fault(stored_error: str | None) -> bool:
    """Whether a stored failure was the request's fault (the text a BackendError gives a 4xx answer)."""
    return stored_error is not None and stored_error.startswith("HTTP 4")


@dataclass
class Answer:
    probability: float
    label: str
    model: ModelRef
    precision: str | None
    latency_ms: float
    warnings: list[str] = field(default_factory=list)  # the tile is unlike the model's training tiles (novelty)


class Probed:
    """A service behind the gateway, known by URL, probed in the background: whether it answered last."""

    kind = "service"
    restart_effect = "requests it held failed"  # what users saw when BentoML restarted its worker (logged)

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self._up = False
        self._went_down = False
        # worker index -> (pid, start time, service pid, service start time) at the last probe (/model/info)
        self.workers: dict[str, tuple[Any, ...]] = {}
        self.new_restarts = 0  # worker restarts seen since the gateway last counted them (refresh_backends)
        self.failed_probes = 0  # probes in a row that found it not answering (a failed call does not count)
        self.probed_at = 0.0  # monotonic time of the last probe's answer
        self._counted_failure_end = 0.0  # when the last failed probe that counted towards `failed_probes` ended

    def describe(self) -> str:
        return f"{self.kind} at {self.url}"

    @property
    def gone(self) -> bool:
        """Whether a caller should not wait for it: `GONE_AFTER` probes in a row failed, the last one recently (a
        probe stuck behind a slow store must not keep refusing calls to a service that answers again). One failed
        probe is not enough: a busy service can be slow to answer its /readyz once."""
        fresh = time.monotonic() - self.probed_at < 3 * PROBE_INTERVAL_S
        return self.failed_probes >= GONE_AFTER and fresh

    def answered(self) -> None:
        """A call was answered: it answers (a probe that timed out before no longer makes it `gone`: calls refused
        right after a stall, while it answered them, and 'stopped answering' / 'answers again' lines flapped)."""
        self.up = True
        self.failed_probes = 0

    def _count_probe(self, started: float, unanswered: bool) -> None:
        """Count the probe begun at `started`: one that got no answer at all (a timeout, a refused or reset
        connection) counts towards `gone`; any answer, a refusal included (not ready, 429 when saturated), clears
        it: a service that answers is busy or broken, not hung, and a call to it does not wait 30 s."""
        self.probed_at = time.monotonic()
        if not unanswered:
            self.failed_probes = 0
        elif started >= self._counted_failure_end:
            self.failed_probes += 1
            self._counted_failure_end = self.probed_at
        # else: this probe ran beside one that failed (a rollout change probes beside the ticker): both saw the same
        # moment of a busy service, which is one failure, not two in a row.

    def _note_worker(self, info: dict[str, Any]) -> None:
        """Say (and count) that another process answers than at the last probe.

        BentoML's arbiter replaces a worker that died (SIGKILL, the OOM killer) within a second, with the
        same worker index and not a word in any log: the pid and start time that `/model/info` reports are the only
        trace. The same arbiter (service pid) means such a restart; another one means the whole service was started
        again (by someone: nothing restarts a service on its own).
        """
        w = info.get("worker") if isinstance(info, dict) else None
        if not isinstance(w, dict):
            return
        key = str(w.get("index"))
        now = (w.get("pid"), w.get("started"), w.get("service_pid"), w.get("service_started"))
        before = self.workers.get(key)
        self.workers[key] = now
        if before is None or before == now:
            return
        if before[2:] == now[2:]:
            self.new_restarts += 1
            log.warning(
                "%s: BentoML restarted its worker %s (pid %s -> %s) after it died; %s (the %s's log does not say why "
                "it died: look for the OOM killer in the kernel log)",
                self.describe(),
                key,
                before[0],
                now[0],
                self.restart_effect,
                self.kind,
            )
        else:
            log.warning(
                "%s: another service process answers (pid %s -> %s): the %s was started again",
                self.describe(),
                before[2],
                now[2],
                self.kind,
            )

    async def ready(self) -> bool:
        """Whether the service says it is ready (GET /readyz); raises httpx.HTTPError when it does not answer."""
        r = await self.client.get(self.url + "/readyz", timeout=2.0)
        return r.status_code == 200

    @property
    def up(self) -> bool:
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        # Said once per change (not per failed call), so that on call can read when a service went and came back.
        if value != self._up:
            what = self.describe()
            if not value:
                self._went_down = True
                log.warning("%s stopped answering", what)
            elif self._went_down:
                log.warning("%s answers again", what)
            else:
                log.info("%s answers", what)
        self._up = value


class ExplainerProbe(Probed):
    """The explainer (heatmaps): probed with the classifiers, so /healthz reads a cached state and never waits."""

    kind = "explainer"
    restart_effect = "heatmaps it was drawing failed, and heatmaps failed at once until the new worker answered"

    async def probe(self) -> bool:
        started = time.monotonic()
        unanswered = False
        try:
            self.up = await self.ready()
        except httpx.TransportError:
            self.up, unanswered = False, True
        except httpx.HTTPError:
            self.up = False
        self._count_probe(started, unanswered)
        if self.up:
            # Which process answers (a worker BentoML restarted); an explainer without it still makes heatmaps.
            with contextlib.suppress(httpx.HTTPError, ValueError):
                info = await self.client.get(self.url + "/model/info", timeout=2.0)
                if info.status_code == 200:
                    self._note_worker(info.json())
        return self.up

    def status(self) -> BackendStatus:
        return BackendStatus(role="explainer", url=self.url, up=self.up)


class Backend(Probed):
    """One classifier service, known by URL; remembers what it serves, whether it answers, and which process."""

    kind = "classifier"
    restart_effect = "requests it held failed, later ones waited for the new worker to load the model"

    def __init__(self, slot: str, url: str, client: httpx.AsyncClient) -> None:
        super().__init__(url, client)
        self.slot = slot
        self.session: aiohttp.ClientSession | None = None  # set by Gateway.startup (needs the running loop)
        self.info: dict[str, Any] | None = None
        self.down_until = 0.0
        # The served model's acceptance ranges (/model/info "novelty"), rebuilt only when they change.
        self.novelty: Novelty | None = None
        self._novelty_raw: Any = None

    def describe(self) -> str:
        ref = self.ref
        return f"classifier at {self.url}" + (f" ({ref.name} v{ref.version})" if ref else "")

    @property
    def ref(self) -> ModelRef | None:
        if not self.info:
            return None
        return ModelRef(name=str(self.info.get("name")), version=str(self.info.get("version")))

    def available(self, now: float) -> bool:
        return now >= self.down_until

    def mark_down(self) -> None:
        self.up = False
        self.down_until = time.monotonic() + DOWN_COOLDOWN_S

    async def probe(self) -> bool:
        """Ask readiness and model info; updates `up` and `info`."""
        started = time.monotonic()
        unanswered = False
        try:
            if not await self.ready():
                raise BackendError("not ready")
            info = await self.client.get(self.url + "/model/info", timeout=2.0)
            # Saturated (BentoML refuses /model/info past its max_concurrency, not /readyz): it answers, and serves
            # the model it served at the last probe.
            if not (info.status_code == 429 and self.info is not None):
                info.raise_for_status()
                self.info = info.json()
                self._note_worker(self.info)
                raw = self.info.get("novelty") if isinstance(self.info, dict) else None
                if raw != self._novelty_raw:
                    self._novelty_raw, self.novelty = raw, Novelty.from_dict(raw)
            self.up, self.down_until = True, 0.0
        except httpx.TransportError:  # no answer: hung, gone or unreachable
            self.up, unanswered = False, True
        except (httpx.HTTPError, BackendError, ValueError):
            self.up = False
        self._count_probe(started, unanswered)
        return self.up

    async def _post(self, form: aiohttp.FormData) -> tuple[int, bytes]:
        assert self.session is not None
        async with self.session.post(self.url + "/predict", data=form, timeout=PREDICT_TIMEOUT) as r:
            return r.status, await r.read()

    async def predict(self, data: bytes, content_type: str) -> Answer:
        # aiohttp for the hot path: about 0.8 CPU-ms per call against httpx's 1.6-2.0 (measured on the classifier).
        if self.session is None:
            raise BackendError(f"{self.url}: the gateway is not started")
        if self.gone:  # hung (its probes time out): every call waited the whole 30 s for its 503
            raise BackendError(f"{self.describe()} does not answer its health probes ({self.failed_probes} in a row)")
        form = aiohttp.FormData()
        form.add_field("images", data, filename="tile", content_type=content_type)
        t0 = time.perf_counter()
        call = asyncio.ensure_future(self._post(form))
        try:
            # Given up once its probes find it hung (a call in flight through a stall waited the whole 30 s).
            while True:
                done, _ = await asyncio.wait({call}, timeout=0.5)
                if done:
                    status, body = call.result()
                    break
                if self.gone:
                    raise BackendError(f"{self.describe()} stopped answering its health probes during the call")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        finally:
            if not call.done():
                call.cancel()
        ms = (time.perf_counter() - t0) * 1000
        if status != 200:
            msg = _error_text(body)
            raise BackendError(f"HTTP {status}: {msg}", status, client_error=400 <= status < 500)
        try:
            item = json.loads(body)[0]
            ref = ModelRef(name=str(item["model"]["name"]), version=str(item["model"]["version"]))
            return Answer(float(item["probability"]), str(item["label"]), ref, item.get("precision"), ms)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"unexpected answer: {body[:200]!r}") from exc

    def status(self, role: str) -> BackendStatus:
        ref = self.ref
        return BackendStatus(
            role=role,
            url=self.url,
            up=self.up,
            model=ModelInfo(name=ref.name, version=ref.version) if ref else None,
            precision=(self.info or {}).get("precision"),
            source=(self.info or {}).get("source"),
        )


def _swallow(task: asyncio.Future[Any]) -> None:
    """Retrieve a discarded task's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _why(exc: Exception) -> str:
    """An exception's text, or its kind where it has none (httpx's ReadError('') said nothing after the colon)."""
    return str(exc).strip() or f"{type(exc).__name__} (no detail given)"


def _backend_message(r: httpx.Response) -> str:
    return _error_text(r.content)


def _error_text(raw: bytes) -> str:
    """The error message in a backend's answer (BentoML wraps it in a list), else the start of the body."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw[:300].decode("utf-8", "replace")
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:300]
    return str(body)[:300]


# --- metrics ---------------------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of their own (several gateways may live in one test process)."""

    def __init__(self, explainer: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("pyrocast_gateway_http_requests_total", "HTTP requests", ["endpoint", "status"], registry=r)
        self.request_latency = Histogram(
            "pyrocast_gateway_request_seconds",
            "end-to-end gateway latency of answered predictions",
            ["variant", "model_version"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.predictions = Counter(
            "pyrocast_predictions_total",
            "model calls (served answers, shadow copies and comparisons) by outcome",
            ["variant", "model_version", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "pyrocast_model_call_seconds",
            "latency of a classifier call",
            ["variant", "model_version"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.fallbacks = Counter(
            "pyrocast_fallbacks_total", "challenger failures answered by the champion", ["reason"], registry=r
        )
        self.dropped = Counter(
            "pyrocast_background_dropped_total", "shadow/compare copies dropped under load", registry=r
        )
        self.share = Gauge("pyrocast_challenger_share", "share of clients routed to the challenger", registry=r)
        self.backend_up = Gauge(
            "pyrocast_backend_up", "1 when a backend (champion, challenger, explainer) answers", ["role"], registry=r
        )
        self.backend_restarts = Counter(
            "pyrocast_backend_restarts_total",
            "classifier and explainer workers BentoML restarted after they died (seen by their pid at the probes)",
            ["role"],
            registry=r,
        )
        # The series exist from the start, so that increase() sees the first restart; none for an explainer the
        # gateway is told does not run (it says nothing about one).
        for role in ("champion", "challenger", *(["explainer"] if explainer else [])):
            self.backend_restarts.labels(role)
        self.store_queue = Gauge("pyrocast_store_queue_depth", "rows waiting to be written", registry=r)
        self.store_written = Gauge("pyrocast_store_rows_written", "rows written since start", ["table"], registry=r)
        self.store_errors = Gauge("pyrocast_store_write_errors", "failed write attempts since start", registry=r)
        self.store_held = Gauge(
            "pyrocast_store_rows_held", "rows neither the database nor the spill file took, held in memory", registry=r
        )
        self.store_lost = Gauge("pyrocast_store_rows_lost", "rows given up (beyond the memory held)", registry=r)
        self.store_refused = Gauge(
            "pyrocast_store_rows_refused",
            "rows the database refused for what they hold since start, set aside beside the spill file",
            registry=r,
        )
        self.rollout_store_errors = Counter(
            "pyrocast_rollout_store_errors_total", "rollout reads or records the store refused", registry=r
        )
        self.rollout_unrecorded = Gauge(
            "pyrocast_rollout_unrecorded_stop",
            "1 while a guardrail stop is in effect here but not yet recorded",
            registry=r,
        )


# --- the gateway -----------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A request's tile, decoded and described, ready for the models."""

    data: bytes
    content_type: str
    sha256: str
    stats: dict[str, Any]
    lon: float | None
    lat: float | None


@dataclass
class Upload:
    """An uploaded tile whose check (guards, hash, statistics) runs in the background.

    The first model call starts with the raw bytes while the tile is checked: the gateway's decode and the
    classifier's parsing run on different cores (about 0.7 ms off every upload's latency). Nothing is stored
    and no answer is given before the check has passed (the classifier applies the same guards).
    """

    data: bytes
    content_type: str
    check: asyncio.Future[Prepared]


class Gateway:
    """The gateway's state: backends, rollout controller, store, provider, metrics."""

    def __init__(self, settings: Settings, store: PredictionStore | None = None) -> None:
        self.settings = settings
        sv = settings.serving
        self.max_upload = sv.max_upload_bytes
        self.store = store or PredictionStore(
            settings.store_database_url, spill_path=settings.root / "predictions-spill.jsonl"
        )
        self.metrics = Metrics(explainer=sv.explainer)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=2.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.backends = {
            "a": Backend("a", service_url(sv.host, sv.champion_port), self.client),
            "b": Backend("b", service_url(sv.host, sv.challenger_port), self.client),
        }
        self.roles: dict[str, str] = {"champion": "a", "challenger": "b"}
        self.explainer_url = service_url(sv.host, sv.explainer_port)
        self.explain_timeout_s = sv.explain_timeout_s
        # None where no explainer runs (`pyrocast up --no-explainer`): nothing to warn about or alert on.
        self.explainer = ExplainerProbe(self.explainer_url, self.client) if sv.explainer else None
        self.controller = RolloutController()
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.tiles: OrderedDict[tuple[float, float], Prepared] = OrderedDict()
        self._provider: Any = None
        self._provider_lock = threading.Lock()
        self._background: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self._event_id = 0  # the newest rollout event this gateway has written or adopted
        self._resumed = False  # the saved rollout state has been read from the store (or found to be none)
        self._state_unread = False  # the start could not read it: this gateway routes to the champion meanwhile
        self._start_note: str | None = None  # a "start" event to record (the store refused it so far)
        self._promote_retry_at = 0.0  # monotonic time before which a failed auto-promotion is not tried again
        # One rollout change at a time: an operator's change, the tick's (adopting another gateway's change, a canary
        # step, a stop, an auto-promotion) and a request's guardrail check each copy the state, await the store or
        # the registry, then put their copy in effect; interleaved, one would overwrite what another recorded.
        self._rollout_lock = asyncio.Lock()
        self._guardrail_check_due = False  # a request's guardrail check waits for the lock (one at a time)
        self._warn = WarnEvery(WARN_EVERY_S, log)
        # A guardrail stop in effect here, not yet recorded: the stop, its claim, and the plan it stopped.
        self._unrecorded_stop: tuple[Event, str, tuple[str, float]] | None = None
        # ...kept on disk too, so that a gateway restarted before the store is back does not resume the stopped plan.
        self._stop_file = settings.root / "rollout-unrecorded-stop.json"
        self.session: aiohttp.ClientSession | None = None
        admin = settings.admin_token
        self.admin_token = admin.get_secret_value() if admin else None

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=128))
        for b in self.backends.values():
            b.session = self.session
        self.store.start()
        await asyncio.gather(*(b.probe() for b in self._probed()))
        try:
            await self._resume()
        except Exception as exc:  # the store's database is down: serve anyway, the tick reads the state later
            if self._resumed:  # read, but the start event was refused: the tick records it
                self._store_trouble("the gateway's start not recorded yet", exc)
            else:
                self._state_unread = True
                self.metrics.rollout_store_errors.inc()
                log.warning(
                    "rollout: the saved rollout state cannot be read from the prediction store at %s (%s): routing "
                    "to the champion only until it can; it is then taken up within a second",
                    self.store.shown_url,
                    type(exc).__name__,
                )
        self._assign_roles()
        for role, say in (("champion", log.warning), ("challenger", log.info)):
            if not self.backend(role).up:
                say("%s classifier at %s does not answer yet", role, self.backend(role).url)
        if self.explainer is not None and not self.explainer.up:
            log.info("explainer at %s does not answer yet: heatmaps fail until it does", self.explainer.url)
        self._ticker = asyncio.create_task(self._tick_loop())

    async def _resume(self) -> None:
        """Take up the rollout state saved in the store (the last event's snapshot), let the registry's
        `champion` alias correct it, and record a start where there was none. Raises when the store refuses."""
        if not self._resumed:
            latest = await run_in_threadpool(self.store.latest_event)
            saved = latest[1] if latest else None
            if latest and latest[0] > self._event_id:
                self._event_id = latest[0]
                if saved:
                    try:
                        self.controller.state = stored_state(saved)
                        self.controller._reset_windows()
                    except ValidationError as exc:
                        log.error(
                            "rollout: the saved rollout state (event %d) is unreadable, starting with the champion "
                            "only: %s",
                            latest[0],
                            exc,
                        )
                        saved = None
            self._take_up_unrecorded_stop()
            self._resume_canary_step()
            note = await self._follow_registry()
            self._assign_roles()
            self._check_challenger()  # given another version while this gateway was down
            self._resumed = True
            if self._state_unread:
                self._state_unread = False
                log.warning(
                    "rollout: the saved rollout state is read from the store now: mode %s", self.controller.state.mode
                )
            if not saved or note:
                self._start_note = note or "gateway started with a fresh rollout state"
        if self._start_note is not None:
            await self._record(Event("start", self._start_note))
            self._start_note = None

    async def shutdown(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        # Let shadow copies in flight finish (briefly), so their rows are stored too.
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
            for task in list(self._background):  # past the grace: not left to run against a closed store
                task.cancel()
        await self.client.aclose()
        if self.session is not None:
            await self.session.close()
        if self._provider is not None and hasattr(self._provider, "close"):
            with contextlib.suppress(Exception):
                self._provider.close()
        await run_in_threadpool(self.store.close)

    async def _tick_loop(self) -> None:
        last_probe = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                if time.monotonic() - last_probe >= PROBE_INTERVAL_S:
                    last_probe = time.monotonic()
                    await self.refresh_backends()
                if not self._rollout_lock.locked():  # a change in progress: the next tick (probes go on meanwhile)
                    async with self._rollout_lock:
                        await self._tick_rollout()
                self._update_gauges()
            except Exception:  # the loop must survive anything (a store hiccup, a backend oddity)
                log.exception("gateway tick failed")

    async def _tick_rollout(self) -> None:
        """The tick's part of the rollout (under `_rollout_lock`): adopt, read the fleet's calls, advance."""
        # Adopt what other gateways changed before judging the canary: a step one of them has recorded is then not
        # recorded again. A store that cannot be read must not keep the guardrails from being judged: the canary
        # still stops on them (see advance).
        try:
            if self._resumed and self._start_note is None:
                await self.follow_store()
            else:
                await self._resume()
        except Exception as exc:
            if not self._resumed:
                what = "the saved rollout state not read"
            elif self._start_note is not None:
                what = "the gateway's start not recorded"
            else:
                what = "other gateways' changes not read"
            self._store_trouble(what, exc)
        try:
            await self._read_fleet_calls()
        except Exception as exc:  # judged on what this gateway sees (and the last reading) meanwhile
            self._store_trouble("the canary's calls through other gateways not read", exc)
        await self.advance()

    def _store_trouble(self, what: str, exc: BaseException) -> None:
        """Say that the store refused something, at most every WARN_EVERY_S (the tick runs twice a second)."""
        self.metrics.rollout_store_errors.inc()
        self._warn("store", "rollout: %s: the store refused (%s); tried again every tick", what, brief_error(exc))

    async def follow_store(self) -> bool:
        """Adopt a rollout change another gateway wrote to the shared store; True when the state was replaced.

        Replicas behind a load balancer share one store: a change made through any of them (a mode, a promotion,
        a guardrail stop) reaches the others within a tick. A replica's own windows restart only when the mode or
        plan changed, not when another replica recorded a canary step (guardrails also see all replicas' calls:
        `_read_fleet_calls`).
        """
        if await run_in_threadpool(self.store.latest_event_id) <= self._event_id:
            return False
        latest = await run_in_threadpool(self.store.latest_event)
        if latest is None or latest[0] <= self._event_id:
            return False
        event_id, saved = latest
        self._event_id = event_id
        try:
            state = stored_state(saved or {})
        except ValidationError as exc:
            log.warning("rollout event %d has an unreadable state (%s); keeping mine", event_id, exc)
            return False
        if self._unrecorded_stop is not None:
            if (state.mode, state.updated_at) == self._unrecorded_stop[2]:
                # Another replica moved the canary this one has stopped (a step) while this one cannot write: the
                # stop holds here until it is recorded, and then reaches the others.
                return False
            self._set_unrecorded_stop(None)  # a newer decision (an operator's) replaces the stopped plan
        mine = self.controller.state
        restarted = (state.mode, state.updated_at) != (mine.mode, mine.updated_at)
        self.controller.state = state
        if restarted:
            self.controller._reset_windows()
            self.controller.replaced_challenger = None  # a new plan, for the challenger served now
            log.info("rollout: following a change made through another gateway: mode %s", state.mode)
        self._assign_roles()
        return True

    async def _read_fleet_calls(self) -> None:
        """Give the canary's guardrails the challenger's recent calls through every gateway on the store.

        Behind a load balancer each replica serves only part of a canary's traffic, so a challenger failing
        on 1 call in 10 per replica may stay under a replica's `min_requests` while the fleet is well over it.
        """
        c = self.controller
        st = c.state
        if st.mode != "canary" or st.canary is None or st.challenger is None:
            return
        plan = (st.updated_at, st.challenger.version)
        since = datetime.fromtimestamp(st.updated_at, UTC)
        calls = await run_in_threadpool(self.store.canary_calls, plan[1], since, st.canary.guardrails.window)
        now = c.state
        if now.mode != "canary" or (now.updated_at, now.challenger.version if now.challenger else None) != plan:
            return  # the plan changed while reading
        counted = [call for call in calls if not _client_fault(call["error"])]
        c.fleet_stats = window_of_calls(counted, st.canary.guardrails.window).summary()

    def _update_gauges(self) -> None:
        m = self.metrics
        m.share.set(self.controller.share())
        for role in ("champion", "challenger"):
            m.backend_up.labels(role).set(1 if self.backend(role).up else 0)
        if self.explainer is not None:
            m.backend_up.labels("explainer").set(1 if self.explainer.up else 0)
        m.store_queue.set(self.store.queue_depth)
        for table, n in self.store.written.items():
            m.store_written.labels(table).set(n)
        m.store_errors.set(self.store.write_errors)
        m.store_held.set(self.store.held)
        m.store_lost.set(self.store.dropped)
        m.store_refused.set(self.store.refused)
        m.rollout_unrecorded.set(1 if self._unrecorded_stop is not None else 0)

    # --- backends and roles ---------------------------------------------------------------------------------
    def backend(self, role: str) -> Backend:
        return self.backends[self.roles[role]]

    def _probed(self) -> list[Backend | ExplainerProbe]:
        return [*self.backends.values(), *([self.explainer] if self.explainer is not None else [])]

    async def refresh_backends(self) -> None:
        """Probe every service (every PROBE_INTERVAL_S, in the tick): /healthz and /metrics read what this found."""
        await asyncio.gather(*(b.probe() for b in self._probed()))
        self._assign_roles()
        self._check_challenger()
        probed: list[tuple[str, Probed]] = [(role, self.backend(role)) for role in ("champion", "challenger")]
        if self.explainer is not None:
            probed.append(("explainer", self.explainer))
        for role, svc in probed:
            if svc.new_restarts:
                self.metrics.backend_restarts.labels(role).inc(svc.new_restarts)
                svc.new_restarts = 0

    def _check_challenger(self) -> None:
        """Right after a probe: whether the challenger's service still serves the version the experiment is for."""
        chall = self.backend("challenger")
        if chall.up:
            self.controller.check_challenger(chall.ref)

    def _assign_roles(self) -> None:
        """Champion role -> the backend serving the state's champion version (default: the champion port)."""
        st = self.controller.state
        a, b = self.backends["a"], self.backends["b"]
        if st.champion is not None and a.ref != b.ref:
            if b.ref == st.champion:
                self.roles = {"champion": "b", "challenger": "a"}
            elif a.ref == st.champion:
                self.roles = {"champion": "a", "challenger": "b"}
        champ, chall = self.backend("champion"), self.backend("challenger")
        # Keep the last known models while a backend is briefly down: a blip must not erase the rollout.
        champion = champ.ref or st.champion
        challenger = chall.ref if chall.ref is not None else (st.challenger if not chall.up else None)
        if challenger == champion:
            challenger = None
        self.controller.set_models(champion, challenger)

    async def _follow_registry(self) -> str | None:
        """At start, the registry's `champion` alias decides the champion role when the backends serve
        registered models: aliases may have moved while the gateway was down (a training run's decision)."""
        infos = [b.info for b in self.backends.values() if b.info]
        if not infos or any(i.get("source") != "registry" for i in infos):
            return None
        try:
            from pyrocast.registry.models import aliases

            current = await run_in_threadpool(aliases, self.settings)
        except Exception as exc:  # the registry is down: keep the saved state
            log.warning("registry aliases not read at start (%s); keeping the saved rollout state", exc)
            return None
        version = current.get("champion")
        st = self.controller.state
        served = {b.ref.version: b.ref for b in self.backends.values() if b.ref is not None}
        if version is None or version not in served or (st.champion and st.champion.version == version):
            return None
        before = st.champion
        st.champion = served[version]
        return f"champion is v{version} per the registry alias (the saved state said {before or 'nothing'})"

    def backend_statuses(self) -> dict[str, BackendStatus]:
        return {role: self.backend(role).status(role) for role in ("champion", "challenger")}

    def explainer_warnings(self) -> list[str]:
        """The explainer down, for /healthz (not /v1/rollout: the rollout does not depend on it)."""
        if self.explainer is None or self.explainer.up:
            return []
        return [f"the explainer ({self.explainer.url}) does not answer: heatmaps (/v1/explain) fail with 503"]

    # --- tiles ----------------------------------------------------------------------------------------------
    def provider(self) -> Any:
        """The imagery provider, built once (two first requests side by side built two, one never closed)."""
        with self._provider_lock:
            if self._provider is None:
                from pyrocast.data.imagery import make_provider

                self._provider = make_provider(self.settings)
            return self._provider

    def fetch_tile(self, lon: float, lat: float) -> Image.Image:
        """The provider's tile for a place; what goes wrong on the provider's side is an ImageryFailed (a 502 or
        503 naming the imagery), never the client's 422: the place was valid (its request was checked)."""
        from pyrocast.data.feed import HttpError
        from pyrocast.data.imagery import NoImageryError

        name = self.settings.imagery.provider
        try:
            try:
                provider = self.provider()
            except PyrocastError as exc:
                raise ImageryFailed(
                    f"the imagery provider ({name}) is not set up on this gateway: {exc.message}",
                    f"whoever runs Pyrocast: {exc.hint}" if exc.hint else None,
                ) from exc
            try:
                return provider.fetch(lon, lat)
            except NoImageryError:
                raise
            except HttpError as exc:  # no answer, or not the one asked for
                raise ImageryFailed(f"the imagery provider ({name}) does not answer: {exc.message}", exc.hint) from exc
            except PyrocastError as exc:  # what it sent cannot be used (a corrupt tile, one of the wrong size)
                raise ImageryFailed(
                    f"the imagery provider ({name}) sent no usable tile: {exc.message}", exc.hint, status=502
                ) from exc
        except ImageryFailed as exc:
            self._warn("imagery", "no tile for a place: %s", exc.message)  # on call's only trace of it
            raise

    async def tile_for(self, lon: float, lat: float) -> Prepared:
        key = (round(lon, 6), round(lat, 6))
        hit = self.tiles.get(key)
        if hit is not None:
            self.tiles.move_to_end(key)
            return hit

        def fetch() -> Prepared:
            img = self.fetch_tile(lon, lat)
            data = encode_jpeg(img, quality=95)
            return Prepared(data, "image/jpeg", hashlib.sha256(data).hexdigest(), image_stats(img), lon, lat)

        prepared = await run_in_threadpool(fetch)
        self.tiles[key] = prepared
        while len(self.tiles) > TILE_CACHE:
            self.tiles.popitem(last=False)
        return prepared

    def check_upload(self, data: bytes, content_type: str, lon: float | None, lat: float | None) -> Upload:
        """Start checking an uploaded tile in a worker thread; `predict` overlaps it with the first model call."""

        def check() -> Prepared:
            img = load_upload(data, max_bytes=self.max_upload, what="image")
            return Prepared(data, content_type, hashlib.sha256(data).hexdigest(), image_stats(img), lon, lat)

        return Upload(data, content_type, asyncio.ensure_future(run_in_threadpool(check)))

    # --- predictions ----------------------------------------------------------------------------------------
    async def predict(
        self, incoming: Prepared | Upload, client_id: str | None, source: str, t0: float | None = None
    ) -> PredictResponse:
        """Route, call and store one prediction. t0: `time.perf_counter()` once the request's body was read (a
        place's tile fetched since counts in `latency_ms`; the client's upload does not)."""
        t0 = time.perf_counter() if t0 is None else t0
        request_id = uuid.uuid4().hex
        route = self.controller.route(client_id or request_id)
        mode = self.controller.state.mode
        # The plan's windows as this request is routed: its outcomes count there, even if the plan changes meanwhile.
        windows = self.controller.windows
        first: Role = "champion"
        if route.role == "challenger" and self.backend("challenger").available(time.monotonic()):
            first = "challenger"
        started, tile = await self._overlap(first, incoming)
        base = self._base_row(tile, request_id, client_id, source, mode)
        answer: Answer | None = None
        variant: Variant = "champion"
        if route.role == "challenger":
            answer = await self._call_challenger(tile, base, windows, started if first == "challenger" else None)
            variant = "challenger"
        if answer is None:
            if route.role == "challenger":
                variant = "champion-fallback"
            answer = await self._call(
                "champion",
                tile,
                base,
                variant,
                served=True,
                started=started if first == "champion" else None,
                windows=windows,
            )
        total_ms = (time.perf_counter() - t0) * 1000
        self.metrics.request_latency.labels(variant, answer.model.version).observe(total_ms / 1000)
        self._remember(request_id, answer, variant, client_id)
        if route.shadow:
            self._spawn(self._shadow(tile, base, windows))
        if route.compare and variant == "challenger":
            self._spawn(self._compare(tile, base, answer, windows))
        return PredictResponse(
            request_id=request_id,
            probability=answer.probability,
            label=answer.label,  # type: ignore[arg-type]
            model=ModelInfo(name=answer.model.name, version=answer.model.version),
            variant=variant,
            latency_ms=round(total_ms, 3),
            tile_sha256=tile.sha256,
            lat=tile.lat,
            lon=tile.lon,
            warnings=answer.warnings,
        )

    def _base_row(
        self, tile: Prepared, request_id: str, client_id: str | None, source: str, mode: str
    ) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "client_id": client_id,
            "source": source,
            "rollout_mode": mode,
            "lon": tile.lon,
            "lat": tile.lat,
            "tile_sha256": tile.sha256,
            **tile.stats,
        }

    async def _overlap(self, role: Role, incoming: Prepared | Upload) -> tuple[asyncio.Task[Answer] | None, Prepared]:
        """For an upload: start `role`'s call with the raw bytes, then wait for the tile's check."""
        if isinstance(incoming, Prepared):
            return None, incoming
        be = self.backend(role)
        started = asyncio.create_task(be.predict(incoming.data, incoming.content_type))
        try:
            return started, await incoming.check
        except BaseException:
            # The tile was refused (or the client left): its answer must not count, and its failure is not news.
            started.cancel()
            started.add_done_callback(_swallow)
            incoming.check.add_done_callback(_swallow)  # the client left while its tile was being checked
            raise

    async def _call(
        self,
        role: Role,
        tile: Prepared,
        base: dict[str, Any],
        variant: str,
        served: bool,
        started: asyncio.Task[Answer] | None = None,
        windows: dict[str, Window] | None = None,
    ) -> Answer:
        """Call a role's backend (or finish the call `started` for it) and store the outcome (a served champion's in
        `windows`, the rollout windows in force when the request was routed).

        Raises BackendError on failure (stored too)."""
        be = self.backend(role)
        # The model and its acceptance ranges are read together, before the call: a probe finishing while the call
        # runs may swap in the next model's ranges, and an answer of the old model must not be judged by them.
        ref, novelty = be.ref, be.novelty
        try:
            # The challenger is skipped for a moment after it failed to connect; the champion is always tried.
            if started is None and role == "challenger" and not be.available(time.monotonic()):
                raise BackendError(f"{role} backend {be.url} is down (cooling off after a failure)")
            answer = await (started if started is not None else be.predict(tile.data, tile.content_type))
        except BackendError as exc:
            if exc.status is None:  # no answer at all (refused, reset, timeout): the process is gone or stuck
                be.mark_down()
            if not exc.client_error:
                after = "the champion answers in its place" if role == "challenger" and served else "no answer"
                self._warn(f"call-{role}", "%s call (%s) failed: %s; %s", role, variant, exc, after)
            version = ref.version if ref else None
            self.metrics.predictions.labels(variant, version or "unknown", "error").inc()
            self.store.put_prediction(
                {
                    **base,
                    "served": False,
                    "variant": variant,
                    "model_name": ref.name if ref else None,
                    "model_version": version,
                    "error": str(exc)[:1000],
                }
            )
            if role == "champion" and served and not exc.client_error:
                # the baseline the challenger's window is read against
                self.controller.record("champion", False, None, windows)
            raise
        be.answered()
        # Judged here, on the statistics the gateway computed anyway, against the answering model's ranges (unknown
        # when the backend changed model since its last probe): about 2 us a tile, no extra call.
        findings = novelty.check(tile.stats) if novelty is not None and answer.model == ref else None
        answer.warnings = sentences(findings) if findings else []
        if role == "champion" and served:
            self.controller.record("champion", True, answer.latency_ms, windows)
        self.metrics.predictions.labels(variant, answer.model.version, "ok").inc()
        self.metrics.model_latency.labels(variant, answer.model.version).observe(answer.latency_ms / 1000)
        self.store.put_prediction(
            {
                **base,
                "served": served,
                "variant": variant,
                "model_name": answer.model.name,
                "model_version": answer.model.version,
                "precision": answer.precision,
                "probability": answer.probability,
                "label": answer.label,
                "latency_ms": round(answer.latency_ms, 3),
                "ood": None if findings is None else bool(findings),
                "ood_stats": ",".join(f.stat for f in findings) if findings else None,
            }
        )
        return answer

    async def _call_challenger(
        self,
        tile: Prepared,
        base: dict[str, Any],
        windows: dict[str, Window],
        started: asyncio.Task[Answer] | None = None,
    ) -> Answer | None:
        """The challenger's answer, or None (after recording the failure) so that the champion answers."""
        try:
            answer = await self._call("challenger", tile, base, "challenger", served=True, started=started)
        except BackendError as exc:
            if exc.client_error:
                raise
            self.controller.record("challenger", False, None, windows)
            down = "down" in str(exc) or "health probes" in str(exc)
            self.metrics.fallbacks.labels("down" if down else "error").inc()
            await self._check_guardrails()
            return None
        self.controller.record("challenger", True, answer.latency_ms, windows)
        await self._check_guardrails()
        return answer

    async def _check_guardrails(self) -> None:
        """Stop a canary at once when a challenger call breaks a guardrail (the tick judges too, every 0.5 s).

        Called on a user's request path, which never waits for it: the check runs in the background, one at a time,
        after any rollout change in progress, and only acts on a stop (a step, a completion or an auto-promotion,
        which moves the registry aliases, is the tick's). A store that refuses the stop's record never reaches a
        user (the stop holds, see `advance`)."""
        if self.controller.state.mode != "canary" or self._guardrail_check_due:
            return
        self._guardrail_check_due = True
        # Not through `_spawn`: dropped there (256 copies in flight) it would leave the flag set for good.
        task = asyncio.create_task(self._judge_guardrails())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _judge_guardrails(self) -> None:
        try:
            async with self._rollout_lock:
                self._guardrail_check_due = False  # outcomes from here on ask for a check of their own
                await self.advance(stops_only=True)
        except Exception as exc:
            self._store_trouble("a guardrail check after a challenger call failed", exc)
        finally:
            self._guardrail_check_due = False

    def _spawn(self, coro: Any) -> None:
        if len(self._background) >= MAX_BACKGROUND:
            coro.close()
            self.metrics.dropped.inc()
            return
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(self, tile: Prepared, base: dict[str, Any], windows: dict[str, Window]) -> None:
        """The challenger's answer to a copy of the request; failures are stored and counted, never raised."""
        with contextlib.suppress(BackendError):
            answer = await self._call("challenger", tile, base, "shadow", served=False)
            self.controller.record("challenger", True, answer.latency_ms, windows)
            champion = self.recent.get(base["request_id"])
            if champion is not None:
                self.controller.record_agreement(champion["label"] == answer.label, windows)
            return
        self.controller.record("challenger", False, None, windows)

    async def _compare(
        self, tile: Prepared, base: dict[str, Any], challenger: Answer, windows: dict[str, Window]
    ) -> None:
        """The champion's answer to a request the challenger served: measures disagreement for the guardrail."""
        with contextlib.suppress(BackendError):
            answer = await self._call("champion", tile, base, "champion-compare", served=False)
            self.controller.record_agreement(answer.label == challenger.label, windows)
            await self._check_guardrails()

    def _remember(self, request_id: str, answer: Answer, variant: str, client_id: str | None) -> None:
        self.recent[request_id] = {
            "label": answer.label,
            "model_name": answer.model.name,
            "model_version": answer.model.version,
            "variant": variant,
            "client_id": client_id,
        }
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    async def served(self, request_id: str) -> dict[str, Any] | None:
        hit = self.recent.get(request_id)
        if hit is not None:
            return hit
        rows = await run_in_threadpool(self.store.predictions_for, request_id)
        for row in rows:
            if row["served"]:
                return row
        return None

    # --- rollout changes ------------------------------------------------------------------------------------
    async def change(self, action: str, body: Any) -> Event:
        """Apply an operator's rollout change and record it; a change the store does not take is undone (503)."""
        await self.refresh_backends()  # before the lock: probes must not hold up the tick or requests' checks
        async with self._rollout_lock:
            replaced = self.controller.replaced_challenger
            plan = self.controller.state.updated_at
            try:
                return await self._change(action, body)
            except BaseException:
                if self.controller.state.updated_at == plan and self.controller.replaced_challenger is None:
                    self.controller.replaced_challenger = replaced  # nothing changed, or undone: still to act on
                raise

    async def _change(self, action: str, body: Any) -> Event:
        c = self.controller
        before = c.state.model_copy(deep=True)
        windows, fleet = c.windows, c.fleet_stats
        if action == "champion":
            ev = c.champion_only(body.reason if body else None)
        elif action == "ab":
            ev = c.start_ab(body)
        elif action == "canary":
            if body.auto_promote and (rejected := await self._rejected("canary")):
                # Promoting such a version by hand takes force; a canary must not do it silently at its end.
                raise RolloutError(
                    f"canary not started: with auto_promote it would promote the challenger by itself, and {rejected}",
                    "start it without auto_promote, then `pyrocast rollout promote --force` if it earns it",
                )
            ev = c.start_canary(body)
        elif action == "shadow":
            ev = c.start_shadow(body.sample)
        elif action in ("promote", "rollback"):
            rejected = await self._rejected("promote") if action == "promote" else None
            if rejected and not (body and body.force):
                raise RolloutError(
                    rejected,
                    'promote it anyway with force (API: {"force": true}; CLI: --force); your reason is recorded',
                )
            ev = await self._promote_or_rollback(action, body.reason if body else None)
            if rejected:
                ev.reason = f"{ev.reason}; forced: {rejected}"
        else:  # pragma: no cover - routes only pass known actions
            raise RolloutError(f"unknown rollout action {action!r}")
        try:
            await self._after_change(ev)
        except Exception as exc:
            log.exception("rollout: %s not recorded in the store; undone", action)
            self.metrics.rollout_store_errors.inc()
            await self._undo(before, ev)
            c.windows, c.fleet_stats = windows, fleet  # the plan goes on as it was, judged on its calls so far
            raise ServiceUnavailableError(
                f"{action} not done: the rollout store did not record it ({type(exc).__name__}; see the gateway log)",
                "check the prediction store's database, then try again: nothing was changed",
            ) from exc
        return ev

    async def _undo(self, before: RolloutState, ev: Event) -> None:
        """Back to `before` after a change the store did not record (other replicas never saw it): the registry
        aliases too, after a promotion or rollback (`_move_aliases` leaves bundle-folder models alone)."""
        self.controller.state = before
        self._assign_roles()
        if ev.action in ("promote", "rollback"):
            try:
                await run_in_threadpool(self._move_aliases, before.champion, before.challenger)
            except Exception:  # the registry is down too: say so, the operator must set them by hand
                log.exception("rollout: the registry aliases could not be moved back after an unrecorded %s", ev.action)

    async def _rejected(self, action: str) -> str | None:
        """Why the challenger's training run rejected it, or None (promoting a rejected version takes `force`)."""
        ch = self.controller.state.challenger
        if ch is None or (self.backend("challenger").info or {}).get("source") != "registry":
            return None  # nothing to promote (promote says so), or a bundle folder: no recorded decision
        from pyrocast.registry.models import decision_of

        try:
            decision, why = await run_in_threadpool(decision_of, self.settings, ch.version)
        except Exception as exc:  # the registry is down: the promotion would fail on the aliases anyway
            raise ServiceUnavailableError(f"{action} not done: the registry does not answer: {exc}") from exc
        if decision != "rejected":
            return None
        return f"v{ch.version} was rejected when it was trained" + (f" ({why})" if why else "")

    async def _promote_or_rollback(self, action: str, reason: str | None) -> Event:
        c = self.controller
        before = c.state.model_copy(deep=True)
        windows, fleet = c.windows, c.fleet_stats
        ev = c.promote(reason) if action == "promote" else c.rollback(reason)
        if ev.action not in ("promote", "rollback"):
            return ev  # a rollback that only stopped an experiment

        def put_back() -> None:
            c.state, c.windows, c.fleet_stats = before, windows, fleet
            self._assign_roles()

        served = [b.ref for b in self.backends.values() if b.ref is not None]
        if c.state.champion not in served:
            # Rolling back to a version neither classifier serves (the challenger's service was given another
            # version since) would record a champion nobody answers for, and move the aliases to it.
            wanted = c.state.champion
            put_back()
            raise RolloutError(
                f"cannot {action} to {wanted}: neither classifier serves it (they serve "
                f"{', '.join(sorted(str(r) for r in served)) or 'nothing'})",
                f"start a classifier for v{wanted.version if wanted else '?'} on the challenger's port, then "
                f"{action} again",
            )
        try:
            note = await run_in_threadpool(self._move_aliases, c.state.champion, c.state.challenger)
        except Exception as exc:
            put_back()
            raise ServiceUnavailableError(
                f"{action} not done: moving the registry aliases failed: {exc}", "check the MLflow registry"
            ) from exc
        self._assign_roles()
        if note:
            ev.reason = f"{ev.reason}; {note}"
        return ev

    def _move_aliases(self, champion: ModelRef | None, challenger: ModelRef | None) -> str | None:
        """Point the registry's champion/challenger aliases at the new roles (registry-served models only)."""
        sources = {(b.info or {}).get("source") for b in self.backends.values() if b.info}
        if sources != {"registry"}:
            return "registry aliases not moved (models served from bundle folders)"
        from pyrocast.registry.models import move_aliases

        targets = {"champion": champion.version} if champion is not None else {}
        if challenger is not None:
            targets["challenger"] = challenger.version
        move_aliases(self.settings, targets)  # both or neither: never two aliases on one version
        return f"registry aliases moved: champion -> v{champion.version if champion else '-'}, " + (
            f"challenger -> v{challenger.version}" if challenger else "no challenger"
        )

    async def advance(self, now: float | None = None, stops_only: bool = False) -> list[Event]:
        """Let time act on the rollout (canary steps, guardrail stops, completion) and record what changed.

        A change takes effect (routing, `/v1/rollout`) only once it is recorded. Replicas on one store decide the
        same change at about the same time: each change is claimed under a key naming the plan and the change,
        and only the replica that wins the claim records it (and, for a canary that completes with
        auto-promotion, has moved the registry aliases like a manual promotion); the others adopt the winner's
        state from the store. Returns the events recorded here. stops_only: act on a guardrail stop only (a user's
        request path). Callers hold `_rollout_lock`.
        """
        c = self.controller
        if self._unrecorded_stop is not None:  # a guardrail stop made while the store was down: record it now
            stop, claim, _ = self._unrecorded_stop
            try:
                await self._after_change(stop, claim=claim)
            except Exception as exc:
                self._store_trouble("the guardrail stop in effect here not recorded yet", exc)
                return []
            self._set_unrecorded_stop(None)
        before = c.state.model_copy(deep=True)
        windows, fleet = c.windows, c.fleet_stats
        events = c.tick(now)
        if not events:
            return []
        # Not in effect before it is recorded: neither the state nor the fresh windows a stop or a promotion starts
        # (a postponed promotion emptied the windows every tick, and the canary ran unjudged meanwhile).
        after, c.state = c.state, before
        c.windows, c.fleet_stats = windows, fleet
        if stops_only and events[-1].action != "guardrail-stop":
            return []
        if any(ev.action == "promote" for ev in events):
            if time.monotonic() < self._promote_retry_at:
                return []
            try:
                note = await run_in_threadpool(self._move_aliases, after.champion, after.challenger)
            except Exception as exc:  # the canary stays at its last step; tried again in PROMOTE_RETRY_S
                self._promote_retry_at = time.monotonic() + PROMOTE_RETRY_S
                log.warning("canary complete, promotion postponed: moving the registry aliases failed: %s", exc)
                return []
            if note:
                events[-1].reason = f"{events[-1].reason}; {note}"
        # One claim per change: a replica that missed a step another one recorded loses that claim and adopts the
        # step instead of recording it again alongside the completion it decides in the same tick.
        claims = [f"{before.mode}@{before.updated_at!r}:{ev.action}:{after.canary_step}" for ev in events]
        try:
            recorded = await self._after_change(events[0], claim=claims[0], state=after)
        except Exception as exc:  # the store is down
            if events[-1].action == "guardrail-stop":  # safety first: stop here now, record it when it is back
                c.state = after
                c._reset_windows()
                self._assign_roles()
                self._set_unrecorded_stop((events[-1], claims[-1], (before.mode, before.updated_at)))
                self.metrics.rollout_store_errors.inc()
                log.error("rollout: %s (not recorded yet: the store refused: %r)", events[-1].reason, exc)
                return []
            await self._undo(before, events[-1])  # not made: a later tick decides it again
            if events[-1].action == "promote":  # not every tick: each attempt moves the registry aliases
                self._promote_retry_at = time.monotonic() + PROMOTE_RETRY_S
            self._store_trouble(f"{events[-1].action} not recorded, so not made", exc)
            return []
        if not recorded:  # another replica recorded this change; its state arrives through the store
            await self.follow_store()
            return []
        for i in range(1, len(events)):
            if not await self._after_change(events[i], claim=claims[i]):
                await self.follow_store()
                return events[:i]
        return events

    def _resume_canary_step(self) -> None:
        """A canary saved before the gateway stopped: the step in effect then serves its whole time again from now
        (the time the gateway was down judged nothing; counted, the next tick would move on at once, or complete and
        auto-promote a canary whose last step saw a few seconds of traffic)."""
        st = self.controller.state
        if st.mode != "canary" or st.canary is None or st.canary_started_at is None or st.canary_complete:
            return
        idle = time.time() - step_since(st)
        if idle > st.canary.step_seconds:
            st.canary_step_since = time.time()
            log.info(
                "rollout: the canary's step %d (%.0f%%) was due to end %.0f s ago, while no gateway ran: it serves "
                "its %g s again from now",
                st.canary_step + 1,
                100 * st.canary.steps[st.canary_step],
                idle - st.canary.step_seconds,
                st.canary.step_seconds,
            )

    def _set_unrecorded_stop(self, stop: tuple[Event, str, tuple[str, float]] | None) -> None:
        """Hold (or clear) a guardrail stop the store has not recorded, in memory and in `_stop_file`."""
        self._unrecorded_stop = stop
        self._update_gauges()
        try:
            if stop is None:
                self._stop_file.unlink(missing_ok=True)
                return
            ev, claim, plan = stop
            data = {
                "action": ev.action,
                "reason": ev.reason,
                "claim": claim,
                "plan": list(plan),
                "state": self.controller.state.model_dump(mode="json"),
            }
            atomic_write(self._stop_file, json.dumps(data, indent=1).encode())
        except OSError as exc:  # the stop holds in memory all the same
            log.error("rollout: the unrecorded guardrail stop could not be kept in %s: %s", self._stop_file, exc)

    def _take_up_unrecorded_stop(self) -> None:
        """At start, after the saved state is read: a guardrail stop a previous run made but could not record holds
        again if the saved state is still the plan it stopped (and is forgotten if a newer change replaced it)."""
        try:
            data = json.loads(self._stop_file.read_text())
            plan = (str(data["plan"][0]), float(data["plan"][1]))
            stopped = stored_state(data["state"])
            stop = (Event(str(data["action"]), data.get("reason")), str(data["claim"]), plan)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.error("rollout: %s is unreadable (%s); a stop it may hold is not taken up", self._stop_file, exc)
            return
        st = self.controller.state
        if (st.mode, st.updated_at) != plan:
            self._set_unrecorded_stop(None)
            return
        models = (st.champion, st.challenger)
        self.controller.state = stopped
        self.controller.state.champion, self.controller.state.challenger = models
        self.controller._reset_windows()
        self._set_unrecorded_stop(stop)
        log.error("rollout: %s (made before this gateway restarted; not recorded yet, holds here)", stop[0].reason)

    async def _after_change(self, ev: Event, claim: str | None = None, state: RolloutState | None = None) -> bool:
        """Record a change and log it; False when `claim` was already taken by another replica.

        state: the state the change leads to, put in effect once recorded (default: the current state).
        """
        if not await self._record(ev, claim, state):
            return False
        if state is not None:
            mine = self.controller.state
            replaced = (state.mode, state.updated_at) != (mine.mode, mine.updated_at)
            self.controller.state = state
            if replaced:  # a stop or a promotion: a new plan, judged on its own calls
                self.controller._reset_windows()
        if ev.action in ("promote", "rollback") or state is not None:
            self._assign_roles()
        if ev.action in ("guardrail-stop", "champion-only") and ev.reason:
            log.warning("rollout: %s: %s", ev.action, ev.reason)
        else:
            log.info("rollout: %s%s", ev.action, f": {ev.reason}" if ev.reason else "")
        self._update_gauges()
        return True

    async def _record(self, ev: Event, claim: str | None = None, state: RolloutState | None = None) -> bool:
        st = state or self.controller.state
        event_id = await run_in_threadpool(
            self.store.add_event,
            ev.action,
            st.mode,
            st.model_dump(mode="json"),
            ev.reason,
            st.champion.version if st.champion else None,
            st.challenger.version if st.challenger else None,
            claim,
        )
        if event_id is None:
            return False
        self._event_id = max(self._event_id, event_id)  # another gateway's newer change may be adopted already
        return True

    def warnings(self, statuses: dict[str, BackendStatus]) -> list[str]:
        """What is wrong short of the champion being down (in /healthz and /v1/rollout)."""
        out = []
        mode = self.controller.state.mode
        if mode != "champion" and not statuses["challenger"].up:
            lost = "shadow copies fail" if mode == "shadow" else "its clients get the champion's answers"
            out.append(f"the challenger ({statuses['challenger'].url}) does not answer during the {mode}: {lost}")
        if trouble := self.store.trouble():
            out.append(trouble)
        elif self.store.queue_depth > BACKLOG_WARNING:
            out.append(f"{self.store.queue_depth} predictions wait to be written: the store is slower than traffic")
        if self._state_unread:
            out.append(
                "the saved rollout state has not been read from the prediction store yet: the champion answers "
                "everyone until it is"
            )
        return out

    async def view(self) -> RolloutView:
        """The rollout as this gateway runs it; a store that cannot be read leaves out only its recent events."""
        # Read on the event loop, which alone changes the state and its windows (a deque iterated in a worker thread
        # while a request appends to it raises); only the store is read in a thread.
        snap = self.controller.snapshot()
        statuses = self.backend_statuses()
        warnings = self.warnings(statuses)
        try:
            events = await run_in_threadpool(self.store.events, 20)
        except Exception as exc:  # the state is in memory: the store's outage must not hide it
            self._store_trouble("recent events not read for /v1/rollout", exc)
            events = []
            warnings.append(
                f"the prediction store ({self.store.shown_url}) cannot be read ({type(exc).__name__}): its recent "
                "rollout events are left out; the state shown is this gateway's"
            )
        return RolloutView(
            mode=snap["mode"],
            challenger_share=snap["challenger_share"],
            state=snap,
            warnings=warnings,
            backends=statuses,
            events=[{**e, "ts": e["ts"].isoformat() if e.get("ts") else None} for e in events],
        )


# --- request parsing -------------------------------------------------------------------------------------------
def _detail(message: str, hint: str | None) -> dict[str, str]:
    """The body of every error: the message, and a hint only where there is one (never "hint": null)."""
    return {"error": message, **({"hint": hint} if hint else {})}


_EXPLAINER_DOWN = "heatmaps fail until it answers again (GET /healthz says when); predictions are not affected"


def _refuse_if_explainer_gone(gw: Gateway) -> None:
    """A 503 at once when the explainer's probes find it gone (`ExplainerProbe.gone`), rather than a heatmap waited for."""
    if gw.explainer is not None and gw.explainer.gone:
        raise _bad_request(
            503, f"the explainer at {gw.explainer_url} does not answer its health probes", _EXPLAINER_DOWN
        )


class _ProbeFailed(Exception):
    """The service's health probe failed while a call to it waited."""


async def _unless_probe_fails(call: asyncio.Future[httpx.Response], probe: ExplainerProbe | None) -> httpx.Response:
    """Await `call`, given up (`_ProbeFailed`) once the service's probes find it gone (`ExplainerProbe.gone`): a hung
    explainer held every caller for the whole `serving.explain_timeout_s` (120 s), long after /healthz said so."""
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=0.5)
            if done:
                return call.result()
            if probe is not None and probe.gone:
                raise _ProbeFailed
    finally:  # given up, or the caller went away: the call goes too
        if not call.done():
            call.cancel()


def _bad_request(status: int, message: str, hint: str | None = None) -> HTTPException:
    return HTTPException(status, detail=_detail(message, hint))


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": _detail(message, hint)}, status_code=status)


def _utf8(header: str | None) -> str | None:
    """A header value as the client meant it: clients send UTF-8, the server decodes headers as Latin-1, so a
    client id "Zoë" in a header would otherwise land in another sticky bucket than the same id in the body."""
    if header is None:
        return None
    try:
        return header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return header


def _model_ref(version: str | None) -> str | None:
    """The model version an explain request names (None: the champion), or a 422 when it names none."""
    if version is None or not version.strip():
        return None
    try:
        return check_model_ref(version)
    except InvalidInputError as exc:
        raise _bad_request(422, exc.message, exc.hint) from exc


def _explained(gw: Gateway, version: str | None) -> tuple[str, str | None]:
    """The version an explain request is about, and the precision the classifier serving it scores in.

    A role's alias is the version this gateway serves in that role (the registry's alias may already name another
    during a promotion); a version no classifier serves is explained in the explainer's default precision."""
    roles = {"champion": gw.controller.state.champion, "challenger": gw.controller.state.challenger}
    if not version or version in roles:
        role = version or "champion"
        ref = roles[role]
        if ref is None:
            if role == "champion":
                raise _bad_request(503, "no champion model is being served")
            raise _bad_request(409, "no challenger model is being served", "name a model version instead")
        return ref.version, (gw.backend(role).info or {}).get("precision")
    if version[:1] in ("v", "V") and version[1:].isdigit():
        version = version[1:]
    precision = next(
        (
            (b.info or {}).get("precision")
            for b in gw.backends.values()
            if b.ref is not None and b.ref.version == version and (b.info or {}).get("precision")
        ),
        None,
    )
    return version, precision


async def _read_input(request: Request, gw: Gateway, explain: bool = False) -> tuple[Prepared | Upload, dict[str, Any]]:
    """The tile of a predict/explain request (multipart image, checked in the background, or JSON coordinates)
    and its other fields."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=20)
        except BodyTooLarge:  # BodyLimit answers 413 for a chunked body over the limit
            raise
        except StarletteHTTPException as exc:  # Starlette's own refusals (too many files or fields)
            raise _bad_request(exc.status_code, f"malformed multipart body: {exc.detail}") from exc
        except Exception as exc:
            raise _bad_request(400, f"malformed multipart body: {exc}") from exc
        fields = {k: v for k, v in form.items() if k != "image"}
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise _bad_request(422, "multipart request needs a file field 'image'", "curl -F image=@tile.jpg ...")
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise _bad_request(422, f"only one file ('image') is accepted; unexpected file field(s): {bad}")
        allowed = {"client_id", "source", "lat", "lon"} | ({"version"} if explain else set())
        extra = set(fields) - allowed
        if extra:
            raise _bad_request(422, f"unknown form field(s): {sorted(extra)}", f"allowed: {sorted(allowed)}")
        try:
            meta = UploadForm.model_validate({"image": b"", **fields}).model_dump(exclude={"image"})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
        if (meta["lat"] is None) != (meta["lon"] is None):
            raise _bad_request(422, "give both lat and lon for an uploaded tile, or neither")
        data = await upload.read()
        meta["received_at"] = time.perf_counter()  # the upload is the client's time, checking it the gateway's
        meta["version"] = _model_ref(fields.get("version"))
        return gw.check_upload(data, upload.content_type or "application/octet-stream", meta["lon"], meta["lat"]), meta
    if ctype in ("application/json", ""):
        raw = await request.body()
        received_at = time.perf_counter()  # a place's tile fetch is the gateway's time: it counts in latency_ms
        if not raw:
            raise _bad_request(422, "empty request body", JSON_HINT)
        if raw.startswith((b"\xff\xd8", b"\x89PNG")):  # an image sent as the whole body
            raise _bad_request(
                415, "an image must come as a multipart file field 'image'", "curl -F image=@tile.jpg ..."
            )
        try:
            payload = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            why = str(exc)
            if "int_max_str_digits" in why:  # Python's advice is for the server's programmer, not the client
                why = "a number in it has more than 4300 digits"
            raise _bad_request(400, f"body is not valid JSON: {why}") from exc
        except RecursionError as exc:  # a 2 kB body of nested brackets
            raise _bad_request(400, "body is not valid JSON: nested too deeply", JSON_HINT) from exc
        model = ExplainCoordinates if explain else CoordinatesRequest
        try:
            req = model.model_validate(payload)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
        meta = {**req.model_dump(), "received_at": received_at}
        if explain:
            meta["version"] = _model_ref(meta["version"])
            _refuse_if_explainer_gone(gw)  # before the imagery provider is asked for a tile nobody will see
        return await gw.tile_for(req.lon, req.lat), meta
    raise _bad_request(
        415,
        f"unsupported content type {ctype!r}",
        "send an image as multipart/form-data with a file field 'image' (curl -F image=@tile.jpg ...), or a place as "
        "application/json {'lat': .., 'lon': ..}",
    )


JSON_HINT = "send JSON {'lat': .., 'lon': ..} or a multipart 'image' file"


def _local_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI over the OpenAPI document, its files served from the installed fastapi-offline package."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")
    app.mount("/static/docs", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
        )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_UPLOAD_SCHEMA = UploadForm.model_json_schema()
_COORD_SCHEMA = CoordinatesRequest.model_json_schema()
_EXPLAIN_COORD_SCHEMA = ExplainCoordinates.model_json_schema()
_EXPLAIN_UPLOAD_SCHEMA = {
    **_UPLOAD_SCHEMA,
    "properties": {**_UPLOAD_SCHEMA["properties"], "version": {"type": "string", "title": "Version"}},
}


def _body_doc(upload: dict[str, Any], coords: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": upload}, "application/json": {"schema": coords}},
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed body"},
    404: {"model": ErrorResponse, "description": "no imagery for this place"},
    413: {"model": ErrorResponse, "description": "upload too large"},
    415: {"model": ErrorResponse, "description": "not a JPEG/PNG, or wrong content type"},
    422: {"model": ErrorResponse, "description": "invalid fields or unusable image"},
    502: {"model": ErrorResponse, "description": "a service behind the gateway failed (imagery, explainer)"},
    503: {"model": ErrorResponse, "description": "the champion model service (or the explainer) does not answer"},
}

_bearer = HTTPBearer(auto_error=False)
# Where a request can be refused before routing (its body is over the limit): counted under these paths.
PUBLIC_PATHS = ("/v1/predict", "/v1/explain", "/v1/feedback")


class CountRequests:
    """ASGI middleware counting responses per route template and status (cheaper than BaseHTTPMiddleware).

    A response given before routing (BodyLimit's 413) is counted under its path when that is one of the app's
    fixed paths, so that a refused upload counts for /v1/predict; any other path is "unmatched" (bounded labels).
    """

    def __init__(self, app: Any, counter: Counter, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.counter = counter
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = scope.get("path", "")
            label = getattr(route, "path", None) or (path if path in self.paths else "unmatched")
            self.counter.labels(label, str(status)).inc()


# --- the app ---------------------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, store: PredictionStore | None = None) -> FastAPI:
    """The gateway app (one Gateway per app; its lifespan starts the store writer and the rollout ticker)."""
    settings = settings or get_settings()
    gw = Gateway(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    app = FastAPI(
        title="Pyrocast gateway",
        version=API_VERSION,
        description="Wildfire-risk predictions from satellite tiles, with champion/challenger rollout. "
        "See docs/SERVING.md.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: blank on a machine without the internet
        redoc_url=None,
    )
    app.state.gateway = gw
    _local_docs(app)
    app.add_middleware(BodyLimit, max_bytes=settings.serving.max_upload_bytes + MULTIPART_SLACK, envelope="detail")

    app.add_middleware(CountRequests, counter=gw.metrics.http, paths=frozenset(PUBLIC_PATHS))

    @app.exception_handler(UploadRejected)
    async def _upload_rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own refusals (an unknown path, a body it cannot parse) in the one error envelope.
        if isinstance(exc.__cause__, BodyTooLarge):  # a chunked body past the limit, read by FastAPI for a model
            limit = settings.serving.max_upload_bytes + MULTIPART_SLACK
            return JSONResponse({"detail": too_big(None, limit)}, status_code=413)
        if exc.detail == "There was an error parsing the body":  # FastAPI's words (a body nested too deep)
            return _error(exc.status_code, "body is not valid JSON (nested too deeply?)", JSON_HINT)
        detail = exc.detail if isinstance(exc.detail, dict) else _detail(str(exc.detail), None)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:  # a body that is not JSON is a 400, as on every other route
            why = (bad_json.get("ctx") or {}).get("error") or bad_json.get("msg")
            return _error(400, f"body is not valid JSON: {why}")
        # FastAPI's own handler echoes the inputs; a NaN or bytes among them would turn a 422 into a 500.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
        if exc.client_error:
            return JSONResponse({"detail": {"error": f"the model service refused the image: {exc}"}}, status_code=422)
        return JSONResponse(
            {"detail": {"error": f"the champion model service does not answer: {exc}", "hint": "check /healthz"}},
            status_code=503,
        )

    @app.exception_handler(RolloutError)
    async def _rollout_error(_: Request, exc: RolloutError) -> JSONResponse:
        return _error(409, exc.message, exc.hint)

    @app.exception_handler(PyrocastError)
    async def _pyrocast_error(_: Request, exc: PyrocastError) -> JSONResponse:
        from pyrocast.data.imagery import NoImageryError

        if isinstance(exc, ImageryFailed):
            return JSONResponse(
                {"detail": {**_detail(exc.message, exc.hint), "service": "imagery"}}, status_code=exc.status
            )
        if isinstance(exc, NoImageryError):
            status = 404
        elif isinstance(exc, InvalidInputError):
            status = 422
        elif isinstance(exc, ServiceUnavailableError):
            status = 503
        else:
            status = 502
        return _error(status, exc.message, exc.hint)

    def require_token(
        creds: HTTPAuthorizationCredentials | None, refused: str = "missing or wrong admin token"
    ) -> None:
        """401 unless the request carries the gateway's admin token (compared in constant time)."""
        token = gw.admin_token
        if token is None or creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                401,
                detail={"error": refused, "hint": "send Authorization: Bearer $PYROCAST_ADMIN_TOKEN"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    def admin(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if gw.admin_token is None:
            raise HTTPException(
                403,
                detail={
                    "error": "rollout changes are disabled: the gateway has no admin token",
                    "hint": "start the gateway with PYROCAST_ADMIN_TOKEN set",
                },
            )
        require_token(creds)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_body_doc(_UPLOAD_SCHEMA, _COORD_SCHEMA),
        summary="P(wildfire) for an uploaded tile (multipart 'image') or a place (JSON lat/lon)",
    )
    async def predict(
        request: Request, x_client_id: Annotated[str | None, Header(max_length=128)] = None
    ) -> PredictResponse:
        tile, meta = await _read_input(request, gw)
        client = meta.get("client_id") or _utf8(x_client_id)
        return await gw.predict(tile, client, meta.get("source") or "api", meta["received_at"])

    @app.get(
        "/v1/tile",
        responses={200: {"content": {"image/jpeg": {}}, "description": "the 350x350 tile"}, **_ERRORS},
        response_class=Response,
        summary="The imagery provider's tile for a place (JPEG)",
    )
    async def tile(
        lat: Annotated[float, Query(ge=-90.0, le=90.0, allow_inf_nan=False)],
        lon: Annotated[float, Query(ge=-180.0, le=180.0, allow_inf_nan=False)],
    ) -> Response:
        t = await gw.tile_for(lon, lat)
        return Response(t.data, media_type="image/jpeg", headers={"X-Tile-Sha256": t.sha256})

    @app.post(
        "/v1/explain",
        responses={200: {"content": {"image/png": {}}, "description": "the tile with its heatmap"}, **_ERRORS},
        response_class=Response,
        openapi_extra=_body_doc(_EXPLAIN_UPLOAD_SCHEMA, _EXPLAIN_COORD_SCHEMA),
        summary="Attribution heatmap (PNG) of a model version for a tile or a place",
    )
    async def explain(request: Request) -> Response:
        incoming, meta = await _read_input(request, gw, explain=True)
        tile = await incoming.check if isinstance(incoming, Upload) else incoming
        version, precision = _explained(gw, meta.get("version"))
        _refuse_if_explainer_gone(gw)
        probe = gw.explainer
        call = asyncio.ensure_future(
            gw.client.post(
                gw.explainer_url + "/explain",
                files={"image": ("tile", tile.data, tile.content_type)},
                data={"version": version, **({"precision": precision} if precision else {})},
                timeout=gw.explain_timeout_s,
            )
        )
        try:
            r = await _unless_probe_fails(call, probe)
        except _ProbeFailed:
            raise _bad_request(
                503,
                f"the explainer at {gw.explainer_url} stopped answering while drawing this heatmap",
                _EXPLAINER_DOWN,
            ) from None
        except httpx.ConnectError as exc:
            # Refused (or unreachable): no process listens, so /healthz says so now, not at the next probe.
            if gw.explainer is not None:
                gw.explainer.up = False
            gw._warn("explainer", "explainer at %s does not answer: %r", gw.explainer_url, exc)
            raise _bad_request(
                503, f"the explainer at {gw.explainer_url} does not answer: {_why(exc)}", _EXPLAINER_DOWN
            ) from exc
        except httpx.TimeoutException as exc:
            # A live explainer busy with slow heatmaps: only this caller is failed. Whether it is hung is for its probe
            # (/readyz) to tell; marking it down here made "stopped answering" / "answers" pairs and false warnings.
            gw._warn("explainer-slow", "explainer at %s did not answer in time: %r", gw.explainer_url, exc)
            raise _bad_request(
                503,
                f"the explainer at {gw.explainer_url} did not answer in time ({gw.explain_timeout_s:g} s): it may be "
                "busy with other heatmaps; try again later",
            ) from exc
        except httpx.HTTPError as exc:
            # Reset mid-answer and the like: the probe finds out within seconds whether the process is gone.
            gw._warn("explainer", "explainer at %s failed: %r", gw.explainer_url, exc)
            raise _bad_request(
                503, f"the explainer at {gw.explainer_url} failed: {_why(exc)}", _EXPLAINER_DOWN
            ) from exc
        if r.status_code != 200:
            status = r.status_code if 400 <= r.status_code < 500 else 502
            if status == 502:
                msg = "explainer failed (HTTP %d): %s; its log has the cause"
                gw._warn("explainer", msg, r.status_code, _backend_message(r))
            raise _bad_request(status, f"explainer: {_backend_message(r)}")
        headers = {k: v for k, v in r.headers.items() if k.lower().startswith("x-")}
        return Response(r.content, media_type="image/png", headers=headers)

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses={
            401: {
                "model": ErrorResponse,
                "description": "source replay or feed (ground truth) without the admin token, when the gateway has "
                "one (without one, every source is taken)",
            },
            404: {"model": ErrorResponse, "description": "unknown request id"},
            422: _ERRORS[422],
            503: {"model": ErrorResponse, "description": "the request is not in memory and the store cannot be read"},
        },
        summary="Say whether an answer was right, or give the true label (delayed ground truth)",
    )
    async def post_feedback(
        body: FeedbackRequest, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> FeedbackResponse:
        # Ground truth outranks every person's verdict in live accuracy, so a gateway guarded by a token takes it
        # only from its holder; without a token (one machine, `pyrocast demo`) anyone local may send it.
        if body.source != USER_FEEDBACK and gw.admin_token is not None:
            require_token(creds, f"feedback with source {body.source!r} is ground truth: missing or wrong admin token")
        try:
            served = await gw.served(body.request_id)
        except (SQLAlchemyError, OSError) as exc:  # an answer no longer held in memory, and the database is down
            raise _bad_request(
                503,
                f"the prediction store ({gw.store.shown_url}) cannot be read to find request {body.request_id!r}: "
                f"{brief_error(exc)}",
                "send the feedback again once it answers (GET /healthz says when)",
            ) from exc
        if served is None:
            raise _bad_request(
                404, f"no prediction with request id {body.request_id!r}", "quote a request_id from /v1/predict"
            )
        served_label = served["label"]
        if body.label is not None:
            true_label = body.label
            if body.correct is not None and body.correct != (true_label == served_label):
                raise _bad_request(
                    422,
                    f"label {true_label!r} contradicts correct={body.correct} (the answer was {served_label!r})",
                )
        else:
            true_label = served_label if body.correct else LABELS[1 - LABELS.index(served_label)]
        correct = true_label == served_label
        counts, request_label, label_source = await _label_after(body.request_id, body.source, true_label)
        gw.store.put_feedback(
            {
                "request_id": body.request_id,
                "correct": body.correct if body.correct is not None else correct,
                "label": body.label,
                "true_label": true_label,
                "served_label": served_label,
                "model_version": served["model_version"],
                "source": body.source,
                "client_id": body.client_id,
            }
        )
        return FeedbackResponse(
            request_id=body.request_id,
            correct=correct,
            true_label=true_label,  # type: ignore[arg-type]
            served_label=served_label,
            model=ModelInfo(name=served["model_name"], version=served["model_version"]),
            counts=counts,
            request_label=request_label,  # type: ignore[arg-type]
            label_source=label_source,  # type: ignore[arg-type]
        )

    async def _label_after(request_id: str, source: str, true_label: str) -> tuple[bool | None, str | None, str | None]:
        """(counts, label, its source) of a request once this verdict is stored, by `request_labels`' rule.

        A person told "your verdict counts" when a replayed test label outranks it would be misled, so a user
        verdict is checked against the ground truth already stored; ground truth always counts (the newest wins)."""
        if source in GROUND_TRUTH_SOURCES:
            return True, true_label, source

        def known() -> dict[str, Any] | None:
            gw.store.flush(1.0)  # ground truth sent a moment ago may still wait in the write queue
            return gw.store.label_of(request_id)

        try:
            before = await run_in_threadpool(known)
        except Exception as exc:  # the store refuses: the verdict is still queued (and spilled), only this is unknown
            gw._warn("feedback-label", "feedback: cannot read the label of a request (%s)", brief_error(exc))
            return None, None, None
        if before is not None and before["source"] in GROUND_TRUTH_SOURCES:
            return False, before["true_label"], before["source"]
        return True, true_label, USER_FEEDBACK

    @app.get(
        "/v1/predictions/{request_id}",
        responses={
            404: {"model": ErrorResponse},
            503: {"model": ErrorResponse, "description": "the store cannot be read, or has not stored this answer yet"},
        },
        summary="Every stored row of one request (served answer, shadow copy, failed attempts)",
    )
    async def get_predictions(request_id: Annotated[str, Path(max_length=64)]) -> list[dict[str, Any]]:
        flushed = await run_in_threadpool(gw.store.flush, 5.0)
        try:
            rows = await run_in_threadpool(gw.store.predictions_for, request_id)
        except Exception as exc:  # the database is down: predictions are still answered meanwhile
            raise _bad_request(
                503,
                f"the prediction store ({gw.store.shown_url}) cannot be read: {brief_error(exc)}",
                "try again once it answers (GET /healthz says when)",
            ) from exc
        if not rows and request_id in gw.recent and (not flushed or gw.store.trouble()):
            # Answered a moment ago, but the store refuses writes or lags: "no such prediction" would be false.
            why = gw.store.trouble() or "the store's writer is behind (its queue was not written within 5 s)"
            raise _bad_request(
                503,
                f"request {request_id!r} was answered but is not stored yet: {why}",
                "try again once the store takes rows again (GET /healthz says when)",
            )
        if not rows:
            raise _bad_request(404, f"no prediction with request id {request_id!r}")
        return [{**r, "ts": r["ts"].isoformat()} for r in rows]

    @app.get("/v1/rollout", response_model=RolloutView, summary="Rollout state, backends and recent events")
    async def get_rollout() -> RolloutView:
        return await gw.view()

    async def _change(action: str, body: Any) -> RolloutView:
        await gw.change(action, body)
        return await gw.view()

    _admin_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "missing or wrong token"},
        403: {"model": ErrorResponse, "description": "no admin token configured"},
        409: {"model": ErrorResponse, "description": "not possible now (no challenger, nothing to roll back)"},
        422: _ERRORS[422],
        503: {"model": ErrorResponse, "description": "the store or the registry refused the change: nothing changed"},
    }

    @app.post(
        "/v1/rollout/champion", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_champion(body: ReasonBody | None = None) -> RolloutView:
        """Champion only: stop any A/B test, canary or shadow traffic."""
        return await _change("champion", body)

    @app.post("/v1/rollout/ab", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)])
    async def rollout_ab(body: ABPlan) -> RolloutView:
        """A/B test: the challenger answers weight/(sum of weights) of the clients, sticky by client id."""
        return await _change("ab", body)

    @app.post(
        "/v1/rollout/canary", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_canary(body: CanaryPlan) -> RolloutView:
        """Canary: the challenger's share ramps through `steps`; guardrails stop it."""
        return await _change("canary", body)

    @app.post(
        "/v1/rollout/shadow", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_shadow(body: ShadowBody | None = None) -> RolloutView:
        """Shadow: the champion answers, the challenger gets a copy of `sample` of the requests."""
        return await _change("shadow", body or ShadowBody())

    @app.post(
        "/v1/rollout/promote", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_promote(body: PromoteBody | None = None) -> RolloutView:
        """The challenger becomes the champion (registry aliases move too); the old champion is kept for rollback.

        A version its training run rejected is promoted only with `force`."""
        return await _change("promote", body)

    @app.post(
        "/v1/rollout/rollback", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_rollback(body: ReasonBody | None = None) -> RolloutView:
        """Restore the previous champion (or, without one, stop a running experiment)."""
        return await _change("rollback", body)

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        summary="Liveness, and which backends answer",
    )
    async def healthz() -> HealthResponse:
        statuses = gw.backend_statuses()
        ok = statuses["champion"].up
        return HealthResponse(
            status="ok" if ok else "degraded",
            backends=statuses,
            explainer=gw.explainer.status() if gw.explainer is not None else None,
            store_queue=gw.store.queue_depth,
            warnings=gw.warnings(statuses) + gw.explainer_warnings(),
        )

    @app.get(
        "/readyz",
        summary="200 when the champion answers, else 503",
        responses={503: {"description": "the champion does not answer"}},
    )
    async def readyz() -> JSONResponse:
        up = gw.backend("champion").up
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    # HEAD for load balancers' probes, outside the schema: one route with both methods gave the OpenAPI document two
    # operations with the same id, which client generators refuse.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics() -> Response:
        gw._update_gauges()
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """`python -m pyrocast.serving.gateway [--host H] [--port P]`: run the gateway with uvicorn."""
    import uvicorn

    settings = settings or get_settings()
    p = argparse.ArgumentParser(description="Pyrocast gateway")
    p.add_argument("--host", default=settings.serving.host)
    p.add_argument("--port", type=int, default=settings.serving.gateway_port)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every backend call at INFO: far too much for a log that should show rollout changes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
