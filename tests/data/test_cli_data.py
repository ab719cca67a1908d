"""End to end through the installed `pyrocast` command: import-kaggle, validate, show (the issue's acceptance)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pyrocast.geo import LonLat

PYROCAST = Path(sys.executable).parent / "pyrocast"  # the console script installed beside this Python


def cli(*args: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYROCAST_DATA_DIR": str(data_dir), "PYROCAST_QUIET": "1", "COLUMNS": "80"}
    env.update(extra_env or {})
    return subprocess.run(
        [str(PYROCAST), *args], capture_output=True, text=True, env=env, cwd=data_dir.parent, timeout=300
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pyrocast-data"


def test_import_kaggle_real_tiles_gives_369(real_tiles: Path, data_dir: Path) -> None:
    first = cli("data", "import-kaggle", str(real_tiles), data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert "│ imported                 │ 369" in first.stdout
    shown = cli("data", "show", "--json", data_dir=data_dir)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tiles"] == 369
    again = cli("data", "import-kaggle", str(real_tiles), data_dir=data_dir)
    assert "│ already present          │ 369" in again.stdout
    ok = cli("data", "validate", data_dir=data_dir)  # the imported dataset itself: no errors
    assert ok.returncode == 0, ok.stdout
    assert "✓ no errors" in ok.stdout


def stem(lon: float, lat: float) -> str:
    return LonLat(lon, lat).stem()


def damaged_copy(real_tiles: Path, dst: Path) -> dict[str, str]:
    """A copy of the real tiles plus the six defects of the issue; returns {what: relative path}."""
    shutil.copytree(real_tiles, dst)
    some_tile = sorted((dst / "train" / "wildfire").glob("*.jpg"))[0]
    good = some_tile.read_bytes()
    gray = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("L").save(gray, format="PNG")
    defects = {
        "truncated JPEG": (f"train/wildfire/{stem(-73.61, 45.51)}.jpg", good[: len(good) // 2]),
        "zero-byte file": (f"valid/nowildfire/{stem(-73.62, 45.52)}.jpg", b""),
        "text named .jpg": (f"train/nowildfire/{stem(-73.63, 45.53)}.jpg", b"not an image, just text\n"),
        "grayscale PNG": (f"valid/wildfire/{stem(-73.64, 45.54)}.png", gray.getvalue()),
        "duplicate in another split": (f"valid/wildfire/{some_tile.name}", good),
        "abc.jpg": ("train/wildfire/abc.jpg", good),
    }
    for rel, data in defects.values():
        assert not (dst / rel).exists()
        (dst / rel).write_bytes(data)
    return {what: rel for what, (rel, _) in defects.items()}


def test_validate_names_every_defect_and_fails(real_tiles: Path, data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    defects = damaged_copy(real_tiles, copy)

    table = cli("data", "validate", str(copy), data_dir=data_dir)
    assert table.returncode == 1, table.stdout + table.stderr
    for what, rel in defects.items():
        assert rel in table.stdout, f"{what} ({rel}) not named in the table output"
    assert "✗" in table.stdout

    as_json = cli("data", "validate", str(copy), "--json", data_dir=data_dir)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    named = {f["path"]: f["code"] for f in report["errors"]}
    expected = {
        "truncated JPEG": "corrupt-image",
        "zero-byte file": "empty-file",
        "text named .jpg": "not-an-image",
        "grayscale PNG": "wrong-mode",
        "duplicate in another split": "duplicate",
        "abc.jpg": "bad-name",
    }
    for what, rel in defects.items():
        assert rel in named, f"{what} ({rel}) not among the errors in --json"
    codes_by_path = {(f["path"], f["code"]) for f in report["errors"]}
    assert all((defects[w], c) in codes_by_path for w, c in expected.items())
    leak = [f for f in report["errors"] if f["code"] == "leakage"]  # the duplicate is also the same place twice
    assert [f["path"] for f in leak] == [defects["duplicate in another split"]]

    fixed = cli("data", "validate", str(copy), "--quarantine", data_dir=data_dir)
    assert fixed.returncode == 1  # this run still reports what it found (and moved)
    assert all(not (copy / rel).exists() for rel in defects.values())
    assert (copy / "train" / "wildfire" / Path(defects["duplicate in another split"]).name).exists()  # original
    assert cli("data", "validate", str(copy), data_dir=data_dir).returncode == 0
    reasons = (data_dir / "quarantine" / "reasons.jsonl").read_text().splitlines()
    assert len(reasons) == len(defects)


def test_download_without_network_is_one_clear_line(data_dir: Path, tmp_path: Path) -> None:
    # kagglehub's requests go to a closed port on 127.0.0.1 (what no network looks like; the internet is never hit)
    env = {
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
        "HOME": str(tmp_path / "home"),
        "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle"),
    }
    res = cli("data", "import-kaggle", "--download", data_dir=data_dir, extra_env=env)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot download"), res.stderr
    assert "unreachable" in lines[0]


def test_validate_a_missing_path_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    res = cli("data", "validate", str(tmp_path / "nowhere"), data_dir=data_dir)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "does not exist" in res.stderr
