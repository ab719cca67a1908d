"""Load shapes as stages: lengths, levels, the tick contract and clear errors."""

from __future__ import annotations

import itertools

import pytest

from pyrocast.errors import InvalidInputError
from pyrocast.simulate.shapes import SHAPES, build_stages, stage_index, target_at, total_duration


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_lasts_its_duration_within_its_users(shape: str) -> None:
    stages = build_stages(shape, users=20, duration_s=60)
    assert total_duration(stages) == pytest.approx(60)
    assert stages[0].start_s == 0
    for a, b in itertools.pairwise(stages):
        assert b.start_s == pytest.approx(a.end_s)  # contiguous
    assert all(1 <= st.users <= 20 for st in stages)
    assert max(st.users for st in stages) >= 18  # every shape reaches (about) the requested peak


def test_shape_levels() -> None:
    assert [s.users for s in build_stages("constant", 10, 30)] == [10]
    assert [s.users for s in build_stages("ramp", 8, 8)] == [2, 4, 6, 8]
    spike = build_stages("spike", 10, 10)
    assert [s.name for s in spike] == ["baseline", "spike", "recovery"]
    assert [s.users for s in spike] == [2, 10, 2]
    assert [s.duration_s for s in spike] == pytest.approx([4, 2, 4])
    day = [s.users for s in build_stages("diurnal", 100, 60)]
    assert day[0] < day[1] < day[2] and day[3] > day[4] > day[5]  # low at night, high in the middle of the day
    assert day[0] == day[5] and day[2] == day[3]  # symmetric around midday
    assert max(day) == 100  # the busiest part reaches --users ("most simulated users at once")


def test_small_user_counts_never_drop_to_zero() -> None:
    assert all(s.users >= 1 for s in build_stages("spike", 1, 10))
    assert all(s.users >= 1 for s in build_stages("diurnal", 2, 12))


def test_tick_contract() -> None:
    stages = build_stages("ramp", 8, 8)
    assert target_at(stages, 0.0) == (2, 8.0)
    assert target_at(stages, 2.5) == (4, 8.0)
    assert target_at(stages, 7.99) == (8, 8.0)
    assert target_at(stages, 8.0) is None  # the test is over: Locust stops
    assert stage_index(stages, -0.1) is None


@pytest.mark.parametrize(
    ("shape", "users", "duration", "match"),
    [
        ("sawtooth", 5, 10, "unknown load shape"),
        ("constant", 0, 10, "--users"),
        ("constant", 100_000, 10, "at most 1000"),
        ("constant", 5, 0, "--duration"),
        ("constant", 5, float("nan"), "--duration"),
        ("ramp", 5, 3, "give --duration 4 or more"),
        ("diurnal", 5, 5, "give --duration 6 or more"),
    ],
)
def test_bad_shapes_are_clear_errors(shape: str, users: int, duration: float, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        build_stages(shape, users, duration)
