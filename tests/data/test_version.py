"""Dataset versions with DVC: record, push and pull round trips against a local folder and moto's S3."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pyrocast.data.layout import Dataset
from pyrocast.data.version import (
    VERSIONS_DIR,
    VERSIONS_LOG,
    current_version,
    list_versions,
    pull_version,
    record_version,
)
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.geo import LonLat
from pyrocast.settings import DvcSettings, Settings
from tests.support.moto import moto_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def make_dataset(settings: Settings, n: int, start: int = 0) -> None:
    ds = Dataset(settings.dataset_dir)
    for i in range(start, start + n):
        split = ("train", "valid", "test")[i % 3]
        ds.add(f"tile {i}".encode() * 50, LonLat(-73.0 - i / 100, 46.0), ("wildfire", "nowildfire")[i % 2], split, "t")
    ds.save()


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def forget_local_data(settings: Settings) -> None:
    """Delete the dataset and DVC's local cache: a pull must come from the remote."""
    shutil.rmtree(settings.dataset_dir)
    shutil.rmtree(settings.root / ".dvc" / "cache", ignore_errors=True)


def test_local_remote_round_trip_and_history(settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="no dataset"):
        record_version(settings)
    assert current_version(settings) is None

    make_dataset(settings, 12)
    first = record_version(settings, push=True).details["version"]
    v1 = snapshot(settings.dataset_dir)
    assert first["pushed"] and first["remote"] == str(settings.root / "dvc-remote")
    assert first["tiles"] == 12 and first["counts"]["train"] == {"nowildfire": 2, "wildfire": 2}
    assert len(first["id"]) == 8 and first["md5"].startswith(first["id"])
    assert (settings.root / VERSIONS_DIR / f"{first['md5']}.dvc").exists()

    # the same data again: the same version and no new line
    again = record_version(settings).details["version"]
    assert again["md5"] == first["md5"]
    assert len((settings.root / VERSIONS_DIR / VERSIONS_LOG).read_text().splitlines()) == 1

    make_dataset(settings, 3, start=12)
    assert current_version(settings)["modified"]
    second = record_version(settings).details["version"]  # recorded, not pushed
    v2 = snapshot(settings.dataset_dir)
    assert second["md5"] != first["md5"] and not second["pushed"] and not second["modified"]
    assert [v["md5"] for v in list_versions(settings)] == [first["md5"], second["md5"]]

    # back to the first version, from the remote alone
    forget_local_data(settings)
    report = pull_version(settings, first["id"])
    assert snapshot(settings.dataset_dir) == v1
    assert current_version(settings)["md5"] == first["md5"]
    assert report.facts["tiles"] == 12

    # the second version was never pushed: its data only lives in the local cache, which is gone
    with pytest.raises(PyrocastError, match="incomplete"):
        pull_version(settings, second["id"], force=True)

    # unrecorded changes are not overwritten without force
    (settings.dataset_dir / "train" / "note.txt").write_text("mine")
    with pytest.raises(PyrocastError, match="not recorded"):
        pull_version(settings, first["id"])
    pull_version(settings, first["id"], force=True)
    assert snapshot(settings.dataset_dir) == v1
    with pytest.raises(InvalidInputError, match="no dataset version"):
        pull_version(settings, "0000abcd")
    assert v2  # (kept to show the two versions differ)
    assert v1 != v2


def test_a_data_directory_named_in_any_language_versions_and_pulls(tmp_path: Path) -> None:
    """DVC writes its config as ASCII: a remote under "données" failed at `remote add` (demo and `data version`)."""
    settings = Settings(data_dir=tmp_path / "données incendie")
    settings.ensure_dirs()
    make_dataset(settings, 6)
    first = record_version(settings, push=True).details["version"]
    assert first["pushed"] and first["remote"] == str(settings.root / "dvc-remote")
    v1 = snapshot(settings.dataset_dir)
    forget_local_data(settings)
    pull_version(settings, first["id"])
    assert snapshot(settings.dataset_dir) == v1


def test_s3_remote_round_trip_on_moto(settings: Settings, moto_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    for k, v in moto_server.env.items():
        monkeypatch.setenv(k, v)
    moto_server.s3().create_bucket(Bucket="pyrocast-data")
    s3 = settings.model_copy(
        update={"dvc": DvcSettings(remote_url="s3://pyrocast-data/versions", s3_endpoint_url=moto_server.url)}
    )
    make_dataset(s3, 9)
    before = snapshot(s3.dataset_dir)
    v = record_version(s3, push=True).details["version"]
    assert v["pushed"] and v["remote"] == "s3://pyrocast-data/versions"
    objects = moto_server.s3().list_objects_v2(Bucket="pyrocast-data", Prefix="versions/")
    assert objects["KeyCount"] >= 10  # 9 tiles + manifest (+ the .dir listing)

    # credentials stay in the environment: not in DVC's config nor in our version files
    secret = moto_server.env["AWS_SECRET_ACCESS_KEY"]
    for f in [*(s3.root / ".dvc").glob("config*"), *(s3.root / VERSIONS_DIR).iterdir()]:
        assert secret not in f.read_text(errors="replace"), f

    forget_local_data(s3)
    pull_version(s3, v["id"])
    assert snapshot(s3.dataset_dir) == before
    assert json.loads(json.dumps(current_version(s3)))["md5"] == v["md5"]

    # a bucket that does not exist: a clear error, without the secret
    missing = s3.model_copy(
        update={"dvc": DvcSettings(remote_url="s3://no-such-bucket/x", s3_endpoint_url=moto_server.url)}
    )
    with pytest.raises(PyrocastError, match=r"dvc push failed.*bucket does not exist") as exc:
        record_version(missing, push=True)
    assert secret not in str(exc.value)
