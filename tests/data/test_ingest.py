"""`ingest`: feed -> provider -> dataset, over real local servers and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from pyrocast.data.feed import parse_feed
from pyrocast.data.ingest import NEGATIVE_MIN_KM, ingest, sample_negatives
from pyrocast.data.layout import UNSPLIT, Dataset
from pyrocast.data.towns import QUEBEC_TOWNS, towns_in
from pyrocast.errors import InvalidInputError
from pyrocast.geo import LonLat, haversine_km
from pyrocast.settings import Region, Settings
from tests.support.servers import CwfisServer, XyzServer

NOW = datetime(2024, 6, 5, 12, 0, tzinfo=UTC)
HEADER = "agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone, response_type\n"
FEED = HEADER + (
    "qc, Q-001, 47.512, -73.201, 2024-06-01 14:30:00, 12.5, OC, EDT, FUL\n"  # line 2: in window
    "qc, Q-002, 46.901, -72.455, 2024-06-03 09:00:00, 0.1, BH, EDT, MON\n"  # 3: in window
    "qc, Q-003, 48.420, -71.600, 2024-06-04 20:00:00, 3, OC, EDT, FUL\n"  # 4: in window
    "qc, Q-OLD, 46.200, -74.500, 2024-05-01 09:00:00, 3, EX, EDT, FUL\n"  # 5: too old
    "on, NIP021, 48.100, -80.300, , 3, UC, EDT, FUL\n"  # 6: no start date
    "bc, G70146, 54.123, -122.456, 2024-06-04 12:00:00, 40, OC, PDT, FUL\n"  # 7: in window, not Quebec
    "qc, BAD, north, -73.0, 2024-06-04 12:00:00, 1, OC, EDT, FUL\n"  # 8: malformed
    "qc, SHORT, 47.0\n"  # 9: malformed
)


def _settings(settings: Settings, **imagery: object) -> Settings:
    return settings.model_copy(
        update={
            "imagery": settings.imagery.model_copy(update={"retries": 1, "backoff_s": 0.01, **imagery}),
            "feed": settings.feed.model_copy(update={"retries": 3, "backoff_s": 0.02}),
        }
    )


@pytest.fixture
def feed_file(tmp_path: Path) -> Path:
    p = tmp_path / "activefires.csv"
    p.write_text(FEED)
    return p


@pytest.fixture
def xyz():
    with XyzServer() as srv:
        yield srv


def test_ingest_turns_recent_fires_and_town_negatives_into_unsplit_tiles(
    settings: Settings, feed_file: Path, xyz: XyzServer
) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    ds = Dataset(s.dataset_dir)
    rep = ingest(ds, s, feed=str(feed_file), days=7, provider="xyz", now=NOW).as_dict()

    wild = [r for r in ds if r.label == "wildfire"]
    neg = [r for r in ds if r.label == "nowildfire"]
    assert sorted((r.lon, r.lat) for r in wild) == [(-73.201, 47.512), (-72.455, 46.901), (-71.6, 48.42)]
    assert len(neg) == 3  # negatives_per_fire = 1
    assert {r.split for r in ds} == {UNSPLIT} and {r.source for r in ds} == {"feed:xyz"}
    fires = [LonLat(f.lon, f.lat) for f in parse_feed(FEED).fires]
    for r in neg:
        # Away from every fire in the feed (also the old and undated ones), near a town.
        assert min(haversine_km(r.place, f) for f in fires) >= NEGATIVE_MIN_KM
        assert min(haversine_km(r.place, LonLat(t.lon, t.lat)) for t in QUEBEC_TOWNS) < 15
    for r in ds:
        with Image.open(ds.abspath(r)) as img:
            assert img.size == (350, 350) and img.mode == "RGB"
    # The manifest on disk holds what was added.
    assert len(Dataset(s.dataset_dir)) == 6

    assert rep["rows"] == 8
    assert rep["without start date"] == 1
    assert rep["fires started in the last 7 days"] == 4
    assert rep["outside the region"].startswith("1 ")
    assert rep["wildfire tiles"] == "added 3, already present 0, failed 0"
    assert rep["nowildfire tiles"] == "added 3, already present 0, failed 0"
    assert rep["malformed rows"].splitlines()[0] == "2"
    assert [p["line"] for p in rep["problems"]] == [8, 9]
    assert "latitude 'north'" in rep["problems"][0]["reason"]
    assert rep["feed_age_hours"] == pytest.approx(12.0)  # newest: 2024-06-04 20:00 EDT = 06-05 00:00 UTC
    assert rep["stale"] is False


def test_a_second_ingest_of_the_same_feed_adds_nothing_and_fetches_nothing(
    settings: Settings, feed_file: Path, xyz: XyzServer
) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    ingest(Dataset(s.dataset_dir), s, feed=str(feed_file), provider="xyz", now=NOW)
    before = sorted((r.path, r.sha256) for r in Dataset(s.dataset_dir))
    hits = xyz.hits
    rep = ingest(Dataset(s.dataset_dir), s, feed=str(feed_file), provider="xyz", now=NOW + timedelta(hours=3))
    assert sorted((r.path, r.sha256) for r in Dataset(s.dataset_dir)) == before
    assert xyz.hits == hits
    assert rep.facts["wildfire tiles"] == "added 0, already present 3, failed 0"
    assert rep.facts["nowildfire tiles"] == "added 0, already present 3, failed 0"


def test_negatives_are_deterministic_for_the_same_fires_whatever_the_row_order(
    settings: Settings, tmp_path: Path, xyz: XyzServer
) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    lines = FEED.splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text(lines[0] + "".join(reversed(lines[1:])))
    plain = tmp_path / "plain.csv"
    plain.write_text(FEED)
    a, b = Dataset(tmp_path / "a"), Dataset(tmp_path / "b")
    ingest(a, s, feed=str(plain), provider="xyz", now=NOW)
    ingest(b, s, feed=str(shuffled), provider="xyz", now=NOW)
    assert sorted(r.path for r in a) == sorted(r.path for r in b)


def test_feed_from_a_url_that_fails_twice(settings: Settings, xyz: XyzServer) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    with CwfisServer(FEED, fail_times=2) as feed_srv:
        rep = ingest(Dataset(s.dataset_dir), s, feed=feed_srv.url + "?token=abc", provider="xyz", now=NOW)
        assert [r.status for r in feed_srv.requests] == [503, 503, 200]
        assert rep.facts["feed"] == feed_srv.url + "?…"  # the query string (a possible key) is not shown
    assert rep.details["added"] == {"wildfire": 3, "nowildfire": 3}


def test_stale_feed_is_reported(settings: Settings, feed_file: Path, xyz: XyzServer) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    rep = ingest(Dataset(s.dataset_dir), s, feed=str(feed_file), days=30, provider="xyz", now=NOW + timedelta(days=9))
    assert rep.details["stale"] is True
    assert "may be stale" in rep.facts["warnings"]
    assert "9.5 days" in rep.facts["feed age"]


def test_a_failing_place_is_reported_not_fatal(settings: Settings, feed_file: Path, tmp_path: Path) -> None:
    # A folder that has tiles near two of the three fires (and none near towns): the rest fail, reported.
    root = tmp_path / "tiles"
    for lon, lat in [(-73.201, 47.512), (-72.455, 46.901)]:
        p = root / "train" / "wildfire" / f"{lon},{lat}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (350, 350), (int(-lon), int(lat), 50)).save(p)
    s = _settings(settings, folder=root, folder_radius_m=200)
    rep = ingest(Dataset(s.dataset_dir), s, feed=str(feed_file), provider="folder", now=NOW)
    assert rep.details["added"] == {"wildfire": 2}
    assert rep.details["failed_by_class"] == {"wildfire": 1, "nowildfire": 3}
    reasons = [f["reason"] for f in rep.details["failures"]]
    assert all("no tile within 200 m" in r for r in reasons)
    assert "(-71.6, 48.42) wildfire: no tile within 200 m" in rep.facts["failed"]
    assert "not tried" not in rep.facts  # "no tile here" is not a provider outage


def test_a_provider_that_is_down_stops_the_run_with_a_report(settings: Settings, feed_file: Path) -> None:
    many = HEADER + "".join(
        f"qc, F{i}, {46.0 + i * 0.1:.3f}, {-74.0 + i * 0.05:.3f}, 2024-06-04 10:00:00, 1, OC, EDT, FUL\n"
        for i in range(12)
    )
    feed = feed_file.parent / "many.csv"
    feed.write_text(many)
    with XyzServer(fail_times=10_000) as srv:
        s = _settings(settings, xyz_url=srv.template("jpg"))
        ds = Dataset(s.dataset_dir)
        rep = ingest(ds, s, feed=str(feed), provider="xyz", now=NOW)
    assert len(ds) == 0
    assert "stopped after 5 provider failures in a row" in rep.facts["warnings"]
    assert rep.facts["not tried"] == 24 - 5
    assert "HTTP 503" in rep.details["failures"][0]["reason"]


def test_mapbox_without_token_fails_before_downloading_the_feed(settings: Settings) -> None:
    with CwfisServer(FEED) as srv:
        with pytest.raises(InvalidInputError, match="PYROCAST_MAPBOX_TOKEN"):
            ingest(Dataset(settings.dataset_dir), settings, feed=srv.url, provider="mapbox", now=NOW)
        assert srv.requests == []


def test_days_must_be_positive(settings: Settings, feed_file: Path) -> None:
    with pytest.raises(InvalidInputError, match="--days"):
        ingest(Dataset(settings.dataset_dir), settings, feed=str(feed_file), days=0, now=NOW)


def test_sample_negatives_respects_bounds_distance_and_spacing() -> None:
    bounds = Region(name="t", lon_min=-74.5, lon_max=-72.5, lat_min=45.0, lat_max=46.5)
    towns = towns_in(bounds)
    fires = [LonLat(t.lon + 0.01, t.lat) for t in towns[::2]]  # a fire next to every other town
    got = sample_negatives(40, towns, fires, bounds, seed=7)
    assert got == sample_negatives(40, towns, fires, bounds, seed=7)
    assert got != sample_negatives(40, towns, fires, bounds, seed=8)
    assert len(got) == 40
    places = [p for p, _ in got]
    assert all(bounds.contains(p.lon, p.lat) for p in places)
    assert all(min(haversine_km(p, f) for f in fires) >= NEGATIVE_MIN_KM for p in places)
    assert all(haversine_km(a, b) >= 0.6 for i, a in enumerate(places) for b in places[i + 1 :])
    assert sample_negatives(5, [], fires, bounds, seed=1) == []


def test_towns_list() -> None:
    assert 40 <= len(QUEBEC_TOWNS) <= 80
    assert len({t.name for t in QUEBEC_TOWNS}) == len(QUEBEC_TOWNS)
    quebec = Settings().dataset_bounds
    assert all(quebec.contains(t.lon, t.lat) for t in QUEBEC_TOWNS)


def test_cli_ingest(settings: Settings, feed_file: Path, xyz: XyzServer) -> None:
    env = {
        **os.environ,
        "PYROCAST_DATA_DIR": str(settings.data_dir),
        "PYROCAST_IMAGERY__XYZ_URL": xyz.template("jpg"),
        "PYROCAST_QUIET": "1",
        "COLUMNS": "200",
    }
    exe = [sys.executable, "-m", "pyrocast.cli.main"]
    # A feed of the past: --days wide enough to reach back to June 2024.
    days = (datetime.now(UTC) - datetime(2024, 4, 25, tzinfo=UTC)).days
    r = subprocess.run(
        [*exe, "data", "ingest", "--feed", str(feed_file), "--provider", "xyz", "--days", str(days)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    # Every dated Quebec fire of the file is in that window, the May one too.
    assert "added 4" in r.stdout and "may be stale" in r.stdout
    assert len(Dataset(settings.dataset_dir)) == 8
    # A missing token is one red line and exit code 1.
    r = subprocess.run(
        [*exe, "data", "ingest", "--feed", str(feed_file), "--provider", "mapbox"],
        env={k: v for k, v in env.items() if k != "PYROCAST_MAPBOX_TOKEN"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "PYROCAST_MAPBOX_TOKEN" in r.stderr


def test_report_is_json_serialisable(settings: Settings, feed_file: Path, xyz: XyzServer) -> None:
    s = _settings(settings, xyz_url=xyz.template("jpg"))
    rep = ingest(Dataset(s.dataset_dir), s, feed=str(feed_file), provider="xyz", now=NOW)
    data = json.loads(rep.to_json())
    assert data["provider"] == "xyz"
    assert data["problems"][1] == {
        "line": 9,
        "reason": "3 fields, missing lon, startdate, hectares, stage_of_control, timezone, response_type",
    }


def test_default_ingest_uses_the_synthetic_feed_and_region(settings: Settings) -> None:
    """No --feed and no feed.url: the synthetic region's own feed, tiles from the synthetic provider."""
    from pyrocast.data.synthetic import SyntheticRegion

    ds = Dataset(settings.dataset_dir)
    rep = ingest(ds, settings, now=NOW)
    assert rep.facts["feed"].startswith("synthetic (southern-quebec, seed 42)")
    assert rep.facts["provider"] == "synthetic"
    added = rep.details["added"]
    assert added["wildfire"] >= 10 and added["nowildfire"] == added["wildfire"]
    assert rep.details["problems"] == [] and rep.details["failures"] == []
    assert {r.source for r in ds} == {"feed:synthetic"}
    region = SyntheticRegion(settings.region, settings.seed)
    feed_fires = parse_feed(region.fire_feed_csv(NOW, 7)).fires
    recent = {
        (round(f.lon, 6), round(f.lat, 6)) for f in feed_fires if f.startdate and f.startdate >= NOW - timedelta(days=7)
    }
    assert {(r.lon, r.lat) for r in ds if r.label == "wildfire"} == recent
    # Negatives are drawn around the region's own towns and its ground truth agrees with their class.
    assert all(region.label_at(r.lon, r.lat) == "nowildfire" for r in ds if r.label == "nowildfire")
    # Idempotent: the same day's feed adds nothing.
    again = ingest(Dataset(settings.dataset_dir), settings, now=NOW + timedelta(hours=1))
    assert again.details["added"] == {}
    assert len(Dataset(settings.dataset_dir)) == len(ds)
