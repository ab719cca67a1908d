"""Spatial split at the size of the full Kaggle dataset: assigning cells and counting border contacts.

The records are Kaggle-like (42,400 places: 20,000 `nowildfire` tiles packed around Montreal, 800 clusters
of 28 `wildfire` tiles in the north), built in memory: this measures the algorithm, not the disk.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from types import SimpleNamespace

from pyrocast.data.split import assign_cells, border_contacts, cell_key

FRACTIONS = {"train": 0.70, "valid": 0.15, "test": 0.15}


def kaggle_like(seed: int = 0) -> list[SimpleNamespace]:
    rng = random.Random(seed)
    recs = [
        SimpleNamespace(lon=-73.6 + rng.gauss(0, 0.3), lat=45.5 + rng.gauss(0, 0.2), label="nowildfire")
        for _ in range(20_000)
    ]
    for _ in range(800):
        lon, lat = rng.uniform(-79, -60), rng.uniform(47, 52)
        recs += [
            SimpleNamespace(lon=lon + rng.gauss(0, 0.05), lat=lat + rng.gauss(0, 0.04), label="wildfire")
            for _ in range(28)
        ]
    return recs


def run() -> list[tuple[str, float | str, str]]:
    recs = kaggle_like()
    t0 = time.perf_counter()
    cells = assign_cells(recs, 10.0, 42, FRACTIONS)
    t_assign = time.perf_counter() - t0
    for r in recs:
        r.split = cells[cell_key(r.lon, r.lat, 10.0)]
    t0 = time.perf_counter()
    contacts = border_contacts(recs)
    t_contacts = time.perf_counter() - t0
    got = Counter((r.split, r.label) for r in recs)
    totals = Counter(r.label for r in recs)
    worst = max(abs(got[(s, c)] / totals[c] - f) for s, f in FRACTIONS.items() for c in totals)
    return [
        ("assign cells (10 km)", len(recs) / t_assign, "tiles/s"),
        ("border contacts", len(recs) / t_contacts, "tiles/s"),
        ("cells", float(len(cells)), "cells"),
        ("worst class-share error", 100 * worst, "points"),
        ("overlapping pairs across splits", float(contacts), "pairs"),
    ]
