"""A tiny trained model and tiles for evaluation/export/explain tests: trained for real, in about a second.

`tiles(n)` draws textured 64 px tiles with class-typical colours (dense green "forest" = wildfire, grey
"town" with bright blocks = nowildfire); `tiny_trained()` trains the project's small CNN (width 4, 32 px
input) on them and caches the result for the test session, `tiny_bundle()` exports it once (FP32);
`write_kaggle_folder()` lays tiles out as
{split}/{class}/{lon},{lat}.jpg.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pyrocast.model.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from pyrocast.model.bundle import Bundle
    from pyrocast.model.train import TrainedModel

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


@lru_cache(maxsize=1)
def tiny_trained(steps: int = 40) -> TrainedModel:
    """The project's TrainedModel holding a small CNN fitted to `tiles` (cached for the session)."""
    import torch

    from pyrocast.model.networks import NetworkConfig, build_network
    from pyrocast.model.preprocess import preprocess_batch
    from pyrocast.model.train import TrainedModel

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
    return TrainedModel(module=net, net=cfg, spec=spec, params={"lr": 1e-2})


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


@lru_cache(maxsize=1)
def tiny_bundle() -> Bundle:
    """`tiny_trained()` exported as an FP32-only bundle, once per test session (removed at exit)."""
    import atexit
    import shutil
    import tempfile

    from pyrocast.model.bundle import load_bundle
    from pyrocast.model.export import export_bundle

    tmp = Path(tempfile.mkdtemp(prefix="pyrocast-tiny-bundle-"))
    atexit.register(shutil.rmtree, tmp, True)
    ev, y = tiles(8, seed=3)
    meta = {"name": "pyrocast-tiny", "version": "3"}
    export_bundle(tiny_trained(), [], ev, y, tmp / "bundle", meta, int8=False, repeats=1, threads=1)
    return load_bundle(tmp / "bundle")
