"""Import the Kaggle "Wildfire Prediction Dataset" from a zip or a folder (or download it with kagglehub).

The source layout is `{train,valid,test}/{wildfire,nowildfire}/{lon},{lat}.jpg`, possibly one or two folders
down (`archive/train/...`). Every file ends up in exactly one of: imported, already present (same bytes,
or the same place and class, already in the dataset or earlier in the source), quarantined (a copy with
its reason: the source is never modified), or skipped (a non-image outside the layout, e.g. a README).
Import is idempotent: importing the same tiles again adds nothing.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyrocast.data.layout import CLASSES, IMAGE_SUFFIXES, SPLITS, UNSPLIT, Dataset
from pyrocast.data.quarantine import QuarantineBatch
from pyrocast.data.validate import (
    MAX_FILE_BYTES,
    check_name,
    find_layout_root,
    inspect_blobs,
    layout_prefix,
    map_chunked,
    use_pool,
)
from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.progress import progress
from pyrocast.report import Report
from pyrocast.settings import Settings

KAGGLE_HANDLE = "abdelghaniaaba/wildfire-prediction-dataset"
SOURCE = "kaggle"
SAVE_EVERY = 1000  # manifest checkpoints: a crash mid-import keeps what was written (re-import resumes)
_SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}
_MAX_LISTED = 1000  # per list in the JSON details; the counts are always complete


@dataclass(slots=True)
class _Entry:
    rel: str  # path under the layout root, POSIX
    origin: str  # where it came from, for the quarantine log
    mtime: float
    read: Callable[[], bytes]
    size: int = 0
    read_error: tuple[str, str] | None = None  # (check, message) when the bytes could not be had


def _iter_folder(root: Path) -> Iterator[_Entry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(dirnames)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.stat()
                mtime, size = st.st_mtime, st.st_size
            except OSError:  # vanished or unreadable: reading it will say so
                mtime, size = time.time(), 0
            yield _Entry(p.relative_to(root).as_posix(), str(p), mtime, p.read_bytes, size)


def _iter_zip(zf: zipfile.ZipFile, prefix: str, source: Path) -> tuple[list[_Entry], list[_Entry]]:
    """Members under `prefix` (paths relative to it), and the members outside it (full names)."""
    inside: list[_Entry] = []
    outside: list[_Entry] = []
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        name = info.filename
        # Zip times are local and naive; taken as UTC (the best a zip can tell).
        mtime = datetime(*info.date_time, tzinfo=UTC).timestamp()
        e = _Entry(name, f"{source}!{name}", mtime, lambda n=name: zf.read(n), info.file_size)
        if name.startswith(prefix):
            e.rel = name[len(prefix) :]
            inside.append(e)
        else:
            outside.append(e)
    return inside, outside


def _classify(rel: str) -> tuple[str, str]:
    """('tile' | 'ignore' | 'skip' | 'quarantine', code) for a path under the layout root."""
    parts = rel.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "ignore", ""  # .DS_Store, macOS resource forks: system files, not data
    is_image = Path(rel).suffix.lower() in IMAGE_SUFFIXES
    if len(parts) == 3 and parts[0] in (*SPLITS, UNSPLIT) and parts[1] in CLASSES:
        return "tile", ""
    if not is_image:
        return "skip", ""  # README, PROVENANCE.md, a CSV of labels: not tiles, listed in the report
    if len(parts) >= 3 and parts[0] not in (*SPLITS, UNSPLIT):
        return "quarantine", "unknown-split"
    if len(parts) >= 3 and parts[1] not in CLASSES:
        return "quarantine", "unknown-class"
    return "quarantine", "misplaced-file"


_PLACEMENT = {
    "unknown-split": "in an unknown split folder (splits: train, valid, test)",
    "unknown-class": "in an unknown class folder (classes: wildfire, nowildfire)",
    "misplaced-file": "not in a {split}/{class}/ folder",
}


def _mtime_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).replace(microsecond=0).isoformat()


def download_kaggle(settings: Settings, handle: str = KAGGLE_HANDLE) -> Path:
    """Download the dataset with kagglehub into the data directory; returns the folder.

    Credentials (KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN) are read by kagglehub from the environment.
    A finished download is reused. Raises ServiceUnavailableError with one line when Kaggle is unreachable.
    """
    try:
        import kagglehub
        import requests
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise PyrocastError("kagglehub is not installed", "pip install kagglehub") from exc
    out = settings.root / "downloads" / "kaggle" / handle.replace("/", "__")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(kagglehub.dataset_download(handle, output_dir=str(out)))
    except (requests.ConnectionError, requests.Timeout) as exc:
        host = getattr(getattr(exc, "request", None), "url", None) or "Kaggle"
        host = host.split("/")[2] if "://" in host else host
        raise ServiceUnavailableError(
            f"cannot download {handle}: {host} is unreachable (no network?)",
            "download the zip elsewhere and run `pyrocast data import-kaggle ZIP`",
        ) from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        hint = (
            "set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in the environment"
            if status in (401, 403)
            else "check the dataset handle, or download the zip and import it"
        )
        raise ServiceUnavailableError(f"Kaggle refused the download of {handle} (HTTP {status})", hint) from None
    except Exception as exc:  # kagglehub's own errors (credentials, corrupt archive, ...): one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ServiceUnavailableError(f"Kaggle download of {handle} failed: {first}") from None


def import_kaggle(source: Path | None, dataset: Dataset, settings: Settings, download: bool = False) -> Report:
    """Import tiles from a zip or a folder in the Kaggle layout into `dataset`; see the module docstring."""
    if download:
        if source is not None:
            raise InvalidInputError("give a SOURCE or --download, not both")
        source = download_kaggle(settings)
    if source is None:
        raise InvalidInputError("no source given", "pass a zip or folder in the Kaggle layout, or --download")
    source = Path(source).expanduser()
    if not source.exists():
        raise InvalidInputError(f"{source} does not exist", "pass a zip or folder in the Kaggle layout")

    zf: zipfile.ZipFile | None = None
    outside: list[_Entry] = []
    if source.is_dir():
        root = find_layout_root(source)
        if root is None:
            raise InvalidInputError(
                f"no {{split}}/{{class}}/ folders in {source} (looked two levels down)",
                "expected train/wildfire/-73.5,45.4.jpg and the like",
            )
        where = root.relative_to(source).as_posix() + "/" if root != source else "./"
        entries = list(_iter_folder(root))
    else:
        try:
            zf = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInputError(f"{source} is neither a folder nor a readable zip: {exc}") from None
        prefix = layout_prefix(zf.namelist())
        if prefix is None:
            zf.close()
            raise InvalidInputError(
                f"no {{split}}/{{class}}/ folders in {source} (looked two levels down)",
                "expected train/wildfire/-73.5,45.4.jpg and the like",
            )
        where = prefix or "./"
        entries, outside = _iter_zip(zf, prefix, source)
    try:
        return _run(source, where, entries, outside, dataset, settings)
    finally:
        if zf is not None:
            zf.close()


@dataclass
class _Tally:
    """What happened to every file of one import."""

    imported: Counter[tuple[str, str]] = field(default_factory=Counter)
    present: int = 0
    dup_in_source: int = 0
    outside_region: int = 0
    ignored: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _run(
    source: Path, where: str, entries: list[_Entry], outside: list[_Entry], dataset: Dataset, settings: Settings
) -> Report:
    t0 = time.perf_counter()
    batch = QuarantineBatch(settings, f"import-{source.stem}")
    tally = _Tally()

    def reject(e: _Entry, data: bytes, problems: list[tuple[str, str]]) -> None:
        if e.read_error and e.read_error not in problems:
            problems = [*problems, e.read_error]
        reason = "; ".join(f"{c}: {m}" for c, m in problems)
        dst = batch.add_bytes(data, e.rel, reason, code=problems[0][0], origin=e.origin)
        tally.reasons[problems[0][0]] += 1
        if len(tally.quarantined) < _MAX_LISTED:
            tally.quarantined.append({"file": e.rel, "code": problems[0][0], "reason": reason, "to": str(dst)})

    tiles: list[_Entry] = []
    for e in entries:
        kind, code = _classify(e.rel)
        if kind == "tile":
            tiles.append(e)
        elif kind == "skip":
            tally.skipped.append(e.rel)
        elif kind == "ignore":
            tally.ignored += 1
        else:
            reject(e, _safe_read(e), [(code, _PLACEMENT[code])])
    for e in outside:  # files of a zip outside its layout root: images are kept aside, not dropped
        kind, _ = _classify(e.rel)
        if kind == "ignore":
            tally.ignored += 1
        elif Path(e.rel).suffix.lower() in IMAGE_SUFFIXES:
            reject(e, _safe_read(e), [("misplaced-file", f"outside the layout root {where}")])
        else:
            tally.skipped.append(e.rel)

    before_sha = {r.sha256 for r in dataset}
    before_place = {(r.label, r.place.stem()) for r in dataset}
    added_since_save = 0
    try:
        with progress() as bar:
            task = bar.add_task("importing", total=len(tiles))
            results = map_chunked(inspect_blobs, tiles, _safe_read, parallel=use_pool(len(tiles)))
            for e, data, chk in results:
                bar.advance(task)
                split, label, name = e.rel.split("/")
                problems = list(chk.problems)
                if e.read_error:
                    problems = [e.read_error]
                named = check_name(name, settings.dataset_bounds)
                problems += list(named.errors)
                if problems or named.place is None:
                    reject(e, data, problems)
                    continue
                suffix = _SUFFIX.get(chk.format or "", ".jpg")
                rec = dataset.add(data, named.place, label, split, SOURCE, _mtime_iso(e.mtime), suffix=suffix)
                if rec is None:
                    if chk.sha256 in before_sha or (label, named.place.stem()) in before_place:
                        tally.present += 1
                    else:  # the source holds it twice (same bytes, or the same place and class again)
                        tally.dup_in_source += 1
                        if len(tally.duplicates) < _MAX_LISTED:
                            tally.duplicates.append(e.rel)
                    continue
                tally.imported[(split, label)] += 1
                tally.outside_region += bool(named.warnings)
                added_since_save += 1
                if added_since_save >= SAVE_EVERY:
                    dataset.save()
                    added_since_save = 0
    finally:
        dataset.save()
    return _report(source, where, len(entries) + len(outside), len(tiles), tally, dataset, batch, settings, t0)


def _safe_read(e: _Entry) -> bytes:
    """The entry's bytes; b"" with `e.read_error` set when they cannot be had (or should not be read)."""
    if e.size > MAX_FILE_BYTES:  # a zip bomb or a stray video: not read into memory
        e.read_error = ("too-large", f"the file is {e.size / 1e6:.0f} MB; tiles are ~30 kB (not copied)")
        return b""
    try:
        return e.read()
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:  # bad CRC, encrypted member, ...
        e.read_error = ("corrupt-image", f"cannot read it from the source: {exc or type(exc).__name__}")
        return b""


def _report(
    source: Path,
    where: str,
    n_files: int,
    n_tiles: int,
    tally: _Tally,
    dataset: Dataset,
    batch: QuarantineBatch,
    settings: Settings,
    t0: float,
) -> Report:
    seconds = time.perf_counter() - t0
    rate = n_tiles / seconds if seconds > 0 else 0.0
    rep = Report("Kaggle import")
    rep.add("source", str(source)).add("layout root", where)
    rep.add("files found", n_files)
    rep.add("imported", sum(tally.imported.values()))
    rep.add("already present", tally.present)
    rep.add("duplicates in the source", tally.dup_in_source)
    rep.add("quarantined", sum(tally.reasons.values()))
    for code, n in sorted(tally.reasons.items()):
        rep.add(f"  quarantined: {code}", n)
    if tally.skipped:
        more = " …" if len(tally.skipped) > 3 else ""
        rep.add("skipped (not tiles)", f"{len(tally.skipped)}: {', '.join(tally.skipped[:3])}{more}")
    if tally.ignored:
        rep.add("ignored (system files)", tally.ignored)
    if tally.outside_region:
        rep.add(f"outside {settings.dataset_bounds.name} (kept)", tally.outside_region)
    for split in (*SPLITS, UNSPLIT):
        per = {c: tally.imported[(split, c)] for c in CLASSES}
        if any(per.values()):
            rep.add(f"imported into {split}", " · ".join(f"{c} {n}" for c, n in per.items()))
    rep.add("dataset now", f"{len(dataset)} tiles")
    rep.add("time", f"{seconds:.1f} s ({rate:,.0f} tiles/s)")
    if batch.count:
        rep.add("quarantine folder", str(batch.dir))
    rep.details.update(
        {
            "imported_by_split_class": {f"{s}/{c}": n for (s, c), n in sorted(tally.imported.items())},
            "quarantined_by_reason": dict(tally.reasons),
            "quarantined_files": tally.quarantined,
            "duplicates_in_source_files": tally.duplicates,
            "skipped_files": tally.skipped[:_MAX_LISTED],
            "tiles_per_s": round(rate, 1),
            "seconds": round(seconds, 3),
            "dataset_dir": str(dataset.root),
        }
    )
    return rep
