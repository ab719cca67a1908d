"""The quarantine: files keep their place in the layout, every file gets a reason line, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

from pyrocast.data.quarantine import REASONS, QuarantineBatch, iter_reasons, quarantine_file
from pyrocast.settings import Settings
from tests.support.tiles import jpeg_tile, write


def test_quarantine_file_moves_and_logs(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "incoming"
    data = b"\xff\xd8 not really"
    src = write(root, "train/wildfire/-73.5,45.5.jpg", data)
    dst = quarantine_file(settings, src, "corrupt-image: truncated", root=root, code="corrupt-image")
    assert not src.exists() and dst.read_bytes() == data
    assert dst.parent.parent.parent.parent == settings.quarantine_dir  # quarantine/<batch>/train/wildfire/x
    assert dst.relative_to(settings.quarantine_dir).as_posix().endswith("train/wildfire/-73.5,45.5.jpg")
    (line,) = list(iter_reasons(settings))
    assert line["code"] == "corrupt-image" and line["origin"] == str(src) and line["size"] == len(data)
    assert line["file"] == dst.relative_to(settings.quarantine_dir).as_posix()
    assert len(line["sha256"]) == 64 and line["at"].endswith("+00:00")


def test_a_batch_groups_files_and_never_overwrites(tmp_path: Path, settings: Settings) -> None:
    batch = QuarantineBatch(settings, "import test/zip")
    a = batch.add_bytes(jpeg_tile(1), "train/wildfire/x.jpg", "one", code="wrong-size")
    b = batch.add_bytes(jpeg_tile(2), "train/wildfire/x.jpg", "two", code="wrong-size")
    kept = write(tmp_path, "src/y.jpg", b"keep me")
    c = batch.add_file(kept, "three", copy=True)
    assert a != b and a.parent == b.parent and b.name == "x~1.jpg"
    assert kept.read_bytes() == b"keep me" and c.read_bytes() == b"keep me"  # copy: the source stays
    assert a.read_bytes() == jpeg_tile(1) and b.read_bytes() == jpeg_tile(2)
    assert batch.dir.name.endswith("-import-test-zip") and batch.count == 3
    assert [r["reason"] for r in iter_reasons(settings)] == ["one", "two", "three"]


def test_two_batches_in_the_same_second_get_two_folders(settings: Settings) -> None:
    one, two = QuarantineBatch(settings, "x"), QuarantineBatch(settings, "x")
    assert one.add_bytes(b"1", "a.jpg", "r").parent != two.add_bytes(b"2", "a.jpg", "r").parent


def test_a_damaged_log_line_is_skipped_not_fatal(settings: Settings) -> None:
    QuarantineBatch(settings).add_bytes(b"x", "a.jpg", "first")
    with (settings.quarantine_dir / REASONS).open("a") as fh:
        fh.write('{"half a line\n')
        fh.write(json.dumps({"reason": "after"}) + "\n")
    assert [r["reason"] for r in iter_reasons(settings)] == ["first", "after"]
