"""Export: a real tiny trained CNN to FP32 and INT8 ONNX bundles, measured against torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrocast.errors import InvalidInputError
from pyrocast.model.bundle import INT8, OnnxClassifier, load_bundle, missing_files
from pyrocast.model.export import ExportResult, choose_precision, export_bundle, load_torch_module, torch_predict
from pyrocast.model.preprocess import preprocess_batch
from pyrocast.monitoring.reference import read_reference, reference_rows
from tests.support.tiny_training import tiles, tiny_trained


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    trained = tiny_trained()
    calib, _ = tiles(24, seed=2)
    ev, y = tiles(40, seed=3)
    out = tmp_path_factory.mktemp("export") / "bundle"
    return export_bundle(trained, calib, ev, y, out, {"name": "pyrocast-test", "version": "7"}, repeats=3, threads=1)


def test_bundle_is_complete_and_described(exported: ExportResult) -> None:
    root = exported.root
    assert missing_files(root) == []
    assert {p.name for p in root.iterdir()} == {"model.onnx", INT8, "preprocess.json", "meta.json", "model.pt"}
    assert not list(root.parent.glob(".bundle.tmp-*"))  # the temporary folder was renamed, not left behind
    b = load_bundle(root)
    assert b.name == "pyrocast-test" and b.version == "7"  # the caller's meta is kept
    assert b.meta["network"]["kind"] == "small_cnn"
    assert b.meta["serve_precision"] in ("fp32", "int8") and b.meta["serve_precision_reason"]
    m = b.meta["export"]
    assert set(m["accuracy"]) == {"torch", "fp32", "int8"}
    assert m["n_eval"] == 40 and m["threads"] == 1
    for k in ("torch", "fp32", "int8"):
        assert m["latency_ms"][k]["batch_1"] > 0 and m["latency_ms"][k]["batch_32"] > 0
    assert m["size_mb"]["int8"] < m["size_mb"]["fp32"]
    json.dumps(b.meta, allow_nan=False)


def test_onnx_matches_torch_at_any_batch_size(exported: ExportResult) -> None:
    trained = tiny_trained()
    clf = OnnxClassifier(exported.bundle, "fp32")
    images, _ = tiles(7, seed=9)
    x = preprocess_batch(images, exported.bundle.spec)
    want = torch_predict(trained.module, x)
    for n in (1, 3, 7):  # dynamic batch
        assert np.allclose(clf.predict_proba(x[:n]), want[:n], atol=1e-5)
    assert exported.measurements["max_abs_dp_vs_torch"]["fp32"] < 1e-4


def test_int8_agrees_on_most_decisions(exported: ExportResult) -> None:
    m = exported.measurements
    assert m["agreement_with_torch"]["int8"] >= 0.9
    assert m["accuracy"]["int8"] >= m["accuracy"]["fp32"] - 0.1
    images, _ = tiles(16, seed=11)
    x = preprocess_batch(images, exported.bundle.spec)
    p8 = OnnxClassifier(exported.bundle, "int8").predict_proba(x)
    p32 = OnnxClassifier(exported.bundle, "fp32").predict_proba(x)
    assert np.mean((p8 >= 0.5) == (p32 >= 0.5)) >= 0.9


def test_every_session_runs_with_quiet_threads_so_export_times_int8_as_served(exported: ExportResult) -> None:
    # Export times FP32 and INT8 in turn: spinning threads of one session slowed the next one down to its speed
    # (the 8-view model measured 0.95x for INT8 instead of 2.3x, and shipped FP32). Timing itself belongs to the
    # benchmarks; this pins the configuration that made the measurement honest.
    for precision in ("fp32", "int8"):
        opts = OnnxClassifier(exported.bundle, precision).session.get_session_options()  # type: ignore[arg-type]
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    explicit = OnnxClassifier(exported.bundle, "fp32", config={"session.intra_op.allow_spinning": "1"})
    assert explicit.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_torch_weights_reload(exported: ExportResult) -> None:
    module = load_torch_module(exported.bundle)
    images, _ = tiles(4, seed=12)
    x = torch.from_numpy(preprocess_batch(images, exported.bundle.spec))
    with torch.no_grad():
        assert torch.allclose(module(x), tiny_trained().module(x), atol=1e-6)


def _m(speed: float, acc32: float, acc8: float) -> dict:
    return {"n_eval": 100, "accuracy": {"fp32": acc32, "int8": acc8}, "speedup_int8_vs_fp32": {"batch_1": speed}}


def test_precision_rule() -> None:
    assert choose_precision(_m(1.8, 0.97, 0.965))[0] == "int8"
    slow = choose_precision(_m(1.3, 0.97, 0.97))
    assert slow[0] == "fp32" and "1.30x" in slow[1] and "speed-up" in slow[1]
    lossy = choose_precision(_m(2.0, 0.97, 0.95))
    assert lossy[0] == "fp32" and "point" in lossy[1]
    assert choose_precision({"accuracy": {"fp32": 0.9}, "int8_error": "boom"}) == ("fp32", "no INT8 graph (boom)")


def test_fp32_only_and_replacing_a_bundle(tmp_path: Path) -> None:
    trained = tiny_trained()
    ev, y = tiles(8, seed=4)
    out = tmp_path / "b"
    reference = reference_rows(zip(ev, y, strict=True))
    first = export_bundle(
        trained, [], ev, y, out, {"version": "1"}, int8=False, repeats=1, threads=1, reference=reference
    )
    assert first.serve_precision == "fp32" and "no INT8" in first.reason
    assert not (out / INT8).exists()
    stored = read_reference(out)  # the drift reference is written into the bundle with it
    assert stored is not None and [r["label"] for r in stored] == [r["label"] for r in reference]
    assert [r["brightness"] for r in stored] == pytest.approx([r["brightness"] for r in reference], abs=1e-9)
    assert first.bundle.meta["reference"]["tiles"] == len(reference)
    # A failing export leaves the bundle that was there untouched, and no temporary folder behind.
    with pytest.raises(InvalidInputError, match="calibration needs"):
        export_bundle(trained, [], ev, y, out, {"version": "2"}, repeats=1, threads=1)
    assert load_bundle(out).version == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with pytest.raises(InvalidInputError, match="one label each"):
        export_bundle(trained, ev, ev, y[:3], out, {}, repeats=1)
