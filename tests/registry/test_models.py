"""Registering bundles, aliases that only ever point at complete artifacts, fetching, listing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.model.bundle import META, missing_files
from pyrocast.registry import models
from pyrocast.registry.mlflow_store import ensure_experiment, get_client
from pyrocast.settings import Settings
from tests.support.onnx_standin import make_standin_bundle


def _run(settings: Settings) -> str:
    client = get_client(settings)
    run = client.create_run(ensure_experiment(settings, client))
    client.log_metric(run.info.run_id, "test_accuracy", 0.91)
    client.set_tag(run.info.run_id, "pyrocast.profile", "quick")
    return run.info.run_id


def _register(settings: Settings, tmp_path: Path, kind: str = "good") -> models.RegisteredVersion:
    bundle = make_standin_bundle(tmp_path / f"bundle-{kind}", kind)
    return models.register_bundle(settings, _run(settings), bundle, tags={"kind": kind})


def test_register_verifies_and_caches_with_registry_identity(mlflow_settings: Settings, tmp_path: Path) -> None:
    rv = _register(mlflow_settings, tmp_path)
    assert rv.version == "1"
    client = get_client(mlflow_settings)
    mv = client.get_model_version(mlflow_settings.mlflow.model_name, "1")
    assert mv.tags[models.TAG_ARTIFACTS] == "complete"
    assert mv.tags["kind"] == "good"
    # artifacts live in the data dir, not in ./mlruns
    assert str(mlflow_settings.root) in mv.source
    assert not (Path.cwd() / "mlruns").exists()
    cached = models.cache_dir(mlflow_settings, "1")
    assert missing_files(cached) == []
    meta = json.loads((cached / META).read_text())
    assert meta["version"] == "1" and meta["name"] == mlflow_settings.mlflow.model_name and meta["run_id"] == rv.run_id


def test_incomplete_bundle_is_not_registered(mlflow_settings: Settings, tmp_path: Path) -> None:
    bundle = make_standin_bundle(tmp_path / "b", "good")
    (bundle / META).unlink()
    with pytest.raises(PyrocastError, match=r"incomplete \(missing meta.json\); nothing was registered"):
        models.register_bundle(mlflow_settings, _run(mlflow_settings), bundle)
    assert models.list_models(mlflow_settings) == []


def test_aliases_and_fetch(mlflow_settings: Settings, tmp_path: Path) -> None:
    _register(mlflow_settings, tmp_path, "good")
    _register(mlflow_settings, tmp_path, "always_fire")
    models.set_alias(mlflow_settings, "champion", "1")
    models.set_alias(mlflow_settings, "challenger", "2")
    assert models.aliases(mlflow_settings) == {"champion": "1", "challenger": "2"}
    champ = models.fetch_bundle(mlflow_settings, "champion")
    assert champ.version == "1" and champ.meta["network"] == "standin-good"
    chall = models.fetch_bundle(mlflow_settings, "challenger")
    assert chall.version == "2" and chall.root == models.cache_dir(mlflow_settings, "2")
    assert models.fetch_bundle(mlflow_settings, "latest").version == "2"
    assert models.fetch_bundle(mlflow_settings, "v1").version == "1"
    # a cached version number is served from the cache, even with the artifact store gone
    shutil.rmtree(Path(mlflow_settings.mlflow_artifact_root))
    assert models.fetch_bundle(mlflow_settings, "2").version == "2"
    models.delete_alias(mlflow_settings, "challenger")
    models.delete_alias(mlflow_settings, "challenger")  # no error when absent
    assert models.aliases(mlflow_settings) == {"champion": "1"}


def test_alias_never_points_at_incomplete_artifacts(mlflow_settings: Settings, tmp_path: Path) -> None:
    rv = _register(mlflow_settings, tmp_path, "good")
    models.set_alias(mlflow_settings, "champion", rv.version)
    rv2 = _register(mlflow_settings, tmp_path, "inverted")
    # the stored artifacts of version 2 lose a file (a half-finished upload, a pruned bucket...)
    stored = Path(rv2.source.removeprefix("file://"))
    (stored / "model.onnx").unlink()
    shutil.rmtree(models.cache_dir(mlflow_settings, rv2.version))
    with pytest.raises(PyrocastError, match=r"incomplete artifacts .*model.onnx.*not moved"):
        models.set_alias(mlflow_settings, "champion", rv2.version)
    assert models.aliases(mlflow_settings) == {"champion": "1"}
    rows = {r["version"]: r for r in models.list_models(mlflow_settings)}
    assert rows["2"]["artifacts"] == "incomplete: model.onnx"
    with pytest.raises(PyrocastError, match="incomplete artifacts"):
        models.fetch_bundle(mlflow_settings, rv2.version)


def test_bad_references_are_clear(mlflow_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(PyrocastError, match="has no alias 'champion'"):
        models.fetch_bundle(mlflow_settings, "champion")
    _register(mlflow_settings, tmp_path)
    with pytest.raises(PyrocastError, match="has no version 7"):
        models.fetch_bundle(mlflow_settings, "7")
    with pytest.raises(InvalidInputError, match="not one of champion, challenger"):
        models.set_alias(mlflow_settings, "production", "1")
    with pytest.raises(PyrocastError, match="has no version 9"):
        models.set_alias(mlflow_settings, "champion", "9")


def test_list_models_shows_versions_aliases_metrics(mlflow_settings: Settings, tmp_path: Path) -> None:
    assert models.list_models(mlflow_settings) == []
    _register(mlflow_settings, tmp_path, "good")
    _register(mlflow_settings, tmp_path, "never_fire")
    models.set_alias(mlflow_settings, "champion", "1")
    rows = models.list_models(mlflow_settings)
    assert [r["version"] for r in rows] == ["2", "1"]
    assert rows[1]["aliases"] == ["champion"] and rows[0]["aliases"] == []
    assert rows[1]["accuracy"] == pytest.approx(0.91)
    assert rows[1]["profile"] == "quick" and rows[1]["artifacts"] == "complete"


def test_moving_two_aliases_moves_both_or_neither(mlflow_settings: Settings, tmp_path: Path) -> None:
    """A promotion moves champion and challenger together: a version whose artifacts fail the check moves neither
    (setting them one by one left both aliases on one version when the second failed)."""
    _register(mlflow_settings, tmp_path, "good")
    _register(mlflow_settings, tmp_path, "always_fire")
    rv3 = _register(mlflow_settings, tmp_path, "inverted")
    models.move_aliases(mlflow_settings, {"champion": "1", "challenger": "2"})
    assert models.aliases(mlflow_settings) == {"champion": "1", "challenger": "2"}
    stored = Path(rv3.source.removeprefix("file://"))
    (stored / "model.onnx").unlink()
    shutil.rmtree(models.cache_dir(mlflow_settings, rv3.version))
    with pytest.raises(PyrocastError, match=r"version 3 has incomplete artifacts .*no alias moved"):
        models.move_aliases(mlflow_settings, {"champion": "2", "challenger": "3"})
    with pytest.raises(PyrocastError, match="version 9"):
        models.move_aliases(mlflow_settings, {"champion": "2", "challenger": "9"})
    assert models.aliases(mlflow_settings) == {"champion": "1", "challenger": "2"}
    models.move_aliases(mlflow_settings, {"champion": "2", "challenger": "1"})
    assert models.aliases(mlflow_settings) == {"champion": "2", "challenger": "1"}


def test_an_alias_moved_before_the_registry_failed_is_put_back(mlflow_settings: Settings, tmp_path: Path) -> None:
    """The registry refuses the second alias after taking the first (its database refuses that write): the first is
    put back, so a failed promotion leaves the registry as it was, never both aliases on one version."""
    import sqlite3

    _register(mlflow_settings, tmp_path, "good")
    _register(mlflow_settings, tmp_path, "always_fire")
    models.move_aliases(mlflow_settings, {"champion": "1", "challenger": "2"})
    db = sqlite3.connect(mlflow_settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
    for op in ("INSERT", "UPDATE"):
        db.execute(
            f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON registered_model_aliases "
            "WHEN NEW.alias = 'challenger' AND NEW.version = 1 BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    db.commit()
    try:
        with pytest.raises(Exception, match="disk I/O error"):
            models.move_aliases(mlflow_settings, {"champion": "2", "challenger": "1"})  # champion moves, then fails
        assert models.aliases(mlflow_settings) == {"champion": "1", "challenger": "2"}
    finally:
        db.executescript("DROP TRIGGER refuse_insert; DROP TRIGGER refuse_update;")
        db.close()
    models.move_aliases(mlflow_settings, {"champion": "2", "challenger": "1"})
    assert models.aliases(mlflow_settings) == {"champion": "2", "challenger": "1"}


def test_a_damaged_cached_bundle_is_downloaded_again(
    mlflow_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cached model file cut short (a full disk mid-copy, a stray `head -c`) was trusted because it was not empty:
    every classifier start then failed with ONNX Runtime's INVALID_PROTOBUF, and `pyrocast up` with it, with no hint.
    The cache keeps each file's digest; a file that differs is downloaded again."""
    import logging

    import onnxruntime as ort

    from pyrocast.model.bundle import FP32

    caplog.set_level(logging.WARNING, logger="pyrocast.registry.models")
    _register(mlflow_settings, tmp_path)
    models.set_alias(mlflow_settings, "champion", "1")
    cached = models.cache_dir(mlflow_settings, "1") / FP32
    whole = cached.read_bytes()
    for ref in ("1", "champion"):  # a version number is read from the cache without the registry: checked too
        cached.write_bytes(whole[: len(whole) // 2])
        bundle = models.fetch_bundle(mlflow_settings, ref)
        assert (bundle.root / FP32).read_bytes() == whole
        ort.InferenceSession(str(bundle.root / FP32), providers=["CPUExecutionProvider"])
    assert "is damaged" in caplog.text and "downloaded again" in caplog.text
    # A cache from before the digests (no manifest) cannot be checked: the next verified download replaces it (it
    # was kept, and the fresh copy thrown away).
    (cached.parent / models.CACHE_MANIFEST).unlink()
    cached.write_bytes(whole[: len(whole) // 2])
    assert models.verify_version(mlflow_settings, "1") == []
    assert cached.read_bytes() == whole and (cached.parent / models.CACHE_MANIFEST).exists()
