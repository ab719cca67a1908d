"""Evaluation: scoring, Kaggle-layout folders with corrupt tiles, and the pipeline's evaluation step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyrocast.data.layout import Dataset
from pyrocast.errors import InvalidInputError
from pyrocast.geo import LonLat
from pyrocast.model.bundle import Bundle
from pyrocast.model.evaluate import (
    TorchClassifier,
    evaluate_folder,
    evaluate_model,
    latitude_band,
    score_bundle,
    score_images,
    tercile_names,
)
from tests.support.tiny_training import jpeg, tiles, tiny_bundle, tiny_trained, write_kaggle_folder


@pytest.fixture
def bundle() -> Bundle:
    return tiny_bundle()


def test_score_images_batches_like_one_call() -> None:
    trained = tiny_trained()
    images, labels = tiles(10, seed=5)
    clf = TorchClassifier(trained)
    p = score_images(clf, images, trained.spec, batch_size=3)
    assert p.shape == (10,) and p.dtype == np.float32
    assert np.allclose(p, score_images(clf, images, trained.spec, batch_size=32), atol=1e-6)
    assert np.mean((p >= 0.5) == (labels == 1)) >= 0.9
    assert score_images(clf, [], trained.spec).shape == (0,)


def test_evaluate_folder_skips_and_counts_corrupt_tiles(bundle: Bundle, tmp_path: Path) -> None:
    folder = tmp_path / "kaggle"
    written = write_kaggle_folder(folder, {"train": 6, "valid": 4, "test": 4})
    (folder / "valid" / "wildfire" / "-70.1,46.2.jpg").write_bytes(written[0].read_bytes()[:200])  # truncated
    (folder / "test" / "nowildfire" / "-70.2,46.3.jpg").write_bytes(b"")  # empty
    (folder / "test" / "nowildfire" / "notes.txt").write_text("not a tile")
    (folder / "test" / "cats").mkdir()
    (folder / "test" / "cats" / "-70.3,46.4.jpg").write_bytes(written[1].read_bytes())
    r = evaluate_folder(bundle, folder)
    assert r["n"] == 14  # every good tile of every split folder
    assert r["splits"] == {"train": 6, "valid": 4, "test": 4}
    assert r["skipped"] == 4
    reasons = " ".join(f["reason"] for f in r["skipped_files"])
    assert "truncated" in reasons and "empty" in reasons and "not an image file" in reasons and "cats" in reasons
    assert (
        r["accuracy"] >= 0.9 and r["model"] == "pyrocast-tiny" and r["version"] == "3" and r["onnx_precision"] == "fp32"
    )
    assert 0.0 <= r["precision"] <= 1.0  # the metric, not overwritten by the graph's precision
    json.dumps(r, allow_nan=False)
    # One split folder given directly ({class}/ files) works too.
    assert evaluate_folder(bundle, folder / "train")["n"] == 6


def test_evaluate_folder_on_real_tiles(bundle: Bundle, real_tiles: Path) -> None:
    r = evaluate_folder(bundle, real_tiles / "valid")
    assert r["n"] + r["skipped"] == 122
    assert 0.0 <= r["accuracy"] <= 1.0


def test_evaluate_folder_bad_input(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a folder"):
        evaluate_folder(bundle, tmp_path / "missing")
    (tmp_path / "empty" / "train" / "wildfire").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="no tiles"):
        evaluate_folder(bundle, tmp_path / "empty")
    bad = tmp_path / "bad" / "train" / "wildfire"
    bad.mkdir(parents=True)
    (bad / "-70,46.jpg").write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="could be decoded"):
        evaluate_folder(bundle, tmp_path / "bad")


def test_score_bundle_is_aligned_and_strict(bundle: Bundle, tmp_path: Path) -> None:
    paths = write_kaggle_folder(tmp_path / "k", {"test": 5})
    p = score_bundle(bundle, paths)
    assert p.shape == (5,)
    assert np.allclose(p, score_bundle(bundle, list(reversed(paths)))[::-1], atol=1e-6)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(InvalidInputError, match=r"bad\.jpg"):
        score_bundle(bundle, [*paths, tmp_path / "bad.jpg"])


def test_slice_helpers() -> None:
    assert latitude_band(45.5) == "44-46°N" and latitude_band(46.0) == "46-48°N"
    names, edges = tercile_names(np.array([1.0, 2, 3, 4, 5, 6]))
    assert names == ["dark", "dark", "medium", "medium", "bright", "bright"] and len(edges) == 2


def _dataset(root: Path, n_test: int = 18) -> Dataset:
    ds = Dataset(root)
    images, labels = tiles(n_test + 6, seed=7)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        split = "test" if i < n_test else "train"
        source = "synthetic" if i % 3 else "kaggle"
        ds.add(
            jpeg(img),
            LonLat(-73.0 + 0.01 * i, 45.2 + 0.5 * (i % 8)),
            "wildfire" if label else "nowildfire",
            split,
            source,
        )
    ds.save()
    return ds


def test_evaluate_model_writes_everything(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "dataset")
    corrupt = ds.in_split("test")[0]
    (tmp_path / "dataset" / corrupt.path).write_bytes(b"\xff\xd8\xff broken")
    r = evaluate_model(tiny_trained(), tmp_path / "dataset", tmp_path / "eval", behaviour_tiles=8)
    assert r.metrics["n"] == 17 and r.metrics["skipped"] == 1
    assert r.metrics["skipped_files"][0]["path"] == corrupt.path
    assert r.metrics["accuracy"] >= 0.9
    assert set(r.slices) == {"latitude_band", "brightness_tercile", "source"}
    assert set(r.slices["source"]) == {"kaggle", "synthetic"}
    assert sum(s["n"] for s in r.slices["source"].values()) == 17
    assert sum(s["n"] for s in r.slices["brightness_tercile"].values()) == 17
    assert len(r.slices["latitude_band"]) >= 3
    assert r.behaviour["n"] == 8 and "rotate_90" in r.behaviour["invariance"]
    assert [p.name for p in r.plots] == ["confusion_matrix.png", "roc_curve.png", "reliability.png", "slices.png"]
    for p in r.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 200
    with r.predictions_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 17 and set(rows[0]) == {"path", "lon", "lat", "label", "prob", "source", "brightness"}
    assert all(0.0 <= float(row["prob"]) <= 1.0 for row in rows)
    saved = json.loads(r.summary_json.read_text())
    assert saved["metrics"]["n"] == 17


def test_evaluate_model_needs_a_test_split(tmp_path: Path) -> None:
    ds = Dataset(tmp_path / "d")
    images, _ = tiles(2)
    ds.add(jpeg(images[0]), LonLat(-73.0, 45.5), "wildfire", "train", "synthetic")
    ds.save()
    with pytest.raises(InvalidInputError, match="no test tiles"):
        evaluate_model(tiny_trained(), tmp_path / "d", tmp_path / "eval")
