"""Spatial train/valid/test split: whole grid cells go to one split, so no place lands in two splits.

Tiles are grouped in cells of K km (`pyrocast.geo.grid_cell`). Cells, not tiles, are assigned to splits,
stratified by class: every split gets close to its share (70/15/15 by default) of each class. The cell ->
split map is stored in `dataset/splits.json`; a later split keeps every stored assignment, so tiles added
afterwards join their cell's split and a tile put into `test` never moves to `train`. Only new cells are
assigned, greedily toward the per-class targets.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyrocast.data.layout import CLASSES, SPLITS, UNSPLIT, Dataset, TileRecord, atomic_write, now_iso
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.geo import LonLat, grid_cell
from pyrocast.imaging import TILE_SIZE
from pyrocast.progress import track
from pyrocast.report import Report
from pyrocast.settings import Settings

SPLITS_FILE = "splits.json"
FORMAT_VERSION = 1
# A 350 px tile at zoom 15 spans a fixed 350 * 360 / 2**23 degrees of longitude (web mercator) and
# that span times cos(lat) of latitude: two tiles whose centres are closer than that overlap on the ground.
TILE_ZOOM = 15
TILE_SPAN_DEG = TILE_SIZE * 360.0 / (256 * 2**TILE_ZOOM)
_SAVE_EVERY = 1000  # moves between manifest saves, so a crash mid-split loses little bookkeeping


class Located(Protocol):
    lon: float
    lat: float
    label: str


@dataclass(frozen=True)
class SplitMap:
    """The stored split: parameters and the cell -> split assignment."""

    cell_km: float
    seed: int
    fractions: dict[str, float]
    cells: dict[str, str]
    created: str
    updated: str

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "cell_km": self.cell_km,
            "seed": self.seed,
            "fractions": self.fractions,
            "created": self.created,
            "updated": self.updated,
            "cells": dict(sorted(self.cells.items())),
        }


def cell_key(lon: float, lat: float, cell_km: float) -> str:
    """The key `row,col` of the grid cell holding a coordinate."""
    row, col = grid_cell(LonLat(lon, lat), cell_km)
    return f"{row},{col}"


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """The split fractions in SPLITS order, or InvalidInputError when they are not shares summing to 1."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise InvalidInputError(f"unknown split(s) {sorted(unknown)} in split fractions", f"use {', '.join(SPLITS)}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(not math.isfinite(v) or v < 0 for v in out.values()):
        raise InvalidInputError(f"split fractions must be non-negative numbers, got {out}")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise InvalidInputError(f"split fractions must add up to 1, they add up to {total:g}: {out}")
    return out


def assign_cells(
    records: Iterable[Located],
    cell_km: float,
    seed: int,
    fractions: Mapping[str, float],
    existing: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every cell holding a record to a split; cells in `existing` keep their split (and stay in the map).

    New cells are taken largest first (ties in an order shuffled with `seed`) and each goes to the split
    where it best closes the gap to the per-class targets (fraction x class total, counted over all
    records, kept cells included). While some split still lacks tiles, or tiles of a cell's class, and
    only as many new cells remain as such splits, those cells are sent there, so that small datasets
    still get three usable splits. Pure and deterministic for the same records, cell size and seed.
    """
    if not (math.isfinite(cell_km) and cell_km > 0):
        raise InvalidInputError(f"cell size must be a positive number of km, got {cell_km}")
    fr = check_fractions(fractions)
    existing = dict(existing or {})
    bad = {k: v for k, v in existing.items() if v not in SPLITS}
    if bad:
        raise InvalidInputError(f"stored split map names unknown splits: {dict(list(bad.items())[:3])}")

    cells: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        cells[cell_key(r.lon, r.lat, cell_km)][r.label] += 1
    if not cells:
        raise InvalidInputError("there are no tiles to split", "render or import tiles first")
    active = [s for s in SPLITS if fr[s] > 0]
    new = sorted(k for k in cells if k not in existing)
    if not any(k in existing for k in cells) and len(new) < len(active):
        n = sum(sum(c.values()) for c in cells.values())
        raise InvalidInputError(
            f"the dataset is too small for {len(active)} splits: its {n} tiles lie in {len(new)} cell(s) of {cell_km:g} km",
            f"every split needs whole cells: add tiles or use a smaller cell size (e.g. --cell-km {cell_km / 4:g})",
        )

    totals: Counter[str] = Counter()
    for c in cells.values():
        totals.update(c)
    classes = sorted(totals)
    target = {s: {c: fr[s] * totals[c] for c in classes} for s in active}
    have: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for k, c in cells.items():
        if k in existing:
            have[existing[k]].update(c)

    rng = random.Random(seed)
    rng.shuffle(new)
    new.sort(key=lambda k: -sum(cells[k].values()))  # stable: the shuffle breaks ties between equal sizes

    def gain(s: str, c: Counter[str]) -> float:
        # Change in squared deviation from the targets, in shares of each class (so a minority class
        # weighs as much as the majority).
        d = 0.0
        for cls, n in c.items():
            t, h = target[s][cls], have[s][cls]
            d += ((h + n - t) ** 2 - (h - t) ** 2) / totals[cls] ** 2
        return d

    # Stored cells stay in the map even when none of their tiles is left: a place once held out for testing
    # must not come back in train when tiles of it are added again.
    out = dict(existing)
    majority = {k: max(sorted(cells[k]), key=lambda cls: cells[k][cls]) for k in new}
    left_of_class = Counter(majority.values())
    for i, k in enumerate(new):
        c, cls = cells[k], majority[k]
        candidates = active
        empty = [s for s in active if not have[s]]
        if empty and len(new) - i <= len(empty):
            candidates = empty
        else:
            lacking = [s for s in active if have[s][cls] == 0]
            if lacking and left_of_class[cls] <= len(lacking):
                candidates = lacking
        best = min(candidates, key=lambda s: (gain(s, c), SPLITS.index(s)))
        out[k] = best
        have[best].update(c)
        left_of_class[cls] -= 1
    return out


def border_contacts(records: Iterable[Located], split_of: Mapping[str, str] | None = None) -> int:
    """Pairs of overlapping tiles (centres closer than a tile's footprint) that sit in different splits.

    `split_of` maps (lon, lat) stems to splits when records carry no `split` attribute. Cells keep a
    place in one split, but two tiles on either side of a cell border can still overlap; this counts them.
    """
    recs = list(records)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        buckets[(math.floor(r.lon / TILE_SPAN_DEG), math.floor(r.lat / TILE_SPAN_DEG))].append(i)

    def split(r: Located) -> str:
        return split_of[LonLat(r.lon, r.lat).stem()] if split_of is not None else r.split  # type: ignore[attr-defined]

    n = 0
    for (bx, by), members in buckets.items():
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in buckets.get((bx + dx, by + dy), ()):
                    rj = recs[j]
                    for i in members:
                        if i >= j:
                            continue
                        ri = recs[i]
                        lat_span = TILE_SPAN_DEG * math.cos(math.radians((ri.lat + rj.lat) / 2))
                        if (
                            abs(ri.lon - rj.lon) < TILE_SPAN_DEG
                            and abs(ri.lat - rj.lat) < lat_span
                            and split(ri) != split(rj)
                        ):
                            n += 1
    return n


def load_split_map(dataset_root: Path) -> SplitMap | None:
    """The stored split of a dataset, None before its first split."""
    path = Path(dataset_root) / SPLITS_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return SplitMap(
            cell_km=float(raw["cell_km"]),
            seed=int(raw["seed"]),
            fractions=check_fractions(raw["fractions"]),
            cells={str(k): str(v) for k, v in raw["cells"].items()},
            created=str(raw.get("created", "")),
            updated=str(raw.get("updated", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PyrocastError(
            f"{path} is unreadable or malformed ({exc})",
            "restore it from the last dataset version (pyrocast data version) rather than deleting it: "
            "without it a re-split could move test tiles into train",
        ) from exc


def split_dataset(
    dataset: Dataset,
    settings: Settings,
    cell_km: float | None = None,
    seed: int | None = None,
    *,
    fresh: bool = False,
) -> Report:
    """Split the dataset spatially, keeping the stored cell assignments; move tiles and save the manifest.

    Without an explicit cell size or seed, a dataset split before keeps its own. A different cell size or
    seed than the stored one is refused unless `fresh` is set: re-drawing the cells would move tiles that
    were held out for testing into train.
    """
    cfg = settings.split
    fractions = check_fractions({"train": cfg.train, "valid": cfg.valid, "test": cfg.test})
    stored = None if fresh else load_split_map(dataset.root)
    if stored is not None:
        asked = {"cell size": (cell_km, stored.cell_km), "seed": (seed, stored.seed)}
        changed = {k: v for k, v in asked.items() if v[0] is not None and float(v[0]) != float(v[1])}
        if changed:
            what = ", ".join(f"{k} {new:g} (stored: {old:g})" for k, (new, old) in changed.items())
            raise PyrocastError(
                f"the dataset is already split; a different {what} would redraw the cells and could move "
                "held-out test tiles into train",
                "omit --cell-km/--seed to keep the stored split, or pass --fresh to start a new split "
                "(earlier test results then no longer count as held-out)",
            )
        cell_km, seed = stored.cell_km, stored.seed
    cell_km = float(cfg.cell_km if cell_km is None else cell_km)
    seed = int(cfg.seed if seed is None else seed)

    records = list(dataset)
    if not records:
        raise InvalidInputError(f"the dataset in {dataset.root} has no tiles", "render or import tiles first")
    existing = stored.cells if stored else {}
    assignment = assign_cells(records, cell_km, seed, fractions, existing)

    now = now_iso()
    same = stored is not None and (stored.cell_km, stored.seed, stored.fractions, stored.cells) == (
        cell_km,
        seed,
        fractions,
        assignment,
    )
    # Nothing changed: the file stays byte for byte (a new `updated` alone made a new dataset version for the same
    # tiles, and models trained on them looked trained on other data).
    updated = stored.updated if same and stored is not None else now
    smap = SplitMap(cell_km, seed, fractions, assignment, stored.created if stored else now, updated)
    # The map is written before any tile moves: if the run dies midway, the next run finishes the same moves.
    atomic_write(dataset.root / SPLITS_FILE, (json.dumps(smap.as_json(), indent=1) + "\n").encode())

    moves: Counter[tuple[str, str]] = Counter()
    for n, rec in enumerate(track(records, "moving tiles to their splits"), 1):
        dest = assignment[cell_key(rec.lon, rec.lat, cell_km)]
        if rec.split != dest:
            moves[(rec.split, dest)] += 1
            dataset.move(rec, dest)
            if n % _SAVE_EVERY == 0:
                dataset.save()
    dataset.save()
    return _report(dataset, smap, existing, moves, fresh)


def _report(
    dataset: Dataset, smap: SplitMap, existing: Mapping[str, str], moves: Counter[tuple[str, str]], fresh: bool
) -> Report:
    records = list(dataset)
    counts = {s: Counter(r.label for r in records if r.split == s) for s in SPLITS}
    cells_per_split = Counter(smap.cells[cell_key(r.lon, r.lat, smap.cell_km)] for r in records)
    used = {cell_key(r.lon, r.lat, smap.cell_km) for r in records}
    cells_in = Counter(smap.cells[k] for k in used)
    totals = Counter(r.label for r in records)
    leaks = _cells_in_several_splits(records, smap.cell_km)
    if leaks:  # cannot happen after a move of every tile; a check, not a hope
        raise PyrocastError(f"{len(leaks)} cells ended up in more than one split: {sorted(leaks)[:5]}")

    warnings: list[str] = []
    present = [c for c in CLASSES if totals[c]]
    if len(present) < 2:
        warnings.append(f"only one class ({', '.join(present) or 'none'}): a classifier cannot learn from this")
    for s in SPLITS:
        if smap.fractions[s] > 0 and sum(counts[s].values()) == 0:
            warnings.append(f"{s} has no tiles")
        for c in present:
            if smap.fractions[s] > 0 and counts[s][c] == 0 and sum(counts[s].values()) > 0:
                warnings.append(f"{s} has no {c} tiles: add tiles or use a smaller cell size")
    contacts = border_contacts(records)
    if contacts:
        warnings.append(
            f"{contacts} pairs of overlapping tiles sit on either side of a cell border in different splits"
        )
    if any(r.split == UNSPLIT for r in records):
        warnings.append("some tiles are still unsplit")

    share = {s: {c: (counts[s][c] / totals[c] if totals[c] else 0.0) for c in CLASSES} for s in SPLITS}
    balance = {s: (counts[s]["wildfire"] / sum(counts[s].values()) if counts[s] else 0.0) for s in SPLITS}
    r = Report("Spatial split")
    r.add("cells", f"{len(used)} cells of {smap.cell_km:g} km, seed {smap.seed}")
    r.add(
        "assignment",
        "fresh split"
        if (fresh or not existing)
        else f"{len(set(existing) & used)} cells kept, {len(used - set(existing))} new",
    )
    for s in SPLITS:
        n = sum(counts[s].values())
        r.add(
            s,
            f"{n} tiles in {cells_in[s]} cells: "
            + ", ".join(f"{counts[s][c]} {c}" for c in CLASSES)
            + f" ({balance[s]:.0%} wildfire)",
        )
    r.add(
        "share of each class",
        "; ".join(f"{c} " + "/".join(f"{share[s][c]:.0%}" for s in SPLITS) for c in present) + " (train/valid/test)",
    )
    r.add("tiles moved", sum(moves.values()))
    r.add("test split", "held out: training reads it only through pyrocast.data.access.evaluation_view")
    if warnings:
        r.add("warnings", "; ".join(warnings))
    r.details.update(
        {
            "cell_km": smap.cell_km,
            "seed": smap.seed,
            "fractions": smap.fractions,
            "counts": {s: {c: counts[s][c] for c in CLASSES} for s in SPLITS},
            "cells_per_split": dict(cells_in),
            "tiles_per_split": {s: cells_per_split[s] for s in SPLITS},
            "class_share": share,
            "wildfire_balance": balance,
            "moved": {f"{a}->{b}": n for (a, b), n in sorted(moves.items())},
            "border_contacts": contacts,
            "warnings": warnings,
        }
    )
    return r


def _cells_in_several_splits(records: Iterable[TileRecord], cell_km: float) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for r in records:
        seen[cell_key(r.lon, r.lat, cell_km)].add(r.split)
    return {k: v for k, v in seen.items() if len(v) > 1}
