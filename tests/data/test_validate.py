"""Validation: every check on real files, the manifest checks, quarantine, feeds, the report's two forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pyrocast.data.layout import MANIFEST, Dataset
from pyrocast.data.quarantine import iter_reasons
from pyrocast.data.validate import (
    HINTS,
    MAX_FILE_BYTES,
    PARALLEL_MIN_FILES,
    check_name,
    group_places,
    inspect_blobs,
    inspect_file,
    inspect_tile,
    map_chunked,
    use_pool,
    validate_path,
)
from pyrocast.errors import InvalidInputError
from pyrocast.geo import LonLat
from pyrocast.settings import Region, Settings
from tests.support.tiles import gif_tile, jpeg_tile, kaggle_folder, name, png_tile, truncated, write

QUEBEC = Region(name="quebec", lon_min=-79.8, lon_max=-57.0, lat_min=44.9, lat_max=62.6)


def codes(findings: list) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        out.setdefault(f.code, []).append(f.path)
    return out


# --- one file -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_tile(1), set()),
        (png_tile(1), set()),
        (b"", {"empty-file"}),
        (b"hello, I am text pretending to be a JPEG\n", {"not-an-image"}),
        (truncated(jpeg_tile(2), 0.5), {"corrupt-image"}),
        (truncated(jpeg_tile(3), 0.97), {"corrupt-image"}),
        (png_tile(4, mode="L"), {"wrong-mode"}),
        (jpeg_tile(5, size=256), {"wrong-size"}),
        (png_tile(6, size=300, mode="RGBA"), {"wrong-mode", "wrong-size"}),
        (gif_tile(7), {"unsupported-format", "wrong-mode"}),
    ],
    ids=["jpeg", "png", "empty", "text", "half", "tail-cut", "gray", "small", "rgba-small", "gif"],
)
def test_inspect_tile_names_every_problem(data: bytes, expected: set[str]) -> None:
    chk = inspect_tile(data)
    assert {c for c, _ in chk.problems} == expected
    assert chk.ok is (not expected)
    assert chk.size == len(data) and len(chk.sha256) == 64
    assert all(code in HINTS for code, _ in chk.problems)


def test_a_huge_file_is_too_large_without_being_read(tmp_path: Path) -> None:
    huge = tmp_path / "-73.5,45.5.jpg"
    with huge.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    chk = inspect_file(huge)
    assert [c for c, _ in chk.problems] == ["too-large"] and chk.size == MAX_FILE_BYTES + 1


def test_check_name() -> None:
    ok = check_name("-73.535,45.480806.jpg", QUEBEC)
    assert ok.place == LonLat(-73.535, 45.480806) and not ok.errors and not ok.warnings
    assert [c for c, _ in check_name("abc.jpg", QUEBEC).errors] == ["bad-name"]
    assert [c for c, _ in check_name("-73.5,45.4.txt", QUEBEC).errors] == ["bad-name"]
    assert [c for c, _ in check_name("-273.5,45.4.jpg", QUEBEC).errors] == ["bad-name"]  # not on Earth
    swapped = check_name("45.48,-73.53.jpg", QUEBEC)
    assert [c for c, _ in swapped.errors] == ["swapped-coordinates"]
    toronto = check_name("-79.70278,43.656362.jpg", QUEBEC)
    assert not toronto.errors and [c for c, _ in toronto.warnings] == ["outside-region"]


def test_group_places_joins_places_a_few_metres_apart() -> None:
    a = LonLat(-73.5, 45.5)
    b = LonLat(-73.5, 45.5 + 10 / 111_195)  # 10 m north
    c = LonLat(-73.5 + 200 / 78_000, 45.5)  # about 200 m east
    d = LonLat(-73.5 + 25 / 78_000, 45.5 + 10 / 111_195)  # ~25 m from b, on a cell border or not
    groups = group_places({"a": a, "b": b, "c": c, "d": d})
    assert sorted(map(sorted, groups)) == [["a", "b", "d"], ["c"]]


def test_map_chunked_in_worker_processes_matches_serial() -> None:
    blobs = [jpeg_tile(i) for i in range(7)] + [b"", b"junk", truncated(jpeg_tile(9))]
    serial = list(map_chunked(inspect_blobs, range(len(blobs)), blobs.__getitem__, parallel=False))
    pooled = list(map_chunked(inspect_blobs, range(len(blobs)), blobs.__getitem__, parallel=True, chunk=3))
    assert [(i, r) for i, _, r in pooled] == [(i, r) for i, _, r in serial]
    assert not use_pool(PARALLEL_MIN_FILES - 1)  # a small batch is never worth forking for


# --- folders --------------------------------------------------------------------------------------
def test_clean_batch_has_no_errors(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "batch", per_class=6)
    rep = validate_path(root, settings)
    assert rep.ok and rep.kind == "batch" and rep.files == 24
    assert rep.counts == {"train": {"nowildfire": 6, "wildfire": 6}, "valid": {"nowildfire": 6, "wildfire": 6}}
    assert not rep.warnings


def test_layout_found_two_folders_down(tmp_path: Path, settings: Settings) -> None:
    kaggle_folder(tmp_path / "dl" / "v2" / "archive", per_class=2)
    rep = validate_path(tmp_path / "dl", settings)
    assert rep.ok and rep.files == 8
    assert any("v2/archive/" in n for n in rep.notes)


def test_folder_structure_problems(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "batch", per_class=3)
    write(root, "training/wildfire/" + name(90), jpeg_tile(90))  # unknown split
    write(root, "train/smoke/" + name(91), jpeg_tile(91))  # unknown class
    write(root, "train/" + name(92), jpeg_tile(92))  # image beside the class folders
    write(root, name(93), jpeg_tile(93))  # image at the top
    write(root, "train/wildfire/extra/" + name(94), jpeg_tile(94))  # nested folder
    write(root, "train/notes.txt", b"labels were checked by hand")  # harmless stray file
    write(root, "README.md", b"# my batch")  # top-level docs are not tiles and not a problem
    rep = validate_path(root, settings)
    found = codes(rep.errors)
    assert found["unknown-split"] == ["training/"]
    assert found["unknown-class"] == ["train/smoke/"]
    assert sorted(found["misplaced-file"]) == sorted([f"train/{name(92)}", name(93), "train/wildfire/extra/"])
    assert codes(rep.warnings) == {"stray-file": ["train/notes.txt"]}

    moved = {q["path"] for q in validate_path(root, settings, quarantine=True).quarantined}
    assert moved == {f"train/{name(92)}", name(93)}  # stray images go; folders wait for a decision
    assert (root / "training").is_dir() and (root / "train" / "smoke").is_dir() and (root / "README.md").exists()


def test_duplicates_leakage_and_label_conflicts(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "batch", per_class=6)
    original = f"train/wildfire/{name(0)}"
    # the same bytes under another name in another split: a duplicate (and not leakage: another name)
    write(root, f"valid/wildfire/{name(200)}", (root / original).read_bytes())
    # a place 8 m from a train tile, in valid: near-same place, leakage
    lon, lat = (float(x) for x in name(1)[:-4].split(","))
    near = f"{lon:.6f},{lat + 8 / 111_195:.6f}.jpg"
    write(root, f"valid/wildfire/{near}", jpeg_tile(501))
    # the same place labelled both ways in one split: a label conflict (a warning: a person must judge)
    write(root, f"train/nowildfire/{name(2)}", jpeg_tile(502))
    rep = validate_path(root, settings)
    errors = codes(rep.errors)
    assert errors["duplicate"] == [f"valid/wildfire/{name(200)}"]
    dup = next(f for f in rep.errors if f.code == "duplicate")
    assert dup.related == (original,) and original in dup.message
    assert errors["leakage"] == [f"valid/wildfire/{near}"]
    leak = next(f for f in rep.errors if f.code == "leakage")
    assert leak.related == (f"train/wildfire/{name(1)}",) and "m apart" in leak.message
    assert codes(rep.warnings)["label-conflict"] == [f"train/nowildfire/{name(2)}"]


def test_imbalance_is_a_warning_with_the_configured_threshold(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "batch"
    for i in range(12):
        write(root, f"train/wildfire/{name(i)}", jpeg_tile(i))
    for i in range(12, 14):
        write(root, f"train/nowildfire/{name(i)}", jpeg_tile(i))
    rep = validate_path(root, settings)
    assert rep.ok
    imb = [f for f in rep.warnings if f.code == "imbalance"]
    assert [f.path for f in imb] == ["train/"] and "nowildfire is 14%" in imb[0].message
    lenient = settings.model_copy(update={"imbalance_threshold": 0.10})
    assert not [f for f in validate_path(root, lenient).warnings if f.code == "imbalance"]


def make_dataset(settings: Settings, n: int = 8) -> Dataset:
    ds = Dataset(settings.dataset_dir)
    for i in range(n):
        label = ("wildfire", "nowildfire")[i % 2]
        place = LonLat(*(float(x) for x in name(i)[:-4].split(",")))
        ds.add(jpeg_tile(i), place, label, "unsplit", "test")
    ds.save()
    return ds


def test_manifest_checks(settings: Settings) -> None:
    ds = make_dataset(settings)
    recs = list(ds)
    ds.abspath(recs[0]).unlink()  # recorded, now missing
    ds.abspath(recs[1]).write_bytes(jpeg_tile(99))  # changed after it was recorded (still a fine image)
    write(settings.dataset_dir, f"unsplit/wildfire/{name(40)}", jpeg_tile(40))  # never recorded
    text = (settings.dataset_dir / MANIFEST).read_text()
    row = next(line for line in text.splitlines() if recs[2].path in line)
    other = "nowildfire" if recs[2].label == "wildfire" else "wildfire"
    (settings.dataset_dir / MANIFEST).write_text(text.replace(row, row.replace(f",{recs[2].label},", f",{other},")))

    rep = validate_path(settings.dataset_dir, settings)
    assert rep.kind == "dataset" and not rep.ok
    errors = codes(rep.errors)
    assert errors["manifest-missing-file"] == [recs[0].path]
    assert errors["manifest-sha-mismatch"] == [recs[1].path]
    assert errors["manifest-row"] == [recs[2].path]
    assert codes(rep.warnings)["not-in-manifest"] == [f"unsplit/wildfire/{name(40)}"]


def test_damaged_manifest_is_an_error(settings: Settings) -> None:
    make_dataset(settings)
    (settings.dataset_dir / MANIFEST).write_text("path,sha\nx,y\n")
    rep = validate_path(settings.dataset_dir, settings)
    assert codes(rep.errors) == {"bad-manifest": [MANIFEST]}
    assert "missing columns" in rep.errors[0].message


def test_quarantine_moves_bad_files_and_drops_their_manifest_rows(settings: Settings) -> None:
    ds = make_dataset(settings)
    bad = next(iter(ds))
    ds.abspath(bad).write_bytes(truncated(ds.abspath(bad).read_bytes()))
    gray = write(settings.dataset_dir, f"unsplit/nowildfire/{name(41)}", png_tile(41, mode="L"))

    rep = validate_path(settings.dataset_dir, settings, quarantine=True)
    moved = {q["path"]: Path(q["to"]) for q in rep.quarantined}
    assert set(moved) == {bad.path, f"unsplit/nowildfire/{name(41)}"}
    assert not ds.abspath(bad).exists() and not gray.exists()
    for rel, dst in moved.items():
        assert dst.is_file() and dst.as_posix().endswith(rel)  # keeps its place in the layout
        assert dst.is_relative_to(settings.quarantine_dir)
    logged = {r["origin"]: r for r in iter_reasons(settings)}
    assert logged[str(ds.abspath(bad))]["code"] == "corrupt-image"
    assert logged[str(gray)]["code"] == "wrong-mode" and "grayscale" in logged[str(gray)]["reason"]

    after = validate_path(settings.dataset_dir, settings)
    assert after.ok and not after.warnings  # the row is gone with the file; nothing unrecorded remains
    assert bad.path not in Dataset(settings.dataset_dir).records


def test_without_quarantine_nothing_moves(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "batch", per_class=2)
    broken = write(root, f"train/wildfire/{name(60)}", b"")
    assert not validate_path(root, settings).ok
    assert broken.exists() and not list(iter_reasons(settings))


def test_empty_folder_and_bad_paths(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "empty").mkdir()
    assert codes(validate_path(tmp_path / "empty", settings).errors) == {"no-tiles": ["."]}
    with pytest.raises(InvalidInputError, match="does not exist"):
        validate_path(tmp_path / "nope", settings)
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(InvalidInputError, match="unzip it"):
        validate_path(tmp_path / "x.zip", settings)


# --- the fire feed --------------------------------------------------------------------------------
FEED = """agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone
 QC, 2024-001, 47.1, -73.2, 2024-06-01 14:30:00, 12.5, OC, EDT
 QC, 2024-002, 47.2
 QC, 2024-003, 47.3, -73.4, yesterday, 1.0, BH, EDT
 QC, 2024-004, 147.3, -73.4, 2024-06-02 10:00:00, 1.0, UC, EDT
 QC, 2024-005, 47.5, -73.6, , 3.0, OC, EDT
"""


def test_feed_rows_with_problems_are_errors_naming_their_line(tmp_path: Path, settings: Settings) -> None:
    feed = tmp_path / "activefires.csv"
    feed.write_text(FEED)
    rep = validate_path(feed, settings)
    assert rep.kind == "feed" and not rep.ok
    assert sorted(f.path for f in rep.errors) == ["activefires.csv:3", "activefires.csv:4", "activefires.csv:5"]
    msgs = " ".join(f.message for f in rep.errors)
    assert "missing" in msgs and "yesterday" in msgs and "147.3" in msgs
    assert any("2 usable fire rows" in n for n in rep.notes)  # an empty start date is allowed (DATA.md)


def test_a_file_that_is_not_the_feed(tmp_path: Path, settings: Settings) -> None:
    page = tmp_path / "feed.csv"
    page.write_text("<html><body>Service unavailable</body></html>\n")
    rep = validate_path(page, settings)
    assert codes(rep.errors) == {"feed-unreadable": ["feed.csv"]}


# --- the report -----------------------------------------------------------------------------------
def test_render_keeps_file_names_whole_at_80_columns_and_json_lists_all(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "batch", per_class=2)
    long_names = [f"train/wildfire/-73.{i:06d}1,46.1234{i:02d}.jpg" for i in range(30)]
    for rel in long_names:
        write(root, rel, b"")
    rep = validate_path(root, settings)
    console = Console(record=True, width=80, color_system=None)
    rep.render(console)
    text = console.export_text()
    shown = [n for n in long_names if n in text]
    assert len(shown) == 25 and "5 more empty-file (all in --json)" in text  # capped per check
    assert "what to do" in text and HINTS["empty-file"].split(":")[0] in text
    data = json.loads(rep.to_json())
    assert data["ok"] is False and data["checks"]["empty-file"]["count"] == 30
    assert sorted(f["path"] for f in data["errors"]) == sorted(long_names)


def test_real_tiles_validate_without_errors(real_tiles: Path, settings: Settings) -> None:
    rep = validate_path(real_tiles, settings)
    assert rep.ok, [f.as_dict() for f in rep.errors[:5]]
    assert rep.files == 369
    assert rep.counts == {"train": {"nowildfire": 124, "wildfire": 123}, "valid": {"nowildfire": 65, "wildfire": 57}}
    # 125 of the sample's no-wildfire tiles are around Toronto and Calgary: outside Quebec, kept with a warning
    assert codes(rep.warnings).keys() == {"outside-region"} and len(rep.warnings) == 125
