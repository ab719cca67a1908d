"""`pyrocast data ingest`: new labelled tiles from the active-fires feed and an imagery provider.

Fires that started in the last N days become `wildfire` tiles at their coordinates. As many `nowildfire`
places (times `feed.negatives_per_fire`) are sampled a few km around towns, as the seed project did, and kept
at least `NEGATIVE_MIN_KM` from every fire in the feed. Everything lands in the `unsplit` split with source
`feed:<provider>`. The same feed ingested twice adds nothing: places already in the dataset are not fetched
again, and the negative places are drawn from a seed derived from the fires themselves.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from pyrocast.data.feed import FeedParseResult, Fire, describe_age, fetch_feed, is_url, parse_feed, redact_url
from pyrocast.data.imagery import ImageryProvider, make_provider
from pyrocast.data.layout import UNSPLIT, Dataset
from pyrocast.data.towns import Town, towns_in
from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.geo import EARTH_RADIUS_KM, LonLat
from pyrocast.imaging import encode_jpeg
from pyrocast.progress import progress
from pyrocast.report import Report
from pyrocast.settings import Region, Settings

NEGATIVE_MIN_KM = 5.0  # a negative place is at least this far from any fire of the feed
NEGATIVE_NOISE_KM = 2.5  # standard deviation of the offset from a town centre, per axis
NEGATIVE_SPACING_KM = 0.6  # two negatives closer than a tile's width would show the same ground
STALE_AFTER = timedelta(days=3)  # the feed is said to be stale when its newest fire started longer ago
MAX_CONSECUTIVE_FAILURES = 5  # a provider that is down stops the run instead of timing out on every place
SAVE_EVERY = 100  # manifest checkpoints: a crash loses at most this many manifest rows, never a tile
LISTED = 10  # problems and failures shown in the table (all of them are in the JSON details)


class HasPlace(Protocol):
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Planned:
    label: str  # wildfire | nowildfire
    place: LonLat
    why: str  # the fire's name or the town the place was drawn around


# --- pure logic ------------------------------------------------------------------------------------------------
def in_window(fire: Fire, now: datetime, days: int) -> bool:
    """The fire started in the `days` days up to `now` (fires without a start date never are)."""
    return fire.startdate is not None and now - timedelta(days=days) <= fire.startdate <= now


def intersect(a: Region, b: Region | None) -> Region:
    if b is None:
        return a
    return Region(
        name=f"{a.name}∩{b.name}",
        lon_min=max(a.lon_min, b.lon_min),
        lon_max=min(a.lon_max, b.lon_max),
        lat_min=max(a.lat_min, b.lat_min),
        lat_max=min(a.lat_max, b.lat_max),
    )


def _snap(lon: float, lat: float) -> LonLat:
    """The place as the dataset names it (6 decimals), so that the same place always has the same key."""
    return LonLat(round(lon, 6), round(lat, 6))


def _km_to_nearest(lons: np.ndarray, lats: np.ndarray, lon: float, lat: float) -> float:
    if lons.size == 0:
        return math.inf
    p1, p2 = np.radians(lats), math.radians(lat)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(np.radians(lon - lons) / 2) ** 2
    return float(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h)).min())


def negative_seed(base_seed: int, positives: Sequence[LonLat]) -> int:
    """A seed that depends on the fires (sorted), not on the file's row order or timestamp."""
    key = f"{base_seed}|" + ";".join(sorted(p.stem() for p in positives))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def sample_negatives(
    n: int,
    towns: Sequence[HasPlace],
    fires: Sequence[HasPlace],
    bounds: Region,
    seed: int,
    min_km: float = NEGATIVE_MIN_KM,
    noise_km: float = NEGATIVE_NOISE_KM,
    attempts_per_place: int = 50,
    accept: Callable[[float, float], bool] | None = None,
) -> list[tuple[LonLat, HasPlace]]:
    """`n` places drawn a few km around towns inside `bounds`, each at least `min_km` from every fire.

    `accept(lon, lat)`, when given, must also hold (the synthetic region's ground truth says "nowildfire").
    Deterministic for a seed. May return fewer than `n` when the towns are crowded by fires.
    """
    towns = [t for t in towns if bounds.contains(t.lon, t.lat)]
    if n <= 0 or not towns:
        return []
    rng = random.Random(seed)
    f_lon = np.array([f.lon for f in fires], dtype=np.float64)
    f_lat = np.array([f.lat for f in fires], dtype=np.float64)
    chosen: list[tuple[LonLat, HasPlace]] = []
    c_lon: list[float] = []
    c_lat: list[float] = []
    km_per_deg = math.pi * EARTH_RADIUS_KM / 180.0
    for _ in range(n):
        for _ in range(attempts_per_place):
            # A new town on every attempt: one town crowded by fires must not starve the draw.
            town = towns[rng.randrange(len(towns))]
            dx, dy = rng.gauss(0.0, noise_km), rng.gauss(0.0, noise_km)
            lat = town.lat + dy / km_per_deg
            lon = town.lon + dx / (km_per_deg * max(math.cos(math.radians(lat)), 1e-6))
            if not bounds.contains(lon, lat):
                continue
            if _km_to_nearest(f_lon, f_lat, lon, lat) < min_km:
                continue
            if _km_to_nearest(np.array(c_lon), np.array(c_lat), lon, lat) < NEGATIVE_SPACING_KM:
                continue
            p = _snap(lon, lat)
            if accept is not None and not accept(p.lon, p.lat):
                continue
            chosen.append((p, town))
            c_lon.append(p.lon)
            c_lat.append(p.lat)
            break
    return chosen


# --- the command -----------------------------------------------------------------------------------------------
def _synthetic_region(provider: ImageryProvider, settings: Settings) -> Any:
    region = getattr(provider, "region", None)
    if region is not None and hasattr(region, "fire_feed_csv"):
        return region
    from pyrocast.data.synthetic import SyntheticRegion

    return SyntheticRegion(settings.region, settings.seed, "baseline")


def _load_feed(
    feed: str | None, settings: Settings, provider: ImageryProvider, now: datetime, days: int
) -> tuple[str, str, Any]:
    """(feed text, how to name its source, the synthetic region when the feed is the synthetic one)."""
    source = feed or settings.feed.url
    if source:
        shown = redact_url(source) if is_url(source) else source
        return fetch_feed(source, settings), shown, None
    region = _synthetic_region(provider, settings)
    text = region.fire_feed_csv(now, days)
    return text, f"synthetic ({settings.region.name}, seed {settings.seed})", region


def _as_town(t: Any) -> Town:
    """A town from either a `Town`-like object (name, lon, lat) or a `(name, LonLat)` pair."""
    if isinstance(t, tuple) and len(t) == 2 and isinstance(t[1], LonLat):
        return Town(str(t[0]), t[1].lon, t[1].lat)
    return Town(str(getattr(t, "name", "")), float(t.lon), float(t.lat))


def _towns_for(provider: ImageryProvider, synthetic_region: Any, bounds: Region) -> list[Town]:
    # The synthetic landscape draws its own settlements: sample around those so negatives show towns.
    region = synthetic_region or getattr(provider, "region", None)
    towns = getattr(region, "towns", None) if region is not None else None
    if towns:
        return [t for t in map(_as_town, towns) if bounds.contains(t.lon, t.lat)]
    return towns_in(bounds)


def ingest(
    dataset: Dataset,
    settings: Settings,
    feed: str | None = None,
    days: int = 7,
    provider: str | None = None,
    now: datetime | None = None,
) -> Report:
    """Turn recent fires (and negatives around towns) into `unsplit` tiles; report what happened."""
    if days < 1:
        raise InvalidInputError(f"--days must be at least 1, got {days}")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    prov = make_provider(settings, provider)  # a missing token or URL fails before any download
    try:
        text, shown, synthetic_region = _load_feed(feed, settings, prov, now, days)
        parsed = parse_feed(text)
        bounds = intersect(settings.dataset_bounds, getattr(prov, "bounds", None))
        plan, stats = _plan(parsed, settings, prov, synthetic_region, bounds, now, days)
        outcome = _fetch_all(dataset, prov, plan)
    finally:
        close = getattr(prov, "close", None)
        if callable(close):
            close()
    return _report(shown, parsed, stats, outcome, prov.name, now, days)


def _plan(
    parsed: FeedParseResult,
    settings: Settings,
    prov: ImageryProvider,
    synthetic_region: Any,
    bounds: Region,
    now: datetime,
    days: int,
) -> tuple[list[Planned], dict[str, Any]]:
    recent = [f for f in parsed.fires if in_window(f, now, days)]
    inside = [f for f in recent if bounds.contains(f.lon, f.lat)]
    positives: dict[str, Planned] = {}
    for f in inside:
        p = _snap(f.lon, f.lat)
        positives.setdefault(p.stem(), Planned("wildfire", p, f.firename or f.agency))
    want = round(settings.feed.negatives_per_fire * len(positives))
    towns = _towns_for(prov, synthetic_region, bounds)
    seed = negative_seed(settings.seed, [p.place for p in positives.values()])
    # Around a synthetic village half the draws land in forest; its ground truth keeps the class honest.
    region = synthetic_region or getattr(prov, "region", None)
    accept = None
    if region is not None and hasattr(region, "label_at"):
        accept = lambda lon, lat: region.label_at(lon, lat) == "nowildfire"  # noqa: E731
    negatives = sample_negatives(want, towns, parsed.fires, bounds, seed, accept=accept)
    plan = list(positives.values()) + [Planned("nowildfire", p, getattr(t, "name", "")) for p, t in negatives]
    stats = {
        "recent": len(recent),
        "outside": len(recent) - len(inside),
        "no_date": sum(1 for f in parsed.fires if f.startdate is None),
        "future": sum(1 for f in parsed.fires if f.startdate is not None and f.startdate > now),
        "places": len(positives),
        "negatives_wanted": want,
        "negatives_found": len(negatives),
        "towns": len(towns),
        "bounds": bounds,
    }
    return plan, stats


@dataclass
class _Outcome:
    added: Counter[str]
    present: Counter[str]
    same_image: Counter[str]
    failed: Counter[str]
    failures: list[dict[str, Any]]
    skipped: int = 0
    stopped: str | None = None


def _fetch_all(dataset: Dataset, prov: ImageryProvider, plan: list[Planned]) -> _Outcome:
    out = _Outcome(Counter(), Counter(), Counter(), Counter(), [])
    source = f"feed:{prov.name}"
    consecutive = 0
    since_save = 0
    try:
        with progress() as bar:
            task = bar.add_task(f"tiles from {prov.name}", total=len(plan))
            for i, item in enumerate(plan):
                if dataset.find_place(item.label, item.place) is not None:
                    out.present[item.label] += 1
                    bar.advance(task)
                    continue
                try:
                    img = prov.fetch(item.place.lon, item.place.lat)
                    data = encode_jpeg(img)
                except PyrocastError as exc:
                    out.failed[item.label] += 1
                    out.failures.append(
                        {"lon": item.place.lon, "lat": item.place.lat, "label": item.label, "reason": str(exc)}
                    )
                    consecutive = consecutive + 1 if isinstance(exc, ServiceUnavailableError) else 0
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:
                        out.skipped = len(plan) - i - 1
                        out.stopped = f"stopped after {consecutive} provider failures in a row (last: {exc})"
                        break
                    bar.advance(task)
                    continue
                consecutive = 0
                rec = dataset.add(data, item.place, item.label, UNSPLIT, source)
                if rec is None:
                    out.same_image[item.label] += 1  # e.g. two fires answered by one folder tile
                else:
                    out.added[item.label] += 1
                    since_save += 1
                    if since_save >= SAVE_EVERY:
                        dataset.save()
                        since_save = 0
                bar.advance(task)
    finally:
        if since_save:
            dataset.save()
    return out


def _report(
    shown: str,
    parsed: FeedParseResult,
    stats: dict[str, Any],
    out: _Outcome,
    provider: str,
    now: datetime,
    days: int,
) -> Report:
    warnings: list[str] = []
    age = None if parsed.newest is None else now - parsed.newest
    age_text = describe_age(age)
    if parsed.newest is not None:
        age_text += f" (newest start {parsed.newest:%Y-%m-%d %H:%M} UTC)"
    if age is None:
        warnings.append("the feed has no start dates: its freshness is unknown")
    elif age > STALE_AFTER:
        warnings.append(f"the feed may be stale: its newest fire started {describe_age(age)} ago")
    if stats["negatives_found"] < stats["negatives_wanted"]:
        if stats["towns"] == 0:
            warnings.append("no towns inside the region: no negative places could be sampled")
        else:
            warnings.append(
                f"only {stats['negatives_found']} of {stats['negatives_wanted']} negative places could be"
                f" sampled {NEGATIVE_MIN_KM:g} km away from fires"
            )
    if parsed.problems:
        warnings.append(f"{len(parsed.problems)} malformed feed row(s) skipped")
    if out.stopped:
        warnings.append(out.stopped)

    def per_class(label: str) -> str:
        s = f"added {out.added[label]}, already present {out.present[label]}, failed {out.failed[label]}"
        return s + (f", same image already in {out.same_image[label]}" if out.same_image[label] else "")

    malformed = str(len(parsed.problems))
    if parsed.problems:
        malformed += "\n" + "\n".join(str(p) for p in parsed.problems[:LISTED])
        if len(parsed.problems) > LISTED:
            malformed += f"\n… {len(parsed.problems) - LISTED} more (see --json)"
    failed = str(sum(out.failed.values()))
    if out.failures:
        failed += "\n" + "\n".join(
            f"({f['lon']}, {f['lat']}) {f['label']}: {f['reason']}" for f in out.failures[:LISTED]
        )
    b: Region = stats["bounds"]
    report = Report("Ingest from the active-fires feed")
    report.add("feed", shown)
    report.add("feed age", age_text)
    report.add("rows", parsed.rows)
    report.add("malformed rows", malformed)
    report.add("without start date", stats["no_date"])
    report.add(f"fires started in the last {days} days", stats["recent"])
    report.add("outside the region", f"{stats['outside']} (lon {b.lon_min}..{b.lon_max}, lat {b.lat_min}..{b.lat_max})")
    if stats["future"]:
        report.add("start date after now", stats["future"])
    report.add("provider", provider)
    report.add("wildfire tiles", per_class("wildfire"))
    report.add("nowildfire tiles", per_class("nowildfire"))
    report.add("failed", failed)
    if out.skipped:
        report.add("not tried", out.skipped)
    report.add("warnings", "\n".join(warnings) if warnings else "none")
    report.details.update(
        {
            "now": now.isoformat(),
            "newest_start": parsed.newest.isoformat() if parsed.newest else None,
            "feed_age_hours": None if age is None else round(age.total_seconds() / 3600, 2),
            "stale": age is None or age > STALE_AFTER,
            "problems": [{"line": p.line, "reason": p.reason} for p in parsed.problems],
            "failures": out.failures,
            "added": dict(out.added),
            "already_present": dict(out.present),
            "same_image": dict(out.same_image),
            "failed_by_class": dict(out.failed),
            "fire_places": stats["places"],
            "negatives_wanted": stats["negatives_wanted"],
            "negatives_sampled": stats["negatives_found"],
            "warning_list": warnings,
        }
    )
    return report
