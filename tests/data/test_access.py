"""The held-out test split: training code cannot read it, through a view or through a plain open()."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyrocast.data.access import evaluation_view, forbid_test_reads, is_test_read_forbidden, training_view
from pyrocast.data.layout import Dataset
from pyrocast.errors import HeldOutAccessError
from pyrocast.geo import LonLat


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    ds = Dataset(tmp_path / "dataset")
    for i, split in enumerate(["train", "train", "valid", "test", "test"]):
        ds.add(jpeg(i), LonLat(-73.0 - i, 46.0), ("wildfire", "nowildfire")[i % 2], split, "test")
    ds.save()
    return ds


def test_training_view_refuses_the_test_split(dataset: Dataset) -> None:
    view = training_view(dataset.root)
    assert {r.split for r in view.records()} == {"train", "valid"}
    assert len(view.records("train")) == 2
    with pytest.raises(HeldOutAccessError, match="held out"):
        view.records("test")

    test_rec = dataset.in_split("test")[0]
    with pytest.raises(HeldOutAccessError):
        view.read_bytes(test_rec)
    with pytest.raises(HeldOutAccessError):
        view.open_image(test_rec.path)
    # a path that walks into test/ is still test, and so is a link to a test tile from train/
    with pytest.raises(HeldOutAccessError):
        view.read_bytes(f"train/../{test_rec.path}")
    link = dataset.root / "train" / "wildfire" / "-1,1.jpg"
    link.symlink_to(dataset.abspath(test_rec))
    with pytest.raises(HeldOutAccessError):
        view.read_bytes("train/wildfire/-1,1.jpg")

    train_rec = view.records("train")[0]
    assert view.read_bytes(train_rec) == dataset.abspath(train_rec).read_bytes()
    assert view.open_image(train_rec).size == (16, 16)


def test_evaluation_view_reads_the_test_split(dataset: Dataset) -> None:
    view = evaluation_view(dataset.root)
    recs = view.records("test")
    assert len(recs) == 2
    assert view.open_image(recs[0]).size == (16, 16)


def test_forbid_test_reads_blocks_any_open_in_the_process(dataset: Dataset) -> None:
    test_file = dataset.abspath(dataset.in_split("test")[0])
    train_file = dataset.abspath(dataset.in_split("train")[0])
    relative = os.path.relpath(test_file)
    errors: list[BaseException] = []

    def read_in_thread() -> None:
        try:
            test_file.read_bytes()
        except BaseException as exc:
            errors.append(exc)

    with forbid_test_reads(dataset.root):
        assert is_test_read_forbidden(dataset.root)
        with pytest.raises(HeldOutAccessError):
            open(test_file, "rb")  # noqa: SIM115
        with pytest.raises(HeldOutAccessError):
            open(relative, "rb")  # noqa: SIM115
        with pytest.raises(HeldOutAccessError):
            Image.open(test_file)
        with pytest.raises(HeldOutAccessError):
            os.open(test_file, os.O_RDONLY)
        with pytest.raises(HeldOutAccessError):
            np.fromfile(test_file, dtype=np.uint8)
        t = threading.Thread(target=read_in_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and isinstance(errors[0], HeldOutAccessError)
        assert train_file.read_bytes()  # train stays readable
        with forbid_test_reads(dataset.root):  # nesting: the inner exit keeps the outer guard
            pass
        with pytest.raises(HeldOutAccessError):
            test_file.read_bytes()

    assert not is_test_read_forbidden(dataset.root)
    assert test_file.read_bytes()  # evaluation code, outside the guard, may read it
