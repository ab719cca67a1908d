"""Rollout logic without HTTP: sticky assignment, weights, canary ramp, guardrails, promote and rollback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pyrocast.serving.rollout import (
    ABPlan,
    CanaryPlan,
    Guardrails,
    ModelRef,
    RolloutController,
    RolloutError,
    RolloutState,
    bucket,
    check_guardrails,
    route,
    window_of_calls,
)

V1, V2 = ModelRef(name="m", version="1"), ModelRef(name="m", version="2")


def controller() -> RolloutController:
    c = RolloutController()
    c.set_models(V1, V2)
    return c


def judged(c: RolloutController) -> RolloutController:
    """The challenger answered (well) as many calls as the canary's guardrails need to judge its step."""
    needs = c.state.canary.guardrails.min_requests if c.state.canary else Guardrails().min_requests
    for _ in range(needs):
        c.record("challenger", True, 5.0)
        c.record_agreement(True)
    return c


def test_bucket_is_stable_uniform_and_salted() -> None:
    assert bucket("client-7", "s") == bucket("client-7", "s")  # same on every call (and process: sha256)
    assert bucket("client-7", "s") != bucket("client-7", "t")
    values = [bucket(f"c{i}", "s") for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(v < 0.5 for v in values) / len(values) < 0.55


def test_ab_assignment_is_sticky_and_respects_weights() -> None:
    c = controller()
    c.start_ab(ABPlan(champion=70, challenger=30))
    first = {f"client-{i}": c.route(f"client-{i}").role for i in range(200)}
    for _ in range(3):  # same client, same variant, every time
        assert {k: c.route(k).role for k in first} == first
    share = sum(r == "challenger" for r in first.values()) / len(first)
    assert 0.2 <= share <= 0.4, share


def test_new_experiment_draws_new_clients() -> None:
    c = controller()
    c.start_ab(ABPlan(champion=1, challenger=1))
    a = [c.route(f"k{i}").role for i in range(200)]
    c.champion_only("done")
    c.start_ab(ABPlan(champion=1, challenger=1))
    b = [c.route(f"k{i}").role for i in range(200)]
    assert a != b  # a fresh salt reshuffles who is in which arm


def test_resizing_a_running_ab_test_moves_clients_one_way_only() -> None:
    """Raising the challenger's share only adds clients to it, lowering it only takes some back, and setting
    the same weights again changes nobody's side."""
    c = controller()
    keys = [f"k{i}" for i in range(400)]
    c.start_ab(ABPlan(champion=8, challenger=2))
    at20 = {k for k in keys if c.route(k).role == "challenger"}
    ev = c.start_ab(ABPlan(champion=7, challenger=3))
    at30 = {k for k in keys if c.route(k).role == "challenger"}
    assert at20 < at30 and len(at30) > len(at20)  # nobody left the challenger, some joined
    assert ev.reason is not None and "was 20%" in ev.reason
    c.start_ab(ABPlan(champion=7, challenger=3))
    assert {k for k in keys if c.route(k).role == "challenger"} == at30
    c.start_ab(ABPlan(champion=9, challenger=1))
    assert {k for k in keys if c.route(k).role == "challenger"} < at20


def test_canary_ramps_on_schedule_and_only_adds_clients() -> None:
    plan = CanaryPlan(steps=[0.05, 0.25, 0.5, 1.0], step_seconds=10)
    c = controller()
    c.start_canary(plan, now=0.0)
    clients = [f"c{i}" for i in range(400)]
    on_challenger: set[str] = set()
    for t, share in ((1, 0.05), (11, 0.25), (21, 0.5), (31, 1.0)):
        judged(c).tick(t)  # the step the gateway records, and then routes on
        assert c.share(t) == share
        now = {k for k in clients if c.route(k, t).role == "challenger"}
        assert on_challenger <= now  # a ramp never moves a client back to the champion
        assert abs(len(now) / len(clients) - share) < 0.08
        on_challenger = now
    assert all(c.route(k, 31).compare for k in clients)  # canary requests are compared with the champion


def test_canary_tick_reports_steps_and_completion() -> None:
    c = controller()
    c.start_canary(CanaryPlan(steps=[0.1, 1.0], step_seconds=5), now=0.0)
    assert c.tick(1.0) == []
    assert [e.action for e in judged(c).tick(5.5)] == ["canary-step"]
    assert [e.action for e in judged(c).tick(10.5)] == ["canary-complete"]
    assert c.state.mode == "canary" and c.share(11) == 1.0


def test_canary_auto_promote_at_the_end() -> None:
    c = controller()
    c.start_canary(CanaryPlan(steps=[0.5], step_seconds=1, auto_promote=True), now=0.0)
    assert [e.action for e in judged(c).tick(2.0)] == ["promote"]
    assert c.state.champion == V2 and c.state.previous_champion == V1 and c.state.mode == "champion"


@pytest.mark.parametrize(
    ("stats", "fragment"),
    [
        ({"requests": 50, "error_rate": 0.2, "p95_ms": 10.0, "compared": 0, "disagreement": 0.0}, "error rate"),
        ({"requests": 50, "error_rate": 0.0, "p95_ms": 5000.0, "compared": 0, "disagreement": 0.0}, "p95 latency"),
        ({"requests": 50, "error_rate": 0.0, "p95_ms": 10.0, "compared": 50, "disagreement": 0.9}, "disagrees"),
    ],
)
def test_guardrails_name_what_broke(stats: dict, fragment: str) -> None:
    reason = check_guardrails(Guardrails(), stats)
    assert reason is not None and fragment in reason


def test_guardrails_wait_for_enough_observations() -> None:
    few = {"requests": 5, "error_rate": 1.0, "p95_ms": 9e9, "compared": 5, "disagreement": 1.0}
    assert check_guardrails(Guardrails(min_requests=20), few) is None


def test_canary_stops_on_guardrail_back_to_champion_with_reason() -> None:
    c = controller()
    c.start_canary(CanaryPlan(guardrails=Guardrails(min_requests=10)), now=0.0)
    for _ in range(10):
        c.record("challenger", True, 5.0)
        c.record_agreement(False)
    events = c.tick(1.0)
    assert [e.action for e in events] == ["guardrail-stop"]
    assert c.state.mode == "champion" and "disagrees" in (c.state.stopped_reason or "")
    assert c.route("anyone", 2.0).role == "champion"


def test_canary_stops_on_what_all_gateways_saw_when_this_one_saw_too_little() -> None:
    c = controller()
    c.start_canary(CanaryPlan(guardrails=Guardrails(min_requests=10)), now=0.0)
    for _ in range(4):  # this replica's share of the traffic: under min_requests
        c.record("challenger", False, None)
    assert c.tick(1.0) == []
    # Newest first, as the store reads them: 12 calls through all gateways, 3 failed, 9 compared of which 8 differ.
    calls = [{"error": "HTTP 503: down", "latency_ms": None, "label": None, "champion_label": None}] * 3 + [
        {"error": None, "latency_ms": 5.0 + i, "label": "nowildfire", "champion_label": "wildfire" if i else None}
        for i in range(9)
    ]
    c.fleet_stats = window_of_calls(calls, 200).summary()
    assert c.fleet_stats["requests"] == 12 and c.fleet_stats["errors"] == 3 and c.fleet_stats["compared"] == 8
    assert c.snapshot(1.0)["stats"]["challenger, all gateways"] == c.fleet_stats
    events = c.tick(2.0)
    assert [e.action for e in events] == ["guardrail-stop"]
    assert "error rate 25.0%" in (c.state.stopped_reason or "") and "across all gateways" in c.state.stopped_reason
    assert c.fleet_stats is None  # a new mode starts new windows


def test_a_window_of_calls_keeps_the_newest() -> None:
    calls = [{"error": None, "latency_ms": float(i), "label": "wildfire", "champion_label": None} for i in range(30)]
    w = window_of_calls(calls, 10)  # newest first: latencies 0..9 are the newest ten
    assert w.summary()["requests"] == 10 and w.summary()["p95_ms"] == 8.55  # p95 of 0..9, as every page says it


def test_shadow_routes_to_champion_with_copies() -> None:
    c = controller()
    c.start_shadow(1.0)
    r = c.route("x")
    assert r.role == "champion" and r.shadow
    c.start_shadow(0.5)
    copies = sum(c.route(f"k{i}").shadow for i in range(400))
    assert 150 < copies < 250


def test_promote_then_rollback_restores_the_champion() -> None:
    c = controller()
    c.start_ab(ABPlan(champion=1, challenger=1))
    ev = c.promote()
    assert ev.action == "promote" and c.state.mode == "champion"
    assert (c.state.champion, c.state.challenger, c.state.previous_champion) == (V2, V1, V1)
    ev = c.rollback()
    assert ev.action == "rollback"
    assert (c.state.champion, c.state.challenger, c.state.previous_champion) == (V1, V2, None)


def test_rollback_without_previous_champion() -> None:
    c = controller()
    with pytest.raises(RolloutError, match="nothing to roll back"):
        c.rollback()
    c.start_canary(CanaryPlan())
    assert c.rollback().action == "champion-only"  # stops the experiment instead


def test_experiments_need_a_challenger() -> None:
    c = RolloutController()
    c.set_models(V1, None)
    starts = (
        lambda: c.start_ab(ABPlan(champion=1, challenger=1)),
        lambda: c.start_canary(CanaryPlan()),
        c.start_shadow,
        c.promote,
    )
    for start in starts:
        with pytest.raises(RolloutError, match="no challenger"):
            start()


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": []},
        {"steps": [0.5, 0.25]},
        {"steps": [0.0, 1.0]},
        {"steps": [0.5, 1.5]},
        {"step_seconds": 0},
        {"step_seconds": -5},
        {"guardrails": {"max_error_rate": 2}},
        {"guardrails": {"min_requests": 0}},
    ],
)
def test_bad_canary_plans_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CanaryPlan.model_validate(bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"champion": 0, "challenger": 0},
        {"champion": -1, "challenger": 1},
        {"champion": 1},
        {"champion": "x", "challenger": 1},
    ],
)
def test_bad_ab_weights_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ABPlan.model_validate(bad)


def test_state_round_trips_through_json() -> None:
    c = controller()
    c.start_canary(CanaryPlan(steps=[0.2, 1.0]), now=50.0)
    again = RolloutState.model_validate_json(c.state.model_dump_json())
    assert again == c.state
    assert route(again, "k", 51.0) == route(c.state, "k", 51.0)


def test_a_canary_routes_on_its_recorded_step_and_each_step_serves_its_time() -> None:
    """A step takes effect once the gateway records it (`tick` moves it): while the store cannot record it, the
    canary does not ramp on its own; afterwards each step still serves `step_seconds` from when it took effect, so
    an outage longer than the plan neither skips steps nor completes (and auto-promotes) an unjudged canary."""
    c = controller()
    plan = CanaryPlan(steps=[0.1, 0.5, 1.0], step_seconds=10, auto_promote=True)
    c.start_canary(plan, now=0.0)
    assert c.share(95.0) == 0.1  # the clock says the plan is over: nothing was recorded
    assert [e.action for e in judged(c).tick(95.0)] == ["canary-step"]  # one step, not the rest of the plan
    assert c.share(95.0) == 0.5 and c.snapshot(95.0)["canary_next_step_at"] == 105.0
    assert judged(c).tick(104.0) == []
    assert [e.action for e in c.tick(105.0)] == ["canary-step"] and c.share(105.0) == 1.0
    assert judged(c).tick(114.0) == [] and c.state.mode == "canary"
    assert [e.action for e in c.tick(115.0)] == ["promote"]


def test_outcomes_of_calls_that_outlive_their_plan_are_not_judged_by_the_next_one() -> None:
    """A shadow copy still running when a canary starts reports to the shadow plan's windows, not the canary's."""
    c = controller()
    c.start_shadow(1.0)
    routed_under = c.windows
    c.start_canary(CanaryPlan(guardrails=Guardrails(min_requests=10)), now=0.0)
    for _ in range(10):
        c.record("challenger", False, None, routed_under)
        c.record_agreement(False, routed_under)
    assert c.windows["challenger"].summary()["requests"] == 0
    assert c.tick(1.0) == [] and c.state.mode == "canary"


def test_guardrails_that_could_never_judge_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"min_requests \(100\) must not exceed window \(50\)"):
        Guardrails(window=50, min_requests=100)
    assert Guardrails(window=50, min_requests=50).min_requests == 50


V3 = ModelRef(name="m", version="3")


@pytest.mark.parametrize("mode", ["ab", "canary", "shadow"])
def test_a_challenger_replaced_mid_experiment_stops_the_experiment(mode: str) -> None:
    """The challenger's service given another version during an experiment: the new version must not inherit the
    old one's canary step, auto-promotion or share; the next tick stops the experiment, saying why."""
    c = controller()
    {"ab": lambda: c.start_ab(ABPlan(champion=1, challenger=1)), "canary": lambda: c.start_canary(CanaryPlan()),
     "shadow": lambda: c.start_shadow(1.0)}[mode]()  # fmt: skip
    c.check_challenger(V2)  # probed again, the same version: nothing to say
    assert c.tick() == []
    c.set_models(V1, V3)
    c.check_challenger(V3)  # the gateway's probe found the challenger's service serving v3
    (ev,) = c.tick()
    assert ev.action == "guardrail-stop" and c.state.mode == "champion"
    assert "serves m v3 now, not m v2" in (ev.reason or "") and "start it again to test m v3" in (ev.reason or "")
    # An experiment started for the version served now is not stopped.
    c.start_ab(ABPlan(champion=1, challenger=1))
    assert c.tick() == [] and c.state.mode == "ab"


def test_an_experiment_started_right_after_a_replacement_is_not_stopped_for_it() -> None:
    c = controller()
    c.start_canary(CanaryPlan())
    c.set_models(V1, V3)
    c.check_challenger(V3)  # the gateway's probe before an operator's change
    c.start_shadow(1.0)  # the operator starts shadow traffic for v3
    assert c.tick() == [] and c.state.mode == "shadow"


def test_a_state_stored_before_a_rule_was_added_still_loads() -> None:
    """Guardrails with min_requests over window were accepted before: a canary saved so is taken up, not dropped."""
    from pyrocast.serving.rollout import stored_state

    c = controller()
    c.start_canary(CanaryPlan(guardrails=Guardrails(window=300, min_requests=250)))
    saved = c.state.model_dump(mode="json")
    saved["canary"]["guardrails"]["window"] = 50  # as an older version could store it
    with pytest.raises(ValidationError, match="min_requests"):
        RolloutState.model_validate(saved)  # what a new request may not ask for
    st = stored_state(saved)
    assert st.mode == "canary" and st.canary is not None and st.canary.guardrails.window == 50
    del saved["canary_step_since"]  # a state stored before the field: its step took effect when the clock said
    assert stored_state(saved).canary_step_since is None


def test_resizing_an_ab_test_whose_challenger_was_replaced_starts_a_new_test() -> None:
    """The clients of a test of v2 are not v3's to keep: resized after the challenger's service changed version, the
    test starts anew (a new salt), and says so."""
    c = controller()
    c.start_ab(ABPlan(champion=1, challenger=1))
    salt = c.state.salt
    c.start_ab(ABPlan(champion=1, challenger=3))  # a resize of the same test keeps its clients
    assert c.state.salt == salt
    c.set_models(V1, V3)
    c.check_challenger(V3)
    ev = c.start_ab(ABPlan(champion=1, challenger=1))
    assert c.state.salt != salt and "a new test of m v3" in (ev.reason or "")
    assert c.state.experiment_challenger == V3 and c.tick() == []


def test_a_canary_step_ends_only_once_its_challenger_calls_could_be_judged() -> None:
    """On time alone a canary with no challenger traffic ramped to 100% and completed (or auto-promoted) "without
    breaking a guardrail": a step now waits for `min_requests` calls of its own, here or through all gateways."""
    c = controller()
    c.start_canary(CanaryPlan(steps=[0.1, 1.0], step_seconds=5, auto_promote=True), now=0.0)
    assert c.tick(60.0) == [] and c.state.canary_step == 0  # an hour of nothing: the step goes on
    snap = c.snapshot(60.0)
    assert (snap["canary_step_calls"], snap["canary_step_needs"]) == (0, 20)
    for _ in range(19):
        c.record("challenger", True, 5.0)
    assert c.tick(61.0) == []
    c.record("challenger", True, 5.0)
    assert [e.action for e in c.tick(62.0)] == ["canary-step"]
    assert c.snapshot(62.0)["canary_step_calls"] == 0  # the calls of the step before do not count for this one
    assert c.tick(70.0) == []  # its time is up, but nothing judged it: no promotion
    fleet = {"requests": 25, "errors": 0, "error_rate": 0.0, "p95_ms": 5.0, "compared": 0, "disagreement": 0.0}
    c.fleet_stats = {**fleet, "step_calls": 25, "step": (c.state.updated_at, 0)}  # counted for the step before
    assert c.tick(70.5) == []
    c.fleet_stats = {**fleet, "step_calls": 25, "step": (c.state.updated_at, 1)}  # other gateways saw this one
    assert [e.action for e in c.tick(71.0)] == ["promote"]


def test_a_canary_stored_with_min_requests_over_window_still_ends() -> None:
    """Allowed in states stored before the rule: a window keeps at most `window` calls, so `min_requests` more could
    never be counted, and such a canary stayed on its step for good."""
    from pyrocast.serving.rollout import stored_state

    c = controller()
    c.start_canary(CanaryPlan(steps=[1.0], step_seconds=5), now=0.0)
    saved = c.state.model_dump(mode="json")
    saved["canary"]["guardrails"].update(window=10, min_requests=30)
    c.state = stored_state(saved)
    c._reset_windows()
    for _ in range(10):
        c.record("challenger", True, 5.0)
    assert c.snapshot(6.0)["canary_step_needs"] == 10
    assert [e.action for e in c.tick(6.0)] == ["canary-complete"]


def test_the_guardrails_p95_is_the_monitoring_pages_p95() -> None:
    """One definition of a percentile: the models page (the canary's window) and the monitoring page read 15.8 and
    16.0 ms for the same calls."""
    import numpy as np

    from pyrocast.monitoring.live import _percentiles
    from pyrocast.serving.rollout import Window

    latencies = [float(x) for x in np.random.default_rng(0).gamma(4.0, 3.0, 60)]
    w = Window(200)
    for ms in latencies:
        w.add(True, ms)
    assert w.summary()["p95_ms"] == _percentiles(np.array(latencies))["p95"]


def test_shares_in_events_and_reports_keep_the_precision_they_need() -> None:
    """A canary of 0.5% -> 2.5% was recorded as "0% -> 2%", a 0.01% shadow sample as "copying 0%"."""
    from pyrocast.serving.rollout import share_text

    assert [share_text(x) for x in (0.005, 0.025, 0.125, 1 / 3, 1.0, 0.0, 1e-300)] == [
        "0.5%",
        "2.5%",
        "12.5%",
        "33.33%",
        "100%",
        "0%",
        "<0.01%",
    ]
    c = RolloutController()
    c.set_models(V1, V2)
    assert "0.5% -> 2.5%" in (c.start_canary(CanaryPlan(steps=[0.005, 0.025])).reason or "")
    assert c.start_shadow(0.0001).reason == "copying 0.01% of requests to the challenger"
