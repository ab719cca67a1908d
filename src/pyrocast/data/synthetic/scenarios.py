"""Scenarios: the same places and labels, seen differently (for drift experiments).

`baseline` is summer imagery. `winter` lays snow where the ground is open, `smoke` adds a warm haze,
`clouds` adds cumulus with their shadows, `sensor-shift` changes the camera's colour balance and
brightness, `north` renders the land as the boreal north (more lakes, conifers and lichen). All effects are
functions of world coordinates, so neighbouring tiles agree at their edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pyrocast.data.synthetic.landscape import Landscape
from pyrocast.data.synthetic.noise import Grid
from pyrocast.data.synthetic.paint import (
    BURN,
    CLEARING,
    FIELD,
    FOREST,
    LAWN,
    PAVED,
    ROOF,
    WATER,
    WETLAND,
    C,
    LandLook,
)
from pyrocast.errors import InvalidInputError


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    land: LandLook = field(default_factory=LandLook)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "summer imagery, as in the reference dataset"),
        Scenario("winter", "snow on open ground, roofs and frozen lakes; bare deciduous trees"),
        Scenario("smoke", "a warm smoke haze of varying thickness"),
        Scenario("clouds", "scattered cumulus with their shadows"),
        Scenario("sensor-shift", "another camera: warmer colour balance, brighter, less contrast"),
        Scenario("north", "the boreal north: more lakes, conifers and lichen", LandLook(-0.45, 0.35, 0.5)),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise InvalidInputError(f"unknown scenario {name!r}", f"choose one of: {', '.join(SCENARIOS)}") from None


# how much of each kind of ground snow covers (0 = none shows, 1 = all white)
_SNOW = np.zeros(16, np.float32)
_SNOW[[FOREST, WETLAND, BURN, CLEARING, FIELD, LAWN, ROOF, PAVED, WATER]] = [
    0.35,
    0.95,
    0.85,
    0.95,
    1.0,
    1.0,
    0.9,
    0.35,
    1.0,
]


def apply(scenario: Scenario, ls: Landscape, grid: Grid, img: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Apply the scenario's look to a painted image (float RGB)."""
    name = scenario.name
    if name == "winter":
        cover = _SNOW[kind] * np.clip(0.85 + 0.25 * ls.fbm(grid, 300, "snow", 3), 0, 1)
        snow = C(232, 236, 242) - np.clip(ls.fbm(grid, 40, "snow-grain", 2), -2, 2) * 6
        # where snow does not lie: conifers keep their colour, the rest is leafless and greyer
        bare = img * 0.6 + img.mean(axis=0, keepdims=True) * 0.3 + C(6, 4, 2)
        img = bare + (snow - bare) * cover
    elif name == "smoke":
        tau = np.clip(
            0.5 + 0.18 * ls.fbm(grid, 20000, "smoke", 2) + 0.08 * ls.fbm(grid, 1500, "smoke-fine", 3), 0.2, 0.85
        )
        img = img * (1 - tau) + C(196, 178, 150) * tau
    elif name == "clouds":
        cloud = np.clip((ls.fbm(grid, 1400, "cloud", 5, 0.55) - 0.35) * 1.3, 0, 1)
        shadow_grid = Grid(grid.xs + 90, grid.ys + 60, grid.step)
        shadow = np.clip((ls.fbm(shadow_grid, 1400, "cloud", 5, 0.55) - 0.35) * 1.3, 0, 1)
        img = img * (1 - 0.45 * shadow)
        img = img + (C(244, 244, 246) - img) * cloud
    elif name == "sensor-shift":
        img = (img * C(1.12, 1.02, 0.86) + C(14, 10, 4)) * 0.92 + 12
    elif name == "north":
        img = img * C(0.96, 0.98, 1.03)
    return img
