"""The gateway's rollout state in the store (in-process gateways over a real SQLite store): replicas on one
store adopt each other's changes and record each change time decides once; a change the store refuses is
undone, never half made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from pyrocast.ports import free_port
from pyrocast.serving.rollout import CanaryPlan, Event, ModelRef
from pyrocast.serving.routing import Gateway
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import ServingSettings, Settings
from tests.support.servers import ThreadedServer

V1, V2 = ModelRef(name="m", version="1"), ModelRef(name="m", version="2")


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways on one SQLite store, both serving v1 as champion and v2 as challenger."""
    # Ports of their own: a probe must not find the classifiers of a `pyrocast up` running on the default ones.
    ports = {f"{k}_port": free_port() for k in ("champion", "challenger", "explainer", "gateway", "webapp")}
    settings = Settings(data_dir=tmp_path, serving=ServingSettings(**ports))
    settings.ensure_dirs()
    one, two = (Gateway(settings, PredictionStore(settings.store_database_url)) for _ in range(2))
    try:
        # Classifiers that answer their probes (v1 and v2): a promotion goes only to one that answers.
        with _Classifier("1") as a, _Classifier("2") as b:
            for g in (one, two):
                g.backends["a"].url, g.backends["b"].url = a.base, b.base
                await g.refresh_backends()
                g.controller.set_models(V1, V2)
            yield one, two
    finally:
        for g in (one, two):
            await g.client.aclose()
            g.store.close()


def judged(*gateways: Gateway) -> None:
    """Each replica saw the challenger answer (well) as many calls as the canary's guardrails need to judge its
    step: a step does not end on time alone."""
    for g in gateways:
        c = g.controller
        for _ in range(c.state.canary.guardrails.min_requests if c.state.canary else 20):
            c.record("challenger", True, 5.0)
            c.record_agreement(True)


async def started_canary(one: Gateway, two: Gateway, plan: CanaryPlan) -> float:
    """A canary started through replica one and adopted by replica two; returns its start time."""
    await one._after_change(one.controller.start_canary(plan))
    assert await two.follow_store()
    t0 = one.controller.state.canary_started_at
    assert t0 is not None
    return t0


async def promoted_by_two_while_one_saw_it_fail(one: Gateway, two: Gateway) -> float:
    """A one-step canary with auto-promotion, at its end: replica two, which saw the challenger answer well, has
    recorded the promotion; replica one saw it fail and has not ticked yet. Returns the canary's start time."""
    t0 = await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=60, auto_promote=True))
    judged(two)
    for _ in range(30):
        one.controller.record("challenger", False, None)
    assert [e.action for e in await two.advance(t0 + 61)] == ["promote"]
    return t0


def test_a_replica_adopts_changes_and_keeps_its_canary_window_across_step_records(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            assert not await two.follow_store()  # nothing written yet

            await one._after_change(one.controller.start_canary(CanaryPlan(steps=[0.1, 0.5], step_seconds=60)))
            assert await two.follow_store()
            assert two.controller.state.mode == "canary" and two.controller.state.challenger == V2
            assert not await two.follow_store()  # adopted once

            two.controller.record("challenger", True, 12.0)  # traffic replica two has seen
            one.controller.state.canary_step = 1  # replica one records the ramp's next step
            await one._after_change(Event("canary-step", "challenger share 50%"))
            assert await two.follow_store()
            assert two.controller.state.canary_step == 1
            assert two.controller.windows["challenger"].summary()["requests"] == 1  # not reset by a step record

            await two._after_change(two.controller.champion_only("stopped through replica two"))
            assert await one.follow_store()
            assert one.controller.state.mode == "champion"
            assert one.controller.state.stopped_reason == "stopped through replica two"
            assert one.controller.windows["challenger"].summary()["requests"] == 0  # a new mode starts a new window

    asyncio.run(scenario())


def test_replicas_record_each_change_time_decides_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            t0 = await started_canary(one, two, CanaryPlan(steps=[0.1, 0.5], step_seconds=60, auto_promote=True))

            # Both replicas see the ramp's next step at the same tick: one records it, the other adopts it.
            judged(one, two)
            recorded = await asyncio.gather(one.advance(t0 + 61), two.advance(t0 + 61))
            assert sorted(len(r) for r in recorded) == [0, 1]
            assert [e["action"] for e in one.store.events()].count("canary-step") == 1
            for g in (one, two):
                await g.follow_store()
                assert g.controller.state.mode == "canary" and g.controller.state.canary_step == 1

            # The canary completes for both at once: one promotion, and both end with v2 as the champion.
            judged(one, two)
            recorded = await asyncio.gather(one.advance(t0 + 121), two.advance(t0 + 121))
            assert sorted(len(r) for r in recorded) == [0, 1]
            assert [e["action"] for e in one.store.events()].count("promote") == 1
            for g in (one, two):
                await g.follow_store()
                assert g.controller.state.mode == "champion" and g.controller.state.champion == V2
            assert await one.advance(t0 + 200) == [] and await two.advance(t0 + 200) == []

    asyncio.run(scenario())


async def stop_held_unrecorded(one: Gateway, two: Gateway) -> None:
    """A canary started through replica one, then stopped there by its guardrails while the store refuses writes:
    the stop holds on one, unrecorded, kept in its file."""
    from pyrocast.serving.rollout import Guardrails

    strict = Guardrails(max_error_rate=0.1, min_requests=5)
    await started_canary(one, two, CanaryPlan(steps=[0.5], guardrails=strict))
    _refusing(one.store)
    for _ in range(5):
        one.controller.record("challenger", False, None)
    assert await one.advance() == [] and one.controller.state.mode == "champion"
    assert one._stop_file.exists()


def _refusing(store: PredictionStore) -> None:
    """The store's database refuses writes from now on (read-only, as in a PostgreSQL outage)."""
    from sqlalchemy import create_engine

    db = store.url.removeprefix("sqlite:///")
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")


def test_a_change_the_store_refuses_is_undone(tmp_path: Path) -> None:
    from pyrocast.errors import ServiceUnavailableError
    from pyrocast.serving.rollout import ABPlan

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            t0 = await started_canary(one, two, CanaryPlan(steps=[0.1, 0.5], step_seconds=60))
            _refusing(one.store)

            # An operator's change: 503-worthy error, and the state is what it was (the canary goes on).
            try:
                await one.change("ab", ABPlan(champion=1, challenger=1))
            except ServiceUnavailableError as exc:
                assert "ab not done" in str(exc) and "nothing was changed" in str(exc)
            else:
                raise AssertionError("a change the store refused was reported as done")
            assert one.controller.state.mode == "canary" and one.controller.state.ab is None

            # A change time decides: not made until it is recorded, so it is made on a later tick.
            judged(one)
            assert await one.advance(t0 + 61) == []
            assert one.controller.state.canary_step == 0
            one.store.engine.dispose()
            one.store.engine = two.store.engine  # the database is back
            assert [e.action for e in await one.advance(t0 + 62)] == ["canary-step"]
            assert one.controller.state.canary_step == 1
            assert await two.follow_store() and two.controller.state.canary_step == 1

    asyncio.run(scenario())


def test_a_guardrail_stop_holds_while_the_store_is_down_and_is_recorded_when_it_is_back(tmp_path: Path) -> None:
    from pyrocast.serving.rollout import Guardrails

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            await one._after_change(one.controller.start_canary(CanaryPlan(steps=[0.5], guardrails=strict)))
            assert await two.follow_store()
            _refusing(one.store)
            for _ in range(5):
                one.controller.record("challenger", False, None)  # the challenger fails
            assert await one.advance() == []  # not recorded...
            assert one.controller.state.mode == "champion"  # ...but in effect: safety does not wait for the store
            assert one.controller.share() == 0.0
            assert not await two.follow_store()  # the other replica cannot know yet
            sample = one.metrics.registry.get_sample_value
            assert sample("pyrocast_rollout_unrecorded_stop") == 1.0  # what to alert on
            assert (sample("pyrocast_rollout_store_errors_total") or 0) >= 1
            one.store.engine.dispose()
            one.store.engine = two.store.engine  # the database is back
            await one.advance()
            assert one.store.events(1)[0]["action"] == "guardrail-stop"
            assert sample("pyrocast_rollout_unrecorded_stop") == 0.0
            assert await two.follow_store() and two.controller.state.mode == "champion"
            assert "error rate" in (two.controller.state.stopped_reason or "")

    asyncio.run(scenario())


def test_a_replica_that_missed_a_recorded_step_does_not_record_it_again_with_the_completion(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            t0 = await started_canary(one, two, CanaryPlan(steps=[0.1, 0.5], step_seconds=60, auto_promote=True))
            judged(one, two)
            assert [e.action for e in await one.advance(t0 + 61)] == ["canary-step"]
            # Replica two did not tick in between: at the end it decides the step (and the completion) at once.
            assert await two.advance(t0 + 121) == []  # the step is replica one's: adopted, not recorded again
            assert two.controller.state.canary_step == 1
            judged(two)
            assert [e.action for e in await two.advance(t0 + 121)] == ["promote"]
            assert [e["action"] for e in one.store.events()] == ["promote", "canary-step", "canary"]

    asyncio.run(scenario())


def test_a_guardrail_stop_not_yet_recorded_is_not_undone_by_a_step_another_replica_records(tmp_path: Path) -> None:
    from pyrocast.serving.rollout import Guardrails

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            t0 = await started_canary(one, two, CanaryPlan(steps=[0.1, 0.5], step_seconds=60, guardrails=strict))
            _refusing(one.store)  # replica one can read the store but not write to it (a partition)
            for _ in range(5):
                one.controller.record("challenger", False, None)  # only replica one sees the challenger fail
            stopped_at = time.time()
            assert await one.advance(t0 + 1) == [] and one.controller.state.mode == "champion"
            judged(two)
            assert [e.action for e in await two.advance(t0 + 61)] == ["canary-step"]
            assert not await one.follow_store()  # the step of the plan it stopped: the stop holds
            assert one.controller.state.mode == "champion" and one.controller.share(t0 + 62) == 0.0
            await asyncio.sleep(1.0)  # the store is back a while later
            one.store.engine.dispose()
            one.store.engine = two.store.engine  # writable again: the stop is recorded and reaches replica two
            await one.advance(t0 + 63)
            (stop,) = one.store.events(1)
            assert stop["action"] == "guardrail-stop"
            # In the history when it took effect, not when the store took it (06:54:52 read as 06:55:01).
            assert abs(stop["ts"].timestamp() - stopped_at) < 0.5, (stop["ts"], stopped_at)
            assert await two.follow_store() and two.controller.state.mode == "champion"

            # A newer decision made through another replica replaces a stopped plan that could not be recorded.
            await two._after_change(two.controller.start_canary(CanaryPlan(steps=[0.1], guardrails=strict)))
            _refusing(one.store)
            assert await one.follow_store() and one.controller.state.mode == "canary"
            for _ in range(5):
                one.controller.record("challenger", False, None)
            await one.advance()
            assert one.controller.state.mode == "champion"
            await two._after_change(two.controller.start_shadow(1.0))
            assert await one.follow_store() and one.controller.state.mode == "shadow"
            assert one.metrics.registry.get_sample_value("pyrocast_rollout_unrecorded_stop") == 0.0

    asyncio.run(scenario())


def _unreadable(store: PredictionStore, tmp_path: Path) -> None:
    """The store's database cannot even be opened from now on (its server down, its file gone)."""
    from sqlalchemy import create_engine

    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///file:{tmp_path / 'gone' / 'p.db'}?mode=ro&uri=true")


def test_during_a_store_outage_the_rollout_is_shown_and_health_warns(tmp_path: Path) -> None:
    from tests.support.store_rows import row

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await one._after_change(one.controller.start_shadow(0.5))
            statuses = one.backend_statuses()
            assert not any("prediction store" in w for w in one.warnings(statuses))
            _unreadable(one.store, tmp_path)

            view = await one.view()  # what GET /v1/rollout answers: the state is in memory
            assert view.mode == "shadow" and view.state["shadow_sample"] == 0.5 and view.events == []
            assert any("cannot be read" in w and "events are left out" in w for w in view.warnings)

            one.store.retries, one.store.retry_delay_s = 1, 0.01
            one.store.put_prediction(row(1))
            one.store.flush()
            assert one.store.held == 1  # refused, and with no spill file held in memory
            (refusing,) = [w for w in one.warnings(statuses) if "refuses writes" in w]
            assert "1 rows held in memory" in refusing and "sqlite:///" in refusing
            assert refusing in (await one.view()).warnings

            one.store.engine.dispose()
            one.store.engine = two.store.engine  # the database is back
            one.store.flush()
            assert one.store.held == 0 and not any("prediction store" in w for w in one.warnings(statuses))
            assert [e["action"] for e in (await one.view()).events] == ["shadow"]

    asyncio.run(scenario())


async def owed_after_a_safety_rollback(one: Gateway, two: Gateway, bundle_dirs: dict[str, Path]) -> None:
    """A registry with v1 champion and v2 challenger; replica two auto-promotes v2 at the canary's end while replica
    one saw it fail, and one's stop rolls that back while the registry is down: one owes the aliases. The registry
    answers again afterwards."""
    from tests.support.serving import register_bundles

    register_bundles(one.settings, bundle_dirs)
    for g in (one, two):
        _serving(g, V1, V2, source="registry")
    t0 = await promoted_by_two_while_one_saw_it_fail(one, two)
    registry = one.settings.mlflow.tracking_uri
    one.settings.mlflow.tracking_uri = f"http://127.0.0.1:{free_port()}"  # nobody answers there
    assert [e.action for e in await one.advance(t0 + 61)] == ["rollback"] and one._aliases_owed is not None
    one.settings.mlflow.tracking_uri = registry


def third_version(settings: Settings, bundle_dirs: dict[str, Path], alias: str) -> None:
    """What a training run does: register version 3 and give it `alias`."""
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client
    from pyrocast.registry.models import register_bundle, set_alias

    client = get_client(settings)
    run = client.create_run(ensure_experiment(settings, client))
    assert register_bundle(settings, run.info.run_id, bundle_dirs["1"], client=client).version == "3"
    set_alias(settings, alias, "3", client)


def _serving(g: Gateway, a: ModelRef, b: ModelRef, source: str = "folder") -> None:
    """What the two classifiers report in /model/info (as the probe last read it)."""
    for slot, ref in (("a", a), ("b", b)):
        g.backends[slot].info = {"name": ref.name, "version": ref.version, "source": source}
    g._assign_roles()


def test_a_postponed_auto_promotion_leaves_the_guardrails_judging(tmp_path: Path) -> None:
    """A canary complete with auto-promotion while the registry refuses to move the aliases stays at its last step;
    its guardrails still judge the challenger meanwhile (deciding the promotion emptied the windows every tick)."""
    from pyrocast.serving.rollout import Guardrails
    from tests.support.mlflow_db import seed_mlflow_db

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            seed_mlflow_db(one.settings)  # a registry where neither version exists: moving an alias fails
            _serving(one, V1, V2, source="registry")
            strict = Guardrails(max_error_rate=0.1, min_requests=5, window=10)
            plan = CanaryPlan(steps=[1.0], step_seconds=10, auto_promote=True, guardrails=strict)
            t0 = await started_canary(one, two, plan)
            outcomes = []
            for i in range(6):
                one.controller.record("challenger", False, None)
                outcomes.append([e.action for e in await one.advance(t0 + 11 + i)])
            assert outcomes[:4] == [[]] * 4  # the promotion postponed, then 5 failures judged
            assert outcomes[4] == ["guardrail-stop"] and one.controller.state.mode == "champion"
            assert one.controller.state.champion == V1
            assert [e["action"] for e in one.store.events()][:2] == ["guardrail-stop", "canary"]

    asyncio.run(scenario())


def test_a_request_stops_a_canary_but_never_promotes_or_waits_for_another_change(tmp_path: Path) -> None:
    """After a challenger call the gateway judges the guardrails at once; a completion's auto-promotion (moving the
    registry aliases) is left to the tick, and a change in progress is not waited for."""
    from pyrocast.serving.rollout import Guardrails

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            plan = CanaryPlan(steps=[1.0], step_seconds=0.01, auto_promote=True, guardrails=strict)
            await started_canary(one, two, plan)
            await asyncio.sleep(0.05)  # complete by the clock
            await one._check_guardrails()
            await asyncio.gather(*one._background)
            assert one.controller.state.mode == "canary" and one.store.events(1)[0]["action"] == "canary"
            judged(one)
            assert [e.action for e in await one.advance()] == ["promote"]  # the tick's

            await one._after_change(one.controller.start_canary(CanaryPlan(steps=[0.5], guardrails=strict)))
            for _ in range(5):
                one.controller.record("challenger", False, None)
            async with one._rollout_lock:  # an operator's change, or the tick, in progress
                for _ in range(3):  # requests answered meanwhile: none waits, one check is queued
                    await asyncio.wait_for(one._check_guardrails(), 0.1)
                assert len(one._background) == 1
                await asyncio.sleep(0.05)
                assert one.controller.state.mode == "canary"
            await asyncio.gather(*one._background)  # the check, once the change is done
            assert one.controller.state.mode == "champion" and one.store.events(1)[0]["action"] == "guardrail-stop"

    asyncio.run(scenario())


def test_rolling_back_to_a_version_no_classifier_serves_is_refused(tmp_path: Path) -> None:
    """Promote v2, give the challenger's service v3, roll back: v1 is served by neither classifier, so the rollback
    is refused (409) rather than recording a champion nobody answers for."""
    from pyrocast.serving.rollout import RolloutError

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, _):
            with _Classifier("1") as a, _Classifier("2") as b:  # they answer: the promotion may go to b
                one.backends["a"].url, one.backends["b"].url = a.base, b.base
                await one.refresh_backends()
                await one.change("promote", None)
                assert one.controller.state.champion == V2 and one.controller.state.previous_champion == V1
                a.version = "3"
                try:
                    await one.change("rollback", None)
                except RolloutError as exc:
                    assert "cannot rollback to m v1: neither classifier serves it" in exc.message, exc.message
                    assert "start a classifier for v1" in (exc.hint or "")
                else:
                    raise AssertionError("a rollback to a version nobody serves was made")
            st = one.controller.state
            assert (st.champion, st.previous_champion) == (V2, V1) and one.roles["champion"] == "b"
            assert one.store.events(1)[0]["action"] == "promote"

    asyncio.run(scenario())


def test_a_guardrail_stop_not_yet_recorded_holds_across_a_gateway_restart(tmp_path: Path) -> None:
    """The store refuses writes, a guardrail stops the canary, the gateway restarts before the store is back: the
    new process must not resume the stopped canary from the store's last recorded state."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await stop_held_unrecorded(one, two)

            again = Gateway(one.settings, PredictionStore(one.store.url))  # the restarted process
            try:
                _refusing(again.store)
                again.controller.set_models(V1, V2)
                await again._resume()
                assert again.controller.state.mode == "champion" and again.controller.share() == 0.0
                assert "error rate" in (again.controller.state.stopped_reason or "")
                assert again.metrics.registry.get_sample_value("pyrocast_rollout_unrecorded_stop") == 1.0
                again.store.engine.dispose()
                again.store.engine = two.store.engine  # the database is back
                await again.advance()
                assert again.store.events(1)[0]["action"] == "guardrail-stop"
                assert not again._stop_file.exists()
                assert await two.follow_store() and two.controller.state.mode == "champion"
            finally:
                await again.client.aclose()
                again.store.close()

    asyncio.run(scenario())


class _Classifier(ThreadedServer):
    """A classifier as the gateway's probe sees it: /readyz, and /model/info with a version that can change (its
    service restarted on another version)."""

    def __init__(self, version: str, ready: bool = True) -> None:
        super().__init__()
        self.version = version
        self.ready = ready  # False: /readyz answers 503 (loading, or broken)

    def start(self) -> _Classifier:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b""
                if self.path == "/model/info":
                    body = json.dumps({"name": "m", "version": server.version, "source": "folder"}).encode()
                ok = self.path == "/model/info" or (self.path == "/readyz" and server.ready)
                self.send_response(200 if ok else 503 if self.path == "/readyz" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return self._launch(Handler)  # type: ignore[no-any-return]


def test_a_challenger_given_another_version_mid_canary_stops_it_on_every_replica(tmp_path: Path) -> None:
    """The challenger's service restarted on v3 during a canary of v2: stopped (v3 would join at v2's step). A new
    canary of v3 started through one replica is not stopped by another whose last probe still saw v2."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            with _Classifier("2") as challenger:
                for g in (one, two):
                    g.backends["b"].url = challenger.base
                    await g.refresh_backends()
                await started_canary(one, two, CanaryPlan(steps=[0.5, 1.0], auto_promote=True))
                await one.refresh_backends()
                assert await one.advance() == []  # probed again, the same version
                challenger.version = "3"
                await one.refresh_backends()
                (ev,) = await one.advance()
                assert ev.action == "guardrail-stop" and "serves m v3 now, not m v2" in (ev.reason or "")
                assert one.controller.state.mode == "champion" and one.store.events(1)[0]["action"] == "guardrail-stop"
                assert await two.follow_store() and two.controller.state.mode == "champion"

                await one.change("canary", CanaryPlan(steps=[0.5]))  # the operator tests v3 now
                assert await two.follow_store() and two.controller.state.mode == "canary"
                assert two.backends["b"].ref == ModelRef(name="m", version="2")  # its last probe, before v3
                await two.refresh_backends()
                assert await two.advance() == [] and two.controller.state.mode == "canary"

                # A gateway started while the saved canary is for v3 and the service serves v4: stopped too.
                challenger.version = "4"
                again = Gateway(one.settings, PredictionStore(one.store.url))
                try:
                    again.backends["b"].url = challenger.base
                    await asyncio.gather(*(b.probe() for b in again._probed()))
                    await again._resume()
                    (ev,) = await again.advance()
                    assert ev.action == "guardrail-stop" and "serves m v4 now, not m v3" in (ev.reason or "")
                finally:
                    await again.client.aclose()
                    again.store.close()

    asyncio.run(scenario())


def test_a_guardrail_check_is_never_dropped_with_the_background_budget_full(tmp_path: Path) -> None:
    """256 shadow and comparison calls in flight fill the background budget: the request path's guardrail check
    still runs (it was dropped, and its pending flag then kept every later check from being queued)."""
    from pyrocast.serving.rollout import Guardrails
    from pyrocast.serving.routing import MAX_BACKGROUND

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            await started_canary(one, two, CanaryPlan(steps=[0.5], guardrails=strict))
            never = asyncio.Event()
            busy = [asyncio.create_task(never.wait()) for _ in range(MAX_BACKGROUND)]
            one._background.update(busy)
            try:
                for _ in range(5):
                    one.controller.record("challenger", False, None)
                await one._check_guardrails()
                await asyncio.wait_for(asyncio.gather(*(t for t in one._background if t not in busy)), 5)
                assert one.controller.state.mode == "champion" and not one._guardrail_check_due
            finally:
                for t in busy:
                    t.cancel()

    asyncio.run(scenario())


def test_a_canary_step_resumes_for_its_whole_time_after_every_gateway_was_down(tmp_path: Path) -> None:
    """A canary on its last step when the gateways stopped, started again long after: the step serves its time
    again (counted, the first tick would have completed and auto-promoted a canary no traffic judged)."""
    import time

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=60, auto_promote=True))
            saved = one.controller.state.model_dump(mode="json")
            saved["canary_started_at"] = saved["canary_step_since"] = time.time() - 600  # down for ten minutes
            one.store.add_event("canary", "canary", saved)
            again = Gateway(one.settings, PredictionStore(one.store.url))
            try:
                for slot in ("a", "b"):  # the same classifiers, answering
                    again.backends[slot].url = one.backends[slot].url
                await again.refresh_backends()
                again.controller.set_models(V1, V2)
                await again._resume()
                assert again.controller.state.mode == "canary"
                judged(again)
                assert await again.advance() == []  # not complete, not promoted
                assert await again.advance(time.time() + 61) != []
            finally:
                await again.client.aclose()
                again.store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("auto_promote", [False, True])
def test_a_guardrail_stop_and_a_completion_decided_at_once_by_two_replicas_leave_one_of_them(
    tmp_path: Path, auto_promote: bool
) -> None:
    """Replica one stops the canary on a guardrail while replica two, which has not read that stop yet, completes
    it: one change out of a plan's step is recorded, not both. Both were (each claim named its own action), the
    newer completion put the canary back for every replica, and the stop's claim, used up, never let it stop again."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            plan = CanaryPlan(steps=[0.1, 0.5], step_seconds=60, auto_promote=auto_promote)
            t0 = await started_canary(one, two, plan)
            judged(one)
            assert [e.action for e in await one.advance(t0 + 61)] == ["canary-step"]
            assert await two.follow_store() and two.controller.state.canary_step == 1
            judged(two)  # replica two saw its step answered well: due, it decides the completion
            for _ in range(30):  # replica one has seen the challenger fail
                one.controller.record("challenger", False, None)
            assert [e.action for e in await one.advance(t0 + 121)] == ["guardrail-stop"]
            assert await two.advance(t0 + 121) == []  # its completion (promotion) lost to the stop; it adopts the stop
            for g in (one, two):
                await g.follow_store()
                st = g.controller.state
                assert st.mode == "champion" and st.champion == V1, (st, g.store.events()[-3:])
            actions = [e["action"] for e in one.store.events()]
            assert "guardrail-stop" in actions and not {"canary-complete", "promote"} & set(actions), actions

    asyncio.run(scenario())


def test_a_guardrail_stop_takes_effect_on_routing_while_the_store_is_slow_to_record_it(tmp_path: Path) -> None:
    """A store that takes its time (another connection holds the write lock: up to the 30 s lock timeout): the stop
    is recorded once it can be, but nobody is sent to the failing challenger meanwhile (they were, for ~33 s)."""
    import sqlite3

    from pyrocast.serving.rollout import Guardrails

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            t0 = await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=600, guardrails=strict))
            assert one.route("someone").role == "challenger"
            for _ in range(5):
                one.controller.record("challenger", False, None)
            holder = sqlite3.connect(one.store.url.removeprefix("sqlite:///"), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # the write lock, as an operator's open transaction holds it
            try:
                deciding = asyncio.ensure_future(one.advance(t0 + 1))
                await asyncio.sleep(0.5)
                assert not deciding.done(), "the store took the record at once: nothing was checked"
                assert one.route("someone").role == "champion"
            finally:
                holder.rollback()
                holder.close()
            assert [e.action for e in await deciding] == ["guardrail-stop"]
            assert one.controller.state.mode == "champion" and one.route("someone").role == "champion"

    asyncio.run(scenario())


def test_the_team_is_told_once_when_a_guardrail_stops_a_canary(tmp_path: Path) -> None:
    """A guardrail stop is notified (PYROCAST_NOTIFY_URLS) by the replica that recorded it, once, and counted in
    pyrocast_rollout_events_total; before, only training ever notified anyone."""
    from prometheus_client import generate_latest
    from pydantic import SecretStr

    from pyrocast.serving.rollout import Guardrails
    from tests.support.webhook import WebhookReceiver

    async def scenario(hook: WebhookReceiver) -> None:
        async with replicas(tmp_path) as (one, two):
            for g in (one, two):
                g.settings = g.settings.model_copy(
                    update={"notify_urls": SecretStr(f"json://127.0.0.1:{hook.port}/hook")}
                )
            strict = Guardrails(max_error_rate=0.1, min_requests=5)
            t0 = await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=600, guardrails=strict))
            for g in (one, two):
                for _ in range(5):
                    g.controller.record("challenger", False, None)  # both see the challenger fail
            decided = await asyncio.gather(one.advance(t0 + 1), two.advance(t0 + 1))
            assert sorted(len(d) for d in decided) == [0, 1]
            await asyncio.gather(*one._notifications, *two._notifications)
            counts = [
                'pyrocast_rollout_events_total{action="guardrail-stop"} 1.0'
                in generate_latest(g.metrics.registry).decode()
                for g in (one, two)
            ]
            assert sorted(counts) == [False, True]

    with WebhookReceiver() as hook:
        asyncio.run(scenario(hook))
        (sent,) = hook.wait_for(1)
        assert "guardrail-stop" in json.dumps(sent.body) and "error rate" in json.dumps(sent.body), sent.body
        time.sleep(0.3)
        assert len(hook.received) == 1, hook.received


def test_a_canary_does_not_auto_promote_a_challenger_that_does_not_answer(tmp_path: Path) -> None:
    """Its last step judged, the canary completes: the promotion waits while the challenger's classifier fails its
    probes (it would answer everyone: every prediction a 503), as a manual promote is refused."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            t0 = await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=60, auto_promote=True))
            judged(one)
            with _Classifier("2", ready=False) as broken:
                one.backends["b"].url = broken.base
                await one.refresh_backends()
                assert await one.advance(t0 + 61) == []
                assert one.controller.state.mode == "canary" and one.controller.state.champion == V1
                broken.ready = True
                await one.refresh_backends()
                one._promote_retry_at = 0.0  # the 30 s wait before trying again, skipped
                assert [e.action for e in await one.advance(t0 + 62)] == ["promote"]

    asyncio.run(scenario())


def test_a_guardrail_stop_that_loses_to_another_replicas_promotion_rolls_it_back(tmp_path: Path) -> None:
    """Both at the canary's end: replica two, which saw the challenger answer well, records the auto-promotion a
    moment before replica one, which saw it fail, records its stop. One claim per state: the stop loses, and it
    used to be dropped, leaving the failing challenger champion for everyone. Now it rolls the promotion back."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            t0 = await promoted_by_two_while_one_saw_it_fail(one, two)
            assert [e.action for e in await one.advance(t0 + 61)] == ["rollback"]
            for g in (one, two):
                await g.follow_store()
                assert g.controller.state.champion == V1 and g.controller.state.mode == "champion"
            actions = [e["action"] for e in one.store.events()]
            assert actions[:3] == ["rollback", "promote", "canary"], actions
            assert "as another gateway promoted it" in (one.store.events(1)[0]["reason"] or "")

    asyncio.run(scenario())


def test_a_safety_rollback_goes_ahead_with_the_registry_down_and_its_aliases_follow_when_it_is_back(
    tmp_path: Path, bundle_dirs: dict[str, Path]
) -> None:
    """The overruled promotion above, with the registry down when the stop's rollback is made: the rollback used to
    be refused (the failing challenger answered everyone), and aliases a gateway could not move were left for
    someone to notice. Now routing rolls back, the aliases are owed (health, gauge, a file), a restarted gateway
    does not take the stale `champion` alias for a decision, and the tick moves them once the registry answers."""
    from pyrocast.registry.models import aliases
    from tests.support.serving import register_bundles

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            register_bundles(one.settings, bundle_dirs)  # champion -> 1, challenger -> 2
            for g in (one, two):
                _serving(g, V1, V2, source="registry")
            t0 = await promoted_by_two_while_one_saw_it_fail(one, two)
            assert aliases(one.settings) == {"champion": "2", "challenger": "1"}
            registry = one.settings.mlflow.tracking_uri
            one.settings.mlflow.tracking_uri = f"http://127.0.0.1:{free_port()}"  # nobody answers there
            assert [e.action for e in await one.advance(t0 + 61)] == ["rollback"]
            assert one.controller.state.champion == V1 and one.route("anyone").role == "champion"
            assert "registry aliases not moved yet" in (one.store.events(1)[0]["reason"] or "")
            warning = [w for w in one.warnings(one.backend_statuses()) if "registry aliases" in w]
            assert warning and "does not answer" in warning[0], warning
            assert one.metrics.registry.get_sample_value("pyrocast_rollout_aliases_owed") == 1.0
            await one._pay_aliases()  # not before its time, and not while the registry is down
            one._aliases_retry_at = 0.0
            await one._pay_aliases()
            assert one._aliases_owed is not None

            # A gateway started now reads the rollback and the owed aliases: the registry's `champion` alias (v2) is
            # stale, not a training run's decision to follow.
            one.settings.mlflow.tracking_uri = registry
            three = Gateway(one.settings, PredictionStore(one.settings.store_database_url))
            try:
                for slot in ("a", "b"):
                    three.backends[slot].url = one.backends[slot].url
                await three.refresh_backends()
                _serving(three, V1, V2, source="registry")
                await three._resume()
                assert three.controller.state.champion == V1, "followed a stale alias"
                assert three.metrics.registry.get_sample_value("pyrocast_rollout_aliases_owed") == 1.0
                await three._pay_aliases()
                assert aliases(one.settings) == {"champion": "1", "challenger": "2"}
                assert three._aliases_owed is None and not three.warnings(three.backend_statuses())
                assert three.metrics.registry.get_sample_value("pyrocast_rollout_aliases_owed") == 0.0
                assert not three._aliases_file.exists()
            finally:
                await three.client.aclose()
                three.store.close()

    asyncio.run(scenario())


def test_owed_aliases_never_undo_a_decision_the_registry_took_since(
    tmp_path: Path, bundle_dirs: dict[str, Path]
) -> None:
    """Aliases owed after a safety rollback, then a training run (the registry back) makes a third version champion:
    the owed move would put v1 back over that decision. The debt is dropped once the registry shows a champion that
    is neither the stale one nor the owed one, at a restart and on the tick alike."""
    from pyrocast.registry.models import aliases

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await owed_after_a_safety_rollback(one, two, bundle_dirs)
            third_version(one.settings, bundle_dirs, "champion")  # a training run's decision since
            one._aliases_retry_at = 0.0
            await one._pay_aliases()  # the tick's payment
            assert one._aliases_owed is None and aliases(one.settings)["champion"] == "3"
            assert not one._aliases_file.exists()

    asyncio.run(scenario())


def test_a_replica_with_a_data_directory_of_its_own_takes_up_the_aliases_the_store_records_as_owed(
    tmp_path: Path, bundle_dirs: dict[str, Path]
) -> None:
    """The owed aliases were one gateway's debt, kept in its own data directory: a replica with a directory of its own
    (one store, one registry) that started while they were owed took the stale `champion` alias for a training run's
    decision and made the failing challenger champion again, for itself and, through its start record, for the
    fleet. The rollback's record now says the aliases are owed (`aliases_stale`): such a replica takes up the debt
    while the registry shows the stale version, and follows the registry once it shows the owed one (paid)."""
    from pyrocast.registry.models import aliases, move_aliases
    from tests.support.serving import register_bundles

    async def started_elsewhere(one: Gateway, name: str) -> Gateway:
        own = tmp_path / name
        settings = Settings(
            data_dir=own,
            store_url=one.settings.store_database_url,
            serving=one.settings.serving,
            mlflow=one.settings.mlflow.model_copy(update={"tracking_uri": one.settings.mlflow_tracking_uri}),
        )
        settings.ensure_dirs()
        g = Gateway(settings, PredictionStore(settings.store_database_url))
        for slot in ("a", "b"):
            g.backends[slot].url = one.backends[slot].url
        await g.refresh_backends()
        _serving(g, V1, V2, source="registry")
        await g._resume()
        return g

    async def scenario() -> None:
        async with replicas(tmp_path / "shared") as (one, two):
            register_bundles(one.settings, bundle_dirs)
            for g in (one, two):
                _serving(g, V1, V2, source="registry")
            t0 = await promoted_by_two_while_one_saw_it_fail(one, two)
            registry = one.settings.mlflow_tracking_uri
            one.settings.mlflow.tracking_uri = f"http://127.0.0.1:{free_port()}"
            assert [e.action for e in await one.advance(t0 + 61)] == ["rollback"] and one._aliases_owed is not None
            assert one.store.last_state()["aliases_stale"] == "2"  # recorded with the rollback
            # A replica running on the store takes up the debt with the rollback: the one that owes it may be gone.
            assert await two.follow_store() and two._aliases_owed is not None
            one.settings.mlflow.tracking_uri = registry
            assert aliases(one.settings)["champion"] == "2"  # stale: nobody has paid yet

            three = await started_elsewhere(one, "three")
            try:
                assert three.controller.state.champion == V1, "followed the stale alias"
                assert [e["action"] for e in three.store.events(1)] == ["rollback"], "recorded a start that undoes it"
                assert three._aliases_owed is not None
                assert three.metrics.registry.get_sample_value("pyrocast_rollout_aliases_owed") == 1.0
                await two._pay_aliases()  # one never pays (it died): the replica that followed its rollback does
                assert aliases(one.settings) == {"champion": "1", "challenger": "2"}
                assert two._aliases_owed is None and not two.warnings(two.backend_statuses())
                await three._pay_aliases()  # paid already: the same move again, and settled
                assert aliases(one.settings) == {"champion": "1", "challenger": "2"}
                assert three._aliases_owed is None and not three.warnings(three.backend_statuses())
            finally:
                await three.client.aclose()
                three.store.close()
            # The tick records the settlement: the record stops naming the stale version.
            async with two._rollout_lock:
                await two._tick_rollout()
            assert two.store.events(1)[0]["action"] == "aliases-followed"
            assert two.store.last_state()["aliases_stale"] is None

            # Paid: a replica starting now owes nothing.
            four = await started_elsewhere(one, "four")
            try:
                assert four.controller.state.champion == V1 and four._aliases_owed is None
                assert four.controller.state.aliases_stale is None
                assert not four.warnings(four.backend_statuses())
            finally:
                await four.client.aclose()
                four.store.close()

            # An operator's later move back to v2 (`pyrocast models --alias`) is a decision a starting replica follows:
            # the paid debt, still in the record, moved the aliases back over it.
            move_aliases(one.settings, {"champion": "2", "challenger": "1"})
            five = await started_elsewhere(one, "five")
            try:
                assert five._aliases_owed is None and five.controller.state.champion == V2
                assert aliases(one.settings) == {"champion": "2", "challenger": "1"}
            finally:
                await five.client.aclose()
                five.store.close()

    asyncio.run(scenario())


def test_a_guardrail_stop_not_yet_recorded_is_said_from_the_start_of_a_gateway_that_cannot_read_the_store(
    tmp_path: Path,
) -> None:
    """A stop held while the store refused writes: /healthz said only "the store refuses writes", and a gateway
    restarted while the store could not be read showed no unrecorded stop at all (its gauge 0, the alert cleared,
    the file that holds the stop on disk and "do not delete it while the alert fires"). Both say it now."""

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await stop_held_unrecorded(one, two)
            said = [w for w in one.warnings(one.backend_statuses()) if "guardrail stop" in w]
            assert said and "error rate" in said[0] and "not recorded" in said[0], said

            # Restarted while the store cannot even be read (its PostgreSQL down).
            down = f"postgresql+psycopg://pyrocast@127.0.0.1:{free_port()}/pyrocast"
            again = Gateway(one.settings, PredictionStore(down, emergency_dir=None))
            await again.startup()
            try:
                assert again._state_unread
                again._update_gauges()
                assert again.metrics.registry.get_sample_value("pyrocast_rollout_unrecorded_stop") == 1.0
                said = [w for w in again.warnings(again.backend_statuses()) if "guardrail stop" in w]
                assert said and str(again._stop_file) in said[0] and "do not delete" in said[0], said
            finally:
                await again.shutdown()

    asyncio.run(scenario())


def test_a_postponed_auto_promotion_is_said_in_health_and_a_gauge_until_its_plan_ends(tmp_path: Path) -> None:
    """A complete canary whose auto-promotion the registry refuses holds at its last step: that was one log line,
    while `rollout status` showed a canary at 100% with no warning and no alert. Now /healthz says why it waits and
    `pyrocast_rollout_promotion_postponed` is 1 (alert PyrocastPromotionPostponed), until the plan ends."""
    from tests.support.mlflow_db import seed_mlflow_db

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            seed_mlflow_db(one.settings)  # a registry where neither version exists: moving an alias fails
            _serving(one, V1, V2, source="registry")
            t0 = await started_canary(one, two, CanaryPlan(steps=[1.0], step_seconds=10, auto_promote=True))
            judged(one)
            assert await one.advance(t0 + 11) == [] and one.controller.state.mode == "canary"
            said = [w for w in one.warnings(one.backend_statuses()) if "postponed" in w]
            assert said and "moving the registry aliases failed" in said[0], said
            assert one.metrics.registry.get_sample_value("pyrocast_rollout_promotion_postponed") == 1.0
            await one.change("champion", None)  # the operator ends the plan
            one._update_gauges()
            assert not [w for w in one.warnings(one.backend_statuses()) if "postponed" in w]
            assert one.metrics.registry.get_sample_value("pyrocast_rollout_promotion_postponed") == 0.0

    asyncio.run(scenario())


def test_paying_owed_aliases_leaves_a_challenger_a_training_run_chose_since(
    tmp_path: Path, bundle_dirs: dict[str, Path]
) -> None:
    """Aliases owed after a safety rollback, then a training run makes a third version challenger (the champion
    alias still the stale one): the payment moved both aliases and put the failing version back as challenger over
    that decision. The champion alone moves now."""
    from pyrocast.registry.models import aliases

    async def scenario() -> None:
        async with replicas(tmp_path) as (one, two):
            await owed_after_a_safety_rollback(one, two, bundle_dirs)
            third_version(one.settings, bundle_dirs, "challenger")  # the training run's verdict: a challenger
            one._aliases_retry_at = 0.0
            await one._pay_aliases()
            assert aliases(one.settings) == {"champion": "1", "challenger": "3"}
            assert one._aliases_owed is None

    asyncio.run(scenario())
