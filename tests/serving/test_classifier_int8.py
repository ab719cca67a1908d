"""The classifier started at INT8: it says so, agrees with FP32 on real tiles, and refuses a bundle without INT8.

The bundle is the session's tiny CNN rebiased to be undecided (probabilities spread around 0.5, so a
quantization error shows), quantized the way export does it (`quantize_int8`: static QDQ, calibrated).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pyrocast.errors import ServiceUnavailableError
from pyrocast.model.bundle import FP32, INT8, load_bundle
from pyrocast.model.export import quantize_int8
from pyrocast.model.preprocess import preprocess_batch
from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.settings import Settings
from tests.conftest import REAL_TILES
from tests.serving.conftest import encode, tile_image
from tests.support.bundles import rebias_bundle

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

# Largest |P_int8 - P_fp32| accepted per tile. Measured on this graph: at most 0.004 on 12 real tiles (0.0005 on
# the synthetic ones), while FP32's answers spread over 0.053 (0.077): a graph quantized wrongly (bad scales, a
# dropped bias) misses by far more than the tolerance, a sound one stays well inside it.
INT8_TOLERANCE = 0.01


def _tiles(n: int) -> list[bytes]:
    """n JPEGs: real tiles where the shared folder is present (train and valid), else noisy synthetic ones."""
    paths = sorted(REAL_TILES.glob("*/*/*.jpg"))
    if len(paths) >= n:
        step = len(paths) // n  # both classes and both splits, not the first n of one folder
        return [p.read_bytes() for p in paths[::step][:n]]
    return [encode(tile_image(seed, 350)) for seed in range(n)]


@pytest.fixture(scope="module")
def int8_bundle(bundle_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle version "8": v1's graph with its +6 wildfire bias removed, plus its calibrated INT8 graph."""
    import io

    root = rebias_bundle(bundle_dirs["1"], tmp_path_factory.mktemp("int8") / "bundle", version="8", bias=-6.0)
    spec = load_bundle(root).spec
    calib = preprocess_batch([Image.open(io.BytesIO(b)) for b in _tiles(16)], spec)
    quantize_int8(root / FP32, root / INT8, calib)
    return root


@pytest.fixture(scope="module")
def services(
    int8_bundle: Path, bundle_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, procs.ServiceProcess | ServiceUnavailableError]]:
    """FP32 and INT8 services on the same bundle, an INT8 start on a bundle without INT8 and a start on a GPU
    this machine does not have, all in parallel."""
    s = Settings(data_dir=tmp_path_factory.mktemp("int8-serving") / "data")
    s.ensure_dirs()
    started = {
        "fp32": procs.start_classifier(
            s, port=free_port(), bundle_dir=int8_bundle, precision="fp32", name="fp32", wait=False
        ),
        "int8": procs.start_classifier(
            s, port=free_port(), bundle_dir=int8_bundle, precision="int8", name="int8", wait=False
        ),
        "no-int8": procs.start_classifier(
            s, port=free_port(), bundle_dir=bundle_dirs["1"], precision="int8", name="no-int8", wait=False
        ),
        "cuda": procs.start_classifier(
            s.model_copy(update={"serving": s.serving.model_copy(update={"device": "cuda"})}),
            port=free_port(),
            bundle_dir=bundle_dirs["1"],
            precision="fp32",
            name="cuda",
            wait=False,
        ),
    }
    out: dict[str, procs.ServiceProcess | ServiceUnavailableError] = {}
    try:
        for key, svc in started.items():
            try:
                out[key] = svc.wait_healthy(120)
            except ServiceUnavailableError as exc:  # wait_healthy has stopped it already
                out[key] = exc
        yield out
    finally:
        for svc in started.values():
            svc.stop()


def _probabilities(svc: procs.ServiceProcess, tiles: list[bytes]) -> tuple[np.ndarray, set[str]]:
    files = [("images", (f"t{i}.jpg", t, "image/jpeg")) for i, t in enumerate(tiles)]
    r = httpx.post(svc.url + "/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == len(tiles)
    return np.array([it["probability"] for it in items]), {it["precision"] for it in items}


def test_int8_service_says_int8_and_agrees_with_fp32(services: dict, int8_bundle: Path) -> None:
    fp32, int8 = services["fp32"], services["int8"]
    assert isinstance(fp32, procs.ServiceProcess), fp32
    assert isinstance(int8, procs.ServiceProcess), int8
    info = httpx.get(int8.url + "/model/info", timeout=10).json()
    assert (info["precision"], info["version"]) == ("int8", "8")
    assert httpx.get(fp32.url + "/model/info", timeout=10).json()["precision"] == "fp32"
    tiles = _tiles(12)
    p32, says32 = _probabilities(fp32, tiles)
    p8, says8 = _probabilities(int8, tiles)
    assert (says32, says8) == ({"fp32"}, {"int8"})
    # Tiles the model tells apart by more than the tolerance: else agreement would prove nothing.
    assert np.ptp(p32) > 3 * INT8_TOLERANCE, p32
    gap = np.abs(p8 - p32)
    assert gap.max() <= INT8_TOLERANCE, {"max_abs_dp": float(gap.max()), "fp32": p32.tolist(), "int8": p8.tolist()}
    assert not np.array_equal(p8, p32)  # it really ran the quantized graph


def test_int8_without_an_int8_graph_does_not_start(services: dict, bundle_dirs: dict[str, Path]) -> None:
    err = services["no-int8"]
    assert isinstance(err, ServiceUnavailableError), "an INT8 service started on a bundle without INT8"
    text = str(err)
    # Reported at once (BentoML would restart the failing worker forever), naming the missing graph and bundle.
    assert text.startswith("no-int8 failed to start:"), text
    assert "has no model.int8.onnx" in text.splitlines()[0] and str(bundle_dirs["1"]) in text, text


def test_a_gpu_service_on_a_machine_without_one_does_not_start(services: dict) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime has CUDA")
    err = services["cuda"]
    assert isinstance(err, ServiceUnavailableError), "a cuda service started on a machine without CUDA"
    text = str(err)
    assert text.startswith("cuda failed to start:") and "no CUDAExecutionProvider" in text, text
