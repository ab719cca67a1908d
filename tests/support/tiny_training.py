"""A tiny trained model and tiles for evaluation/export/explain tests: trained for real, in about a second.

`tiles(n)` draws textured 64 px tiles with class-typical colours (dense green "forest" = wildfire, grey
"town" with bright blocks = nowildfire); `tiny_trained()` trains the project's small CNN (width 4, 32 px
input) on them and caches the result for the test session; `write_kaggle_folder()` lays tiles out as
{split}/{class}/{lon},{lat}.jpg.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pyrocast.model.preprocess import PreprocessSpec

SIZE = 32


def tiles(n: int, seed: int = 0, px: int = 64) -> tuple[list[Image.Image], np.ndarray]:
    """n tiles alternating wildfire (1) and nowildfire (0)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = (i + 1) % 2
        if label:
            base = rng.normal([45, 95, 40], 12, (px, px, 3))
            blot = rng.integers(0, px - 16, 2)
            base[blot[0] : blot[0] + 16, blot[1] : blot[1] + 16] += [50, 10, -10]  # a burn scar
        else:
            base = rng.normal([140, 135, 130], 20, (px, px, 3))
            for _ in range(3):
                y, x = rng.integers(0, px - 10, 2)
                base[y : y + 10, x : x + 10] = rng.integers(180, 255)  # roofs
        images.append(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
        labels.append(label)
    return images, np.array(labels)


@dataclass
class TinyTrained:
    """The shape of pyrocast.model.train.TrainedModel that evaluation and export rely on."""

    module: Any
    net: Any
    spec: PreprocessSpec
    params: dict[str, Any] = field(default_factory=dict)
    valid_metrics: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def tiny_trained(steps: int = 40) -> TinyTrained:
    import torch

    from pyrocast.model.networks import NetworkConfig, build_network
    from pyrocast.model.preprocess import preprocess_batch

    torch.manual_seed(0)
    # One thread: on a shared, busy 2-core machine two threads spin against each other (20x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = NetworkConfig("small_cnn", width=4, dropout=0.0)
    net = build_network(cfg, pretrained=False)
    spec = PreprocessSpec(size=SIZE)
    images, labels = tiles(64, seed=1)
    x = torch.from_numpy(preprocess_batch(images, spec))
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for step in range(steps):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(step))[:32]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    torch.set_num_threads(threads)
    return TinyTrained(net, cfg, spec, {"lr": 1e-2})


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_kaggle_folder(root: Path, per_split: dict[str, int], seed: int = 0) -> list[Path]:
    """Tiles as {split}/{class}/{lon},{lat}.jpg under root (lat 45.x-52.x so several bands appear)."""
    written = []
    k = 0
    for s, (split, n) in enumerate(per_split.items()):
        images, labels = tiles(n, seed=seed + s)
        for img, label in zip(images, labels, strict=True):
            cls = "wildfire" if label else "nowildfire"
            lon, lat = -73.0 - 0.01 * k, 45.5 + (k % 7)
            p = root / split / cls / f"{lon:.4f},{lat:.4f}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(jpeg(img))
            written.append(p)
            k += 1
    return written
