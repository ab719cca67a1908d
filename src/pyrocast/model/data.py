"""The data side of training: which dataset a run uses, and its tiles as arrays (decoded once).

`prepare_dataset` turns what the user points at into a split dataset folder:
- nothing: the data directory's current dataset, which must already be split (`pyrocast data split`);
- a folder in the Kaggle layout: imported (corrupt tiles quarantined and reported) into a working dataset under
  `<data dir>/work/<hash of the source listing>`, and split spatially when the folder has no test split. The
  same folder gives the same working dataset again (no second import).

`load_arrays` reads one training-side split through a `DatasetView` (the held-out guard) into a uint8 NHWC
array at one input size; results stay cached in memory for the process, so tuning trials and the final
training decode each tile once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyrocast.data.access import DatasetView
from pyrocast.data.layout import CLASSES, MANIFEST, SPLITS, Dataset, TileRecord, atomic_write, iter_layout
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.model.preprocess import to_array
from pyrocast.progress import track
from pyrocast.settings import Settings

log = logging.getLogger(__name__)
PREPARED = "prepared.json"  # written last: a working dataset without it is incomplete and is rebuilt


def _listing_hash(folder: Path) -> str:
    """A digest of the folder's tile listing (relative path, size, mtime): changes when any tile changes."""
    h = hashlib.sha256()
    for split, label, f in iter_layout(folder):
        st = f.stat()
        h.update(f"{split}/{label}/{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def check_split_dataset(root: Path, what: str) -> dict[str, dict[str, int]]:
    """Counts per split and class; raises PyrocastError when the dataset cannot train and test a classifier."""
    if not (root / MANIFEST).is_file():
        raise PyrocastError(
            f"{what} at {root} has no dataset yet",
            "render or import tiles (pyrocast data synth / import-kaggle), then pyrocast data split",
        )
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}
    per_class: Counter[str] = Counter()
    unsplit = 0
    for rec in Dataset(root):
        per_class[rec.label] += 1
        if rec.split in counts:
            counts[rec.split][rec.label] += 1
        else:
            unsplit += 1
    if not per_class:
        raise PyrocastError(f"{what} at {root} is empty", "render or import tiles first")
    present = [c for c in CLASSES if per_class[c]]
    if len(present) < 2:
        raise PyrocastError(
            f"{what} at {root} holds only {present[0]} tiles: a classifier needs both {' and '.join(CLASSES)}",
            "add tiles of the missing class",
        )
    missing = [s for s in SPLITS if not sum(counts[s].values())]
    if missing:
        hint = "run `pyrocast data split`" if unsplit else "add tiles or re-split with other fractions"
        raise PyrocastError(f"{what} at {root} has no {' and no '.join(missing)} tiles", hint)
    lacking = [c for c in CLASSES if not counts["train"][c]]
    if lacking:
        raise PyrocastError(
            f"the train split of {what} at {root} has no {lacking[0]} tiles", "add tiles of that class and re-split"
        )
    return counts


def prepare_dataset(settings: Settings, data_path: Path | None) -> Path:
    """The root of a split dataset to train on (see the module docstring). Raises PyrocastError on unusable data."""
    if data_path is None:
        root = settings.dataset_dir
        check_split_dataset(root, "the current dataset")
        return root
    src = Path(data_path).expanduser().resolve()
    if not src.is_dir():
        raise InvalidInputError(f"{src} is not a folder", "pass a folder in the Kaggle layout {split}/{class}/*.jpg")
    if (src / MANIFEST).is_file():  # already a Pyrocast dataset: use it as it is
        check_split_dataset(src, "the dataset")
        return src
    from pyrocast.data.validate import find_layout_root

    layout = find_layout_root(src)
    if layout is None:
        raise InvalidInputError(
            f"no {{split}}/{{class}}/ folders in {src}", "expected e.g. train/wildfire/-73.5,45.4.jpg"
        )
    work = settings.root / "work" / _listing_hash(layout)
    if (work / PREPARED).is_file():
        check_split_dataset(work, f"the working copy of {src}")
        return work
    return _build_working_dataset(layout, work, settings)


_build_lock = threading.Lock()


def _build_working_dataset(src: Path, work: Path, settings: Settings) -> Path:
    from pyrocast.data.kaggle import import_kaggle
    from pyrocast.data.split import split_dataset

    # Built in a temporary folder and renamed at the end: an interrupted run leaves no half dataset behind.
    tmp = work.with_name(f".{work.name}.{os.getpid()}.tmp")
    with _build_lock:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            ds = Dataset(tmp)
            rep = import_kaggle(src, ds, settings)
            if not len(ds):
                raise PyrocastError(f"{src} holds no usable tiles", "see the quarantine folder for the reasons")
            had = Counter(r.split for r in ds)
            resplit = not had.get("test")
            if resplit:
                # The source has no held-out split (e.g. only train and valid): draw one spatially, so that no
                # place seen in training is tested on.
                split_dataset(ds, settings, fresh=True)
            counts = check_split_dataset(tmp, f"the working copy of {src}")
            info = {
                "source": str(src),
                "imported": rep.facts.get("imported"),
                "quarantined": rep.facts.get("quarantined", 0),
                "quarantined_files": rep.details.get("quarantined_files", []),
                "spatially_split": resplit,
                "counts": counts,
            }
            atomic_write(tmp / PREPARED, json.dumps(info, indent=2).encode())
            if (work / PREPARED).is_file():  # another process finished the same folder first: keep its copy
                return work
            if work.exists():  # a leftover without prepared.json is incomplete
                shutil.rmtree(work)
            work.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, work)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if info["quarantined"]:
        log.warning("%s: %s tiles could not be used and were quarantined", src, info["quarantined"])
    return work


def preparation_info(root: Path) -> dict:
    """What `prepare_dataset` recorded about a working dataset (empty for the data directory's dataset)."""
    p = Path(root) / PREPARED
    return json.loads(p.read_text()) if p.is_file() else {}


# --- arrays ----------------------------------------------------------------------------------------


@dataclass
class Arrays:
    x: np.ndarray  # uint8 (N, S, S, 3)
    y: np.ndarray  # int64 (N,), 1 = wildfire
    records: list[TileRecord]
    skipped: list[str]


_cache: dict[tuple, Arrays] = {}
_cache_lock = threading.Lock()


def _manifest_stamp(root: Path) -> tuple[int, int]:
    st = (root / MANIFEST).stat()
    return st.st_size, st.st_mtime_ns


def load_split(view: DatasetView, split: str, size: int) -> Arrays:
    """One split as arrays at `size` px, decoded once per process (corrupt tiles skipped and logged)."""
    key = (str(view.root), split, int(size), _manifest_stamp(view.root))
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    records = view.records(split)  # raises HeldOutAccessError for the test split of a training view
    xs: list[np.ndarray] = []
    ys: list[int] = []
    kept: list[TileRecord] = []
    skipped: list[str] = []
    for rec in track(records, f"decoding {split} tiles at {size} px"):
        try:
            img = view.open_image(rec)
        except InvalidInputError as exc:
            skipped.append(f"{rec.path}: {exc.message}")
            continue
        xs.append(to_array(img, size))
        ys.append(CLASSES.index(rec.label))
        kept.append(rec)
    if skipped:
        log.warning("%d %s tiles could not be decoded and were skipped: %s", len(skipped), split, skipped[:3])
    x = np.stack(xs) if xs else np.zeros((0, size, size, 3), np.uint8)
    out = Arrays(x, np.asarray(ys, dtype=np.int64), kept, skipped)
    with _cache_lock:
        _cache[key] = out
    return out


def load_arrays(view: DatasetView, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[TileRecord]]:
    """(uint8 NHWC images, int labels with 1 = wildfire, records) of one split, cached in memory."""
    a = load_split(view, split, size)
    return a.x, a.y, a.records


def clear_cache() -> None:
    """Forget decoded arrays (tests; long-lived processes after a dataset changed in place)."""
    with _cache_lock:
        _cache.clear()
