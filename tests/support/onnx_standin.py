"""Stand-in models and tiles for registry and pipeline tests, built in milliseconds without torch.

`make_standin_bundle(root, kind)` writes a complete serving bundle whose ONNX graph is built by hand
(GlobalAveragePool -> Flatten -> Gemm): `kind="good"` calls a tile wildfire when it is dark red (as the
tiles of `write_tiles` are), `"always_fire"` and `"never_fire"` give constant answers, `"inverted"` is
always wrong on those tiles. `write_tiles(root, {"train": 20, "test": 10})` lays out {split}/{class}/{lon},{lat}.jpg
with class-typical colours: wildfire tiles dark (red ~60), nowildfire tiles bright grey (~150).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pyrocast.model.bundle import FP32, write_bundle_files
from pyrocast.model.preprocess import PreprocessSpec
from tests.support.tiles import write_labelled

SIZE = 16

# Normalized red channel mean: wildfire tiles ~ -1.07, nowildfire ~ +0.45; the "good" model cuts at -0.3.
_KINDS: dict[str, tuple[list[float], list[float]]] = {
    # (weights of the wildfire logit for R, G, B), (bias nowildfire, bias wildfire)
    "good": ([-4.0, 0.0, 0.0], [0.0, -1.2]),
    "inverted": ([4.0, 0.0, 0.0], [0.0, 1.2]),
    "always_fire": ([0.0, 0.0, 0.0], [0.0, 20.0]),
    "never_fire": ([0.0, 0.0, 0.0], [0.0, -20.0]),
}


def standin_onnx(kind: str = "good") -> bytes:
    """The ONNX graph (input "input" (N,3,S,S) -> output "logits" (N,2)) of a stand-in model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b = _KINDS[kind]
    weights = np.zeros((3, 2), np.float32)
    weights[:, 1] = w1
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"standin-{kind}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array(b, np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_standin_bundle(root: Path, kind: str = "good", version: str = "0") -> Path:
    """A complete bundle folder for a stand-in model; returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / FP32).write_bytes(standin_onnx(kind))
    write_bundle_files(
        root,
        PreprocessSpec(size=SIZE),
        {"name": "unregistered", "version": version, "network": f"standin-{kind}", "serve_precision": "fp32"},
    )
    return root


def tile_jpeg(label: int, rng: np.random.Generator, px: int = 32) -> bytes:
    base = [60, 40, 30] if label else [150, 150, 150]
    arr = np.clip(rng.normal(base, 10, (px, px, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_tiles(root: Path, per_split: dict[str, int], seed: int = 0, wildfire_share: float = 0.5) -> list[Path]:
    """Tiles in the Kaggle layout under root; each split gets its count, `wildfire_share` of them wildfire."""
    return write_labelled(root, per_split, tile_jpeg, seed=seed, wildfire_share=wildfire_share)
