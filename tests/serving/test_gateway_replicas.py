"""Gateway replicas on one store: a change made through one is adopted by the others, without resetting the
guardrail windows they judge a running canary on (in-process gateways over a real SQLite store)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from pyrocast.serving.gateway import Gateway
from pyrocast.serving.rollout import CanaryPlan, Event, ModelRef
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import Settings

V1, V2 = ModelRef(name="m", version="1"), ModelRef(name="m", version="2")


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways on one SQLite store, both serving v1 as champion and v2 as challenger."""
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    one, two = (Gateway(settings, PredictionStore(settings.store_database_url)) for _ in range(2))
    try:
        for g in (one, two):
            g.controller.set_models(V1, V2)
        yield one, two
    finally:
        for g in (one, two):
            await g.client.aclose()
            g.store.close()


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
            plan = CanaryPlan(steps=[0.1, 0.5], step_seconds=60, auto_promote=True)
            await one._after_change(one.controller.start_canary(plan))
            assert await two.follow_store()
            t0 = one.controller.state.canary_started_at
            assert t0 is not None

            # Both replicas see the ramp's next step at the same tick: one records it, the other adopts it.
            recorded = await asyncio.gather(one.advance(t0 + 61), two.advance(t0 + 61))
            assert sorted(len(r) for r in recorded) == [0, 1]
            assert [e["action"] for e in one.store.events()].count("canary-step") == 1
            for g in (one, two):
                await g.follow_store()
                assert g.controller.state.mode == "canary" and g.controller.state.canary_step == 1

            # The canary completes for both at once: one promotion, and both end with v2 as the champion.
            recorded = await asyncio.gather(one.advance(t0 + 121), two.advance(t0 + 121))
            assert sorted(len(r) for r in recorded) == [0, 1]
            assert [e["action"] for e in one.store.events()].count("promote") == 1
            for g in (one, two):
                await g.follow_store()
                assert g.controller.state.mode == "champion" and g.controller.state.champion == V2
            assert await one.advance(t0 + 200) == [] and await two.advance(t0 + 200) == []

    asyncio.run(scenario())
