"""A synthetic active-fires feed in the CWFIS CSV format (leading spaces and empty start dates included)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np

from pyrocast.geo import LonLat

COLUMNS = ("agency", "firename", "lat", "lon", "startdate", "hectares", "stage_of_control", "timezone", "response_type")
STAGES = ("OC", "BH", "UC", "EX")  # out of control, being held, under control, extinguished
STAGE_P = (0.35, 0.2, 0.25, 0.2)
RESPONSES = ("FUL", "MOD", "MON")  # full, modified, monitored response
RESPONSE_P = (0.6, 0.25, 0.15)
EMPTY_START_P = 0.08
OLD_FIRE_P = 0.3  # share of fires that started before the window, as in a real feed that keeps them listed


def fire_rows(places: Sequence[LonLat], now: datetime, days: int, rng: np.random.Generator) -> list[list[str]]:
    """One feed row (as strings, in COLUMNS order) per fire place."""
    tz = "EDT" if 3 <= now.month <= 10 else "EST"
    today = datetime(now.year, now.month, now.day)
    rows = []
    for i, p in enumerate(places):
        # at least one empty start date in any feed of 10+ fires: consumers must cope with them
        if rng.random() < EMPTY_START_P or (i == 7 and len(places) >= 10):
            start = ""
        else:
            # whole days before today: inside the window [today - (days - 1), today], or well before it
            back = int(rng.integers(0, days)) if rng.random() > OLD_FIRE_P else int(rng.integers(days + 1, days + 31))
            start = (today - timedelta(days=back)).strftime("%Y-%m-%d 00:00:00")
        hectares = float(np.round(rng.lognormal(1.5, 1.8), 1))
        rows.append(
            [
                "qc",
                f"QC{now.year % 100:02d}-{i + 1:04d}",
                f"{p.lat:.5f}",
                f"{p.lon:.5f}",
                start,
                f"{hectares:.1f}",
                str(rng.choice(STAGES, p=STAGE_P)),
                tz,
                str(rng.choice(RESPONSES, p=RESPONSE_P)),
            ]
        )
    return rows


def to_csv(rows: Sequence[Sequence[str]]) -> str:
    """CWFIS layout: a header, then rows; every field after the first starts with a space."""
    lines = [", ".join(COLUMNS)] + [", ".join(r) for r in rows]
    return "\n".join(lines) + "\n"
