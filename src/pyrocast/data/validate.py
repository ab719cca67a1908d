"""Validation of a dataset, an incoming batch in the Kaggle layout, or a CWFIS feed CSV.

Every check has a short code (`corrupt-image`, `leakage`, ...), a level (error or warning) and a hint that
says what to do; docs/DATA.md lists them all. Decoding every image is the slow part, so files are checked
in chunks by a pool of worker processes (full decode: PIL's draft mode would skip work that truncation
detection needs); everything else (duplicates, leakage, manifest) is cheap bookkeeping afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pyrocast.data.layout import CLASSES, IMAGE_SUFFIXES, MANIFEST, SPLITS, UNSPLIT, Dataset, TileRecord
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.geo import EARTH_RADIUS_KM, LonLat, haversine_km, parse_stem
from pyrocast.imaging import RASTER_FORMATS, TILE_SIZE, decode_image
from pyrocast.progress import progress
from pyrocast.settings import Region, Settings

T = TypeVar("T")
R = TypeVar("R")

NEAR_M = 30.0  # two tiles closer than this are "the same place" (GPS rounding, re-captures)
MIN_TILES_FOR_IMBALANCE = 10  # below this a split is too small for a share to mean anything
WORKERS = max(1, min(2, os.cpu_count() or 1))
PARALLEL_MIN_FILES = 500  # below this the pool saves too little: forking 2 workers costs ~0.06 s (measured)
MAX_FILE_BYTES = 32 * 1024 * 1024  # a 350x350 tile is ~30 kB; anything this big is not one
CHUNK = 64  # files per task sent to a worker: amortises inter-process overhead
ACCEPTED_FORMATS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}
SHOW_PER_CHECK = {"error": 25, "warning": 5}  # table rows per check; --json always lists everything

# What the user should do, per check. docs/DATA.md carries the same table.
HINTS: dict[str, str] = {
    "empty-file": "the file has no content: fetch it again; --quarantine moves it aside",
    "not-an-image": "not an image despite its name: replace it with the real tile; --quarantine moves it aside",
    "corrupt-image": "truncated or damaged (interrupted download?): fetch the tile again; --quarantine moves it aside",
    "too-large": "far too big for a tile (decompression bomb?): remove it; --quarantine moves it aside",
    "unreadable": "the file cannot be read: check its permissions",
    "unsupported-format": "save tiles as JPEG (or PNG)",
    "wrong-mode": "tiles are RGB: re-export it in colour, or drop it; --quarantine moves it aside",
    "wrong-size": f"tiles are {TILE_SIZE}x{TILE_SIZE} (zoom 15): fetch it again at that size; --quarantine moves it aside",
    "bad-name": "name tiles {lon},{lat}.jpg, longitude first, e.g. -73.535,45.480806.jpg",
    "swapped-coordinates": "rename it with the longitude first: {lon},{lat}.jpg",
    "outside-region": "kept; if unexpected, check the name (longitude first) or dataset_bounds in pyrocast.yaml",
    "format-mismatch": "rename it to match its content (.jpg for JPEG, .png for PNG); import does so",
    "duplicate": "the same bytes twice: keep one; --quarantine moves the later copies aside",
    "leakage": "a place must live in one split: run `pyrocast data split`, or move the tiles into one split",
    "label-conflict": "the same place is labelled both classes: check which label is right",
    "unknown-split": "splits are train, valid, test (and unsplit in the dataset): rename or move the folder",
    "unknown-class": "classes are wildfire and nowildfire: rename or move the folder",
    "misplaced-file": "tiles live in {split}/{class}/{lon},{lat}.jpg: move it there; --quarantine moves it aside",
    "stray-file": "not a tile: ignored",
    "imbalance": "add tiles of the minority class (pyrocast data ingest / synth), or expect a biased model",
    "no-tiles": "expected {split}/{class}/{lon},{lat}.jpg under this folder (or one or two folders down)",
    "bad-manifest": "manifest.csv is damaged: restore the last version (`pyrocast data pull`)",
    "manifest-row": "the manifest row disagrees with the file: restore the last version, or re-import the tile",
    "manifest-missing-file": "a recorded tile is gone: restore it (`pyrocast data pull`) or re-import it",
    "manifest-sha-mismatch": "the tile changed after it was recorded: restore it (`pyrocast data pull`) or re-import it",
    "not-in-manifest": "not recorded: add tiles through pyrocast (import-kaggle, ingest) so they are hashed",
    "feed-unreadable": "check the path, and that the file is the CWFIS active-fires CSV",
    "feed-row": "this row is skipped on ingest: fix it at the source, or ignore it",
}
# Problems that make a file unusable as a tile: these are moved aside with --quarantine (an unreadable
# file is not: it cannot be moved either, its permissions need fixing).
FILE_ERRORS = frozenset(
    {
        "empty-file",
        "not-an-image",
        "corrupt-image",
        "too-large",
        "unsupported-format",
        "wrong-mode",
        "wrong-size",
        "bad-name",
        "swapped-coordinates",
        "duplicate",
        "misplaced-file",
    }
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: which check (`code`), which file (relative path), what is wrong, what to do."""

    code: str
    path: str
    message: str
    hint: str = ""
    related: tuple[str, ...] = ()  # other files involved (the original of a duplicate, the other split)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["related"] = list(self.related)
        return d


def _finding(code: str, path: str, message: str, related: Iterable[str] = ()) -> Finding:
    return Finding(code, path, message, HINTS.get(code, ""), tuple(related))


# --- checking one file ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TileCheck:
    """What decoding one file found: its hash, and every problem that makes it unusable as a tile."""

    sha256: str
    size: int
    problems: tuple[tuple[str, str], ...] = ()  # (code, message)
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_tile(data: bytes) -> TileCheck:
    """Hash and fully decode `data`; report empty, non-image, truncated, wrong mode/size/format."""
    sha, size = hashlib.sha256(data).hexdigest(), len(data)
    if not data:
        return TileCheck(sha, 0, (("empty-file", "the file is empty (0 bytes)"),))
    try:
        img = decode_image(data, what="the file", formats=RASTER_FORMATS)
    except InvalidInputError as exc:
        cause = exc.__cause__
        if isinstance(cause, UnidentifiedImageError):
            code = "not-an-image"
        elif cause is None or isinstance(cause, Image.DecompressionBombError | Image.DecompressionBombWarning):
            code = "too-large"
        else:
            code = "corrupt-image"
        return TileCheck(sha, size, ((code, exc.message),))
    problems = []
    if img.format not in ACCEPTED_FORMATS:
        problems.append(("unsupported-format", f"the file is {img.format}, not JPEG or PNG"))
    if img.mode != "RGB":
        problems.append(("wrong-mode", f"the image is {img.mode} ({_MODE_NAMES.get(img.mode, 'not RGB')}), not RGB"))
    if img.size != (TILE_SIZE, TILE_SIZE):
        w, h = img.size
        problems.append(("wrong-size", f"the image is {w}x{h}, not {TILE_SIZE}x{TILE_SIZE}"))
    return TileCheck(sha, size, tuple(problems), img.format, img.mode, *img.size)


_MODE_NAMES = {"L": "grayscale", "LA": "grayscale + alpha", "RGBA": "RGB + alpha", "P": "palette", "1": "1-bit"}


def inspect_file(path: Path | str) -> TileCheck:
    """`inspect_tile` on a file's bytes (an unreadable or huge file is a problem, not a crash)."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:  # never read a huge file into memory to find out it is not a tile
            return TileCheck("", size, (("too-large", f"the file is {size / 1e6:.0f} MB; tiles are ~30 kB"),))
        data = Path(path).read_bytes()
    except OSError as exc:
        return TileCheck("", 0, (("unreadable", f"cannot read the file: {exc.strerror or exc}"),))
    return inspect_tile(data)


def inspect_files(paths: list[str]) -> list[TileCheck]:
    return [inspect_file(p) for p in paths]


def inspect_blobs(blobs: list[bytes]) -> list[TileCheck]:
    return [inspect_tile(b) for b in blobs]


def use_pool(n_files: int) -> bool:
    """Whether decoding `n_files` in the worker pool pays: enough files, and a core idle to run them.

    On a shared machine whose cores are all busy, the pool measured slower than decoding in-process
    (bench_data), so the 1-minute load average decides.
    """
    if n_files < PARALLEL_MIN_FILES or WORKERS <= 1:
        return False
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return True
    return (os.cpu_count() or 1) - load >= 1.0


def map_chunked(
    fn: Callable[[list[Any]], list[R]],
    items: Iterable[T],
    payload: Callable[[T], Any],
    *,
    parallel: bool,
    workers: int = WORKERS,
    chunk: int = CHUNK,
) -> Iterator[tuple[T, Any, R]]:
    """Yield (item, payload(item), result) in order, running `fn` on chunks of payloads.

    With `parallel`, chunks go to a pool of `workers` processes with at most 2 chunks per worker in flight,
    so memory stays bounded however large the input (payloads may be whole files).
    """
    if not parallel or workers <= 1:
        for it in items:
            p = payload(it)
            yield it, p, fn([p])[0]
        return
    # fork where there is one: workers start at once with everything imported (forkserver/spawn re-import
    # the package and the caller's __main__, costing ~0.5 s per worker and breaking unguarded scripts).
    # Workers only decode bytes: they never touch the parent's threads (progress bar) or their locks.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pending: deque[tuple[list[T], list[Any], Future[list[R]]]] = deque()
    it_iter = iter(items)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        while True:
            while len(pending) < 2 * workers:
                batch = [x for _, x in zip(range(chunk), it_iter, strict=False)]
                if not batch:
                    break
                loads = [payload(x) for x in batch]
                pending.append((batch, loads, pool.submit(fn, loads)))
            if not pending:
                return
            batch, loads, fut = pending.popleft()
            yield from zip(batch, loads, fut.result(), strict=True)


# --- names and places -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NameCheck:
    place: LonLat | None
    errors: tuple[tuple[str, str], ...] = ()
    warnings: tuple[tuple[str, str], ...] = ()


def check_name(filename: str, bounds: Region) -> NameCheck:
    """Check a tile file name: an image suffix, `{lon},{lat}`, inside `bounds`, not lat/lon swapped."""
    p = Path(filename)
    errors: list[tuple[str, str]] = []
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        errors.append(("bad-name", f"{filename!r} does not end in .jpg, .jpeg or .png"))
    try:
        place = parse_stem(p.stem)
    except InvalidInputError as exc:
        return NameCheck(None, (*errors, ("bad-name", exc.message)))
    if bounds.contains(place.lon, place.lat):
        return NameCheck(place, tuple(errors))
    if bounds.contains(place.lat, place.lon):
        errors.append(("swapped-coordinates", f"{p.stem} has latitude first: inside {bounds.name} only swapped"))
        return NameCheck(place, tuple(errors))
    box = f"lon {bounds.lon_min:g}..{bounds.lon_max:g}, lat {bounds.lat_min:g}..{bounds.lat_max:g}"
    return NameCheck(place, tuple(errors), (("outside-region", f"outside {bounds.name} ({box})"),))


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name == "__MACOSX"


def _looks_like_layout(folder: Path) -> bool:
    try:
        return any(
            (folder / s).is_dir() and any(c.is_dir() and c.name in CLASSES for c in (folder / s).iterdir())
            for s in (*SPLITS, UNSPLIT)
        )
    except OSError:
        return False


def find_layout_root(folder: Path, max_depth: int = 2) -> Path | None:
    """The folder holding `{split}/{class}/` at or up to `max_depth` folders below `folder` (shallowest wins)."""
    level = [Path(folder)]
    for _ in range(max_depth + 1):
        hits = [f for f in level if _looks_like_layout(f)]
        if hits:
            return sorted(hits)[0]
        nxt: list[Path] = []
        for f in level:
            try:
                nxt.extend(sorted(c for c in f.iterdir() if c.is_dir() and not _is_hidden(c)))
            except OSError:
                continue
        level = nxt
    return None


def layout_prefix(names: Iterable[str], max_depth: int = 2) -> str | None:
    """For archive member names: the prefix (e.g. `archive/`) before `{split}/{class}/file`, or None.

    The most common prefix wins when an archive holds several (the others are reported by the importer).
    """
    seen: Counter[str] = Counter()
    for name in names:
        parts = name.split("/")
        if "__MACOSX" in parts:
            continue
        for i in range(min(max_depth, len(parts) - 3) + 1):
            if parts[i] in (*SPLITS, UNSPLIT) and parts[i + 1] in CLASSES:
                seen["".join(p + "/" for p in parts[:i])] += 1
                break
    if not seen:
        return None
    return sorted(seen.items(), key=lambda kv: (-kv[1], len(kv[0])))[0][0]


def _metres_cell(p: LonLat) -> tuple[int, int]:
    # A grid of NEAR_M cells: two places within NEAR_M are in the same or neighbouring cells.
    km = NEAR_M / 1000.0
    km_per_deg = math.pi * EARTH_RADIUS_KM / 180.0
    return (
        math.floor(p.lat * km_per_deg / km),
        math.floor(p.lon * km_per_deg * math.cos(math.radians(p.lat)) / km),
    )


def group_places(places: dict[str, LonLat]) -> list[list[str]]:
    """Group place keys whose coordinates are within NEAR_M of each other (transitively)."""
    parent = {k: k for k in places}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    cells: dict[tuple[int, int], list[str]] = defaultdict(list)
    for k, p in places.items():
        cells[_metres_cell(p)].append(k)
    for (r, c), keys in cells.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                for other in cells.get((r + dr, c + dc), ()):
                    for k in keys:
                        if k < other and haversine_km(places[k], places[other]) * 1000.0 <= NEAR_M:
                            parent[root(k)] = root(other)
    groups: dict[str, list[str]] = defaultdict(list)
    for k in places:
        groups[root(k)].append(k)
    return [sorted(g) for g in groups.values()]


# --- the report -----------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Errors and warnings of one validation run, with a rich rendering and JSON."""

    target: str
    kind: str  # dataset | batch | feed
    root: str = ""
    files: int = 0
    seconds: float = 0.0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # usable tiles: split -> class -> n
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def by_check(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for level, items in (("error", self.errors), ("warning", self.warnings)):
            for f in items:
                d = out.setdefault(f.code, {"level": level, "count": 0, "hint": f.hint})
                d["count"] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "root": self.root,
            "ok": self.ok,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_per_s, 1),
            "counts": self.counts,
            "checks": self.by_check(),
            "errors": [f.as_dict() for f in self.errors],
            "warnings": [f.as_dict() for f in self.warnings],
            "quarantined": self.quarantined,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)

    def render(self, console: Console) -> None:
        """Print the summary, the failed checks with what to do, and one row per finding."""
        rate = f" ({self.files_per_s:,.0f} files/s)" if self.seconds > 0.05 and self.files else ""
        console.print(
            Text.assemble(
                ("Validation", "bold"),
                f" of {self.target} ({self.kind}): {self.files} {'rows' if self.kind == 'feed' else 'files'}"
                f" checked in {self.seconds:.1f} s{rate}",
            )
        )
        if self.counts:
            t = Table(title="Usable tiles", title_justify="left")
            t.add_column("split")
            for c in CLASSES:
                t.add_column(c, justify="right")
            t.add_column("total", justify="right")
            for split, per in self.counts.items():
                t.add_row(split, *(str(per.get(c, 0)) for c in CLASSES), str(sum(per.values())))
            console.print(t)
        checks = self.by_check()
        if checks:
            t = Table(title="Failed checks", title_justify="left")
            t.add_column("level")
            t.add_column("check", no_wrap=True)
            t.add_column("n", justify="right")
            t.add_column("what to do")
            for code, d in sorted(checks.items(), key=lambda kv: (kv[1]["level"], kv[0])):
                style = "red" if d["level"] == "error" else "yellow"
                t.add_row(Text(d["level"], style=style), code, str(d["count"]), d["hint"])
            console.print(t)
        for level, items in (("error", self.errors), ("warning", self.warnings)):
            if items:
                console.print(_findings_table(level, items))
        for note in self.notes:
            console.print(Text(note, style="dim"))
        if self.quarantined:
            console.print(
                f"{len(self.quarantined)} file(s) moved to the quarantine: {Path(self.quarantined[0]['to']).parent}"
            )
        if self.errors:
            console.print(Text(f"✗ {len(self.errors)} error(s), {len(self.warnings)} warning(s)", style="bold red"))
        else:
            console.print(Text(f"✓ no errors, {len(self.warnings)} warning(s)", style="bold green"))


def _findings_table(level: str, items: list[Finding]) -> Table:
    style = "red" if level == "error" else "yellow"
    t = Table(title=f"{level.capitalize()}s ({len(items)})", title_justify="left", title_style=style)
    # File names are kept whole (never folded): people copy them, and scripts grep for them.
    t.add_column("file", no_wrap=True)
    t.add_column("problem")
    shown: Counter[str] = Counter()
    total = Counter(f.code for f in items)
    cap = SHOW_PER_CHECK[level]
    for f in sorted(items, key=lambda f: (f.code, f.path)):
        shown[f.code] += 1
        if shown[f.code] <= cap:
            t.add_row(Text(f.path), Text.assemble((f.code, style), ": ", f.message))
        elif shown[f.code] == cap + 1:
            t.add_row(Text("…", style="dim"), Text(f"{total[f.code] - cap} more {f.code} (all in --json)", "dim"))
    return t


# --- validating a folder --------------------------------------------------------------------------
@dataclass(slots=True)
class _Tile:
    rel: str
    path: Path
    split: str
    label: str


def validate_path(path: Path, settings: Settings, quarantine: bool = False) -> ValidationReport:
    """Validate a dataset folder, a Kaggle-layout folder (an incoming batch) or a CWFIS feed CSV.

    With `quarantine`, files with file-level errors are moved to the quarantine (and dropped from the
    manifest when the folder has one). Raises InvalidInputError when `path` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist", "give a dataset folder, a Kaggle-layout folder or a feed CSV")
    if path.is_file():
        if path.name == MANIFEST:
            return validate_folder(path.parent, settings, quarantine=quarantine)
        if path.suffix.lower() == ".zip":
            raise InvalidInputError(
                f"{path} is a zip", "unzip it and validate the folder, or import it: `pyrocast data import-kaggle`"
            )
        return validate_feed(path, settings)
    return validate_folder(path, settings, quarantine=quarantine)


def validate_folder(folder: Path, settings: Settings, quarantine: bool = False) -> ValidationReport:
    """Validate a folder in the dataset layout (with or without manifest.csv); see `validate_path`."""
    t0 = time.perf_counter()
    folder = Path(folder)
    root = find_layout_root(folder) or folder
    has_manifest = (root / MANIFEST).is_file()
    rep = ValidationReport(target=str(folder), kind="dataset" if has_manifest else "batch", root=str(root.resolve()))
    if root != folder:
        rep.notes.append(f"layout found in {root.relative_to(folder).as_posix()}/")
    tiles, errors, warnings = _walk(root)
    bad: dict[str, list[Finding]] = defaultdict(list)  # rel -> file-level errors (quarantinable)
    for f in errors:
        if f.code == "misplaced-file" and not f.path.endswith("/"):
            bad[f.path].append(f)  # a stray image: moved aside like a broken one
        else:
            rep.errors.append(f)
    rep.warnings += warnings
    rep.files = len(tiles)
    if not tiles and not has_manifest:
        rep.errors.append(_finding("no-tiles", ".", f"no tile files in {{split}}/{{class}}/ under {folder}"))

    checks: dict[str, TileCheck] = {}
    places: dict[str, LonLat] = {}
    with progress() as bar:
        task = bar.add_task("validating", total=len(tiles))
        results = map_chunked(inspect_files, tiles, lambda t: str(t.path), parallel=use_pool(len(tiles)))
        for tile, _, chk in results:
            bar.advance(task)
            checks[tile.rel] = chk
            for code, msg in chk.problems:
                bad[tile.rel].append(_finding(code, tile.rel, msg))
            if chk.format in ACCEPTED_FORMATS and tile.path.suffix.lower() not in ACCEPTED_FORMATS[chk.format]:
                rep.warnings.append(
                    _finding("format-mismatch", tile.rel, f"the file is {chk.format} but named {tile.path.suffix}")
                )
            name = check_name(tile.path.name, settings.dataset_bounds)
            for code, msg in name.errors:
                bad[tile.rel].append(_finding(code, tile.rel, msg))
            for code, msg in name.warnings:
                rep.warnings.append(_finding(code, tile.rel, msg))
            if name.place is not None and not name.errors:
                places[tile.rel] = name.place

    # Exact duplicates: the first copy (the manifest's, else the first by path) is the original.
    manifest = _read_manifest(root, rep) if has_manifest else None
    recorded = set(manifest or ())
    by_sha: dict[str, list[str]] = defaultdict(list)
    for rel, chk in checks.items():
        if chk.size:
            by_sha[chk.sha256].append(rel)
    for rels in by_sha.values():
        if len(rels) > 1:
            first = sorted(rels, key=lambda r: (r not in recorded, r))[0]
            for rel in sorted(rels):
                if rel != first:
                    bad[rel].append(_finding("duplicate", rel, f"same bytes as {first}", [first]))

    for rel in sorted(bad):
        rep.errors += bad[rel]
    _check_places(tiles, places, rep)
    if manifest is not None:
        _check_manifest(manifest, checks, tiles, rep)
    usable = [t for t in tiles if t.rel not in bad]
    rep.counts = _counts(usable)
    _check_balance(rep.counts, settings.imbalance_threshold, rep)

    movable = sorted(rel for rel, fs in bad.items() if {f.code for f in fs} <= FILE_ERRORS)
    if quarantine and movable:
        _quarantine(root, movable, bad, settings, rep, has_manifest and not _manifest_damaged(rep))
    rep.seconds = time.perf_counter() - t0
    return rep


def _walk(root: Path) -> tuple[list[_Tile], list[Finding], list[Finding]]:
    """Tile candidates under `{split}/{class}/`, and findings for everything that is out of place."""
    tiles: list[_Tile] = []
    errors: list[Finding] = []
    warnings: list[Finding] = []
    splits = (*SPLITS, UNSPLIT)
    if not root.is_dir():
        return tiles, errors, warnings
    for top in sorted(root.iterdir()):
        if _is_hidden(top):
            continue
        if top.is_file():
            if top.suffix.lower() in IMAGE_SUFFIXES:
                errors.append(_finding("misplaced-file", top.name, "an image outside any {split}/{class}/ folder"))
            continue  # manifest.csv, README, PROVENANCE.md, *.dvc: not tiles
        if top.name not in splits:
            n = sum(1 for f in top.rglob("*") if f.is_file())
            errors.append(_finding("unknown-split", f"{top.name}/", f"unknown split folder ({n} files inside)"))
            continue
        for sub in sorted(top.iterdir()):
            rel = f"{top.name}/{sub.name}"
            if _is_hidden(sub):
                continue
            if sub.is_file():
                if sub.suffix.lower() in IMAGE_SUFFIXES:
                    errors.append(_finding("misplaced-file", rel, "an image outside any class folder"))
                else:
                    warnings.append(_finding("stray-file", rel, "not a tile"))
                continue
            if sub.name not in CLASSES:
                n = sum(1 for f in sub.rglob("*") if f.is_file())
                errors.append(_finding("unknown-class", f"{rel}/", f"unknown class folder ({n} files inside)"))
                continue
            for f in sorted(sub.iterdir()):
                frel = f"{rel}/{f.name}"
                if _is_hidden(f):
                    continue
                if f.is_dir():
                    n = sum(1 for x in f.rglob("*") if x.is_file())
                    errors.append(_finding("misplaced-file", f"{frel}/", f"a nested folder ({n} files inside)"))
                    continue
                tiles.append(_Tile(frel, f, top.name, sub.name))
    return tiles, errors, warnings


def _check_places(tiles: list[_Tile], places: dict[str, LonLat], rep: ValidationReport) -> None:
    """Leakage (one place in two splits) and label conflicts (one place, both classes)."""
    info = {t.rel: t for t in tiles}
    stems: dict[str, LonLat] = {}
    by_stem: dict[str, list[str]] = defaultdict(list)
    for rel, p in places.items():
        stems[p.stem()] = p
        by_stem[p.stem()].append(rel)
    order = {s: i for i, s in enumerate((*SPLITS, UNSPLIT))}
    for group in group_places(stems):
        rels = sorted((r for s in group for r in by_stem[s]), key=lambda r: (order[info[r].split], r))
        splits = sorted({info[r].split for r in rels if info[r].split in SPLITS}, key=order.__getitem__)
        if len(splits) > 1:
            last = next(r for r in reversed(rels) if info[r].split == splits[-1])
            others = [r for r in rels if r != last]
            dist = max(haversine_km(places[last], places[o]) for o in others) * 1000.0
            near = "the same place" if dist < 0.5 else f"places {dist:.0f} m apart"
            rep.errors.append(
                _finding("leakage", last, f"{near} in {' and '.join(splits)}: also {', '.join(others)}", others)
            )
        labels = {info[r].label for r in rels}
        if len(labels) > 1:
            rep.warnings.append(
                _finding("label-conflict", rels[0], f"labelled both classes here: {', '.join(rels)}", rels[1:])
            )


def _counts(tiles: list[_Tile]) -> dict[str, dict[str, int]]:
    order = {s: i for i, s in enumerate((*SPLITS, UNSPLIT))}
    c = Counter((t.split, t.label) for t in tiles)
    out: dict[str, dict[str, int]] = {}
    for split in sorted({s for s, _ in c}, key=lambda s: order.get(s, 99)):
        out[split] = {label: c[(split, label)] for label in CLASSES}
    return out


def _check_balance(counts: dict[str, dict[str, int]], threshold: float, rep: ValidationReport) -> None:
    groups = dict(counts)
    if len(counts) > 1:
        groups["all splits"] = {c: sum(per.get(c, 0) for per in counts.values()) for c in CLASSES}
    for name, per in groups.items():
        total = sum(per.values())
        if total < MIN_TILES_FOR_IMBALANCE:
            continue
        minority = min(CLASSES, key=lambda c: per.get(c, 0))
        share = per.get(minority, 0) / total
        if share < threshold:
            rep.warnings.append(
                _finding(
                    "imbalance",
                    name if name == "all splits" else f"{name}/",
                    f"{minority} is {share:.0%} of {total} tiles (threshold {threshold:.0%})",
                )
            )


# --- the manifest -------------------------------------------------------------------------------
def _read_manifest(root: Path, rep: ValidationReport) -> dict[str, dict[str, str]] | None:
    """Rows by path; None (with a bad-manifest error) when the file cannot be used at all."""
    need = [f.name for f in fields(TileRecord)]
    try:
        text = (root / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        rep.errors.append(_finding("bad-manifest", MANIFEST, f"cannot read it: {exc}"))
        return None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        rep.errors.append(_finding("bad-manifest", MANIFEST, f"missing columns: {', '.join(missing)}"))
        return None
    rows: dict[str, dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        rel = (row.get("path") or "").strip()
        if not rel or rel in rows:
            what = "an empty path" if not rel else f"{rel} twice"
            rep.errors.append(_finding("manifest-row", f"{MANIFEST}:{line}", f"line {line} has {what}"))
            continue
        rows[rel] = {**row, "_line": str(line)}
    rep.notes.append(f"manifest.csv: {len(rows)} rows checked against the files")
    return rows


def _manifest_damaged(rep: ValidationReport) -> bool:
    return any(f.code == "bad-manifest" for f in rep.errors)


def _check_manifest(
    rows: dict[str, dict[str, str]], checks: dict[str, TileCheck], tiles: list[_Tile], rep: ValidationReport
) -> None:
    info = {t.rel: t for t in tiles}
    for rel, row in rows.items():
        where = f"line {row['_line']} of manifest.csv"
        chk = checks.get(rel)
        if chk is None:
            rep.errors.append(_finding("manifest-missing-file", rel, f"{where} lists it, but the file is missing"))
            continue
        if chk.sha256 and chk.sha256 != row.get("sha256"):
            rep.errors.append(
                _finding(
                    "manifest-sha-mismatch",
                    rel,
                    f"sha256 is {chk.sha256[:12]}…, {where} says {(row.get('sha256') or '?')[:12]}…",
                )
            )
        t = info[rel]
        wrong = [k for k, v in (("split", t.split), ("label", t.label)) if row.get(k) != v]
        if wrong:
            rep.errors.append(
                _finding(
                    "manifest-row",
                    rel,
                    f"{where}: {', '.join(f'{k}={row.get(k)!r}' for k in wrong)} "
                    f"but the file is in {t.split}/{t.label}/",
                )
            )
    for rel in sorted(set(checks) - set(rows)):
        rep.warnings.append(_finding("not-in-manifest", rel, "the file is not in manifest.csv"))


def _quarantine(
    root: Path,
    rels: list[str],
    bad: dict[str, list[Finding]],
    settings: Settings,
    rep: ValidationReport,
    update_manifest: bool,
) -> None:
    from pyrocast.data.quarantine import QuarantineBatch

    batch = QuarantineBatch(settings, "validate")
    for rel in rels:
        codes = [f.code for f in bad[rel]]
        reason = "; ".join(f"{f.code}: {f.message}" for f in bad[rel])
        dst = batch.add_file(root / rel, reason, root=root, code=codes[0])
        rep.quarantined.append({"path": rel, "to": str(dst), "codes": ",".join(codes)})
    if update_manifest:
        ds = Dataset(root)
        for rel in rels:
            if rel in ds.records:
                ds.remove(ds.records[rel])
        ds.save()


# --- the fire feed ------------------------------------------------------------------------------
def validate_feed(path: Path, settings: Settings) -> ValidationReport:
    """Validate a CWFIS active-fires CSV: rows with missing columns, bad dates, impossible coordinates."""
    t0 = time.perf_counter()
    rep = ValidationReport(target=str(path), kind="feed", root=str(Path(path).resolve()))
    try:
        from pyrocast.data.feed import parse_feed
    except ImportError as exc:
        raise PyrocastError(
            "feed validation needs pyrocast.data.feed, which this installation lacks", "update pyrocast"
        ) from exc
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        rep.errors.append(_finding("feed-unreadable", Path(path).name, f"cannot read it: {exc.strerror or exc}"))
        return rep
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        rep.notes.append("the feed is not UTF-8: read as Latin-1")
    try:
        result = parse_feed(text)
    except PyrocastError as exc:
        rep.errors.append(_finding("feed-unreadable", Path(path).name, exc.message))
        return rep
    name = Path(path).name
    for problem in result.problems:
        rep.errors.append(_finding("feed-row", f"{name}:{problem.line}", f"line {problem.line}: {problem.reason}"))
    rep.files = len(result.fires) + len(result.problems)
    rep.notes.append(f"{len(result.fires)} usable fire rows, {len(result.problems)} problem rows")
    rep.seconds = time.perf_counter() - t0
    return rep
