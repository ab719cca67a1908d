"""Synthetic region throughput: render + JPEG tiles per second, one process and two, and end to end.

Run with `make bench` or `.venv/bin/python -m benchmarks synth`. The machines are shared: wall-clock rates
depend on what else runs, so CPU time per tile is reported too (2 cores / CPU time = what 2 idle cores do).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pyrocast.data.layout import Dataset
from pyrocast.data.synthetic import SyntheticRegion, render_into
from pyrocast.data.synthetic import dataset as synth_dataset
from pyrocast.imaging import encode_jpeg
from pyrocast.settings import Region, Settings

N_PLACES = 60  # per class
N_PARALLEL = 240
N_END_TO_END = 200


def _render(args: tuple[float, float]) -> int:
    region = synth_dataset._REGION
    assert region is not None
    return len(encode_jpeg(region.render_tile(*args), quality=90))


def run() -> list[tuple[str, float | str, str]]:
    region = SyntheticRegion(Region(), seed=42)
    t = time.perf_counter()
    places = region.sample_places("wildfire", N_PLACES, np.random.default_rng(1)) + region.sample_places(
        "nowildfire", N_PLACES, np.random.default_rng(2)
    )
    sample_rate = len(places) / (time.perf_counter() - t)
    pts = [(p.lon, p.lat) for p in places]

    region.render_tile(*pts[0])  # warm caches (textures, stamps)
    w0, c0 = time.perf_counter(), time.process_time()
    for p in pts:
        encode_jpeg(region.render_tile(*p), quality=90)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    one = len(pts) / wall
    cpu_ms = 1000 * cpu / len(pts)

    work = [pts[i % len(pts)] for i in range(N_PARALLEL)]
    with ProcessPoolExecutor(
        2, mp_context=get_context("spawn"), initializer=synth_dataset._init_worker, initargs=(Region(), 42, "baseline")
    ) as pool:
        list(pool.map(_render, work[:4]))  # start-up and warm-up
        t = time.perf_counter()
        list(pool.map(_render, work, chunksize=8))
        two = len(work) / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        rep = render_into(Dataset(Path(tmp) / "dataset"), settings, N_END_TO_END, seed=3, scenario="baseline")
        e2e = float(rep.facts["tiles/s"])

    return [
        ("place sampling (label check per candidate)", round(sample_rate, 1), "places/s"),
        ("render + JPEG, 1 process (wall)", round(one, 1), "tiles/s"),
        ("render + JPEG, CPU time per tile", round(cpu_ms, 1), "ms"),
        ("render + JPEG, 2 idle cores (from CPU time)", round(2000 / cpu_ms, 1), "tiles/s"),
        ("render + JPEG, 2 worker processes (wall)", round(two, 1), "tiles/s"),
        ("2 workers / 1 process", round(two / one, 2), "x"),
        (f"render_into end to end, {N_END_TO_END} tiles, 2 workers (wall)", e2e, "tiles/s"),
    ]


if __name__ == "__main__":
    for row in run():
        print(*row)
