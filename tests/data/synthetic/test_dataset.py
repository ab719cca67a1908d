"""render_into: balanced, deterministic, idempotent; classes learnable but not by one colour statistic."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pyrocast.data.layout import UNSPLIT, Dataset
from pyrocast.data.synthetic import SyntheticRegion, render_into
from pyrocast.settings import Region, Settings


def test_render_into_is_balanced_and_idempotent(settings: Settings) -> None:
    ds = Dataset(settings.dataset_dir)
    report = render_into(ds, settings, n_tiles=9, seed=5, scenario="baseline")
    assert report.facts["rendered"] == 9 and report.facts["already present"] == 0
    assert (report.facts["wildfire"], report.facts["nowildfire"]) == (4, 5)
    recs = list(Dataset(settings.dataset_dir))  # reloaded from the saved manifest
    assert len(recs) == 9
    assert {r.split for r in recs} == {UNSPLIT} and {r.source for r in recs} == {"synthetic"}
    region = SyntheticRegion(settings.region, seed=5)
    for r in recs:
        img = Image.open(settings.dataset_dir / r.path)
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (350, 350)
        assert region.label_at(r.lon, r.lat) == r.label
    again = render_into(Dataset(settings.dataset_dir), settings, n_tiles=9, seed=5, scenario="baseline")
    assert again.facts["rendered"] == 0 and again.facts["already present"] == 9
    # more tiles with the same seed extend the same places
    more = render_into(Dataset(settings.dataset_dir), settings, n_tiles=12, seed=5, scenario="baseline")
    assert more.facts["rendered"] == 3 and more.facts["already present"] == 9


def test_same_seed_same_bytes_in_parallel_and_serial(tmp_path, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    a, b = Dataset(tmp_path / "a"), Dataset(tmp_path / "b")
    render_into(a, settings, n_tiles=6, seed=11, scenario="smoke", workers=1)
    render_into(b, settings, n_tiles=6, seed=11, scenario="smoke", workers=2)
    assert {(r.path, r.sha256) for r in a} == {(r.path, r.sha256) for r in b}
    assert {r.source for r in a} == {"synthetic:smoke"}


def _stats(img: np.ndarray) -> dict[str, float]:
    a = img.astype(np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx, mn = a.max(-1), a.min(-1)
    grey = a.mean(-1)
    return {
        "mean R": r.mean(),
        "mean G": g.mean(),
        "mean B": b.mean(),
        "brightness": grey.mean(),
        "saturation": ((mx - mn) / np.maximum(mx, 1)).mean(),
        "std": grey.std(),
        "greenness (2G-R-B)": (2 * g - r - b).mean(),
        "G/R": (g / (r + 1)).mean(),
        "blue std": b.std(),
        "edges": np.abs(np.diff(grey, axis=1)).mean(),
    }


def best_threshold_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """The best accuracy of any rule `x > t` or `x < t` (y in {0, 1})."""
    order = np.argsort(x, kind="stable")
    ys = y[order]
    ones_below = np.concatenate([[0], np.cumsum(ys)])
    zeros_below = np.arange(len(ys) + 1) - ones_below
    above_is_one = zeros_below + (ys.sum() - ones_below)
    return float(max(above_is_one.max(), (len(ys) - above_is_one).max()) / len(ys))


def test_no_single_colour_statistic_separates_the_classes() -> None:
    region = SyntheticRegion(Region(), seed=42)
    feats, labels = [], []
    for label, y in (("wildfire", 1), ("nowildfire", 0)):
        for p in region.sample_places(label, 100, np.random.default_rng(100 + y)):
            buf = io.BytesIO()
            region.render_tile(p.lon, p.lat).save(buf, "JPEG", quality=90)
            feats.append(_stats(np.asarray(Image.open(buf))))
            labels.append(y)
    y = np.array(labels)
    accs = {k: best_threshold_accuracy(np.array([f[k] for f in feats]), y) for k in feats[0]}
    worst = max(accs, key=accs.get)  # type: ignore[arg-type]
    assert accs[worst] < 0.8, f"{worst} separates the classes with accuracy {accs[worst]:.3f}: {accs}"


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [([1, 2, 3, 4], [0, 0, 1, 1], 1.0), ([1, 2, 3, 4], [1, 1, 0, 0], 1.0), ([1, 2, 3, 4], [0, 1, 0, 1], 0.75)],
)
def test_threshold_accuracy_helper(x: list[float], y: list[int], expected: float) -> None:
    assert best_threshold_accuracy(np.array(x, float), np.array(y)) == pytest.approx(expected)
