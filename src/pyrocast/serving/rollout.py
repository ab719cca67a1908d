"""Rollout logic, free of HTTP: which model answers a request, how a canary ramps, when it must stop.

Modes:
- `champion`: the champion answers everything.
- `ab`: a fixed share of clients goes to the challenger (weights), sticky by client id.
- `canary`: the challenger's share ramps through `steps` (e.g. 5% -> 25% -> 50% -> 100%), one step every
  `step_seconds`; guardrails (error rate, p95 latency, disagreement with the champion) stop it at any time,
  which means back to champion only with the reason recorded. They are judged on the challenger's recent calls
  through this gateway and, where gateways share a store, through all of them (`fleet_stats`).
- `shadow`: the champion answers; a copy of (a sample of) the requests goes to the challenger in the
  background, for comparison only.

Assignment is sticky: a client's bucket is a hash of the rollout's salt and its client id, uniform in [0, 1);
the client goes to the challenger when its bucket is below the challenger's share. A ramping canary only adds
clients (a client on the challenger at 5% stays there at 25%), and a new experiment gets a new salt, so it
draws a fresh sample of clients. Requests without a client id are assigned by their request id (not sticky).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from pyrocast.errors import PyrocastError
from pyrocast.percentiles import percentile

Mode = Literal["champion", "ab", "canary", "shadow"]
Role = Literal["champion", "challenger"]
MODES: tuple[str, ...] = ("champion", "ab", "canary", "shadow")
FLEET = "challenger, all gateways"  # the key of the store-wide window in `RolloutController.snapshot()["stats"]`
STORED = "stored"  # validation context of a state read back from the store (`stored_state`)


class RolloutError(PyrocastError):
    """A rollout change that cannot be made now (no challenger, nothing to roll back, ...): HTTP 409."""


class ModelRef(BaseModel):
    """A model version as the registry names it."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Guardrails(BaseModel):
    """Limits on the challenger during a canary; breaking one stops the canary."""

    # An operator's misspelt field ("max_error" for "max_error_rate") must not start a canary on the defaults.
    model_config = {"extra": "forbid"}

    max_error_rate: float = Field(0.05, ge=0.0, le=1.0, description="share of failed challenger calls")
    max_p95_ms: float = Field(1000.0, gt=0.0, le=600_000.0, description="challenger p95 latency (ms)")
    max_disagreement: float = Field(
        0.25, ge=0.0, le=1.0, description="share of requests where the challenger's label differs from the champion's"
    )
    min_requests: int = Field(20, ge=1, le=1_000_000, description="observations needed before judging")
    window: int = Field(200, ge=10, le=1_000_000, description="judge the last N observations")

    @model_validator(mode="after")
    def _judgeable(self, info: ValidationInfo) -> Guardrails:
        # A window that never holds min_requests observations would never judge: a canary with no guardrails. A
        # state stored before this rule (STORED context) still loads: the canary it runs is not dropped.
        if self.min_requests > self.window and not (info.context or {}).get(STORED):
            raise ValueError(
                f"min_requests ({self.min_requests}) must not exceed window ({self.window}): the guardrails would "
                "never have enough observations to judge"
            )
        return self


class CanaryPlan(BaseModel):
    """A canary: the challenger's share per step, how long each step lasts, and its guardrails."""

    model_config = {"extra": "forbid"}

    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0], min_length=1, max_length=50)
    step_seconds: float = Field(60.0, gt=0.0, le=30 * 86400.0)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    auto_promote: bool = Field(False, description="promote the challenger when the last step has lasted its time")

    @field_validator("steps")
    @classmethod
    def _increasing_shares(cls, steps: list[float]) -> list[float]:
        for s in steps:
            if not (math.isfinite(s) and 0.0 < s <= 1.0):
                raise ValueError(f"each step is a share in (0, 1], got {s}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase strictly, got {steps}")
        return steps


def share_text(x: float) -> str:
    """A share as a percent with the precision it needs: 0.5% stays 0.5% (it was "0%" in events), 12.5% stays
    12.5%, and a share too small to show is "<0.01%", never "0%" or "1e-298%"."""
    p = 100 * x
    return "<0.01%" if 0 < p < 0.01 else f"{p:.4g}%"


class ABPlan(BaseModel):
    """A/B weights (any non-negative numbers; the challenger's share is its weight over the sum)."""

    model_config = {"extra": "forbid"}

    champion: float = Field(..., ge=0.0, le=1e9, allow_inf_nan=False)
    challenger: float = Field(..., ge=0.0, le=1e9, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_weight(self) -> ABPlan:
        if not (math.isfinite(self.champion) and math.isfinite(self.challenger)):
            raise ValueError("weights must be finite")
        if self.champion + self.challenger <= 0:
            raise ValueError("at least one weight must be positive")
        return self

    @property
    def challenger_share(self) -> float:
        return self.challenger / (self.champion + self.challenger)


class RolloutState(BaseModel):
    """Everything that decides routing; persisted with every rollout event so a restart resumes it."""

    mode: Mode = "champion"
    salt: str = Field(default_factory=lambda: secrets.token_hex(4))
    ab: ABPlan | None = None
    canary: CanaryPlan | None = None
    canary_started_at: float | None = None
    canary_step: int = 0
    # When the recorded step took effect (None: as the clock had it, for states stored before this field).
    canary_step_since: float | None = None
    canary_complete: bool = False
    shadow_sample: float = 1.0
    champion: ModelRef | None = None
    challenger: ModelRef | None = None
    # The challenger version the running experiment (A/B, canary, shadow) was started for.
    experiment_challenger: ModelRef | None = None
    previous_champion: ModelRef | None = None
    stopped_reason: str | None = None
    # The version the registry's `champion` alias may still show although this state's champion replaced it: a
    # safety rollback made while the registry refused to move the aliases (they are owed). Recorded with the state,
    # so that any gateway starting on this store neither takes that alias for a training run's decision nor forgets
    # the debt. None: the aliases followed.
    aliases_stale: str | None = None
    updated_at: float = Field(default_factory=time.time)


@dataclass(frozen=True)
class Route:
    """Where one request goes: the variant that answers, and the background copies to make."""

    role: Role
    shadow: bool = False  # send a copy to the challenger (shadow mode)
    compare: bool = False  # ask the champion too, to measure disagreement (canary)


def bucket(key: str, salt: str) -> float:
    """A stable number in [0, 1) for a client (the same on every machine and process: sha256, not hash())."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def stored_state(data: Any) -> RolloutState:
    """A rollout state read back from the store or a file: rules added since it was written do not reject it."""
    return RolloutState.model_validate(data, context={STORED: True})


def step_since(state: RolloutState) -> float:
    """When the canary's recorded step took effect."""
    if state.canary_step_since is not None:
        return state.canary_step_since
    assert state.canary is not None and state.canary_started_at is not None
    return state.canary_started_at + state.canary_step * state.canary.step_seconds


def challenger_share(state: RolloutState, now: float) -> float:
    """The share of clients the challenger answers right now.

    A canary routes on its recorded step (`canary_step`, moved by `RolloutController.tick` and put in effect once
    recorded), not on the clock: while the store cannot record a step, the canary does not ramp."""
    if state.mode == "ab" and state.ab is not None:
        return state.ab.challenger_share
    if state.mode == "canary" and state.canary is not None and state.canary_started_at is not None:
        return state.canary.steps[min(max(state.canary_step, 0), len(state.canary.steps) - 1)]
    return 0.0


def route(state: RolloutState, key: str, now: float) -> Route:
    """Decide where a request goes; `key` is the client id (sticky) or the request id."""
    if state.mode == "shadow":
        return Route("champion", shadow=bucket(key, state.salt + ":shadow") < state.shadow_sample)
    share = challenger_share(state, now)
    if share > 0.0 and bucket(key, state.salt) < share:
        return Route("challenger", compare=state.mode == "canary")
    return Route("champion")


@dataclass
class Window:
    """The last N outcomes of one variant: failures, latencies, agreement with the champion."""

    size: int = 200
    outcomes: deque = field(default_factory=deque)  # (ok, latency_ms, step: the canary step it was recorded in)
    agreements: deque = field(default_factory=deque)  # bool

    def __post_init__(self) -> None:
        self.outcomes = deque(self.outcomes, maxlen=self.size)
        self.agreements = deque(self.agreements, maxlen=self.size)

    def add(self, ok: bool, latency_ms: float | None, step: Any = None) -> None:
        self.outcomes.append((ok, latency_ms, step))

    def count(self, step: Any) -> int:
        """Outcomes recorded during `step` (as `RolloutController.record` names it) among the last `size`."""
        return sum(1 for o in self.outcomes if o[2] == step)

    def add_agreement(self, agree: bool) -> None:
        self.agreements.append(agree)

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        errors = sum(1 for ok, *_ in self.outcomes if not ok)
        lat = sorted(ms for ok, ms, _ in self.outcomes if ok and ms is not None)
        m = len(self.agreements)
        return {
            "requests": n,
            "errors": errors,
            "error_rate": errors / n if n else 0.0,
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "compared": m,
            "disagreement": (m - sum(self.agreements)) / m if m else 0.0,
        }


def window_of_calls(calls: Iterable[dict[str, Any]], size: int) -> Window:
    """A window over stored challenger calls given newest first (as `PredictionStore.canary_calls` reads them)."""
    w = Window(size)
    for call in reversed(list(calls)):
        ok = call["error"] is None
        w.add(ok, call["latency_ms"] if ok else None)
        if ok and call.get("champion_label") is not None:
            w.add_agreement(call["label"] == call["champion_label"])
    return w


def step_needs(g: Guardrails) -> int:
    """Challenger calls a canary step needs before it may end: `min_requests`, at most the `window` the counts are
    kept in (a canary stored before that rule held with min_requests over window would never end)."""
    return min(g.min_requests, g.window)


def check_guardrails(g: Guardrails, stats: dict[str, Any]) -> str | None:
    """The reason to stop a canary, or None. Each test needs `min_requests` observations first."""
    n, m = stats["requests"], stats["compared"]
    if n >= g.min_requests:
        if stats["error_rate"] > g.max_error_rate:
            return (
                f"challenger error rate {stats['error_rate']:.1%} over the limit of {share_text(g.max_error_rate)} "
                f"({n} requests)"
            )
        p95 = stats["p95_ms"]
        if p95 is not None and p95 > g.max_p95_ms:
            return f"challenger p95 latency {p95:.0f} ms over the limit of {g.max_p95_ms:.0f} ms ({n} requests)"
    if m >= g.min_requests and stats["disagreement"] > g.max_disagreement:
        return (
            f"challenger disagrees with the champion on {stats['disagreement']:.1%} of requests, over the limit "
            f"of {share_text(g.max_disagreement)} ({m} compared)"
        )
    return None


@dataclass
class Event:
    """A rollout change to record: what happened and why."""

    action: str
    reason: str | None = None
    at: float | None = None  # when it took effect, where that is before it is recorded (a guardrail stop)


class RolloutController:
    """The rollout state plus the recent outcomes it is judged on. Not thread-safe: one event loop owns it."""

    def __init__(self, state: RolloutState | None = None) -> None:
        self.state = state or RolloutState()
        self.windows: dict[str, Window] = {}
        # The challenger's recent calls through every gateway on the store (Window.summary), set from outside:
        # each replica sees only its share of a canary's traffic.
        self.fleet_stats: dict[str, Any] | None = None
        # (the version an experiment was started for, the one the challenger's service serves now): set when the
        # service was given another version mid-experiment; the next tick stops the experiment.
        self.replaced_challenger: tuple[ModelRef, ModelRef] | None = None
        self._reset_windows()

    def _reset_windows(self) -> None:
        size = self.state.canary.guardrails.window if self.state.canary else Guardrails().window
        self.windows = {"champion": Window(size), "challenger": Window(size)}
        self.fleet_stats = None

    def _changed(self, mode: Mode, reason: str | None = None) -> None:
        self.state.mode = mode
        self.state.updated_at = time.time()
        self.state.stopped_reason = reason
        self.state.experiment_challenger = self.state.challenger if mode != "champion" else None
        self.replaced_challenger = None  # a new plan, for the challenger served now
        self._reset_windows()

    # --- routing and observations ---------------------------------------------------------------------------
    def route(self, key: str, now: float | None = None) -> Route:
        return route(self.state, key, time.time() if now is None else now)

    def share(self, now: float | None = None) -> float:
        return challenger_share(self.state, time.time() if now is None else now)

    def _step(self) -> tuple[float, int]:
        """The plan and canary step in effect: what each recorded outcome is tagged with."""
        return (self.state.updated_at, self.state.canary_step)

    def step_calls(self) -> int:
        """Challenger calls recorded during the canary's current step, here or through every gateway on the store
        (`fleet_stats["step_calls"]`), whichever saw more."""
        fleet = self.fleet_stats or {}
        # Counted for this very step (a count read before a step was recorded here would let the next one end unseen).
        counted = int(fleet.get("step_calls") or 0) if fleet.get("step") == self._step() else 0
        return max(self.windows["challenger"].count(self._step()), counted)

    def record(self, role: Role, ok: bool, latency_ms: float | None, windows: dict[str, Window] | None = None) -> None:
        """Count a call's outcome. windows: the `windows` in force when the call began (a call that outlives its
        plan is counted in that plan's windows, not judged against the next one's guardrails)."""
        (self.windows if windows is None else windows)[role].add(ok, latency_ms, self._step())

    def record_agreement(self, agree: bool, windows: dict[str, Window] | None = None) -> None:
        (self.windows if windows is None else windows)["challenger"].add_agreement(agree)

    # --- changes ----------------------------------------------------------------------------------------------
    def set_models(self, champion: ModelRef | None, challenger: ModelRef | None) -> None:
        """What the backends serve now (from their info endpoints)."""
        self.state.champion, self.state.challenger = champion, challenger

    def check_challenger(self, served: ModelRef | None) -> None:
        """Compare what the challenger's service serves, as just probed, with the version the running experiment
        was started for: another one (the service restarted on another version, perhaps while the gateway was
        down) is noted for `tick`, which stops the experiment: the new version would otherwise join at the old
        one's canary step (and auto-promotion) or A/B share without being judged. Call it with a fresh probe's
        answer only: a probe older than a plan adopted from another gateway would see the version it replaced."""
        st = self.state
        planned = st.experiment_challenger
        if st.mode != "champion" and planned is not None and served is not None and served != planned:
            self.replaced_challenger = (planned, served)

    def _need_challenger(self, what: str) -> None:
        if self.state.challenger is None:
            raise RolloutError(f"cannot start {what}: no challenger is being served", "start a challenger service")

    def champion_only(self, reason: str | None = None) -> Event:
        self.state.ab, self.state.canary, self.state.canary_started_at = None, None, None
        self._changed("champion", reason)
        return Event("champion-only", reason)

    def start_ab(self, plan: ABPlan) -> Event:
        """Start an A/B test, or resize the running one: then the salt stays, so raising the challenger's share
        only adds clients to it and lowering it only takes some back (nobody else switches sides)."""
        self._need_challenger("an A/B test")
        running = self.state.ab if self.state.mode == "ab" else None
        replaced = running is not None and (
            self.replaced_challenger is not None or self.state.experiment_challenger != self.state.challenger
        )
        if replaced:  # the test was of another version: its clients are not this one's to keep
            running = None
        self.state.ab, self.state.canary = plan, None
        if running is None:
            self.state.salt = secrets.token_hex(4)
        self._changed("ab")
        share = f"challenger share {share_text(plan.challenger_share)}"
        if replaced:
            return Event(
                "ab", f"{share}; a new test of {self.state.challenger}: the test running was of another version"
            )
        if running is None:
            return Event("ab", share)
        return Event(
            "ab", f"{share} (was {share_text(running.challenger_share)}; same test, clients kept where they were)"
        )

    def start_canary(self, plan: CanaryPlan, now: float | None = None) -> Event:
        self._need_challenger("a canary")
        self.state.canary, self.state.ab = plan, None
        self.state.canary_started_at = time.time() if now is None else now
        self.state.canary_step, self.state.canary_complete = 0, False
        self.state.canary_step_since = self.state.canary_started_at
        self.state.salt = secrets.token_hex(4)
        self._changed("canary")
        steps = " -> ".join(share_text(s) for s in plan.steps)
        return Event("canary", f"steps {steps}, every {plan.step_seconds:g} s")

    def start_shadow(self, sample: float = 1.0) -> Event:
        self._need_challenger("shadow traffic")
        if not (math.isfinite(sample) and 0.0 < sample <= 1.0):
            raise RolloutError(f"shadow sample must be in (0, 1], got {sample}")
        self.state.shadow_sample = sample
        self.state.ab, self.state.canary = None, None
        self.state.salt = secrets.token_hex(4)
        self._changed("shadow")
        return Event("shadow", f"copying {share_text(sample)} of requests to the challenger")

    def promote(self, reason: str | None = None) -> Event:
        """The challenger becomes the champion; the old champion is kept for rollback (and as challenger)."""
        self._need_challenger("a promotion")
        old = self.state.champion
        self.state.champion, self.state.challenger = self.state.challenger, old
        self.state.previous_champion = old
        self.state.ab, self.state.canary, self.state.canary_started_at = None, None, None
        self._changed("champion")
        return Event("promote", reason or f"{self.state.champion} replaces {old}")

    def rollback(self, reason: str | None = None) -> Event:
        """Restore the previous champion; without one, stop a running experiment."""
        prev = self.state.previous_champion
        if prev is None:
            if self.state.mode != "champion":
                return self.champion_only(reason or "rolled back: experiment stopped")
            raise RolloutError("nothing to roll back: no previous champion is recorded and no experiment is running")
        demoted = self.state.champion
        self.state.champion, self.state.challenger = prev, demoted
        self.state.previous_champion = None
        self.state.ab, self.state.canary, self.state.canary_started_at = None, None, None
        self._changed("champion", None)
        return Event("rollback", reason or f"{prev} restored, {demoted} demoted")

    # --- time passes ------------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[Event]:
        """Advance the canary and apply its guardrails; returns what changed."""
        now = time.time() if now is None else now
        st = self.state
        if self.replaced_challenger is not None:
            (was, new), self.replaced_challenger = self.replaced_challenger, None
            if st.mode != "champion" and st.experiment_challenger == was:
                what = {"ab": "A/B test", "canary": "canary", "shadow": "shadow traffic"}[st.mode]
                stop = self.champion_only(
                    f"{what} stopped: the challenger's service serves {new} now, not {was} that the {what} was "
                    f"started for; start it again to test {new}"
                )
                return [Event("guardrail-stop", stop.reason)]
        if st.mode != "canary" or st.canary is None or st.canary_started_at is None:
            return []
        g = st.canary.guardrails
        reason = check_guardrails(g, self.windows["challenger"].summary())
        if reason is None and self.fleet_stats is not None and (fleet := check_guardrails(g, self.fleet_stats)):
            reason = f"{fleet}, across all gateways"
        if reason:
            stop = self.champion_only(f"canary stopped: {reason}")
            return [Event("guardrail-stop", stop.reason)]
        # Each step serves its `step_seconds` from when it took effect (was recorded): after a store outage the
        # canary goes on from the step in effect rather than jumping to the clock's, or to its end.
        events: list[Event] = []
        last = len(st.canary.steps) - 1
        due = now - step_since(st) >= st.canary.step_seconds
        # A step ends only once the guardrails could judge it: on time alone a canary with no challenger traffic
        # (a quiet hour, a 10% share of little) ramped to 100% and completed "without breaking a guardrail".
        if due and not st.canary_complete and self.step_calls() < step_needs(g):
            return []
        if st.canary_step < last and due:
            st.canary_step += 1
            st.canary_step_since = now
            events.append(Event("canary-step", f"challenger share {share_text(st.canary.steps[st.canary_step])}"))
        done = st.canary_step >= last and now - step_since(st) >= st.canary.step_seconds
        if done and not st.canary_complete:
            st.canary_complete = True
            if st.canary.auto_promote:
                events.append(self.promote("canary completed without breaking a guardrail"))
            else:
                events.append(Event("canary-complete", "all steps passed; promote to make it the champion"))
        return events

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The state as JSON-ready data, with the live share and the windows' statistics."""
        now = time.time() if now is None else now
        out = self.state.model_dump(mode="json")
        out["challenger_share"] = self.share(now)
        st = self.state
        if st.mode == "canary" and st.canary and st.canary_started_at is not None:
            nxt = step_since(st) + st.canary.step_seconds
            out["canary_next_step_at"] = nxt if st.canary_step + 1 < len(st.canary.steps) else None
            # The step's challenger calls and how many it needs before it may end (`tick`).
            out["canary_step_calls"] = self.step_calls()
            out["canary_step_needs"] = step_needs(st.canary.guardrails)
        out["stats"] = {role: w.summary() for role, w in self.windows.items()}
        if self.fleet_stats is not None:
            out["stats"][FLEET] = self.fleet_stats
        return out
