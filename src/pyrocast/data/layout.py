"""The one dataset layout: `{split}/{class}/{lon},{lat}.jpg` plus `manifest.csv`.

A `Dataset` holds the manifest in memory; tiles are written atomically (temp file + rename) and the
manifest is saved atomically too, so a crash or a full disk mid-write never leaves a half tile or a
half manifest behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.geo import LonLat, parse_stem

CLASSES: tuple[str, str] = ("nowildfire", "wildfire")  # index = label (1 = wildfire)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
UNSPLIT = "unsplit"  # tiles not yet assigned by `pyrocast data split`
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MANIFEST = "manifest.csv"


@dataclass(slots=True)
class TileRecord:
    """One row of the manifest."""

    path: str  # relative to the dataset root, POSIX separators
    sha256: str
    size: int
    source: str  # synthetic | kaggle | feed:<provider> | ...
    acquired_at: str  # ISO 8601, UTC
    lon: float
    lat: float
    label: str  # wildfire | nowildfire
    split: str  # train | valid | test | unsplit

    @property
    def place(self) -> LonLat:
        return LonLat(self.lon, self.lat)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def tile_relpath(split: str, label: str, place: LonLat, suffix: str = ".jpg") -> str:
    return f"{split}/{label}/{place.stem()}{suffix}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that `path` is either the old file or the complete new one, never a fragment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; tiles and manifests are meant to be shared like any other data file.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PyrocastError(f"could not write {path}: {exc.strerror or exc}", "free some disk space and retry") from exc


def iter_layout(root: Path) -> Iterator[tuple[str, str, Path]]:
    """Yield (split, class, file) for every file under `{split}/{class}/` in a Kaggle-layout folder."""
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder")
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    yield split_dir.name, class_dir.name, f


class Dataset:
    """A dataset folder in the one layout, with its manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records: dict[str, TileRecord] = {}
        self._by_sha: dict[str, str] = {}
        self._by_place: dict[tuple[str, str], str] = {}
        self._dirty = False
        mf = self.root / MANIFEST
        if mf.exists():
            with mf.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    rec = TileRecord(
                        **{
                            **row,
                            "size": int(row["size"]),
                            "lon": float(row["lon"]),
                            "lat": float(row["lat"]),
                        }
                    )
                    self._index(rec)

    # --- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TileRecord]:
        return iter(sorted(self.records.values(), key=lambda r: r.path))

    def in_split(self, split: str) -> list[TileRecord]:
        return [r for r in self if r.split == split]

    def counts(self) -> Counter[tuple[str, str, str]]:
        """(split, label, source) -> tile count."""
        return Counter((r.split, r.label, r.source) for r in self.records.values())

    def has_sha(self, sha: str) -> bool:
        return sha in self._by_sha

    def find_place(self, label: str, place: LonLat) -> TileRecord | None:
        p = self._by_place.get((label, place.stem()))
        return self.records.get(p) if p else None

    def abspath(self, rec: TileRecord) -> Path:
        return self.root / rec.path

    # --- changes ------------------------------------------------------------------------------
    def _index(self, rec: TileRecord) -> None:
        self.records[rec.path] = rec
        self._by_sha[rec.sha256] = rec.path
        self._by_place[(rec.label, rec.place.stem())] = rec.path

    def add(
        self,
        data: bytes,
        place: LonLat,
        label: str,
        split: str,
        source: str,
        acquired_at: str | None = None,
        suffix: str = ".jpg",
    ) -> TileRecord | None:
        """Add a tile; returns None when the same bytes or the same place and class are already in."""
        if label not in CLASSES:
            raise InvalidInputError(f"class {label!r} is not one of {CLASSES}")
        sha = sha256_bytes(data)
        if sha in self._by_sha or (label, place.stem()) in self._by_place:
            return None
        rel = tile_relpath(split, label, place, suffix)
        atomic_write(self.root / rel, data)
        rec = TileRecord(rel, sha, len(data), source, acquired_at or now_iso(), place.lon, place.lat, label, split)
        self._index(rec)
        self._dirty = True
        return rec

    def move(self, rec: TileRecord, split: str) -> TileRecord:
        """Move a tile to another split (same class, same name)."""
        if rec.split == split:
            return rec
        new_rel = f"{split}/{rec.label}/{Path(rec.path).name}"
        dst = self.root / new_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / rec.path, dst)
        del self.records[rec.path]
        rec = TileRecord(**{**asdict(rec), "path": new_rel, "split": split})
        self._index(rec)
        self._dirty = True
        return rec

    def remove(self, rec: TileRecord) -> None:
        self.records.pop(rec.path, None)
        self._by_sha.pop(rec.sha256, None)
        self._by_place.pop((rec.label, rec.place.stem()), None)
        self._dirty = True

    def save(self) -> None:
        """Write the manifest atomically."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(TileRecord)], lineterminator="\n")
        w.writeheader()
        for rec in self:
            w.writerow(asdict(rec))
        atomic_write(self.root / MANIFEST, buf.getvalue().encode())
        self._dirty = False


def place_of(path: Path) -> LonLat:
    """The coordinates encoded in a tile's file name."""
    return parse_stem(path.stem)
