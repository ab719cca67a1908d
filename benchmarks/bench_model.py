"""Model benchmark: ONNX FP32 vs torch eager, INT8 vs FP32 (latency at batch 1 and 32), sizes, accuracy deltas.

Models, in one run:
* the trained bundle in the data directory (the newest `runs/*/bundle` with torch weights), when there is one;
* otherwise EfficientNet-Lite0, pretrained, at 224 px with its head fitted in seconds (logistic regression
  on frozen features of the real training tiles), exported exactly as training exports;
* the small CNN at 64 px, trained for a few epochs (a second point: tiny networks quantize differently).

Accuracy is measured on the real tiles' valid folder (/work/shared/data/wildfire-tiles, or
PYROCAST_REAL_TILES); without them, on synthetic tiles (then accuracy says little, latency still holds).
Latency: 2 threads for torch and ONNX Runtime, median of repeats. The whole run takes about 2 minutes.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_TILES = Path(os.environ.get("PYROCAST_REAL_TILES", REPO.parent / "shared" / "data" / "wildfire-tiles"))

Row = tuple[str, float | str, str]
REPEATS = 12  # timing rounds at batch 1 (a third of them at batch 32): torch eager at batch 32 is the slow part


@dataclass
class QuickModel:
    """What export needs of a trained model (the shape of pyrocast.model.train.TrainedModel)."""

    module: Any
    net: Any
    spec: Any
    params: dict[str, Any] = field(default_factory=dict)


def _fallback_tiles(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """Textured green 'forest' (wildfire) and grey 'town' tiles, for machines without the real tiles."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = [
        Image.fromarray(
            np.clip(rng.normal([45, 95, 40] if y else [140, 135, 130], 25, (128, 128, 3)), 0, 255).astype(np.uint8)
        )
        for y in labels
    ]
    return images, labels


def _load_split(split: str) -> tuple[list[Image.Image], np.ndarray]:
    from pyrocast.errors import InvalidInputError
    from pyrocast.model.evaluate import read_tile

    images, labels = [], []
    for label, cls in enumerate(("nowildfire", "wildfire")):
        folder = REAL_TILES / split / cls
        for f in sorted(folder.glob("*.jp*g")) if folder.is_dir() else []:
            try:
                images.append(read_tile(f))
            except InvalidInputError:
                continue
            labels.append(label)
    return images, np.array(labels, dtype=np.int64)


def _data() -> tuple[list[Image.Image], np.ndarray, list[Image.Image], np.ndarray, str]:
    """(train images, labels, eval images, labels, where they come from)."""
    train, ytr = _load_split("train")
    valid, yva = _load_split("valid")
    if len(train) and len(valid):
        return train, ytr, valid, yva, f"real tiles ({REAL_TILES.name}/valid, n={len(valid)})"
    train, ytr = _fallback_tiles(96, seed=1)
    valid, yva = _fallback_tiles(64, seed=2)
    return train, ytr, valid, yva, "synthetic tiles (real tiles not found)"


def _features(trunk: Any, images: list[Image.Image], spec: Any) -> np.ndarray:
    import torch

    from pyrocast.model.preprocess import preprocess_batch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 32):
            out.append(trunk(torch.from_numpy(preprocess_batch(images[i : i + 32], spec))).numpy())
    return np.concatenate(out)


def effnet_quick(train: list[Image.Image], y: np.ndarray) -> Any:
    """EfficientNet-Lite0 (ImageNet weights) at 224 px, head = logistic regression on frozen features."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from pyrocast.model.networks import NetworkConfig, build_network
    from pyrocast.model.preprocess import PreprocessSpec

    cfg = NetworkConfig("effnet_lite0", finetune="head")
    net = build_network(cfg, pretrained=True).eval()
    spec = PreprocessSpec(size=224)
    feats = _features(net.trunk, train, spec)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y)
    # Two logits whose softmax equals the logistic model: z1 - z0 = w.x + b.
    w = torch.from_numpy(lr.coef_[0].astype(np.float32))
    b = float(lr.intercept_[0])
    with torch.no_grad():
        net.tail.fc.weight.copy_(torch.stack([-w / 2, w / 2]))
        net.tail.fc.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return QuickModel(net, cfg, spec, {"head": "logistic regression on frozen features"})


def small_cnn_quick(train: list[Image.Image], y: np.ndarray, epochs: int = 8, size: int = 64) -> Any:
    """The small CNN (width 16) trained from scratch for a few epochs with flips."""
    import torch

    from pyrocast.model.networks import NetworkConfig, build_network
    from pyrocast.model.preprocess import PreprocessSpec, preprocess_batch

    torch.manual_seed(0)
    cfg = NetworkConfig("small_cnn", width=16, dropout=0.2)
    net = build_network(cfg, pretrained=False)
    spec = PreprocessSpec(size=size)
    x = torch.from_numpy(preprocess_batch(train, spec))
    t = torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(t), generator=g).split(32):
            xb = x[idx]
            if torch.rand(1, generator=g).item() < 0.5:
                xb = xb.flip(3)
            xb = torch.rot90(xb, int(torch.randint(0, 4, (1,), generator=g)), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(net(xb), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return QuickModel(net, cfg, spec, {"epochs": epochs})


def trained_bundle() -> Path | None:
    """The newest complete bundle with torch weights in the data directory, if any."""
    from pyrocast.model.bundle import missing_files
    from pyrocast.settings import get_settings

    root = get_settings().root
    candidates = [*root.glob("runs/*/bundle"), *root.glob("cache/models/*/*")]  # run folders, registry cache
    found = [p for p in candidates if not missing_files(p) and (p / "model.pt").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _rows(tag: str, m: dict[str, Any], precision: str, reason: str) -> list[Row]:
    lat, acc, size = m["latency_ms"], m["accuracy"], m["size_mb"]
    rows: list[Row] = [
        (f"{tag} torch eager latency b1", lat["torch"]["batch_1"], "ms"),
        (f"{tag} ONNX FP32 latency b1", lat["fp32"]["batch_1"], "ms"),
        (f"{tag} ONNX FP32 / torch speed-up b1", m["speedup_fp32_vs_torch"]["batch_1"], "x"),
        (f"{tag} ONNX FP32 / torch speed-up b32", m["speedup_fp32_vs_torch"]["batch_32"], "x"),
        (f"{tag} accuracy torch", acc["torch"], f"n={m['n_eval']}"),
        (f"{tag} accuracy delta ONNX FP32 - torch", (acc["fp32"] - acc["torch"]) * 100, "points"),
        (f"{tag} size FP32", size["fp32"], "MB"),
    ]
    if "int8" in acc:
        rows += [
            (f"{tag} ONNX INT8 latency b1", lat["int8"]["batch_1"], "ms"),
            (f"{tag} INT8 / FP32 speed-up b1", m["speedup_int8_vs_fp32"]["batch_1"], "x (target >= 1.5)"),
            (f"{tag} INT8 / FP32 speed-up b32", m["speedup_int8_vs_fp32"]["batch_32"], "x"),
            (f"{tag} accuracy delta INT8 - FP32", (acc["int8"] - acc["fp32"]) * 100, "points (target >= -1)"),
            (f"{tag} INT8 agreement with torch", m["agreement_with_torch"]["int8"], "share"),
            (f"{tag} size INT8", size["int8"], "MB"),
        ]
    rows.append((f"{tag} serves", f"{precision}: {reason}", ""))
    return rows


def _fit_threads() -> int:
    """Threads for the (unmeasured) fitting phases: 1 when the machine is already busy, where two torch
    threads fighting other processes for 2 cores run many times slower than one."""
    return 1 if os.getloadavg()[0] > (os.cpu_count() or 2) else 2


def run() -> list[Row]:
    from pyrocast.model.bundle import load_bundle
    from pyrocast.model.export import export_bundle, load_torch_module, measure, torch_threads
    from pyrocast.model.preprocess import preprocess_batch

    t0 = time.perf_counter()
    train, ytr, valid, yva, source = _data()
    rows: list[Row] = [
        ("evaluation tiles", source, ""),
        ("load average at start (1 min)", os.getloadavg()[0], f"on {os.cpu_count()} cores"),
    ]
    calib = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:32]]
    with tempfile.TemporaryDirectory(prefix="pyrocast-bench-") as tmp:
        found = trained_bundle()
        models: list[tuple[str, Any]] = []
        if found is not None:
            b = load_bundle(found)
            m = measure(load_torch_module(b), found, b.spec, preprocess_batch(valid, b.spec), yva, repeats=REPEATS)
            rows += _rows(f"trained {b.meta.get('network', {}).get('kind', '?')}", m, *_choice(b.meta))
        else:
            t = time.perf_counter()
            with torch_threads(_fit_threads()):
                models.append(("effnet_lite0@224", effnet_quick(train, ytr)))
            rows.append(("effnet_lite0 head fit", time.perf_counter() - t, "s"))
        t = time.perf_counter()
        with torch_threads(_fit_threads()):
            models.append(("small_cnn@64", small_cnn_quick(train, ytr)))
        rows.append(("small_cnn training", time.perf_counter() - t, "s"))
        for tag, trained in models:
            t = time.perf_counter()
            res = export_bundle(
                trained, calib, valid, yva, Path(tmp) / tag.replace("@", "_"), {"name": tag}, repeats=REPEATS
            )
            rows.append((f"{tag} export + measure", time.perf_counter() - t, "s"))
            rows += _rows(tag, res.measurements, res.serve_precision, res.reason)
    rows.append(("load average at end (1 min)", os.getloadavg()[0], f"on {os.cpu_count()} cores"))
    rows.append(("benchmark wall time", time.perf_counter() - t0, "s"))
    return rows


def _choice(meta: dict[str, Any]) -> tuple[str, str]:
    return str(meta.get("serve_precision", "fp32")), str(meta.get("serve_precision_reason", ""))


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:50s} {value if isinstance(value, str) else f'{value:.4g}'} {unit}")
