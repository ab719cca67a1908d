"""Web app and live monitoring: what a page costs as the prediction store grows, and what the tile cache saves.

- `monitoring.live.overview` (everything the monitoring page shows) over a SQLite store holding 20k and 100k
  predictions in the window, with 20% of them labelled: milliseconds per page refresh.
- `recent_feedback` (the feedback page) on the same store.
- A synthetic map tile rendered vs read from the on-disk cache, and their ratio (measured in this run).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

import mercantile
import numpy as np

from pyrocast.monitoring import live
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import Settings
from pyrocast.webapp.tiles import TileRenderer


def _fill(store: PredictionStore, start: int, end: int, now: datetime, rng: np.random.Generator) -> None:
    """Predictions start..end-1 within the last hour (80% champion v1, 20% challenger v2); every fifth labelled."""
    n = end - start
    challenger = rng.random(n) >= 0.8
    fire = rng.random(n) < 0.5
    right = rng.random(n) < 0.9
    for j in range(n):
        i = start + j
        label = "wildfire" if fire[j] else "nowildfire"
        store.put_prediction(
            {
                "ts": now - timedelta(seconds=float(rng.uniform(0, 3500))),
                "request_id": f"r{i}",
                "served": True,
                "variant": "challenger" if challenger[j] else "champion",
                "model_name": "pyrocast-wildfire",
                "model_version": "2" if challenger[j] else "1",
                "source": "load",
                "lat": 46.0,
                "lon": -73.5,
                "probability": 0.7,
                "label": label,
                "latency_ms": float(rng.gamma(4.0, 5.0)),
            }
        )
        if i % 5 == 0:
            truth = label if right[j] else ("nowildfire" if fire[j] else "wildfire")
            store.put_feedback({"request_id": f"r{i}", "true_label": truth, "label": truth, "source": "replay"})
    store.flush(300)


def _time(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def run() -> list[tuple[str, float | str, str]]:
    out: list[tuple[str, float | str, str]] = []
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        store = PredictionStore(f"sqlite:///{Path(tmp) / 'p.db'}", batch_size=2000).start()
        filled = 0
        for n in (20_000, 100_000):  # the larger store includes the smaller one
            _fill(store, filled, n, now, rng)
            filled = n
            k = f"{n // 1000}k predictions"
            out.append(
                (f"monitoring overview (1h window), {k}", _time(lambda: live.overview(store.engine, "1h")) * 1e3, "ms")
            )
            out.append(
                (f"recent feedback (60 rows), {k}", _time(lambda: live.recent_feedback(store.engine, 60)) * 1e3, "ms")
            )
        store.close()

        settings = Settings(data_dir=Path(tmp) / "data")
        tiles = TileRenderer(settings)
        zs = [(z, *mercantile.tile(-73.5 + k * 0.01, 46.2, z)[:2]) for z, k in ((12, 0), (13, 1), (14, 2), (15, 3))]
        tiles.get(15, *mercantile.tile(-72.0, 46.8, 15)[:2])  # the region's first render builds its rasters
        t0 = time.perf_counter()
        for z, x, y in zs:
            tiles.get(z, x, y)
        render = (time.perf_counter() - t0) / len(zs)
        cached = _time(lambda: [tiles.get(z, x, y) for z, x, y in zs], repeat=5) / len(zs)
        out += [
            ("map tile rendered (zooms 12-15)", render * 1000, "ms"),
            ("map tile from the disk cache", cached * 1000, "ms"),
            ("tile cache speed-up (rendered / cached)", render / cached, "x"),
        ]
    return out
