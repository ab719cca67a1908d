"""Render docs/synthetic-vs-real.jpg: real Kaggle tiles beside synthetic ones, both classes, with captions.

    .venv/bin/python scripts/contact_sheet.py [--real ../shared/data/wildfire-tiles] [--out docs/synthetic-vs-real.jpg]

Real tiles are read from the shared folder (never copied into the repository); the sheet shows them
downscaled so that a reader can judge whether the synthetic region looks the part.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pyrocast.data.synthetic import SyntheticRegion
from pyrocast.settings import Region

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = Path(os.environ.get("PYROCAST_REAL_TILES", REPO.parent / "shared" / "data" / "wildfire-tiles"))
THUMB, PER_ROW, GAP, CAPTION = 150, 6, 4, 26
SCENARIO_PLACE = (-73.985, 45.765)  # the edge of Saint-Jérôme: houses, fields and forest in one tile
SCENARIO_ROW = ("baseline", "winter", "smoke", "clouds", "sensor-shift", "north")


def real_tiles(root: Path, label: str, n: int) -> list[Image.Image]:
    files = sorted(root.glob(f"*/{label}/*.jpg"))
    if len(files) < n:
        raise SystemExit(f"need {n} real {label} tiles under {root}, found {len(files)}")
    pick = np.linspace(0, len(files) - 1, n).round().astype(int)  # spread over the sorted list
    return [Image.open(files[i]).convert("RGB") for i in pick]


def synthetic_tiles(region: SyntheticRegion, label: str, n: int, seed: int) -> list[Image.Image]:
    places = region.sample_places(label, n, np.random.default_rng(seed))
    return [region.render_tile(p.lon, p.lat) for p in places]


def sheet(rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    width = PER_ROW * THUMB + (PER_ROW + 1) * GAP
    height = len(rows) * (THUMB + CAPTION + GAP) + GAP
    out = Image.new("RGB", (width, height), (245, 245, 242))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=16)
    y = GAP
    for caption, tiles in rows:
        draw.text((GAP + 2, y + 4), caption, fill=(20, 20, 20), font=font)
        y += CAPTION
        for i, tile in enumerate(tiles[:PER_ROW]):
            out.paste(tile.resize((THUMB, THUMB), Image.Resampling.LANCZOS), (GAP + i * (THUMB + GAP), y))
        y += THUMB + GAP
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real tiles in the Kaggle layout")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "synthetic-vs-real.jpg")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    region = SyntheticRegion(Region(), seed=args.seed)
    lon, lat = SCENARIO_PLACE
    scen = [SyntheticRegion(Region(), args.seed, s).render_tile(lon, lat) for s in SCENARIO_ROW]
    rows = [
        ("REAL wildfire (Kaggle, Mapbox zoom 15)", real_tiles(args.real, "wildfire", PER_ROW)),
        (f"SYNTHETIC wildfire (seed {args.seed})", synthetic_tiles(region, "wildfire", PER_ROW, 1)),
        ("REAL nowildfire (Kaggle, Mapbox zoom 15)", real_tiles(args.real, "nowildfire", PER_ROW)),
        (f"SYNTHETIC nowildfire (seed {args.seed})", synthetic_tiles(region, "nowildfire", PER_ROW, 2)),
        ("SYNTHETIC scenarios: " + ", ".join(SCENARIO_ROW), scen),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet(rows).save(args.out, "JPEG", quality=82, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
