"""The synthetic fire feed speaks the CWFIS CSV dialect, and its fires burn in fire-prone land."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import pytest

from pyrocast.data.synthetic import SyntheticRegion
from pyrocast.data.synthetic.feed import COLUMNS
from pyrocast.errors import InvalidInputError
from pyrocast.settings import Region

NOW = datetime(2026, 11, 27, 9, 30)


@pytest.fixture(scope="module")
def text() -> str:
    return SyntheticRegion(Region(), seed=42).fire_feed_csv(NOW, days=7, n_fires=30)


def test_header_and_values_have_the_leading_spaces(text: str) -> None:
    lines = text.splitlines()
    assert lines[0] == "agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone, response_type"
    assert len(lines) == 31
    for line in lines[1:]:
        assert line.startswith("qc, ")
        assert ",  " not in line.replace(", , ", ",X,")  # one space, never two
        assert len(line.split(", ")) == len(COLUMNS)


def test_rows_parse_and_make_sense(text: str) -> None:
    rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]
    region = SyntheticRegion(Region(), seed=42)
    starts = [r["startdate"] for r in rows]
    assert any(s == "" for s in starts), "the real feed has rows without a start date"
    dated = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in starts if s]
    assert all(d <= NOW for d in dated)
    assert any((NOW - d).days < 7 for d in dated) and any((NOW - d).days > 7 for d in dated)
    assert {r["stage_of_control"] for r in rows} <= {"OC", "BH", "UC", "EX"}
    assert {r["agency"] for r in rows} == {"qc"}
    assert len({r["firename"] for r in rows}) == len(rows)
    for r in rows:
        lon, lat = float(r["lon"]), float(r["lat"])
        assert region.region.contains(lon, lat)
        assert region.label_at(lon, lat) == "wildfire"
        assert float(r["hectares"]) >= 0


def test_feed_is_deterministic_per_day() -> None:
    r = SyntheticRegion(Region(), seed=42)
    assert r.fire_feed_csv(NOW, n_fires=5) == r.fire_feed_csv(NOW.replace(hour=1), n_fires=5)
    assert r.fire_feed_csv(NOW, n_fires=5) != r.fire_feed_csv(datetime(2026, 11, 28), n_fires=5)
    with pytest.raises(InvalidInputError, match="days"):
        r.fire_feed_csv(NOW, days=0)
