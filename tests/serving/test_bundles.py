"""Which bundle and precision a service serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pyrocast.errors import PyrocastError
from pyrocast.model.bundle import INT8, OnnxClassifier, load_bundle
from pyrocast.serving.bundles import ENV_BUNDLE, batching_enabled, resolve_bundle, resolve_precision
from pyrocast.settings import Settings


@pytest.fixture
def folder(bundle_dirs: dict[str, Path]) -> Path:
    return bundle_dirs["1"]


def test_precision_choice(folder: Path, tmp_path: Path) -> None:
    b = load_bundle(folder)
    assert resolve_precision(b, "auto") == "fp32" and resolve_precision(b, "fp32") == "fp32"
    with pytest.raises(PyrocastError, match=r"model\.int8\.onnx"):
        resolve_precision(b, "int8")  # asked for INT8 and there is none: an error, never a silent FP32
    with pytest.raises(PyrocastError, match="unknown precision"):
        resolve_precision(b, "fp16")
    from onnxruntime.quantization import quantize_dynamic

    copy = tmp_path / "with-int8"
    shutil.copytree(folder, copy)
    quantize_dynamic(str(copy / "model.onnx"), str(copy / INT8))
    b8 = load_bundle(copy)
    assert resolve_precision(b8, "int8") == "int8"
    b8.meta["serve_precision"] = "int8"
    assert resolve_precision(b8, "auto") == "int8"  # training said INT8 kept accuracy
    x = np.zeros((3, 3, 32, 32), np.float32)
    p32 = OnnxClassifier(b8, "fp32").predict_proba(x)
    p8 = OnnxClassifier(b8, "int8").predict_proba(x)
    assert np.allclose(p32, p8, atol=0.05)


def test_bundle_folder_from_the_environment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BUNDLE, str(folder))
    assert resolve_bundle(Settings()).version == "1"
    monkeypatch.setenv(ENV_BUNDLE, str(folder.parent / "nope"))
    with pytest.raises(PyrocastError, match="incomplete"):
        resolve_bundle(Settings())


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False), ("false", False)])
def test_batching_switch(value: str | None, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("PYROCAST_SERVE_BATCHING", raising=False)
    else:
        monkeypatch.setenv("PYROCAST_SERVE_BATCHING", value)
    assert batching_enabled() is on


def test_views_come_from_the_networks_test_time_averaging(tmp_path: Path) -> None:
    from pyrocast.model.bundle import Bundle
    from pyrocast.model.preprocess import PreprocessSpec

    def views(meta: dict) -> int:
        return Bundle(tmp_path, PreprocessSpec(), meta).views

    assert views({"network": {"kind": "effnet_lite0", "tta": 8}}) == 8
    assert views({"network": {"kind": "small_cnn"}}) == 1
    assert views({"network": "effnet_lite0/head (untrained head)"}) == 1  # the benchmark's stand-in
    assert views({}) == 1 and views({"network": {"tta": None}}) == 1 and views({"network": {"tta": "x"}}) == 1
    from pyrocast.serving.bundles import tiles_per_call

    assert tiles_per_call(Bundle(tmp_path, PreprocessSpec(), {"network": {"tta": 8}})) == 2
    assert tiles_per_call(Bundle(tmp_path, PreprocessSpec(), {})) == 16
    assert tiles_per_call(Bundle(tmp_path, PreprocessSpec(), {"network": {"tta": 32}})) == 1
    assert tiles_per_call(Bundle(tmp_path, PreprocessSpec(), {"network": {"tta": 8}}), "cuda") == 64  # whole batches


def test_a_device_this_machine_cannot_use_is_an_error_never_a_silent_cpu(folder: Path) -> None:
    import onnxruntime as ort

    bundle = load_bundle(folder)
    assert OnnxClassifier(bundle, "fp32", device="cpu").device == "cpu"
    with pytest.raises(PyrocastError, match="unknown device 'tpu'"):
        OnnxClassifier(bundle, "fp32", device="tpu")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime has CUDA: the refusal below cannot happen here")
    with pytest.raises(PyrocastError, match="no CUDAExecutionProvider") as err:
        OnnxClassifier(bundle, "fp32", device="cuda")
    assert "onnxruntime-gpu" in (err.value.hint or "") and "PYROCAST_SERVING__DEVICE=cpu" in (err.value.hint or "")
