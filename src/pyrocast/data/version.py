"""Dataset versions with DVC: record, list, push to a remote and pull back any recorded version.

DVC runs as a subprocess in the data directory (`dvc init --no-scm`, `dvc add dataset`). A version is the
md5 DVC computes for the dataset folder (`dataset.dvc`); its id is the first 8 hex digits. Every version
keeps a copy of its `.dvc` file in `versions/<md5>.dvc` and one line in the append-only
`versions/versions.jsonl`; pushes are logged in `versions/pushes.jsonl`. Pulling a version puts its `.dvc`
file back and lets DVC restore the folder from the cache or the remote.

The remote is a local folder in the data directory by default, or S3 (`dvc.remote_url: s3://bucket/path`,
`dvc.s3_endpoint_url` for MinIO, moto, ...). Credentials come from the environment only
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE): they are never written to
DVC's config files and are scrubbed from error messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pyrocast.data.layout import CLASSES, MANIFEST, SPLITS, UNSPLIT, Dataset, atomic_write, now_iso
from pyrocast.errors import InvalidInputError, PyrocastError, scrub_secrets
from pyrocast.report import Report
from pyrocast.settings import Settings

REMOTE_NAME = "pyrocast"
DVC_FILE = "dataset.dvc"
VERSIONS_DIR = "versions"
VERSIONS_LOG = "versions.jsonl"
PUSHES_LOG = "pushes.jsonl"
SHORT = 8
DVC_TIMEOUT_S = 3600.0  # a push of the full Kaggle set to a slow remote can take a while
# DVC tracks only the dataset folder; everything else in the data directory (MLflow, logs, the local
# remote, these version files, whose .dvc copies DVC would otherwise parse as stages) is ignored.
DVCIGNORE = (
    "# Written by pyrocast: DVC tracks only the dataset folder of the data directory.\n/*\n!/dataset\n!/dataset.dvc\n"
)


# --- running DVC -----------------------------------------------------------------------------------
def display_remote(url: str) -> str:
    """A remote URL safe to show (no password)."""
    return scrub_secrets(url)


def _dvc(settings: Settings, *args: str, what: str | None = None) -> str:
    """Run `python -m dvc ARGS` in the data directory; return stdout or raise PyrocastError with DVC's reason."""
    root = settings.root
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",  # never phone home
        "DVC_STUDIO_OFFLINE": "1",
        # DVC's per-repo state (index, link cache) would default to /var/tmp or ~/.cache: keep it here.
        "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "tmp" / "site-cache"),
    }
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=DVC_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise PyrocastError(f"cannot run DVC in {root}: {exc}", "run `make setup` to install dependencies") from exc
    except subprocess.TimeoutExpired as exc:
        raise PyrocastError(
            f"dvc {args[0]} did not finish within {DVC_TIMEOUT_S:.0f} s", "check that the DVC remote is reachable"
        ) from exc
    if proc.returncode != 0:
        reason = scrub_secrets((proc.stderr or proc.stdout or "").strip())
        lines = [
            ln.strip()
            for ln in reason.splitlines()
            if ln.strip() and not ln.startswith("Traceback") and "dvc.org/support" not in ln
        ]
        errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
        tail = " | ".join((errors or lines)[-3:]) or f"exit code {proc.returncode}"
        if "No module named dvc" in reason:
            raise PyrocastError("DVC is not installed in this environment", "run `make setup`")
        raise PyrocastError(f"dvc {what or args[0]} failed: {tail}", _hint(args[0]))
    return proc.stdout


def _hint(cmd: str) -> str:
    if cmd in ("push", "pull", "fetch"):
        return (
            "check the remote (dvc.remote_url / dvc.s3_endpoint_url) is reachable and, for S3, that "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set in the environment"
        )
    return "see the DVC message; the data directory may be damaged (its .dvc folder)"


def _ensure_repo(settings: Settings) -> None:
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".dvc" / "config").exists():
        _dvc(settings, "init", "--no-scm", "--force")
    ignore = root / ".dvcignore"
    if not ignore.exists() or ignore.read_text() != DVCIGNORE:
        atomic_write(ignore, DVCIGNORE.encode())


def _remote_url(settings: Settings) -> str:
    url = settings.dvc_remote
    parts = urlsplit(url)
    if parts.password:
        raise InvalidInputError(
            "the DVC remote URL holds a password",
            "put credentials in the environment (AWS_* variables), not in the URL",
        )
    return url


def _configure_remote(settings: Settings) -> str:
    """Point the DVC remote at the configured URL (no credentials are ever written); return the URL."""
    url = _remote_url(settings)
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    endpoint = settings.dvc.s3_endpoint_url if url.startswith("s3://") else None
    given, stored = _as_configured(settings, url)
    if _configured_remote(settings) == (stored, endpoint):
        return url  # each DVC call costs about a second: skip the ones that would change nothing
    _dvc(settings, "remote", "add", "--force", "--default", REMOTE_NAME, given, what="remote add")
    if endpoint:
        _dvc(settings, "remote", "modify", REMOTE_NAME, "endpointurl", endpoint, what="remote modify")
    return url


def _as_configured(settings: Settings, url: str) -> tuple[str, str]:
    """How to give DVC the remote, and how its config then records it.

    A local remote inside the data directory is given relative to it (DVC records it relative to .dvc/): DVC
    writes its config as ASCII, so an absolute path through a directory named "données" failed, and a relative
    one also survives moving the data directory.
    """
    if "://" in url:
        return url, url
    path, root = Path(url).resolve(), settings.root.resolve()
    if not path.is_relative_to(root):
        return url, url
    return os.path.relpath(path, root), os.path.relpath(path, root / ".dvc")


def _configured_remote(settings: Settings) -> tuple[str, str | None] | None:
    """(url, endpointurl) of our remote in the repo's DVC config when it is the default; else None."""
    from configobj import ConfigObj, ConfigObjError  # DVC's own config reader, installed with DVC

    path = settings.root / ".dvc" / "config"
    try:
        cfg = ConfigObj(str(path), file_error=True)
    except (OSError, ConfigObjError):
        return None
    section = cfg.get(f'remote "{REMOTE_NAME}"')
    if cfg.get("core", {}).get("remote") != REMOTE_NAME or not isinstance(section, dict):
        return None
    extra = set(section) - {"url", "endpointurl"}
    return None if extra else (section.get("url"), section.get("endpointurl"))


# --- version records -------------------------------------------------------------------------------
def _versions_dir(settings: Settings) -> Path:
    return settings.root / VERSIONS_DIR


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PyrocastError(f"{path} line {n} is not JSON: {exc}", "repair or remove that line") from exc
    return rows


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    # Append-only log: the old content is kept byte for byte and the new file replaces it atomically.
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(row, sort_keys=True) + "\n").encode())


def _read_dvc_file(path: Path) -> dict[str, Any]:
    try:
        out = yaml.safe_load(path.read_text())["outs"][0]
        md5 = str(out["md5"]).removesuffix(".dir")
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise PyrocastError(f"{path} is not a DVC file of the dataset ({exc})") from exc
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise PyrocastError(f"{path} holds no md5 for the dataset")
    return {"md5": md5, "files": int(out.get("nfiles", 0)), "bytes": int(out.get("size", 0))}


def _counts(dataset_dir: Path) -> dict[str, dict[str, int]]:
    c = Counter((r.split, r.label) for r in Dataset(dataset_dir))
    splits = [*SPLITS, UNSPLIT]
    return {s: {cls: c[(s, cls)] for cls in CLASSES} for s in splits if any(c[(s, cls)] for cls in CLASSES)}


def _manifest_sha(dataset_dir: Path) -> str | None:
    mf = dataset_dir / MANIFEST
    return hashlib.sha256(mf.read_bytes()).hexdigest() if mf.exists() else None


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every recorded version, oldest first, with whether it was pushed to the configured remote."""
    vdir = _versions_dir(settings)
    pushes = _read_jsonl(vdir / PUSHES_LOG)
    remote = display_remote(settings.dvc_remote)
    out = []
    for row in _read_jsonl(vdir / VERSIONS_LOG):
        pushed_to = sorted({p["remote"] for p in pushes if p.get("md5") == row["md5"]})
        out.append({**row, "pushed": remote in pushed_to, "pushed_to": pushed_to, "remote": remote})
    return out


def current_version(settings: Settings) -> dict[str, Any] | None:
    """The version the dataset folder was last recorded or pulled as; None before the first record.

    `modified` says whether the manifest changed since (tiles added, moved or removed).
    """
    dvc_file = settings.root / DVC_FILE
    if not dvc_file.exists():
        return None
    info = _read_dvc_file(dvc_file)
    row = next((v for v in list_versions(settings) if v["md5"] == info["md5"]), None)
    if row is None:  # the version log is gone; the .dvc file still says which data this is
        row = {
            "id": info["md5"][:SHORT],
            "md5": info["md5"],
            "created": None,
            "tiles": None,
            "counts": {},
            "pushed": False,
            "pushed_to": [],
            "remote": display_remote(settings.dvc_remote),
            **info,
        }
    sha = _manifest_sha(settings.dataset_dir)
    return {**row, "modified": row.get("manifest_sha256") is not None and sha != row.get("manifest_sha256")}


def _find(settings: Settings, version_id: str) -> dict[str, Any]:
    key = version_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,32}", key):
        raise InvalidInputError(f"{version_id!r} is not a version id", "ids are hex digits; see `pyrocast data show`")
    known = list_versions(settings)
    hits = [v for v in known if v["md5"].startswith(key)]
    if not hits:
        ids = ", ".join(v["id"] for v in known[-5:]) or "none recorded yet"
        raise InvalidInputError(f"no dataset version {version_id!r}", f"known versions: {ids}")
    if len(hits) > 1:
        raise InvalidInputError(f"version id {version_id!r} is ambiguous", "give more digits")
    return hits[0]


# --- the operations --------------------------------------------------------------------------------
def record_version(settings: Settings, push: bool = False) -> Report:
    """Record the dataset folder as a DVC version (same data, same version), optionally pushing it."""
    ds_dir = settings.dataset_dir
    if not (ds_dir / MANIFEST).exists():
        raise InvalidInputError(f"there is no dataset in {ds_dir} to version", "render or import tiles first")
    _ensure_repo(settings)
    _dvc(settings, "add", "dataset")
    info = _read_dvc_file(settings.root / DVC_FILE)
    md5 = info["md5"]
    vdir = _versions_dir(settings)
    copy = vdir / f"{md5}.dvc"
    if not copy.exists():
        atomic_write(copy, (settings.root / DVC_FILE).read_bytes())

    known = {v["md5"] for v in _read_jsonl(vdir / VERSIONS_LOG)}
    is_new = md5 not in known
    if is_new:
        counts = _counts(ds_dir)
        row = {
            "id": md5[:SHORT],
            "md5": md5,
            "created": now_iso(),
            "tiles": sum(sum(c.values()) for c in counts.values()),
            "counts": counts,
            "files": info["files"],
            "bytes": info["bytes"],
            "manifest_sha256": _manifest_sha(ds_dir),
        }
        _append_jsonl(vdir / VERSIONS_LOG, row)

    if push:
        url = _configure_remote(settings)
        _dvc(settings, "push", "--remote", REMOTE_NAME, DVC_FILE)
        already = any(v["md5"] == md5 and v["pushed"] for v in list_versions(settings))
        if not already:
            _append_jsonl(vdir / PUSHES_LOG, {"md5": md5, "remote": display_remote(url), "at": now_iso()})

    v = current_version(settings)
    assert v is not None
    r = Report("Dataset version")
    r.add("version", f"{v['id']} ({'new' if is_new else 'unchanged: already recorded'})")
    r.add("md5", md5)
    r.add("tiles", v["tiles"])
    r.add("files", f"{info['files']} files, {info['bytes'] / 1e6:.1f} MB")
    for split in (*SPLITS, UNSPLIT):
        if split in v["counts"]:
            r.add(split, ", ".join(f"{n} {cls}" for cls, n in v["counts"][split].items()))
    r.add("remote", f"{v['remote']} ({'pushed' if v['pushed'] else 'not pushed: use --push'})")
    r.details.update({"version": v})
    return r


def pull_version(settings: Settings, version_id: str | None = None, *, force: bool = False) -> Report:
    """Restore the dataset folder of a recorded version (default: the current one) from the cache or the remote.

    Refuses, unless `force`, when the dataset folder holds changes that are not recorded as a version:
    pulling would replace them.
    """
    root = settings.root
    if version_id is None:
        cur = current_version(settings)
        known = list_versions(settings)
        if cur is None and not known:
            raise InvalidInputError("no dataset version is recorded here", "record one with `pyrocast data version`")
        target = cur if cur is not None else known[-1]
    else:
        target = _find(settings, version_id)
    md5 = target["md5"]
    copy = _versions_dir(settings) / f"{md5}.dvc"
    if not copy.exists():
        raise PyrocastError(f"the DVC file of version {md5[:SHORT]} is missing ({copy})")

    _ensure_repo(settings)
    ds_dir = settings.dataset_dir
    if not force and ds_dir.exists() and any(ds_dir.iterdir()) and not _recorded(settings):
        raise PyrocastError(
            f"the dataset in {ds_dir} has changes that are not recorded as a version; pulling would replace them",
            "record them first with `pyrocast data version`, or pass force",
        )
    url = _configure_remote(settings)
    dvc_file = root / DVC_FILE
    previous = dvc_file.read_bytes() if dvc_file.exists() else None
    atomic_write(dvc_file, copy.read_bytes())
    # Fetch into the cache first and only then replace the folder: a failed download leaves the dataset
    # (and dataset.dvc, which says which version it is) as they were.
    try:
        _dvc(settings, "fetch", "--remote", REMOTE_NAME, DVC_FILE, what="pull (fetch)")
        # DVC's fetch exits 0 when the remote lacks files, and its checkout --force then empties the
        # folder before failing: check the cache holds the whole version before touching the dataset.
        missing = _missing_from_cache(settings, md5)
        if missing:
            raise PyrocastError(
                f"version {md5[:SHORT]} is incomplete in the remote {display_remote(url)} and the local cache: "
                f"{len(missing)} file(s) missing",
                "was it pushed? push it from a machine that has it (`pyrocast data version --push`)",
            )
    except PyrocastError:
        if previous is None:
            dvc_file.unlink(missing_ok=True)
        else:
            atomic_write(dvc_file, previous)
        raise
    _dvc(settings, "checkout", "--force", DVC_FILE, what="pull (checkout)")

    r = Report("Dataset version pulled")
    r.add("version", f"{md5[:SHORT]} ({md5})")
    r.add("remote", display_remote(url))
    r.add("tiles", sum(1 for _ in Dataset(ds_dir)))
    r.add("dataset", str(ds_dir))
    r.details.update({"version": current_version(settings)})
    return r


def _missing_from_cache(settings: Settings, md5: str) -> list[str]:
    """Cache objects of a dataset version that are not in DVC's local cache (DVC 3 layout)."""
    cache = settings.root / ".dvc" / "cache" / "files" / "md5"

    def obj(h: str) -> Path:
        return cache / h[:2] / h[2:]

    listing = obj(md5 + ".dir")
    if not listing.exists():
        return [f"{md5}.dir"]
    try:
        entries = json.loads(listing.read_text())
    except (OSError, json.JSONDecodeError):
        return [f"{md5}.dir"]
    return [e.get("relpath", e["md5"]) for e in entries if not obj(e["md5"]).exists()]


def _recorded(settings: Settings) -> bool:
    """Whether the dataset folder is exactly the version in dataset.dvc (so replacing it loses nothing)."""
    if not (settings.root / DVC_FILE).exists():
        return False
    status = _dvc(settings, "status", "--json", DVC_FILE).strip() or "{}"
    try:
        return json.loads(status) == {}
    except json.JSONDecodeError:
        return False
