"""Which dataset a training run uses, and its tiles as arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyrocast.data.access import evaluation_view, training_view
from pyrocast.data.layout import Dataset
from pyrocast.errors import HeldOutAccessError, PyrocastError
from pyrocast.geo import grid_cell
from pyrocast.model.data import PREPARED, clear_cache, load_arrays, preparation_info, prepare_dataset
from pyrocast.settings import Settings
from tests.support.learnable import write_learnable_tiles as write_tiles


def test_the_current_dataset_must_exist_and_be_split(settings: Settings) -> None:
    with pytest.raises(PyrocastError, match="no dataset"):
        prepare_dataset(settings, None)
    src = settings.root.parent / "src"
    write_tiles(src, {"unsplit": 30})
    from pyrocast.data.kaggle import import_kaggle

    import_kaggle(src, Dataset(settings.dataset_dir), settings)
    with pytest.raises(PyrocastError, match="pyrocast data split"):
        prepare_dataset(settings, None)


def test_a_folder_without_test_split_is_imported_and_split_spatially(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    write_tiles(src, {"train": 40, "valid": 20})
    (src / "train" / "wildfire" / "-70.1,46.1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "README.md").write_text("not a tile")

    root = prepare_dataset(settings, src)
    assert root.parent == settings.root / "work"
    info = preparation_info(root)
    assert info["spatially_split"] and info["quarantined"] == 1
    assert "-70.1,46.1.jpg" in json.dumps(info["quarantined_files"])
    ds = Dataset(root)
    assert len(ds) == 60
    splits = {r.split for r in ds}
    assert splits == {"train", "valid", "test"}
    # no place (10 km cell) in two splits
    cell_split: dict = {}
    for r in ds:
        cell = grid_cell(r.place, settings.split.cell_km)
        assert cell_split.setdefault(cell, r.split) == r.split
    # the source is untouched, and the same folder gives the same working dataset without a new import
    assert not (src / "test").exists()
    stamp = (root / PREPARED).stat().st_mtime_ns
    assert prepare_dataset(settings, src) == root
    assert (root / PREPARED).stat().st_mtime_ns == stamp


def test_a_folder_with_its_own_test_split_keeps_it(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    write_tiles(src, {"train": 20, "valid": 8, "test": 8})
    root = prepare_dataset(settings, src)
    assert not preparation_info(root)["spatially_split"]
    assert sum(r.split == "test" for r in Dataset(root)) == 8


@pytest.mark.parametrize(
    ("per_split", "share", "match"),
    [({"train": 12, "valid": 4}, 1.0, "only wildfire"), ({"train": 10}, 0.0, "only nowildfire")],
)
def test_one_class_data_is_refused(settings: Settings, tmp_path: Path, per_split, share, match) -> None:
    src = tmp_path / "tiles"
    write_tiles(src, per_split, wildfire_share=share)
    with pytest.raises(PyrocastError, match=match):
        prepare_dataset(settings, src)
    assert not list((settings.root / "work").glob("*/prepared.json"))  # nothing half-built is kept


def test_empty_or_missing_folders_are_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(PyrocastError, match="not a folder"):
        prepare_dataset(settings, tmp_path / "nope")
    (tmp_path / "empty" / "train" / "wildfire").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "nowildfire").mkdir(parents=True)
    with pytest.raises(PyrocastError, match=r"no usable tiles|empty"):
        prepare_dataset(settings, tmp_path / "empty")


def test_arrays_are_decoded_once_and_the_test_split_is_out_of_reach(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "tiles"
    write_tiles(src, {"train": 10, "valid": 6, "test": 6})
    root = prepare_dataset(settings, src)
    clear_cache()
    view = training_view(root)
    x, y, recs = load_arrays(view, "train", 24)
    assert x.shape == (10, 24, 24, 3) and x.dtype == np.uint8
    assert y.tolist() == [int(r.label == "wildfire") for r in recs]
    assert load_arrays(view, "train", 24)[0] is x  # cached
    assert load_arrays(view, "train", 32)[0].shape[1] == 32
    with pytest.raises(HeldOutAccessError):
        load_arrays(view, "test", 24)
    assert len(load_arrays(evaluation_view(root), "test", 24)[1]) == 6
