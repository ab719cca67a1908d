"""The services behind the gateway: classifiers (`Backend`) and the explainer, probed in the background, and the
calls to them. A service whose probes go unanswered twice in a row is `gone`: not called nor waited for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

from pyrocast.data.layout import CLASSES
from pyrocast.monitoring.novelty import Novelty
from pyrocast.serving.api import BackendStatus, ModelInfo
from pyrocast.serving.rollout import ModelRef

log = logging.getLogger("pyrocast.gateway")

PROBE_INTERVAL_S = 2.0
GONE_AFTER = 2  # unanswered probes in a row after which a service is not called (nor waited for) until one answers
DOWN_COOLDOWN_S = 2.0
PREDICT_TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=2.0)


class BackendError(Exception):
    """A backend did not answer usefully. `client_error` means the request was at fault (4xx), not the backend."""

    def __init__(self, message: str, status: int | None = None, client_error: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.client_error = client_error


# The statuses a model service refuses an image with (guards.load_upload: 400 empty, 413 too large, 415 not a JPEG or
# PNG, 422 corrupt or unusable). Any other 4xx is the service's state, not the request's fault, and counts as a
# failure (fallback, guardrails): BentoML's 429 past its max_concurrency, a 408, a 404 or 405 from another service
# on the port or a renamed route (which users routed to the challenger got as a 422 "refused the image").
IMAGE_REFUSED = (400, 413, 415, 422)


def is_client_status(status: int) -> bool:
    """Whether a backend's answer with `status` blames the request (the image), not the backend."""
    return status in IMAGE_REFUSED


def client_fault(stored_error: str | None) -> bool:
    """Whether a stored failure was the request's fault (the text a BackendError gives a 4xx answer)."""
    m = re.match(r"HTTP (\d{3})\b", stored_error or "")
    return m is not None and is_client_status(int(m.group(1)))


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
            raise BackendError(f"HTTP {status}: {msg}", status, client_error=is_client_status(status))
        # An answer that arrived but cannot be used carries its status: without one, the caller takes the service for
        # gone (no answer at all) and marks it down, a champion for every request until the next probe.
        try:
            item = json.loads(body)[0]
            ref = ModelRef(name=str(item["model"]["name"]), version=str(item["model"]["version"]))
            answer = Answer(float(item["probability"]), str(item["label"]), ref, item.get("precision"), ms)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"unexpected answer: {body[:200]!r}", status) from exc
        # Checked before anyone stores or answers it: a NaN or an unknown label was stored as served and then failed
        # the response model with a bare 500.
        if not 0.0 <= answer.probability <= 1.0 or answer.label not in CLASSES:
            raise BackendError(f"unexpected answer (probability or label out of range): {body[:200]!r}", status)
        return answer

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


def swallow_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve a discarded task's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def describe_error(exc: Exception) -> str:
    """An exception's text, or its kind where it has none (httpx's ReadError('') said nothing after the colon)."""
    return str(exc).strip() or f"{type(exc).__name__} (no detail given)"


def backend_message(r: httpx.Response) -> str:
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
