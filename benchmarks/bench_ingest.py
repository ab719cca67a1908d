"""Feed parsing and imagery-provider throughput (local servers on 127.0.0.1; no internet)."""

from __future__ import annotations

import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from tests.support.servers import XyzServer

from pyrocast.data.feed import parse_feed
from pyrocast.data.imagery import FolderProvider, XyzProvider
from pyrocast.data.ingest import ingest
from pyrocast.data.layout import Dataset
from pyrocast.settings import Settings

NOW = datetime(2024, 6, 5, 12, tzinfo=UTC)


def _feed(rows: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    lines = ["agency, firename, lat, lon, startdate, hectares, stage_of_control, timezone, response_type"]
    for i in range(rows):
        start = NOW - timedelta(hours=rng.uniform(0, 24 * 20))
        lines.append(
            f"qc, F{i:05d}, {rng.uniform(45.2, 47.3):.4f}, {rng.uniform(-75.8, -71.2):.4f},"
            f" {start:%Y-%m-%d %H:%M:%S}, {rng.uniform(0, 500):.1f}, OC, EDT, FUL"
        )
    return "\n".join(lines) + "\n"


def run() -> list[tuple[str, float | str, str]]:
    out: list[tuple[str, float | str, str]] = []
    text = _feed(20_000)
    t0 = time.perf_counter()
    res = parse_feed(text)
    dt = time.perf_counter() - t0
    out.append(("feed parse", len(res.fires) / dt, "rows/s"))

    rng = random.Random(2)
    points = [(rng.uniform(-75.5, -71.5), rng.uniform(45.3, 47.2)) for _ in range(40)]
    with XyzServer() as srv:
        p = XyzProvider(srv.template("jpg"), retries=0)
        t0 = time.perf_counter()
        for lon, lat in points:
            p.fetch(lon, lat)
        dt = time.perf_counter() - t0
        out.append(("xyz stitch+crop, cold tiles (local server)", len(points) / dt, "tiles/s"))
        out.append(("xyz tile requests per crop", srv.hits / len(points), "requests"))
        p.close()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiles"
        for i, (lon, lat) in enumerate(points * 50):
            lon, lat = lon + (i // 40) * 0.01, lat
            f = root / "train" / "wildfire" / f"{lon:.6f},{lat:.6f}.jpg"
            f.parent.mkdir(parents=True, exist_ok=True)
            if i < 40:
                Image.new("RGB", (350, 350), (i, 80, 40)).save(f, quality=90)
            else:
                f.write_bytes((root / "train" / "wildfire" / f"{points[i % 40][0]:.6f},{lat:.6f}.jpg").read_bytes())
        FolderProvider(root, radius_m=500)  # the first build also pays for importing scipy
        t0 = time.perf_counter()
        fp = FolderProvider(root, radius_m=500)
        out.append(("folder index build (2000 tiles, warm)", (time.perf_counter() - t0) * 1000, "ms"))
        t0 = time.perf_counter()
        for _ in range(20):
            for lon, lat in points:
                fp.nearest(lon, lat)
        out.append(("folder nearest-tile lookups", 20 * len(points) / (time.perf_counter() - t0), "lookups/s"))

        with XyzServer() as srv:
            s = Settings(data_dir=Path(tmp) / "data")
            s = s.model_copy(update={"imagery": s.imagery.model_copy(update={"xyz_url": srv.template("jpg")})})
            feed = Path(tmp) / "feed.csv"
            feed.write_text(_feed(60, seed=3))
            ds = Dataset(s.dataset_dir)
            t0 = time.perf_counter()
            rep = ingest(ds, s, feed=str(feed), days=7, provider="xyz", now=NOW)
            dt = time.perf_counter() - t0
            added = sum(rep.details["added"].values())
            out.append(("ingest end to end (xyz, local server)", added / dt, "tiles/s"))
    return out


if __name__ == "__main__":
    for row in run():
        print(row)
