"""Kaggle import: real tiles, zips and folders with nested roots, quarantine of every kind of bad file,
idempotence, and the kagglehub download against a local stand-in for the Kaggle API."""

from __future__ import annotations

import hashlib
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pyrocast.data.kaggle import KAGGLE_HANDLE, download_kaggle, import_kaggle
from pyrocast.data.layout import Dataset
from pyrocast.data.quarantine import iter_reasons
from pyrocast.data.validate import MAX_FILE_BYTES
from pyrocast.errors import InvalidInputError, ServiceUnavailableError
from pyrocast.settings import Settings
from tests.support.kaggle import KaggleStub
from tests.support.tiles import jpeg_tile, kaggle_folder, name, png_tile, truncated, write


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file()}  # fmt: skip


def run(source: Path | None, settings: Settings, download: bool = False) -> dict:
    return import_kaggle(source, Dataset(settings.dataset_dir), settings, download=download).as_dict()


def test_real_tiles_import_369_and_again_none(real_tiles: Path, settings: Settings) -> None:
    before = tree_digest(real_tiles)
    first = run(real_tiles, settings)
    assert first["imported"] == 369 and first["quarantined"] == 0
    assert first["imported_by_split_class"] == {
        "train/nowildfire": 124, "train/wildfire": 123, "valid/nowildfire": 65, "valid/wildfire": 57,
    }  # fmt: skip
    assert first["skipped_files"] == ["PROVENANCE.md"]
    ds = Dataset(settings.dataset_dir)
    assert len(ds) == 369 and {r.source for r in ds} == {"kaggle"}
    rec = ds.records["valid/wildfire/-64.5751,48.8351.jpg"]
    src = real_tiles / "valid/wildfire/-64.5751,48.8351.jpg"
    assert ds.abspath(rec).read_bytes() == src.read_bytes()
    assert rec.acquired_at == datetime.fromtimestamp(int(src.stat().st_mtime), UTC).isoformat()

    again = run(real_tiles, settings)
    assert again["imported"] == 0 and again["already present"] == 369
    assert len(Dataset(settings.dataset_dir)) == 369
    assert tree_digest(real_tiles) == before  # the source is never touched


def bad_files() -> dict[str, tuple[bytes, str]]:
    """rel path under the layout root -> (bytes, the check that must reject it)."""
    return {
        f"train/wildfire/{name(100)}": (truncated(jpeg_tile(100)), "corrupt-image"),
        f"train/wildfire/{name(101)}": (b"", "empty-file"),
        f"train/nowildfire/{name(102)}": (b"<html>rate limited</html>", "not-an-image"),
        f"valid/nowildfire/{name(103)[:-4]}.png": (png_tile(103, mode="L"), "wrong-mode"),
        f"valid/wildfire/{name(104)}": (jpeg_tile(104, size=512), "wrong-size"),
        "train/wildfire/abc.jpg": (jpeg_tile(105), "bad-name"),
        "train/wildfire/46.1,-73.2.jpg": (jpeg_tile(106), "swapped-coordinates"),
        f"train/smoke/{name(107)}": (jpeg_tile(107), "unknown-class"),
        f"holdout/wildfire/{name(108)}": (jpeg_tile(108), "unknown-split"),
        f"valid/wildfire/{name(110)}": (bytes(MAX_FILE_BYTES + 1), "too-large"),  # a zip bomb in miniature
    }


def make_zip(path: Path, prefix: str, clean: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(clean.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(clean).as_posix())
        for rel, data in extra.items():
            zf.writestr(prefix + rel, data)
        zf.writestr("README.txt", "the wildfire dataset")
        zf.writestr("__MACOSX/archive/train/wildfire/._x.jpg", b"\x00\x05\x16\x07")
        zf.writestr("stray/" + name(109), jpeg_tile(109))  # an image outside the layout root
    return path


def test_zip_with_nested_root_quarantines_every_bad_file(tmp_path: Path, settings: Settings) -> None:
    clean = kaggle_folder(tmp_path / "clean", per_class=5)
    bad = bad_files()
    archive = make_zip(tmp_path / "wildfire.zip", "archive/", clean, {k: v[0] for k, v in bad.items()})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    rep = run(archive, settings)
    assert rep["layout root"] == "archive/"
    assert rep["imported"] == 20
    expected = {code for _, code in bad.values()} | {"misplaced-file"}
    assert set(rep["quarantined_by_reason"]) == expected and rep["quarantined"] == len(bad) + 1
    assert rep["skipped_files"] == ["README.txt"] and rep["ignored (system files)"] == 1

    logged = {r["origin"].split("!")[-1]: r for r in iter_reasons(settings)}
    for rel, (data, code) in bad.items():
        line = logged[f"archive/{rel}"]
        assert line["code"] == code, rel
        copy = settings.quarantine_dir / line["file"]
        if code == "too-large":  # never read into memory, so not copied: the log still says what and why
            assert copy.read_bytes() == b"" and "not copied" in line["reason"]
            continue
        assert copy.read_bytes() == data and line["size"] == len(data)
    assert logged["stray/" + name(109)]["code"] == "misplaced-file"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == digest
    assert run(archive, settings)["imported"] == 0  # idempotent (bad files are quarantined again, by design)


def test_folder_two_levels_down_and_formats(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "downloads" / "v3" / "data", per_class=2)
    write(root, f"train/wildfire/{name(50)[:-4]}.png", png_tile(50))  # an RGB PNG is a fine tile
    write(root, f"train/wildfire/{name(51)}", png_tile(51))  # PNG bytes named .jpg: stored as .png
    before = tree_digest(tmp_path / "downloads")
    rep = run(tmp_path / "downloads", settings)
    assert rep["layout root"] == "v3/data/" and rep["imported"] == 10 and rep["quarantined"] == 0
    ds = Dataset(settings.dataset_dir)
    assert f"train/wildfire/{name(50)[:-4]}.png" in ds.records
    assert f"train/wildfire/{name(51)[:-4]}.png" in ds.records
    assert tree_digest(tmp_path / "downloads") == before


def test_the_same_tile_twice_in_the_source_gives_one_tile(tmp_path: Path, settings: Settings) -> None:
    root = kaggle_folder(tmp_path / "src", per_class=1)
    data = (root / f"train/wildfire/{name(0)}").read_bytes()
    write(root, f"valid/wildfire/{name(0)}", data)  # same place, same bytes, another split
    write(root, f"valid/nowildfire/{name(77)}", data)  # same bytes under another name
    rep = run(root, settings)
    assert rep["imported"] == 4 and rep["duplicates in the source"] == 2 and rep["already present"] == 0
    assert len(Dataset(settings.dataset_dir)) == 4


def test_bad_sources(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        run(tmp_path / "missing.zip", settings)
    (tmp_path / "flat").mkdir()
    write(tmp_path / "flat", name(1), jpeg_tile(1))
    with pytest.raises(InvalidInputError, match=r"no \{split\}/\{class\}/ folders"):
        run(tmp_path / "flat", settings)
    (tmp_path / "x.zip").write_bytes(b"this is not a zip")
    with pytest.raises(InvalidInputError, match="neither a folder nor a readable zip"):
        run(tmp_path / "x.zip", settings)
    with pytest.raises(InvalidInputError, match="no source"):
        run(None, settings)
    with pytest.raises(InvalidInputError, match="not both"):
        run(tmp_path, settings, download=True)


# --- kagglehub against a local stand-in for the Kaggle API ---------------------------------------------
@pytest.fixture
def kaggle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real credentials or caches of the machine are read; kagglehub's own files go to tmp."""
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_download_with_kagglehub_then_import(
    tmp_path: Path, settings: Settings, kaggle_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = kaggle_folder(tmp_path / "clean", per_class=3, splits=("train", "valid", "test"))
    archive = make_zip(tmp_path / "a.zip", "", clean, {f"test/wildfire/{name(300)}": b""})
    with KaggleStub({KAGGLE_HANDLE: archive.read_bytes()}) as stub:
        for k, v in stub.env().items():
            monkeypatch.setenv(k, v)
        rep = run(None, settings, download=True)
        assert rep["imported"] == 18 and rep["quarantined_by_reason"] == {"empty-file": 1, "misplaced-file": 1}
        assert Path(rep["source"]).is_relative_to(settings.root)  # downloads live in the data directory
        calls = [(c.method, c.path.rsplit("/", 1)[-1]) for c in stub.calls]
        assert calls == [("POST", "GetDataset"), ("POST", "DownloadDataset"), ("GET", "archive.zip")]
        owner, slug = KAGGLE_HANDLE.split("/")
        assert stub.calls[1].body == {"ownerSlug": owner, "datasetSlug": slug, "datasetVersionNumber": 3}

        again = run(None, settings, download=True)  # a finished download is reused, not fetched again
        assert again["imported"] == 0 and again["already present"] == 18
        assert [c.path.rsplit("/", 1)[-1] for c in stub.calls].count("archive.zip") == 1


def test_download_refused_says_how_to_authenticate(
    settings: Settings, kaggle_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KaggleStub({}, private={KAGGLE_HANDLE}) as stub:
        for k, v in stub.env().items():
            monkeypatch.setenv(k, v)
        with pytest.raises(ServiceUnavailableError) as err:
            download_kaggle(settings)
    assert "HTTP 403" in err.value.message and "KAGGLE_USERNAME" in (err.value.hint or "")


def test_download_without_network_fails_with_one_line(
    settings: Settings, kaggle_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything kagglehub sends goes to a closed loopback port: what "no network" looks like to it.
    with KaggleStub({}) as stub:
        env = stub.env()
    for k, v in env.items():  # the stub is stopped: its port now refuses connections
        monkeypatch.setenv(k, v)
    with pytest.raises(ServiceUnavailableError) as err:
        download_kaggle(settings)
    msg = str(err.value)
    assert "unreachable" in msg and "\n" not in msg and "import-kaggle ZIP" in msg
    assert os.environ["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"  # never the real Kaggle
