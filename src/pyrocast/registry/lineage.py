"""Lineage: which code, which data and which pipeline run made a model (recorded as MLflow tags).

Tags (all strings, prefix `pyrocast.`): `git_commit`, `git_dirty` (uncommitted changes, untracked files
included, when the model was trained), `data_version` (the DVC version of the dataset, or `unversioned`),
`zenml_run_id`, `run_name`, `profile`, `seed`.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from pyrocast.settings import Settings

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
UNVERSIONED = "unversioned"
MAX_TAG = 5000  # MLflow tag values are limited (8000 chars); keep well under it


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info(where: Path | None = None) -> dict[str, str]:
    """{"commit", "dirty", "branch"} of the git checkout holding the code (or `where`); "unknown" outside git.

    The package's own source tree is asked first (an editable install), then the current directory.
    """
    candidates = [where] if where else [Path(__file__).resolve().parents[3], Path.cwd()]
    for cwd in candidates:
        if cwd is None or not cwd.is_dir():
            continue
        commit = _git(["rev-parse", "HEAD"], cwd)
        if not commit:
            continue
        status = _git(["status", "--porcelain"], cwd)
        return {
            "commit": commit,
            "dirty": UNKNOWN if status is None else str(bool(status)).lower(),
            "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) or UNKNOWN,
        }
    return {"commit": UNKNOWN, "dirty": UNKNOWN, "branch": UNKNOWN}


def data_version(settings: Settings) -> dict[str, Any] | None:
    """The dataset's current DVC version (pyrocast.data.version), or None when it was never versioned."""
    try:
        from pyrocast.data.version import current_version
    except ImportError:
        return None
    try:
        return current_version(settings)
    except Exception as exc:  # lineage must never stop a training run; say what was missing instead
        log.warning("could not read the dataset version: %s", exc)
        return None


def version_label(info: dict[str, Any] | None) -> str:
    """A short label for a data version dict (its version, revision or hash), `unversioned` for None."""
    if not info:
        return UNVERSIONED
    for key in ("id", "version", "rev", "tag", "md5", "hash", "sha256"):
        if info.get(key):
            # a dataset changed since it was recorded is not that version any more: say so
            return str(info[key]) + ("+modified" if info.get("modified") else "")
    return json.dumps(info, sort_keys=True, default=str)[:200]


def lineage_tags(
    settings: Settings,
    *,
    zenml_run_id: str | None,
    run_name: str,
    profile: str,
    seed: int,
    data_info: dict[str, Any] | None = None,
    git: dict[str, str] | None = None,
) -> dict[str, str]:
    """The lineage tags of one training run."""
    git = git or git_info()
    tags = {
        "pyrocast.git_commit": git["commit"],
        "pyrocast.git_dirty": git["dirty"],
        "pyrocast.git_branch": git["branch"],
        "pyrocast.data_version": version_label(data_info),
        "pyrocast.zenml_run_id": zenml_run_id or UNKNOWN,
        "pyrocast.run_name": run_name,
        "pyrocast.profile": profile,
        "pyrocast.seed": str(seed),
        "pyrocast.model_name": settings.mlflow.model_name,
    }
    if data_info:
        tags["pyrocast.data_version_info"] = json.dumps(data_info, sort_keys=True, default=str)[:MAX_TAG]
    return tags
