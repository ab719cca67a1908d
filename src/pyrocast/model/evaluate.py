"""Evaluation: score tiles, compute metrics, slices, behavioural checks and plots.

Three entry points:

* `evaluate_model` - the training pipeline's step: the trained torch model on the held-out test split (read
  through `evaluation_view`), with slices, behavioural checks, plots and a predictions CSV;
* `evaluate_folder` - `pyrocast evaluate --data PATH`: a bundle on every tile of any Kaggle-layout folder;
* `score_bundle` / `score_images` - P(wildfire) for given tiles, e.g. for the champion comparison.

Tiles are decoded and scored in chunks so that a 6,000-tile test split never sits in memory at once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from pyrocast.data.layout import CLASSES, IMAGE_SUFFIXES, atomic_write, iter_layout
from pyrocast.errors import InvalidInputError
from pyrocast.geo import parse_stem
from pyrocast.imaging import decode_image
from pyrocast.model.behaviour import behavioural_checks
from pyrocast.model.bundle import Bundle, OnnxClassifier, Precision
from pyrocast.model.metrics import classification_metrics, slice_metrics
from pyrocast.model.preprocess import PreprocessSpec, preprocess_batch
from pyrocast.progress import track

if TYPE_CHECKING:
    from torch import nn

    from pyrocast.model.train import TrainedModel

BATCH = 32
CHUNK = 128  # tiles decoded at a time
BEHAVIOUR_TILES = 64  # behavioural checks score each tile ~10 times: a sample is enough
# Behavioural checks score each sampled tile about 12 times; on a heavy model (EfficientNet with 8-view TTA in
# torch eager) 64 tiles took over ten minutes on a loaded 2-core machine. The sample is cut to fit this budget,
# estimated from how fast the test split itself was scored, and the report says how many tiles were used.
BEHAVIOUR_BUDGET_S = 60.0
BEHAVIOUR_PASSES = 12
BEHAVIOUR_MIN_TILES = 8
LAT_BAND_DEG = 2.0


class Classifier(Protocol):
    def predict_proba(self, batch: np.ndarray) -> np.ndarray: ...


class TorchClassifier:
    """A torch module (or TrainedModel) with the same `predict_proba` as OnnxClassifier."""

    def __init__(self, trained_or_module: TrainedModel | nn.Module) -> None:
        from pyrocast.model.export import module_of

        self.module = module_of(trained_or_module).eval()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        from pyrocast.model.export import torch_predict

        if batch.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return torch_predict(self.module, batch)


def score_images(
    classifier: Classifier, images: Sequence[Image.Image], spec: PreprocessSpec, batch_size: int = BATCH
) -> np.ndarray:
    """P(wildfire) for each image, preprocessed with `spec` and scored in batches."""
    out = [
        classifier.predict_proba(preprocess_batch(list(images[i : i + batch_size]), spec))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def read_tile(path: Path) -> Image.Image:
    """Decode a tile file with the guarded decoder (InvalidInputError names a corrupt or missing file)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read tile {path}: {exc.strerror or exc}") from exc
    return decode_image(data, what=str(path))


def score_bundle(
    bundle: Bundle, paths: Sequence[Path], precision: Precision = "fp32", batch_size: int = BATCH
) -> np.ndarray:
    """P(wildfire) of each tile file through the bundle's ONNX graph, in the order given.

    Every tile must decode: an unreadable one raises InvalidInputError naming it (a comparison of two models
    must see the same tiles, so silently dropping one is not an option here).
    """
    clf = OnnxClassifier(bundle, precision)
    out = []
    for i in range(0, len(paths), CHUNK):
        images = [read_tile(p) for p in paths[i : i + CHUNK]]
        out.append(score_images(clf, images, bundle.spec, batch_size))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def brightness(img: Image.Image) -> float:
    """Mean luma (0-255) of a tile."""
    return float(np.asarray(img.convert("L"), dtype=np.float32).mean())


def latitude_band(lat: float, width: float = LAT_BAND_DEG) -> str:
    lo = math.floor(lat / width) * width
    return f"{lo:g}-{lo + width:g}°{'N' if lat >= 0 else 'S'}"


def tercile_names(values: np.ndarray) -> tuple[list[str], list[float]]:
    """'dark' / 'medium' / 'bright' by the tercile edges of the values themselves, and those edges."""
    if values.size == 0:
        return [], []
    edges = [float(np.quantile(values, 1 / 3)), float(np.quantile(values, 2 / 3))]
    names = ["dark" if v < edges[0] else "medium" if v < edges[1] else "bright" for v in values]
    return names, edges


# --- scoring many tiles, with what we know about each --------------------------------------------


@dataclass
class Tile:
    path: str
    label: int
    lon: float | None = None
    lat: float | None = None
    source: str = ""


@dataclass
class Scored:
    """Tiles that decoded, their scores and facts, and those skipped (path, reason)."""

    tiles: list[Tile] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    sample: list[tuple[Image.Image, int]] = field(default_factory=list)  # kept for behavioural checks
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([t.label for t in self.tiles], dtype=np.int64)


def score_stream(
    clf: Classifier,
    spec: PreprocessSpec,
    items: Sequence[tuple[Tile, Any]],
    load: Any,
    what: str,
    keep_sample: int = 0,
    seed: int = 0,
) -> Scored:
    """Decode (with `load(ref)`), score and describe tiles chunk by chunk; corrupt tiles are skipped."""
    out = Scored()
    rng = np.random.default_rng(seed)
    seen = 0  # decoded tiles so far: a reservoir sample keeps keep_sample of them, uniformly
    for start in track(range(0, len(items), CHUNK), what, total=math.ceil(len(items) / CHUNK)):
        images: list[Image.Image] = []
        for tile, ref in items[start : start + CHUNK]:
            try:
                img = load(ref)
            except InvalidInputError as exc:
                out.skipped.append((tile.path, exc.message))
                continue
            images.append(img)
            out.tiles.append(tile)
            out.brightness.append(brightness(img))
            seen += 1
            if len(out.sample) < keep_sample:
                out.sample.append((img, tile.label))
            elif keep_sample:
                j = int(rng.integers(0, seen))
                if j < keep_sample:
                    out.sample[j] = (img, tile.label)
        out.probs.extend(score_images(clf, images, spec).tolist())
    return out


# --- a folder in the Kaggle layout ----------------------------------------------------------------


def _folder_items(folder: Path) -> tuple[list[tuple[Tile, Path]], list[tuple[str, str]]]:
    """(tile, file) for every image under {split}/{class}/ (or {class}/ directly), and files passed over."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(
            f"{folder} is not a folder", "pass a folder in the layout {split}/{class}/{lon},{lat}.jpg"
        )
    if any((folder / c).is_dir() for c in CLASSES):  # one split folder given: {class}/ files directly
        entries: Iterable[tuple[str, str, Path]] = (
            (folder.name, c, f)
            for c in CLASSES
            if (folder / c).is_dir()
            for f in sorted((folder / c).iterdir())
            if f.is_file()
        )
    else:
        entries = iter_layout(folder)
    items: list[tuple[Tile, Path]] = []
    passed: list[tuple[str, str]] = []
    for split, cls, f in entries:
        rel = str(f.relative_to(folder))
        if cls not in CLASSES:
            passed.append((rel, f"class folder {cls!r} is neither {' nor '.join(CLASSES)}"))
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            passed.append((rel, f"not an image file ({f.suffix or 'no suffix'})"))
            continue
        try:
            place = parse_stem(f.stem)
            lon, lat = place.lon, place.lat
        except InvalidInputError:
            lon = lat = None  # a tile without coordinates in its name still gets scored
        items.append((Tile(rel, CLASSES.index(cls), lon, lat, split), f))
    return items, passed


def evaluate_folder(bundle: Bundle, folder: Path, precision: Precision | None = None) -> dict[str, Any]:
    """Metrics of a bundle on every tile of a Kaggle-layout folder, whatever its split folders.

    Corrupt tiles, non-image files and unknown class folders are skipped and counted (`skipped`, with the
    first few named in `skipped_files`). The returned dict holds accuracy, n and the other metrics at top level.
    """
    items, passed = _folder_items(folder)
    if not items:
        raise InvalidInputError(
            f"no tiles found under {folder}",
            "expected {split}/{wildfire,nowildfire}/{lon},{lat}.jpg (or {class}/ files)",
        )
    precision = precision or bundle.preferred_precision
    scored = score_stream(
        OnnxClassifier(bundle, precision), bundle.spec, items, read_tile, f"scoring {Path(folder).name}"
    )
    skipped = passed + scored.skipped
    if not scored.tiles:
        raise InvalidInputError(f"none of the {len(items)} tiles under {folder} could be decoded", skipped[0][1])
    metrics = classification_metrics(scored.labels, np.asarray(scored.probs))
    return {
        **metrics,
        "model": bundle.name,
        "version": bundle.version,
        "onnx_precision": precision,  # not "precision": that key is the metric
        "folder": str(Path(folder).resolve()),
        "splits": dict(Counter(t.source for t in scored.tiles)),  # tiles scored per split folder
        "skipped": len(skipped),
        "skipped_files": [{"path": p, "reason": r} for p, r in skipped[:20]],
    }


# --- the pipeline's evaluation step ---------------------------------------------------------------


@dataclass
class EvalResult:
    """What `evaluate_model` measured and wrote."""

    metrics: dict[str, Any]
    slices: dict[str, dict[str, dict[str, Any]]]
    behaviour: dict[str, Any]
    plots: list[Path]
    predictions_csv: Path
    summary_json: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "slices": self.slices,
            "behaviour": self.behaviour,
            "plots": [str(p) for p in self.plots],
            "predictions_csv": str(self.predictions_csv),
        }


def compute_slices(scored: Scored) -> tuple[dict[str, dict[str, dict[str, Any]]], list[float]]:
    """Metrics per latitude band, brightness tercile and data source (and the tercile edges)."""
    y, p = scored.labels, np.asarray(scored.probs)
    slices: dict[str, dict[str, dict[str, Any]]] = {}
    located = [i for i, t in enumerate(scored.tiles) if t.lat is not None]
    if located:
        bands = [latitude_band(scored.tiles[i].lat) for i in located]  # type: ignore[arg-type]
        slices["latitude_band"] = slice_metrics(y[located], p[located], bands)
    names, edges = tercile_names(np.asarray(scored.brightness))
    by_name = slice_metrics(y, p, names)
    slices["brightness_tercile"] = {k: by_name[k] for k in ("dark", "medium", "bright") if k in by_name}
    slices["source"] = slice_metrics(y, p, [t.source or "unknown" for t in scored.tiles])
    return slices, edges


def write_predictions(path: Path, scored: Scored) -> Path:
    """CSV: path, lon, lat, label (1 = wildfire), prob (P(wildfire)), source, brightness."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "lon", "lat", "label", "prob", "source", "brightness"])
    for t, pr, b in zip(scored.tiles, scored.probs, scored.brightness, strict=True):
        w.writerow([t.path, t.lon, t.lat, t.label, f"{pr:.6f}", t.source, f"{b:.2f}"])
    atomic_write(path, buf.getvalue().encode())
    return path


def _plots(scored: Scored, metrics: dict[str, Any], slices: dict[str, Any], out_dir: Path) -> list[Path]:
    from pyrocast.model import plots

    y, p = scored.labels, np.asarray(scored.probs)
    return [
        plots.confusion_png(metrics["confusion"], out_dir / "confusion_matrix.png"),
        plots.roc_png(y, p, out_dir / "roc_curve.png"),
        plots.reliability_png(y, p, out_dir / "reliability.png", ece=metrics["ece"]),
        plots.slices_png(slices, out_dir / "slices.png"),
    ]


def evaluate_model(
    trained: TrainedModel,
    dataset_root: Path,
    out_dir: Path,
    *,
    split: str = "test",
    behaviour_tiles: int = BEHAVIOUR_TILES,
    seed: int = 0,
) -> EvalResult:
    """Evaluate a trained model on the held-out split of a dataset; write plots, CSV and evaluation.json.

    Scores go through the torch model (export comes after this step; export itself then checks that the
    ONNX graphs agree with torch on the same tiles).
    """
    from pyrocast.data.access import evaluation_view

    view = evaluation_view(dataset_root)
    records = view.records(split)
    if not records:
        raise InvalidInputError(
            f"the dataset at {dataset_root} has no {split} tiles", "run `pyrocast data split` first"
        )
    spec: PreprocessSpec = trained.spec
    items = [(Tile(r.path, CLASSES.index(r.label), r.lon, r.lat, r.source), r) for r in records]
    clf = TorchClassifier(trained)
    t0 = time.perf_counter()
    scored = score_stream(clf, spec, items, view.open_image, f"evaluating on {split}", behaviour_tiles, seed)
    per_tile_s = (time.perf_counter() - t0) / max(len(scored.tiles), 1)
    if not scored.tiles:
        raise InvalidInputError(f"none of the {len(records)} {split} tiles could be decoded", scored.skipped[0][1])
    metrics = classification_metrics(scored.labels, np.asarray(scored.probs))
    metrics["skipped"] = len(scored.skipped)
    metrics["skipped_files"] = [{"path": p, "reason": r} for p, r in scored.skipped[:20]]
    slices, edges = compute_slices(scored)
    metrics["brightness_tercile_edges"] = edges
    affordable = int(BEHAVIOUR_BUDGET_S / max(per_tile_s * BEHAVIOUR_PASSES, 1e-9))
    sample = scored.sample[: max(BEHAVIOUR_MIN_TILES, affordable)]
    sample_imgs = [im for im, _ in sample]
    behaviour = (
        behavioural_checks(
            lambda ims: score_images(clf, ims, spec),
            sample_imgs,
            np.array([lab for _, lab in sample]),
            seed=seed,
        )
        if sample_imgs
        else {"skipped": "no tiles sampled"}
    )
    if sample_imgs and len(sample) < len(scored.sample):
        behaviour["note"] = (
            f"{len(sample)} of {len(scored.sample)} sampled tiles checked to stay within "
            f"{BEHAVIOUR_BUDGET_S:.0f} s ({per_tile_s * 1000:.0f} ms per tile)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(scored, metrics, slices, out_dir)
    csv_path = write_predictions(out_dir / "predictions.csv", scored)
    result = EvalResult(metrics, slices, behaviour, plots, csv_path)
    result.summary_json = out_dir / "evaluation.json"
    atomic_write(result.summary_json, json.dumps(result.to_dict(), indent=2, default=str).encode())
    return result
