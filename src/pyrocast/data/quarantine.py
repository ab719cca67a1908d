"""The quarantine: files that import or validation rejected, kept with the reason they were rejected.

Nothing is ever silently dropped. A rejected file lands in `quarantine/<batch>/<its relative path>` and one
JSON line per file is appended to `quarantine/reasons.jsonl` (when, which batch, where it came from, the
check that failed, why, its sha256). A batch is one run of `import-kaggle` or `validate --quarantine`.
Import copies (the user's source stays untouched); validation with `--quarantine` moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyrocast.errors import PyrocastError
from pyrocast.settings import Settings

REASONS = "reasons.jsonl"
_SAFE = re.compile(r"[^A-Za-z0-9._,+-]+")


class QuarantineBatch:
    """One run's quarantine folder (`quarantine/<UTC time>-<label>`), created on the first file put in it."""

    def __init__(self, settings: Settings, label: str = "batch") -> None:
        self.settings = settings
        self.label = _SAFE.sub("-", label).strip("-") or "batch"
        self.name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{self.label}"
        self.count = 0
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        """The batch folder (made unique on first use, so two runs in the same second never mix)."""
        if self._dir is None:
            base = self.settings.quarantine_dir
            base.mkdir(parents=True, exist_ok=True)
            name, n = self.name, 1
            while True:
                try:
                    (base / name).mkdir()
                    break
                except FileExistsError:
                    n += 1
                    name = f"{self.name}-{n}"
            self.name, self._dir = name, base / name
        return self._dir

    def _target(self, relpath: str) -> Path:
        parts = [p for p in Path(relpath).parts if p not in ("", ".", "..", "/")] or ["unnamed"]
        dst = self.dir.joinpath(*parts)
        n = 1
        while dst.exists():  # the same name twice in one batch (e.g. a zip with two roots): keep both
            dst = dst.with_name(f"{Path(parts[-1]).stem}~{n}{Path(parts[-1]).suffix}")
            n += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst

    def add_bytes(self, data: bytes, relpath: str, reason: str, *, code: str = "rejected", origin: str = "") -> Path:
        """Write rejected bytes (e.g. a zip member) into the batch; returns where they landed."""
        dst = self._target(relpath)
        try:
            dst.write_bytes(data)
        except OSError as exc:
            raise PyrocastError(
                f"could not quarantine {relpath}: {exc.strerror or exc}", "free some disk space"
            ) from exc
        self._log(dst, origin or relpath, code, reason, len(data), hashlib.sha256(data).hexdigest())
        return dst

    def add_file(
        self, path: Path, reason: str, *, root: Path | None = None, code: str = "rejected", copy: bool = False
    ) -> Path:
        """Move (or copy) a file into the batch, keeping its path relative to `root`; returns the new path."""
        path = Path(path)
        rel = _relative(path, root)
        dst = self._target(rel)
        try:
            size, sha = path.stat().st_size, _sha256_file(path)
            if copy:
                shutil.copy2(path, dst)
            else:
                shutil.move(path, dst)
        except OSError as exc:
            raise PyrocastError(f"could not quarantine {path}: {exc.strerror or exc}", "check permissions") from exc
        self._log(dst, str(path), code, reason, size, sha)
        return dst

    def _log(self, dst: Path, origin: str, code: str, reason: str, size: int, sha: str) -> None:
        line = {
            "at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "batch": self.name,
            "file": dst.relative_to(self.settings.quarantine_dir).as_posix(),
            "origin": origin,
            "code": code,
            "reason": reason,
            "size": size,
            "sha256": sha,
        }
        # One write per line on an O_APPEND file: concurrent runs never interleave half lines.
        fd = os.open(self.settings.quarantine_dir / REASONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line, ensure_ascii=False) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.count += 1


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def quarantine_file(
    settings: Settings,
    path: Path,
    reason: str,
    root: Path | None = None,
    *,
    batch: QuarantineBatch | None = None,
    code: str = "rejected",
    copy: bool = False,
) -> Path:
    """Move `path` into `quarantine/<batch>/<path relative to root>` and log why; returns the new path.

    Without `batch` a new batch is started for this one file; pass one to group a run's files together.
    """
    batch = batch or QuarantineBatch(settings, "manual")
    return batch.add_file(Path(path), reason, root=root, code=code, copy=copy)


def iter_reasons(settings: Settings) -> Iterator[dict[str, Any]]:
    """Every line of `reasons.jsonl` (a damaged line is skipped, not fatal: it is a log)."""
    f = settings.quarantine_dir / REASONS
    if not f.exists():
        return
    with f.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
