"""Training: learns, reads no test file, is reproducible, caches frozen-trunk outputs, early-stops."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrocast.data.access import forbid_test_reads
from pyrocast.errors import PyrocastError
from pyrocast.model.data import prepare_dataset
from pyrocast.model.preprocess import normalize
from pyrocast.model.profiles import QUICK, Profile
from pyrocast.model.train import TrainedModel, normalize_params, train_model
from pyrocast.settings import Settings
from tests.support.learnable import prepared_learnable, write_learnable_tiles

TINY = replace(QUICK, max_epochs=6, patience=6, tune_epochs=2, sizes=(32,), batch_size=8)
SMALL = {"net": {"kind": "small_cnn", "width": 8}, "lr": 5e-3, "weight_decay": 1e-4, "aug_strength": 0.3, "size": 32}

# Every file opened while a recorder is on (an audit hook cannot be removed, so it is installed once).
_opened: list[str] | None = None


def _record(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_record)


@pytest.fixture
def tiny_root(settings: Settings, tmp_path: Path) -> Path:
    return prepared_learnable(settings, tmp_path / "tiles", {"train": 24, "valid": 10, "test": 10})


def test_trains_without_opening_a_single_test_file(tiny_root: Path, settings: Settings) -> None:
    global _opened
    _opened = []
    try:
        with forbid_test_reads(tiny_root):
            tm = train_model(tiny_root, SMALL, settings, TINY, seed=1)
    finally:
        opened, _opened = _opened, None
    test_dir = os.path.realpath(tiny_root / "test")
    train_dir = os.path.realpath(tiny_root / "train")
    assert any(p.startswith(train_dir + os.sep) for p in opened)  # the recorder saw the training reads
    assert not [p for p in opened if p.startswith(test_dir + os.sep)]
    assert isinstance(tm, TrainedModel)
    assert tm.valid_metrics["n"] == 10 and tm.valid_metrics["accuracy"] >= 0.8
    assert 1 <= tm.best_epoch <= 6 and len(tm.history) >= tm.best_epoch
    assert tm.spec.size == 32 and tm.net.kind == "small_cnn"
    # the returned module is the best epoch's, ready to serve: (N, 3, S, S) -> (N, 2)
    from pyrocast.data.access import evaluation_view
    from pyrocast.model.data import load_arrays

    x, y, _ = load_arrays(evaluation_view(tiny_root), "test", 32)
    with torch.inference_mode():
        pred = tm.module(torch.from_numpy(normalize(x, tm.spec))).argmax(1).numpy()
    assert (pred == y).mean() >= 0.8


def test_same_seed_same_weights(tiny_root: Path, settings: Settings) -> None:
    params = {**SMALL, "epochs": 2}
    a = train_model(tiny_root, params, settings, TINY, seed=3).module.state_dict()
    b = train_model(tiny_root, params, settings, TINY, seed=3).module.state_dict()
    c = train_model(tiny_root, params, settings, TINY, seed=4).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_frozen_trunk_trains_the_head_on_cached_views(tiny_root: Path, settings: Settings) -> None:
    prof = replace(TINY, views=2, jitter_copies=1)
    params = {
        "net": {"kind": "effnet_lite0", "finetune": "head", "tta": 2},
        "lr": 1e-2,
        "weight_decay": 1e-4,
        "aug_strength": 0.5,
        "size": 64,
        "epochs": 2,
    }
    t = time.perf_counter()
    a = train_model(tiny_root, params, settings, prof, seed=0)
    first = time.perf_counter() - t
    cache = settings.root / "cache" / "trunk"
    assert len(list(cache.glob("*.npy"))) == 2 + 1 + 2  # train: 2 views + 1 jittered copy; valid: 2 TTA views
    assert list(cache.glob("trunk-*.onnx"))
    t = time.perf_counter()
    b = train_model(tiny_root, params, settings, prof, seed=0)
    assert time.perf_counter() - t < first  # the second run reuses the exported trunk and its outputs
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # only the head moved: the trunk is still the pretrained one
    from pyrocast.model.networks import NetworkConfig, build_network

    fresh = build_network(NetworkConfig("effnet_lite0"), pretrained=True).trunk.state_dict()
    trunk = a.module.trunk.state_dict()
    assert all(torch.equal(fresh[k], trunk[k]) for k in fresh)
    assert a.valid_metrics["accuracy"] >= 0.8


def test_early_stopping_stops_when_valid_loss_stops_improving(tiny_root: Path, settings: Settings) -> None:
    prof = replace(TINY, max_epochs=30, patience=1)
    tm = train_model(tiny_root, {**SMALL, "lr": 3e-2}, settings, prof, seed=0)
    assert 15 <= len(tm.history) < 30  # never before half the epochs (the one-cycle rate is high there)
    assert len(tm.history) >= tm.best_epoch + 1  # stopped after `patience` epochs without improvement
    losses = [h["valid_loss"] for h in tm.history]
    assert tm.valid_metrics["loss"] == pytest.approx(min(losses))


def test_bad_parameters_and_one_class_training_data_are_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(PyrocastError, match="multiple of 8"):
        normalize_params({**SMALL, "size": 30}, TINY)
    with pytest.raises(PyrocastError, match="aug_strength"):
        normalize_params({**SMALL, "aug_strength": 2}, TINY)
    src = tmp_path / "tiles"
    write_learnable_tiles(src, {"train": 6, "valid": 4, "test": 4}, wildfire_share=0.0)
    write_learnable_tiles(tmp_path / "more", {"test": 4}, seed=1, wildfire_share=1.0)
    for p in (tmp_path / "more").rglob("*.jpg"):
        dst = src / p.relative_to(tmp_path / "more")
        dst.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dst.with_name(f"-60.{len(list(dst.parent.iterdir()))},50.5.jpg"))
    with pytest.raises(PyrocastError, match=r"train split .* no wildfire"):
        prepare_dataset(settings, src)


@pytest.mark.slow
def test_quick_profile_learns_real_tiles_in_under_a_minute(real_tiles: Path, settings: Settings) -> None:
    # About 100 real tiles: the quick profile's network and size, trained once with its epoch budget.
    src = settings.root.parent / "real-subset"
    for split, k in (("train", 32), ("valid", 20)):
        for label in ("wildfire", "nowildfire"):
            files = sorted((real_tiles / split / label).glob("*.jpg"))[:k]
            (src / split / label).mkdir(parents=True, exist_ok=True)
            for f in files:
                (src / split / label / f.name).symlink_to(f)
    root = prepare_dataset(settings, src)
    t = time.perf_counter()
    tm = train_model(root, {**QUICK.seed_params[0], "net": QUICK.networks[0]}, settings, QUICK, seed=42)
    took = time.perf_counter() - t
    assert took < 60, f"{took:.0f} s"
    assert tm.valid_metrics["accuracy"] >= 0.65, tm.valid_metrics


def test_profiles_are_complete() -> None:
    from pyrocast.model.profiles import PROFILES, get_profile

    assert {"quick", "full"} <= set(PROFILES)
    for prof in PROFILES.values():
        assert isinstance(prof, Profile)
        assert prof.n_trials >= 1 and prof.timeout_s > 0 and prof.max_epochs >= prof.tune_epochs
        p = normalize_params({"net": prof.networks[0]}, prof)
        assert p["size"] in prof.sizes
    with pytest.raises(PyrocastError, match="quick"):
        get_profile("medium")
    assert np.isfinite(PROFILES["full"].lr).all()
