"""Kaggle import and validation throughput (tiles/s), and what the choices behind them are worth.

Measured on real tiles from ../shared/data/wildfire-tiles when present (else generated JPEG tiles of the
same size): decode serially vs in a pool of 2 worker processes; PIL's draft mode (faster, and whether it
catches truncation as well); validation end to end; import end to end, and the share of fsync in it.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

from PIL import Image

from pyrocast.data.kaggle import import_kaggle
from pyrocast.data.layout import Dataset
from pyrocast.data.validate import PARALLEL_MIN_FILES, WORKERS, inspect_files, map_chunked, use_pool, validate_path
from pyrocast.settings import Settings

REAL = Path(os.environ.get("PYROCAST_REAL_TILES", Path(__file__).resolve().parents[2] / "shared/data/wildfire-tiles"))
COPIES = 7  # 7 x 369 = 2583 files: above the pool threshold, small enough for a shared 2-core box


def _sources() -> list[tuple[str, bytes]]:
    if (REAL / "train").is_dir():
        return [(p.relative_to(REAL).as_posix(), p.read_bytes()) for p in sorted(REAL.glob("*/*/*.jpg"))]
    from tests.support.tiles import jpeg_tile, name

    return [(f"train/{('wildfire', 'nowildfire')[i % 2]}/{name(i)}", jpeg_tile(i)) for i in range(369)]


def _batch(root: Path, sources: list[tuple[str, bytes]], copies: int) -> list[Path]:
    """A Kaggle-layout folder with `copies` shifted copies of each source tile (distinct names)."""
    paths = []
    for k in range(copies):
        for rel, data in sources:
            split, label, fname = rel.split("/")
            lon, lat = (float(x) for x in Path(fname).stem.split(","))
            p = root / split / label / f"{lon + 0.01 * k:.6f},{lat:.6f}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            paths.append(p)
    return paths


def _rate(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _draft_load(data: bytes) -> bool:
    """Decode with JPEG draft (DCT scaling to 1/8): True when it raised, i.e. caught the damage."""
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (img.size[0] // 8, img.size[1] // 8))
        img.load()
    except Exception:
        return True
    return False


def run() -> list[tuple[str, float | str, str]]:
    out: list[tuple[str, float | str, str]] = []
    sources = _sources()
    out.append(("tiles", "real" if (REAL / "train").is_dir() else "generated", ""))
    # The pool only pays with an idle core: read the ratios below against the machine's load.
    out.append(("load average (1 min) / cores", f"{os.getloadavg()[0]:.1f} / {os.cpu_count()}", ""))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmpd = Path(tmp)
        paths = [str(p) for p in _batch(tmpd / "batch", sources, COPIES)]
        n = len(paths)
        serial = _rate(n, lambda: list(map_chunked(inspect_files, paths, lambda p: p, parallel=False)))
        pooled = _rate(n, lambda: list(map_chunked(inspect_files, paths, lambda p: p, parallel=True)))
        out.append((f"decode+hash, serial ({n} files)", serial, "tiles/s"))
        out.append((f"decode+hash, pool of {WORKERS} processes", pooled, "tiles/s"))
        out.append(("pool / serial", pooled / serial, "x"))
        out.append(("pool chosen now (use_pool)", str(use_pool(n)), ""))
        small = paths[: len(sources)]
        s_small = _rate(len(small), lambda: list(map_chunked(inspect_files, small, lambda p: p, parallel=False)))
        p_small = _rate(len(small), lambda: list(map_chunked(inspect_files, small, lambda p: p, parallel=True)))
        out.append((f"pool / serial at {len(small)} files (threshold {PARALLEL_MIN_FILES})", p_small / s_small, "x"))

        blobs = [d for _, d in sources]
        full = _rate(len(blobs), lambda: [inspect_files([p]) for p in small])
        draft = _rate(len(blobs), lambda: [_draft_load(b) for b in blobs])
        out.append(("draft-mode decode / full decode", draft / full, "x"))
        cut = [b[: int(len(b) * f)] for b in blobs[:100] for f in (0.5, 0.9, 0.995)]
        caught = sum(_draft_load(b) for b in cut)
        out.append(("truncations caught by draft mode", f"{caught}/{len(cut)}", "files"))

        s = Settings(data_dir=tmpd / "data")
        s.ensure_dirs()
        t0 = time.perf_counter()
        rep = validate_path(tmpd / "batch", s)
        out.append((f"validate a Kaggle-layout folder ({rep.files} files)", rep.files / (time.perf_counter() - t0),
                    "tiles/s"))  # fmt: skip

        src = tmpd / "import-src"
        _batch(src, sources, 1)
        t0 = time.perf_counter()
        imp = import_kaggle(src, Dataset(s.dataset_dir), s).as_dict()
        synced = imp["imported"] / (time.perf_counter() - t0)
        out.append((f"import ({imp['imported']} tiles, fsync per tile)", synced, "tiles/s"))
        shutil.rmtree(s.dataset_dir)
        with mock.patch("pyrocast.data.layout.os.fsync"):  # what durability costs: same import without fsync
            t0 = time.perf_counter()
            imp = import_kaggle(src, Dataset(s.dataset_dir), s).as_dict()
            unsynced = imp["imported"] / (time.perf_counter() - t0)
        out.append(("import without fsync (not what ships)", unsynced, "tiles/s"))
        t0 = time.perf_counter()
        again = import_kaggle(src, Dataset(s.dataset_dir), s).as_dict()
        out.append(("re-import, all already present", again["already present"] / (time.perf_counter() - t0),
                    "tiles/s"))  # fmt: skip
    return out


if __name__ == "__main__":
    for row in run():
        print(*row)
