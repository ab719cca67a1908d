"""The gateway's state and behaviour: routes each prediction between champion and challenger (A/B, canary,
shadow, fallback), stores it, drives the rollout (guardrails, promote, rollback, registry aliases).

Backends are found by URL (Settings.serving: host, champion_port, challenger_port, explainer_port). Each
classifier says which model version it serves (`GET /model/info`); the champion role goes to the backend that
serves the rollout state's champion version, so a promotion survives a gateway restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import ValidationError

from pyrocast.data.layout import atomic_write
from pyrocast.errors import PyrocastError, ServiceUnavailableError, scrub_secrets
from pyrocast.imaging import encode_jpeg
from pyrocast.monitoring.novelty import sentences
from pyrocast.notify import notify_urls, send
from pyrocast.ports import service_url
from pyrocast.serving.api import (
    BackendStatus,
    ImageryFailed,
    ModelInfo,
    PredictResponse,
    ReasonBody,
    RolloutView,
    Variant,
)
from pyrocast.serving.backends import (
    PROBE_INTERVAL_S,
    Answer,
    Backend,
    BackendError,
    ExplainerProbe,
    Probed,
    client_fault,
    swallow_outcome,
)
from pyrocast.serving.gateway_metrics import NOTIFIED_ACTIONS, Metrics
from pyrocast.serving.guards import load_upload
from pyrocast.serving.rollout import (
    Event,
    ModelRef,
    Role,
    RolloutController,
    RolloutError,
    RolloutState,
    Route,
    Window,
    step_since,
    stored_state,
    window_of_calls,
)
from pyrocast.serving.store import PredictionStore, brief_error, image_stats
from pyrocast.serving.warn_every import WarnEvery
from pyrocast.settings import Settings

log = logging.getLogger("pyrocast.gateway")

BACKLOG_WARNING = 5000  # rows waiting to be written: the PyrocastStoreBacklog alert's threshold too
WARN_EVERY_S = 30.0  # a trouble that repeats (the store refusing, a model failing) is logged this often
ALIAS_RETRY_S = 10.0  # registry aliases the registry refused to move to the roles in effect are tried this often
PROMOTE_RETRY_S = 30.0  # a canary's auto-promotion whose registry aliases could not be moved waits this long
MAX_BACKGROUND = 256  # shadow/compare calls in flight; beyond this copies are dropped (and counted)
RECENT_REQUESTS = 20_000  # request ids kept in memory for feedback (about 10 MB); older ones are looked up in the store
TILE_CACHE = 256


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


def transition_claims(before: RolloutState, events: list[Event]) -> list[str]:
    """The claim of each change time decides in one tick, named by the state it leaves (the plan, its canary step,
    complete or not), not by the change: replicas that decide different changes out of one state at once (one a
    guardrail stop, another the step or the completion) record one of them; the others adopt it. Keyed by the
    change, both were recorded, the newer one undid the stop for everyone, and the stop's used-up claim kept it
    from being recorded again."""
    step, complete = before.canary_step, before.canary_complete
    claims = []
    for ev in events:
        claims.append(f"{before.mode}@{before.updated_at!r}:leaves step {step}" + (" complete" if complete else ""))
        if ev.action == "canary-step":
            step += 1
        elif ev.action == "canary-complete":
            complete = True
    return claims


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
        # Why the auto-promotion of the canary (mode, updated_at) waits; said in /healthz and a gauge: it used to be
        # one log line, while status showed a canary at 100% as if all were well.
        self._postponed: tuple[tuple[str, float], str] | None = None
        # One rollout change at a time: an operator's change, the tick's (adopting another gateway's change, a canary
        # step, a stop, an auto-promotion) and a request's guardrail check each copy the state, await the store or
        # the registry, then put their copy in effect; interleaved, one would overwrite what another recorded.
        self._rollout_lock = asyncio.Lock()
        self._guardrail_check_due = False  # a request's guardrail check waits for the lock (one at a time)
        self._warn = WarnEvery(WARN_EVERY_S, log)
        # A guardrail stop in effect here, not yet recorded: the stop, its claim, and the plan it stopped.
        self._unrecorded_stop: tuple[Event, str, tuple[str, float]] | None = None
        # A guardrail stop being recorded: nobody is routed to the challenger meanwhile (a store slow to take the
        # record, up to its 30 s lock timeout, kept sending users to a failing challenger for as long).
        self._stopping = False
        self._notifications: set[asyncio.Future[Any]] = set()  # rollout notifications being sent
        # ...kept on disk too, so that a gateway restarted before the store is back does not resume the stopped plan.
        self._stop_file = settings.root / "rollout-unrecorded-stop.json"
        # The registry aliases do not follow the roles in effect (a move back or a safety rollback the registry refused
        # to follow): why, for /healthz; the tick moves them every ALIAS_RETRY_S. Kept on disk too: a gateway started
        # again must neither forget them nor take the stale `champion` alias for a training run's decision.
        self._aliases_owed: tuple[str, str] | None = None  # (why they were to move, why they did not)
        # The champion version the registry held when the debt began: one it shows since, other than the owed one,
        # is a newer decision (a training run's), which the debt must not undo.
        self._aliases_stale: str | None = None
        self._aliases_retry_at = 0.0
        self._alias_task: asyncio.Task | None = None
        self._aliases_followed_due: str | None = None  # a payment's settlement, for the tick to record
        self._aliases_file = settings.root / "rollout-aliases-owed.json"
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
            note = None if await self._take_up_aliases_owed() else await self._follow_registry()
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
        if self._alias_task is not None:
            self._alias_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._alias_task
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
        # The store closes while notifications still being sent finish (a rollback just before a stop is still
        # told), within the time `pyrocast up` gives a gateway to stop, not after it.
        told = asyncio.wait(self._notifications, timeout=5.0) if self._notifications else asyncio.sleep(0)
        await asyncio.gather(run_in_threadpool(self.store.close), told)

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
                # Outside the lock, in a task of its own: a registry that hangs must not hold up the tick.
                due = self._aliases_owed is not None and time.monotonic() >= self._aliases_retry_at
                if due and (self._alias_task is None or self._alias_task.done()):
                    self._alias_task = asyncio.create_task(self._pay_aliases())
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
        await self._record_aliases_followed()
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
        if state.aliases_stale is not None and self._aliases_owed is None:
            # Recorded by a gateway the registry refused: every replica moves the aliases (that one may be gone
            # before it can), each move guarded like its own (`_pay_aliases`); a paid debt costs one registry read.
            why = "they were to follow a change another gateway made while the registry refused to follow it"
            self._set_aliases_owed(why, None, state.aliases_stale)
            self._aliases_retry_at = 0.0  # at the next tick
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
        counted = [call for call in calls if not client_fault(call["error"])]
        stats = window_of_calls(counted, st.canary.guardrails.window).summary()
        began = step_since(st)  # read at most `window` calls: enough to tell whether the step has `min_requests`
        stats["step_calls"] = sum(1 for call in counted if call["t"] >= began)
        stats["step"] = (st.updated_at, st.canary_step)  # the step they were counted for
        c.fleet_stats = stats

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
        m.rollout_unrecorded.set(1 if self._unrecorded_stop is not None or self._stop_waits_unread() else 0)
        m.rollout_promotion_postponed.set(1 if self._promotion_postponed() is not None else 0)

    def _stop_waits_unread(self) -> bool:
        """A guardrail stop a previous run could not record waits in its file, not taken up yet: this gateway has
        not read the saved state (the store is down at its start). The alert must not clear meanwhile."""
        return self._state_unread and self._stop_file.exists()

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
    def route(self, key: str) -> Route:
        """Where the request of client (or request) `key` goes: as the rollout says, except that nobody goes to the
        challenger while a guardrail stop is being recorded."""
        route = self.controller.route(key)
        return Route("champion") if self._stopping and route.role == "challenger" else route

    async def predict(
        self, incoming: Prepared | Upload, client_id: str | None, source: str, t0: float | None = None
    ) -> PredictResponse:
        """Route, call and store one prediction. t0: `time.perf_counter()` once the request's body was read (a
        place's tile fetched since counts in `latency_ms`; the client's upload does not)."""
        t0 = time.perf_counter() if t0 is None else t0
        request_id = uuid.uuid4().hex
        route = self.route(client_id or request_id)
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
        waited_ms = 0.0
        if route.role == "challenger":
            t_challenger = time.perf_counter()
            answer = await self._call_challenger(tile, base, windows, started if first == "challenger" else None)
            variant = "challenger"
            waited_ms = (time.perf_counter() - t_challenger) * 1000
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
                waited_ms=waited_ms if variant == "champion-fallback" else 0.0,
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
            started.add_done_callback(swallow_outcome)
            incoming.check.add_done_callback(swallow_outcome)  # the client left while its tile was being checked
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
        waited_ms: float = 0.0,
    ) -> Answer:
        """Call a role's backend (or finish the call `started` for it) and store the outcome (a served champion's in
        `windows`, the rollout windows in force when the request was routed). waited_ms: model time this answer's
        user already spent (a challenger that failed first), stored with the answer's latency.

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
                # What the user waited for the models: a fallback's includes the challenger's failed call (stored
                # alone, monitoring showed a champion-fallback p95 of 9.5 ms for answers that took 5-10 s).
                "latency_ms": round(answer.latency_ms + waited_ms, 3),
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

    async def _change(self, action: str, body: Any, aliases_may_wait: bool = False) -> Event:
        """`change` under the lock. aliases_may_wait: a promotion or rollback goes ahead when the registry refuses to
        move the aliases (a safety rollback), which are then owed (`_align_aliases`); an operator's is refused."""
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
            ev = await self._promote_or_rollback(action, body.reason if body else None, aliases_may_wait)
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

    async def _undo(self, before: RolloutState, ev: Event, moved: ModelRef | None = None) -> None:
        """Back to `before` after a change the store did not record (other replicas never saw it): the registry
        aliases too, after a promotion or rollback (`_move_aliases` leaves bundle-folder models alone). moved: the
        champion the change moved the registry's alias to (default: the state in effect's)."""
        moved = moved or self.controller.state.champion
        self.controller.state = before
        self._assign_roles()
        if ev.action in ("promote", "rollback"):
            why = f"they were to move back after a {ev.action} the store did not record"
            await self._align_aliases(why, moved.version if moved else None)

    async def _rejected(self, action: str) -> str | None:
        """Why the challenger's training run rejected it, or None (promoting a rejected version takes `force`)."""
        ch = self.controller.state.challenger
        if ch is None or (self.backend("challenger").info or {}).get("source") != "registry":
            return None  # nothing to promote (promote says so), or a bundle folder: no recorded decision
        from pyrocast.registry.models import decision_of

        try:
            decision, why = await run_in_threadpool(decision_of, self.settings, ch.version)
        except Exception as exc:  # the registry is down: the promotion would fail on the aliases anyway
            raise ServiceUnavailableError(
                f"{action} not done: the registry does not answer: {scrub_secrets(str(exc))}"
            ) from exc
        if decision != "rejected":
            return None
        return f"v{ch.version} was rejected when it was trained" + (f" ({why})" if why else "")

    async def _promote_or_rollback(self, action: str, reason: str | None, aliases_may_wait: bool = False) -> Event:
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
        # Whoever is to answer everyone must answer now: promoting a challenger whose probes fail (stopped, hung,
        # dead) made every prediction a 503 and moved the registry aliases to it.
        target = next(b for b in self.backends.values() if b.ref == c.state.champion)
        if not target.up or target.gone:
            wanted = c.state.champion
            put_back()
            raise RolloutError(
                f"cannot {action} to {wanted}: its classifier at {target.url} does not answer its health probes, "
                "and it would answer every prediction",
                f"bring it back (GET /healthz says when it answers), then {action} again; nothing was changed",
            )
        await self._alias_payment_done()
        try:
            note = await run_in_threadpool(self._move_aliases, c.state.champion, c.state.challenger)
            c.state.aliases_stale = None
            if self._aliases_owed is not None:
                self._set_aliases_owed(None)
        except Exception as exc:
            if aliases_may_wait:
                stale = before.champion.version if before.champion else None
                self._set_aliases_owed(f"they were to follow a {action} made without them", exc, stale)
                self._assign_roles()
                wait = f"registry aliases not moved yet (the registry refused), tried every {ALIAS_RETRY_S:.0f} s"
                ev.reason = f"{ev.reason}; {wait}"
                return ev
            put_back()
            raise ServiceUnavailableError(
                f"{action} not done: moving the registry aliases failed: {scrub_secrets(str(exc))}",
                "check the MLflow registry",
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

    async def _alias_payment_done(self) -> None:
        """Wait for a payment of owed aliases in flight: a move made meanwhile must land after it, not be undone by
        it (callers hold the rollout lock, which the payment does not take)."""
        task = self._alias_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _align_aliases(self, why: str, stale: str | None) -> bool:
        """Move the registry aliases to the roles in effect; when the registry refuses, they are owed: said in
        /healthz and the log, kept on disk, and moved again every ALIAS_RETRY_S (`_pay_aliases`) unless the registry's
        champion alias moves from `stale` meanwhile. False when owed."""
        await self._alias_payment_done()
        st = self.controller.state
        try:
            note = await run_in_threadpool(self._move_aliases, st.champion, st.challenger)
        except Exception as exc:
            self._set_aliases_owed(why, exc, stale)
            return False
        if self._aliases_owed is not None:
            log.warning("rollout: the registry aliases follow the rollout again (%s)", note)
        self._set_aliases_owed(None)
        return True

    def _set_aliases_owed(
        self, why: str | None, exc: BaseException | None = None, stale: str | None = None, clear_marker: bool = True
    ) -> None:
        """Owe (why given) or settle the registry aliases, in memory, in the gauge and in `_aliases_file`; the state's
        `aliases_stale` marker too, except for a settlement outside the rollout lock (clear_marker=False: the tick
        clears it and records that, `_record_aliases_followed`)."""
        st = self.controller.state
        first = self._aliases_owed is None
        failed = scrub_secrets(brief_error(exc)) if exc is not None else "not tried yet"
        if first or why is None:
            self._aliases_stale = stale
        if first and why is not None:
            st.aliases_stale = stale  # recorded with the next change (a safety rollback's own record)
        elif why is None and clear_marker:
            st.aliases_stale = None
        self._aliases_owed = None if why is None else (why, failed)
        self._aliases_retry_at = time.monotonic() + ALIAS_RETRY_S
        self.metrics.rollout_aliases_owed.set(0 if why is None else 1)
        if why is not None:
            (log.error if first else log.debug)(
                "rollout: the registry aliases do not follow the rollout in effect (champion %s, challenger %s): %s, "
                "but moving them failed (%s); tried again every %d s",
                st.champion,
                st.challenger,
                why,
                failed,
                ALIAS_RETRY_S,
            )
        try:
            if why is None:
                self._aliases_file.unlink(missing_ok=True)
                return
            roles = {"champion": st.champion, "challenger": st.challenger}
            data = {k: (ref.model_dump(mode="json") if ref else None) for k, ref in roles.items()}
            data |= {"why": why, "stale": self._aliases_stale}
            atomic_write(self._aliases_file, json.dumps(data, indent=1).encode())
        except OSError as exc:  # owed in memory all the same
            log.error("rollout: the owed registry aliases could not be kept in %s: %s", self._aliases_file, exc)

    def _registry_aliases(self) -> dict[str, str]:
        """The registry's aliases (alias -> version). Raises when the registry cannot be read."""
        from pyrocast.registry.models import aliases

        return aliases(self.settings)

    def _champion_moved(self, now: dict[str, str], target: ModelRef | None) -> str | None:
        """The registry's champion alias (of `now`) when it shows a version other than the stale one and the owed one
        (a newer decision, a training run's), else None."""
        shown = now.get("champion")
        if self._aliases_stale is None or shown is None:
            return None
        return shown if shown not in (self._aliases_stale, target.version if target else None) else None

    def _drop_owed_aliases(self, moved_to: str, clear_marker: bool = True) -> None:
        log.warning(
            "rollout: the registry's champion alias moved to v%s since the aliases were owed (v%s then): a newer "
            "decision, left as it is; the owed move is dropped",
            moved_to,
            self._aliases_stale,
        )
        self._set_aliases_owed(None, clear_marker=clear_marker)

    def _aliases_file_debt(self) -> tuple[str, str | None] | None:
        """(why, stale version) of the aliases this gateway owed when it stopped, for the roles in effect; None when
        it owed none (a file left for other roles is dropped)."""
        try:
            data = json.loads(self._aliases_file.read_text())
            owed = tuple(ModelRef.model_validate(data[k]) if data[k] else None for k in ("champion", "challenger"))
            why, stale = str(data["why"]), data.get("stale")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("rollout: %s is unreadable (%s); the registry aliases are followed", self._aliases_file, exc)
            return None
        st = self.controller.state
        if owed != (st.champion, st.challenger):
            self._aliases_file.unlink(missing_ok=True)
            return None
        return why, None if stale is None else str(stale)

    async def _take_up_aliases_owed(self) -> bool:
        """At start, after the saved state is read: aliases owed when this gateway stopped (its file), or recorded as
        owed with the saved state by the gateway that made the change (`aliases_stale`: replicas with data
        directories of their own), are owed here too if the registry's champion alias still shows the stale version
        (True: that alias is not a training run's decision, it is moved). Dropped when it shows the owed champion
        (paid) or a third version (a newer decision, followed)."""
        st = self.controller.state
        debt, recorded = self._aliases_file_debt(), False
        if debt is None and st.aliases_stale is not None:
            debt, recorded = ("they were to follow a change the registry refused to follow", st.aliases_stale), True
        if debt is None:
            return False
        why, stale = debt
        self._aliases_stale = stale
        try:
            now = (await run_in_threadpool(self._registry_aliases)).get("champion")
            known = True
        except Exception:  # the registry is down: owed still, and its alias not followed
            now, known = None, False
        if recorded and known and now == (st.champion.version if st.champion else None):
            st.aliases_stale = self._aliases_stale = None  # paid by the gateway that owed them
            self._aliases_followed_due = "registry aliases found following the rollout at a gateway's start"
            return False
        if known and now is not None and now not in (stale, st.champion.version if st.champion else None):
            self._drop_owed_aliases(str(now))
            return False
        self._aliases_owed = (why, "not moved before this gateway stopped" if not recorded else "not moved yet")
        self._aliases_retry_at = 0.0  # at the first tick
        self.metrics.rollout_aliases_owed.set(1)
        log.error(
            "rollout: the registry aliases were owed %s (%s): the registry's champion alias (v%s) is not followed, it "
            "is moved to %s",
            "as recorded with the rollout state by the gateway that made the change"
            if recorded
            else "when this gateway stopped",
            why,
            now if known else "? (the registry does not answer)",
            st.champion,
        )
        return True

    async def _pay_aliases(self) -> None:
        """Move owed registry aliases once their retry time has come, outside the rollout lock (in a task of the
        tick's): settled only while the roles are still those moved to, dropped when the registry's champion alias
        moved to a newer decision meanwhile."""
        if self._aliases_owed is None or time.monotonic() < self._aliases_retry_at:
            return
        why = self._aliases_owed[0]
        st = self.controller.state
        roles = (st.champion, st.challenger)

        def move() -> tuple[str | None, str | None]:
            now = self._registry_aliases()
            moved = self._champion_moved(now, roles[0])
            if moved is not None:
                return moved, None
            champion, challenger = roles
            shown = now.get("challenger")
            if (now.get("champion"), shown) == tuple(r.version if r else None for r in roles):
                return None, "already in place"  # paid by another gateway: no second move (it downloads both)
            known = {self._aliases_stale, *(r.version for r in roles if r is not None)}
            if challenger is not None and shown is not None and shown not in known:
                # A training run made a newer version challenger since: its decision stands, the champion alone moves.
                return None, f"{self._move_aliases(champion, None)} (challenger v{shown} left: a newer decision)"
            return None, self._move_aliases(champion, challenger)

        try:
            moved, note = await run_in_threadpool(move)
        except Exception as exc:
            if self._aliases_owed is not None:
                self._set_aliases_owed(why, exc)
            return
        now = (self.controller.state.champion, self.controller.state.challenger)
        if self._aliases_owed is None or now != roles:  # settled, or owed anew, by a change made meanwhile
            return
        if moved is not None:
            self._drop_owed_aliases(moved, clear_marker=False)
            self._aliases_followed_due = (
                f"the registry's champion alias shows v{moved}, a newer decision: owed move dropped"
            )
            return
        log.warning("rollout: the registry aliases follow the rollout again (%s)", note)
        self._set_aliases_owed(None, clear_marker=False)
        self._aliases_followed_due = f"registry aliases follow the rollout again ({note})"

    async def _record_aliases_followed(self) -> None:
        """Owed aliases settled by a payment: the state in effect stops naming the stale alias, and so does the store's
        record of it (a gateway starting later took the paid debt up again from that record, and moved the aliases
        back over a deliberate change). By the tick, under the rollout lock, so that the state recorded is the one
        in effect; left to the record of a guardrail stop this gateway holds unrecorded."""
        note = self._aliases_followed_due
        if note is None or self._state_unread:
            return
        self._aliases_followed_due = None
        if self._aliases_owed is not None:  # owed anew meanwhile
            return
        self.controller.state.aliases_stale = None
        if self._unrecorded_stop is not None:
            return
        try:
            recorded = await run_in_threadpool(self.store.last_state)
            if recorded is not None and recorded.get("aliases_stale") is not None:
                await self._record(Event("aliases-followed", note))
        except Exception as exc:
            self._aliases_followed_due = note
            self._store_trouble("the registry aliases' settlement not recorded", exc)

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
            target = next((b for b in self.backends.values() if b.ref == after.champion), None)
            if target is None or not target.up or target.gone:  # it would answer everyone: as a manual promote
                self._promote_retry_at = time.monotonic() + PROMOTE_RETRY_S
                self._postpone(before, f"the classifier serving {after.champion} does not answer its probes")
                return []
            await self._alias_payment_done()
            try:
                note = await run_in_threadpool(self._move_aliases, after.champion, after.challenger)
            except Exception as exc:  # the canary stays at its last step; tried again in PROMOTE_RETRY_S
                self._promote_retry_at = time.monotonic() + PROMOTE_RETRY_S
                self._postpone(before, f"moving the registry aliases failed ({scrub_secrets(brief_error(exc))})")
                return []
            self._postponed = None
            if note:
                events[-1].reason = f"{events[-1].reason}; {note}"
            after.aliases_stale = None
            if self._aliases_owed is not None:
                self._set_aliases_owed(None)
        claims = transition_claims(before, events)
        self._stopping = events[-1].action == "guardrail-stop"  # in effect on routing now, recorded below
        if self._stopping:
            events[-1].at = time.time()  # its time in the history, however long the store takes to record it
        try:
            return await self._record_decided(before, after, events, claims)
        finally:
            self._stopping = False

    def _postpone(self, plan: RolloutState, why: str) -> None:
        """A complete canary's auto-promotion waits: said in the log (rate-limited), /healthz and the gauge."""
        self._postponed = ((plan.mode, plan.updated_at), why)
        self._warn(
            "promote-postponed",
            "canary complete, promotion postponed: %s; tried again every %.0f s",
            why,
            PROMOTE_RETRY_S,
        )
        self._update_gauges()

    def _promotion_postponed(self) -> str | None:
        """Why the running canary's auto-promotion waits, or None (none waits, or the plan has changed since)."""
        st = self.controller.state
        if self._postponed is None or self._postponed[0] != (st.mode, st.updated_at):
            return None
        return self._postponed[1]

    async def _record_decided(
        self, before: RolloutState, after: RolloutState, events: list[Event], claims: list[str]
    ) -> list[Event]:
        """Record what a tick decided (`advance`): in effect once recorded, a guardrail stop at once either way."""
        c = self.controller
        try:
            recorded = await self._after_change(events[0], claim=claims[0], state=after)
        except Exception as exc:  # the store is down
            if events[-1].action == "guardrail-stop":  # safety first: stop here now, record it when it is back
                c.state = after
                c._reset_windows()
                self._assign_roles()
                # Claimed as a stop, not as a way out of this step: safety first, it is recorded once the store takes
                # it even when another replica, which saw no failure, recorded the step meanwhile.
                held = f"{before.mode}@{before.updated_at!r}:guardrail-stop held while the store refused"
                self._set_unrecorded_stop((events[-1], held, (before.mode, before.updated_at)))
                self.metrics.rollout_store_errors.inc()
                log.error("rollout: %s (not recorded yet: the store refused: %r)", events[-1].reason, exc)
                return []
            # Not made: a later tick decides it again. (The state in effect is `before` here: the champion the aliases
            # were moved to is the decided one's, else an owed move back named the wrong stale version.)
            await self._undo(before, events[-1], after.champion)
            if events[-1].action == "promote":  # not every tick: each attempt moves the registry aliases
                self._promote_retry_at = time.monotonic() + PROMOTE_RETRY_S
            self._store_trouble(f"{events[-1].action} not recorded, so not made", exc)
            return []
        if not recorded:  # another replica recorded a change out of this state; its state arrives through the store
            await self.follow_store()
            if any(ev.action == "promote" for ev in events):
                await self._aliases_as_recorded(after)
            if events[-1].action == "guardrail-stop":
                return await self._overrule_promotion(before, events[-1])
            return []
        for i in range(1, len(events)):
            if not await self._after_change(events[i], claim=claims[i]):
                await self.follow_store()
                return events[:i]
        return events

    async def _overrule_promotion(self, before: RolloutState, stop: Event) -> list[Event]:
        """A guardrail stop here lost its claim to another replica's auto-promotion of the very challenger it stopped
        (both decided at the canary's end): safety first, that promotion is rolled back (recorded and told like an
        operator's), rather than leaving a challenger that breaks a guardrail answering everyone."""
        st = self.controller.state
        if before.challenger is None or st.mode != "champion" or st.champion != before.challenger:
            return []
        reason = f"{stop.reason}, as another gateway promoted it: rolled back"
        log.error("rollout: %s", reason)
        try:
            return [await self._change("rollback", ReasonBody(reason=reason), aliases_may_wait=True)]
        except Exception as exc:  # the previous champion does not answer, or the store refuses: on call must act
            log.error("rollout: could not roll back %s (%s): roll back by hand", st.champion, exc)
            return []

    async def _aliases_as_recorded(self, mine: RolloutState) -> None:
        """After an auto-promotion whose aliases were moved here lost its claim: the registry aliases follow the
        state the store recorded instead (another replica's stop kept the champion; its promotion, the same
        aliases)."""
        st = self.controller.state
        if (st.champion, st.challenger) == (mine.champion, mine.challenger):
            return
        why = "they were moved here for a promotion another gateway's change overruled"
        await self._align_aliases(why, mine.champion.version if mine.champion else None)

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
                "at": ev.at,
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
            stop = (Event(str(data["action"]), data.get("reason"), data.get("at")), str(data["claim"]), plan)
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
        self.metrics.rollout_events.labels(ev.action).inc()
        self._tell_team(ev)
        self._update_gauges()
        return True

    def _tell_team(self, ev: Event) -> None:
        """Notify the team (PYROCAST_NOTIFY_URLS) of a change on call must know of: a canary stopped or complete, a
        promotion, a rollback. In the background: a slow webhook never holds the rollout. Only the replica that
        recorded the change gets here, so the team hears of it once."""
        if ev.action not in NOTIFIED_ACTIONS or not notify_urls(self.settings):
            return
        st = self.controller.state
        title = f"Pyrocast rollout: {ev.action}"
        body = "\n".join(
            [
                ev.reason or ev.action,
                f"champion: {st.champion or '-'}; challenger: {st.challenger or '-'}",
                f"gateway: {service_url(self.settings.serving.host, self.settings.serving.gateway_port)}",
            ]
        )
        task = asyncio.ensure_future(run_in_threadpool(send, self.settings, title, body))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

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
            ev.at,
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
        if self._aliases_owed is not None:
            why, failed = self._aliases_owed
            st = self.controller.state
            out.append(
                f"the registry aliases do not follow the rollout in effect (champion {st.champion}): {why}, but "
                f"moving them failed ({failed}); tried again every {ALIAS_RETRY_S:.0f} s (check the MLflow registry)"
            )
        if (postponed := self._promotion_postponed()) is not None:
            out.append(
                f"the canary is complete but its auto-promotion is postponed: {postponed}; the challenger keeps its "
                f"last step's share meanwhile, and the promotion is tried again every {PROMOTE_RETRY_S:.0f} s"
            )
        if self._unrecorded_stop is not None:
            out.append(
                f"a guardrail stop holds here that the store has not recorded ({self._unrecorded_stop[0].reason}): "
                "other gateways do not know of it; it is recorded once the store takes writes (kept meanwhile in "
                f"{self._stop_file}: do not delete it)"
            )
        elif self._stop_waits_unread():
            out.append(
                f"a guardrail stop made before this gateway restarted waits in {self._stop_file}, not recorded: it "
                "is taken up once the saved rollout state can be read (do not delete the file)"
            )
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
