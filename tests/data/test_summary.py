"""`data show`: counts per split x class x source, the current version, the quarantine."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from pyrocast.data.layout import MANIFEST, Dataset
from pyrocast.data.quarantine import QuarantineBatch
from pyrocast.data.summary import summarize
from pyrocast.errors import PyrocastError
from pyrocast.geo import LonLat
from pyrocast.settings import Settings
from tests.support.tiles import jpeg_tile, name


def fill(settings: Settings, plan: list[tuple[str, str, str, int]]) -> None:
    ds, i = Dataset(settings.dataset_dir), 0
    for split, label, source, n in plan:
        for _ in range(n):
            ds.add(jpeg_tile(i), LonLat(*(float(x) for x in name(i)[:-4].split(","))), label, split, source)
            i += 1
    ds.save()


def test_empty_dataset(settings: Settings) -> None:
    rep = summarize(settings).as_dict()
    assert rep["tiles"] == 0 and rep["counts"] == [] and rep["current_version"] is None
    assert "pyrocast data synth" in rep["next step"] and "import-kaggle" in rep["next step"]
    assert rep["version"].startswith("none recorded") and rep["quarantine"] == "empty"


def test_counts_per_split_class_and_source(settings: Settings) -> None:
    fill(
        settings,
        [
            ("train", "wildfire", "kaggle", 3),
            ("train", "nowildfire", "kaggle", 2),
            ("train", "wildfire", "synthetic", 4),
            ("valid", "nowildfire", "synthetic", 1),
            ("unsplit", "wildfire", "feed:xyz", 2),
        ],
    )
    QuarantineBatch(settings, "t").add_bytes(b"", "x.jpg", "empty", code="empty-file")
    rep = summarize(settings)
    d = json.loads(rep.to_json())
    assert d["tiles"] == 12
    assert {(r["split"], r["label"], r["source"]): r["tiles"] for r in d["counts"]} == {
        ("train", "wildfire", "kaggle"): 3,
        ("train", "nowildfire", "kaggle"): 2,
        ("train", "wildfire", "synthetic"): 4,
        ("valid", "nowildfire", "synthetic"): 1,
        ("unsplit", "wildfire", "feed:xyz"): 2,
    }
    assert d["counts"][0]["split"] == "train" and d["counts"][-1]["split"] == "unsplit"
    assert d["by_source"] == {"kaggle": 5, "synthetic": 5, "feed:xyz": 2}
    assert d["quarantine_by_code"] == {"empty-file": 1} and d["quarantine"].startswith("1 file(s)")

    console = Console(record=True, width=100, color_system=None)
    rep.render(console)
    text = console.export_text()
    rows = [line.split() for line in text.splitlines()]
    assert ["│", "train", "│", "synthetic", "│", "0", "│", "4", "│", "4", "│"] in rows
    assert ["│", "all", "│", "│", "3", "│", "9", "│", "12", "│"] in rows
    assert "none recorded yet" in text


def test_the_current_version_and_whether_the_data_changed_since(settings: Settings) -> None:
    pytest.importorskip("pyrocast.data.version")
    from pyrocast.data.version import record_version

    fill(settings, [("unsplit", "wildfire", "kaggle", 2), ("unsplit", "nowildfire", "kaggle", 2)])
    vid = record_version(settings).as_dict()["version"]["id"]
    d = summarize(settings).as_dict()
    assert d["current_version"]["id"] == vid and d["version"].startswith(vid)
    assert "not pushed" in d["version"] and "changed" not in d["version"]
    ds = Dataset(settings.dataset_dir)
    ds.add(jpeg_tile(900), LonLat(-72.0, 46.5), "wildfire", "unsplit", "kaggle")
    ds.save()
    assert "the dataset changed since" in summarize(settings).as_dict()["version"]


def test_a_damaged_manifest_is_a_clear_error(settings: Settings) -> None:
    fill(settings, [("train", "wildfire", "kaggle", 1)])
    (settings.dataset_dir / MANIFEST).write_text("path,size\nx,notanumber\n")
    with pytest.raises(PyrocastError, match=r"manifest .* is damaged"):
        summarize(settings)
