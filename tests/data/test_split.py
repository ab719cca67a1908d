"""Spatial split: whole cells per split, stratified by class, deterministic, stable across re-splits."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyrocast.data.layout import CLASSES, SPLITS, UNSPLIT, Dataset, iter_layout, place_of
from pyrocast.data.split import SPLITS_FILE, assign_cells, border_contacts, cell_key, load_split_map, split_dataset
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.geo import LonLat
from pyrocast.settings import Settings

FRACTIONS = {"train": 0.70, "valid": 0.15, "test": 0.15}


def clustered_places(
    n_clusters: int, seed: int, lon0: float = -75.5, lat0: float = 45.3
) -> list[tuple[float, float, str]]:
    """Clusters of 1-12 tiles within ~3 km, one class per cluster (like the Kaggle data: classes by place)."""
    rng = random.Random(seed)
    out = []
    for c in range(n_clusters):
        clon, clat = lon0 + rng.uniform(0, 4.0), lat0 + rng.uniform(0, 2.0)
        label = CLASSES[c % 2] if rng.random() < 0.8 else CLASSES[rng.random() < 0.5]
        for _ in range(rng.randint(1, 12)):
            out.append((round(clon + rng.uniform(-0.03, 0.03), 6), round(clat + rng.uniform(-0.02, 0.02), 6), label))
    return out


def fill(root: Path, places: list[tuple[float, float, str]], split: str = UNSPLIT) -> Dataset:
    ds = Dataset(root)
    for lon, lat, label in places:
        # split never decodes tiles: unique bytes are enough and keep the test fast
        ds.add(f"tile {lon},{lat},{label}".encode(), LonLat(lon, lat), label, split, "test")
    ds.save()
    return ds


def split_of_cells(ds: Dataset, cell_km: float) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for r in ds:
        seen[cell_key(r.lon, r.lat, cell_km)].add(r.split)
    return seen


def shares(ds: Dataset) -> dict[str, dict[str, float]]:
    c = Counter((r.split, r.label) for r in ds)
    totals = Counter(r.label for r in ds)
    return {s: {cls: c[(s, cls)] / totals[cls] for cls in totals} for s in SPLITS}


def test_assign_cells_is_pure_deterministic_and_stratified() -> None:
    recs = [SimpleNamespace(lon=lon, lat=lat, label=lab) for lon, lat, lab in clustered_places(150, seed=1)]
    a = assign_cells(recs, 5.0, 7, FRACTIONS)
    # same inputs in another order, same answer; another seed, another answer
    assert assign_cells(list(reversed(recs)), 5.0, 7, FRACTIONS) == a
    assert assign_cells(recs, 5.0, 8, FRACTIONS) != a
    assert set(a) == {cell_key(r.lon, r.lat, 5.0) for r in recs}
    assert set(a.values()) == set(SPLITS)
    totals = Counter(r.label for r in recs)
    got = Counter((a[cell_key(r.lon, r.lat, 5.0)], r.label) for r in recs)
    for s, frac in FRACTIONS.items():
        for cls in CLASSES:
            assert abs(got[(s, cls)] / totals[cls] - frac) < 0.03, (s, cls, got)


def test_assign_cells_keeps_existing_cells_and_rejects_bad_input() -> None:
    recs = [SimpleNamespace(lon=lon, lat=lat, label=lab) for lon, lat, lab in clustered_places(80, seed=2)]
    first = assign_cells(recs, 5.0, 1, FRACTIONS)
    # pretend every cell was test before: the stored map wins over balance
    forced = {k: "test" for k in list(first)[:5]} | {"9999,9999": "valid"}  # a cell whose tiles are gone
    again = assign_cells(recs, 5.0, 1, FRACTIONS, existing=forced)
    assert all(again[k] == v for k, v in forced.items())
    with pytest.raises(InvalidInputError, match="add up to 1"):
        assign_cells(recs, 5.0, 1, {"train": 0.8, "valid": 0.15, "test": 0.15})
    with pytest.raises(InvalidInputError, match="positive"):
        assign_cells(recs, 0.0, 1, FRACTIONS)
    with pytest.raises(InvalidInputError, match="too small for 3 splits"):
        assign_cells(recs[:1] * 3, 5.0, 1, FRACTIONS)


def test_split_dataset_moves_whole_cells_and_reports(tmp_path: Path, settings: Settings) -> None:
    ds = fill(tmp_path / "ds", clustered_places(80, seed=3))
    report = split_dataset(ds, settings, cell_km=5.0, seed=11)

    reloaded = Dataset(ds.root)  # the manifest on disk, not the object in memory
    assert not reloaded.in_split(UNSPLIT)
    assert all(len(s) == 1 for s in split_of_cells(reloaded, 5.0).values()), "a cell sits in two splits"
    on_disk = {f"{s}/{c}/{f.name}" for s, c, f in iter_layout(ds.root)}
    assert on_disk == {r.path for r in reloaded}
    for s, per_class in shares(reloaded).items():
        for cls, share in per_class.items():
            assert abs(share - FRACTIONS[s]) < 0.04, (s, cls, share)

    d = report.details
    assert sum(sum(c.values()) for c in d["counts"].values()) == len(reloaded)
    assert set(d["cells_per_split"]) == set(SPLITS)
    assert sum(d["moved"].values()) == len(reloaded)  # all came from unsplit
    stored = json.loads((ds.root / SPLITS_FILE).read_text())
    assert (stored["cell_km"], stored["seed"], stored["fractions"]) == (5.0, 11, FRACTIONS)
    assert d["border_contacts"] == border_contacts(reloaded)


def test_split_is_deterministic_across_datasets(tmp_path: Path, settings: Settings) -> None:
    places = clustered_places(40, seed=4)
    a, b = fill(tmp_path / "a", places), fill(tmp_path / "b", list(reversed(places)), split="train")
    split_dataset(a, settings, cell_km=5.0, seed=3)
    split_dataset(b, settings, cell_km=5.0, seed=3)
    assert [r.path for r in Dataset(a.root)] == [r.path for r in Dataset(b.root)]


def test_resplit_keeps_cells_and_new_tiles_join_their_cell(tmp_path: Path, settings: Settings) -> None:
    ds = fill(tmp_path / "ds", clustered_places(60, seed=5))
    split_dataset(ds, settings, cell_km=5.0, seed=1)
    before = {r.path.split("/", 1)[1]: r.split for r in Dataset(ds.root)}
    held_out = {p for p, s in before.items() if s == "test"}
    assert held_out

    # new tiles: some a few metres from existing ones (same cells), some in a region never seen before
    ds = Dataset(ds.root)
    near = [(r.lon + 0.0001, r.lat, r.label) for r in list(ds)[::7]]
    far = [(lon + 10.0, lat + 3.0, lab) for lon, lat, lab in clustered_places(30, seed=6)]
    for lon, lat, lab in near + far:
        ds.add(f"new {lon},{lat}".encode(), LonLat(lon, lat), lab, UNSPLIT, "test")
    ds.save()
    # the defaults (settings: 10 km, seed 42) are not asked for explicitly: the stored split is kept
    report = split_dataset(ds, settings)
    assert "kept" in report.facts["assignment"]

    after = Dataset(ds.root)
    assert not after.in_split(UNSPLIT)
    now = {r.path.split("/", 1)[1]: r.split for r in after}
    assert all(now[p] == s for p, s in before.items()), "a tile changed split on a re-split"
    assert all(now[p] == "test" for p in held_out)
    assert all(len(s) == 1 for s in split_of_cells(after, 5.0).values())
    smap = load_split_map(ds.root)
    assert smap is not None and (smap.cell_km, smap.seed) == (5.0, 1)
    for lon, lat, lab in near:
        twin = after.find_place(lab, LonLat(lon - 0.0001, lat))
        assert twin is not None and after.find_place(lab, LonLat(lon, lat)).split == twin.split
    # the far tiles formed new cells that were spread over the three splits too
    far_splits = {after.find_place(lab, LonLat(lon, lat)).split for lon, lat, lab in far}
    assert far_splits == set(SPLITS)


def test_a_resplit_that_changes_nothing_leaves_the_split_file_as_it_was(tmp_path: Path, settings: Settings) -> None:
    """Byte for byte: a fresh `updated` alone made a new dataset version (DVC) of the same tiles."""
    ds = fill(tmp_path / "ds", clustered_places(40, seed=3))
    split_dataset(ds, settings, cell_km=5.0, seed=1)
    first = (ds.root / SPLITS_FILE).read_bytes()
    time.sleep(1.1)  # timestamps have a resolution of a second at most
    split_dataset(Dataset(ds.root), settings)
    assert (ds.root / SPLITS_FILE).read_bytes() == first


def test_changed_cell_size_or_seed_needs_fresh(tmp_path: Path, settings: Settings) -> None:
    ds = fill(tmp_path / "ds", clustered_places(40, seed=7))
    split_dataset(ds, settings, cell_km=5.0, seed=1)
    layout = [r.path for r in Dataset(ds.root)]
    with pytest.raises(PyrocastError, match="already split") as exc:
        split_dataset(Dataset(ds.root), settings, cell_km=2.0)
    assert "--fresh" in str(exc.value)
    with pytest.raises(PyrocastError, match="seed"):
        split_dataset(Dataset(ds.root), settings, seed=2)
    assert [r.path for r in Dataset(ds.root)] == layout  # nothing moved
    report = split_dataset(Dataset(ds.root), settings, cell_km=2.0, seed=2, fresh=True)
    assert report.facts["assignment"] == "fresh split"
    assert load_split_map(ds.root).cell_km == 2.0


def test_edge_cases_too_small_and_one_class(tmp_path: Path, settings: Settings) -> None:
    tiny = fill(tmp_path / "tiny", [(-73.5, 45.5, "wildfire"), (-73.5001, 45.5001, "nowildfire")])
    with pytest.raises(InvalidInputError, match="too small") as exc:
        split_dataset(tiny, settings, cell_km=10.0)
    assert "--cell-km" in str(exc.value)
    assert not (tiny.root / SPLITS_FILE).exists()
    with pytest.raises(InvalidInputError, match="no tiles"):
        split_dataset(Dataset(tmp_path / "empty"), settings)

    one = fill(tmp_path / "one", [(lon, lat, "wildfire") for lon, lat, _ in clustered_places(30, seed=8)])
    report = split_dataset(one, settings, cell_km=5.0)
    assert "only one class" in report.facts["warnings"]


def test_real_tiles_get_a_usable_spatial_test_split(tmp_path: Path, settings: Settings, real_tiles: Path) -> None:
    ds = Dataset(tmp_path / "real")
    for split, label, f in iter_layout(real_tiles):
        ds.add(f.read_bytes(), place_of(f), label, split, "kaggle")
    ds.save()
    assert len(ds) == 369
    report = split_dataset(ds, settings)  # the default cell size (settings.split.cell_km)

    after = Dataset(ds.root)
    counts = Counter((r.split, r.label) for r in after)
    for cls in CLASSES:  # a test split of both classes, near its 15%
        assert counts[("test", cls)] >= 20, counts
    assert all(len(s) == 1 for s in split_of_cells(after, settings.split.cell_km).values())
    for s, per_class in shares(after).items():
        for cls, share in per_class.items():
            assert abs(share - FRACTIONS[s]) < 0.03, (s, cls, share)
    # cells keep places apart; only a handful of overlapping tiles straddle a cell border
    assert report.details["border_contacts"] <= 5
    assert math.isclose(sum(report.details["class_share"][s]["wildfire"] for s in SPLITS), 1.0)
