"""Load shapes as plain data: a list of stages (name, duration, users), free of Locust.

`pyrocast load --shape constant|ramp|spike|diurnal --users N --duration D` turns into stages here; the
Locust shape class (simulate/locustfile.py) only reads them, and the report groups requests by the same
stages. Every shape lasts exactly `duration` seconds and never asks for more than `users` users.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pyrocast.errors import InvalidInputError

SHAPES: tuple[str, ...] = ("constant", "ramp", "spike", "diurnal")
MAX_USERS = 1000
MIN_STAGE_S = 1.0  # Locust ticks about once a second: a shorter stage could be skipped entirely
DIURNAL_PARTS = ("night", "morning", "midday", "afternoon", "evening", "late evening")


@dataclass(frozen=True)
class Stage:
    """`users` users for `duration_s` seconds, starting `start_s` seconds into the test."""

    name: str
    start_s: float
    duration_s: float
    users: int
    spawn_rate: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stages(parts: list[tuple[str, float, int]], users: int) -> list[Stage]:
    """Chain (name, duration, users) into stages; spawning at `users`/s reaches any stage's level in ~1 s."""
    out: list[Stage] = []
    t = 0.0
    rate = float(max(users, 1))
    for name, dur, n in parts:
        out.append(Stage(name, round(t, 6), round(dur, 6), max(1, int(n)), rate))
        t += dur
    return out


def build_stages(shape: str, users: int, duration_s: float) -> list[Stage]:
    """The stages of a shape with at most `users` users over `duration_s` seconds.

    - constant: `users` for the whole time;
    - ramp: four equal steps at 25%, 50%, 75% and 100% of `users`;
    - spike: 20% baseline (40% of the time), everyone at once (20%), back to baseline (40%);
    - diurnal: a day compressed into six parts following a cosine (night low, midday and afternoon high).
    """
    if shape not in SHAPES:
        raise InvalidInputError(f"unknown load shape {shape!r}", f"use one of {', '.join(SHAPES)}")
    if users < 1:
        raise InvalidInputError(f"--users must be at least 1, got {users}")
    if users > MAX_USERS:
        # One Locust process on a shared machine cannot run more: it reported 100,000 users that never ran.
        raise InvalidInputError(
            f"--users {users} is more than one machine's Locust runs faithfully (at most {MAX_USERS})",
            "give --users 1000 or fewer; for more, run Locust distributed against the gateway",
        )
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise InvalidInputError(f"--duration must be a positive number of seconds, got {duration_s}")
    n_parts = {"constant": 1, "ramp": 4, "spike": 3, "diurnal": len(DIURNAL_PARTS)}[shape]
    shortest = {"constant": 1.0, "ramp": 0.25, "spike": 0.2, "diurnal": 1 / len(DIURNAL_PARTS)}[shape]
    if duration_s * shortest < MIN_STAGE_S:
        need = math.ceil(MIN_STAGE_S / shortest)
        raise InvalidInputError(
            f"a {shape} load of {duration_s:g} s is too short for its {n_parts} stage(s)",
            f"give --duration {need} or more",
        )
    d = float(duration_s)
    if shape == "constant":
        parts = [("constant", d, users)]
    elif shape == "ramp":
        parts = [(f"ramp {k}/4", d / 4, round(users * k / 4)) for k in range(1, 5)]
    elif shape == "spike":
        base = round(users * 0.2)
        parts = [("baseline", d * 0.4, base), ("spike", d * 0.2, users), ("recovery", d * 0.4, base)]
    else:
        k = len(DIURNAL_PARTS)
        level = [0.55 - 0.45 * math.cos(2 * math.pi * (i + 0.5) / k) for i in range(k)]
        # Scaled so that the busiest parts reach `users` (the cosine's samples peak at 94% of it).
        parts = [
            (name, d / k, max(1, round(users * v / max(level)))) for name, v in zip(DIURNAL_PARTS, level, strict=True)
        ]
    return _stages(parts, users)


def total_duration(stages: list[Stage]) -> float:
    return stages[-1].end_s if stages else 0.0


def stage_index(stages: list[Stage], t: float) -> int | None:
    """Index of the stage running `t` seconds into the test; None before 0 and from the end on."""
    if t < 0:
        return None
    for i, st in enumerate(stages):
        if t < st.end_s:
            return i
    return None


def target_at(stages: list[Stage], t: float) -> tuple[int, float] | None:
    """(users, spawn rate) wanted at `t` seconds, or None when the test is over (Locust's tick contract)."""
    i = stage_index(stages, t)
    if i is None:
        return None
    return stages[i].users, stages[i].spawn_rate


def stages_from_dicts(items: list[dict[str, Any]]) -> list[Stage]:
    return [Stage(**it) for it in items]
