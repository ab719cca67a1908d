"""`render_into`: fill the dataset with synthetic tiles (balanced classes, deterministic, idempotent)."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from pyrocast.data.layout import UNSPLIT, Dataset
from pyrocast.data.synthetic.region import SyntheticRegion
from pyrocast.data.synthetic.scenarios import SCENARIOS, get_scenario
from pyrocast.errors import InvalidInputError
from pyrocast.geo import LonLat
from pyrocast.imaging import encode_jpeg
from pyrocast.progress import progress
from pyrocast.report import Report
from pyrocast.settings import Region, Settings

CHUNK = 24  # places per job: small enough for a lively progress bar, large enough to amortise the hand-off
JPEG_QUALITY = 90
PARALLEL_FROM = 64  # below this many tiles, starting worker processes costs more than it saves

Job = tuple[str, int, int, frozenset[str]]  # label, chunk index, places in the chunk, stems already present


def chunk_rng(seed: int, scenario: str, label: str, k: int) -> np.random.Generator:
    """The random stream of chunk k: the same seed gives the same places, and more tiles extend the list.

    Each scenario draws its own places, so scenario tiles can live in one dataset beside baseline ones.
    """
    return np.random.default_rng([seed, list(SCENARIOS).index(scenario), 0 if label == "wildfire" else 1, k])


def jobs_for(n_tiles: int, seed: int, present: dict[str, frozenset[str]]) -> list[Job]:
    """Chunks for n_tiles, half per class (the extra one, if odd, is nowildfire), interleaved."""
    per = {"wildfire": n_tiles // 2, "nowildfire": n_tiles - n_tiles // 2}
    out: list[Job] = []
    for k in range(math.ceil(max(per.values()) / CHUNK)):
        for label, total in per.items():
            count = min(CHUNK, total - k * CHUNK)
            if count > 0:
                out.append((label, k, count, present[label]))
    return out


_REGION: SyntheticRegion | None = None


def _init_worker(region: Region, seed: int, scenario: str) -> None:
    global _REGION
    _REGION = SyntheticRegion(region, seed, scenario)


def _run_job(job: Job) -> tuple[str, list[tuple[LonLat, bytes | None]]]:
    """Sample a chunk's places and render those not already present (None for a skipped place)."""
    assert _REGION is not None
    label, k, count, present = job
    rng = chunk_rng(_REGION.seed, _REGION.scenario.name, label, k)
    out: list[tuple[LonLat, bytes | None]] = []
    for place in _REGION.sample_places(label, count, rng):
        if place.stem() in present:
            out.append((place, None))
        else:
            out.append((place, encode_jpeg(_REGION.render_tile(place.lon, place.lat), quality=JPEG_QUALITY)))
    return label, out


def _results(jobs: list[Job], region: Region, seed: int, scenario: str, workers: int) -> Iterator[tuple[str, list]]:
    if workers <= 1:
        _init_worker(region, seed, scenario)
        yield from map(_run_job, jobs)
        return
    # spawn: the parent may run threads (the progress bar), which fork would copy in a broken state
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(region, seed, scenario)
    ) as pool:
        yield from pool.map(_run_job, jobs)


def render_into(
    dataset: Dataset,
    settings: Settings,
    n_tiles: int,
    seed: int,
    scenario: str = "baseline",
    workers: int | None = None,
) -> Report:
    """Render n_tiles synthetic tiles (half per class) into the dataset's unsplit pool and save the manifest.

    Deterministic and idempotent: the same seed and scenario give the same places and bytes, and places
    already in the dataset are skipped without rendering. Uses up to 2 worker processes for large batches.
    """
    if n_tiles < 0:
        raise InvalidInputError(f"cannot render a negative number of tiles ({n_tiles})")
    get_scenario(scenario)  # fail fast on a bad name
    source = "synthetic" if scenario == "baseline" else f"synthetic:{scenario}"
    present = {
        label: frozenset(r.place.stem() for r in dataset if r.label == label) for label in ("wildfire", "nowildfire")
    }
    jobs = jobs_for(n_tiles, seed, present)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n_tiles >= PARALLEL_FROM else 1
    added: Counter[str] = Counter()
    skipped = 0
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"rendering synthetic tiles ({scenario})", total=n_tiles)
        for label, results in _results(jobs, settings.region, seed, scenario, workers):
            for place, data in results:
                if data is None or dataset.add(data, place, label, split=UNSPLIT, source=source) is None:
                    skipped += 1
                else:
                    added[label] += 1
            bar.advance(task, len(results))
    dataset.save()
    seconds = time.perf_counter() - t0
    rendered = sum(added.values())
    report = Report(f"synthetic tiles ({scenario}, seed {seed})")
    report.add("rendered", rendered).add("already present", skipped)
    report.add("wildfire", added["wildfire"]).add("nowildfire", added["nowildfire"])
    report.add("tiles/s", round(rendered / seconds, 1) if rendered else 0.0).add("seconds", round(seconds, 2))
    report.add("workers", workers).add("dataset", str(dataset.root))
    report.details.update({"source": source, "scenario": scenario, "seed": seed})
    return report
