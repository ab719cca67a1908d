"""Lineage tags from a real git checkout and the dataset version."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyrocast.registry.lineage import UNKNOWN, git_info, lineage_tags, version_label
from pyrocast.settings import Settings


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_info_commit_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one")
    info = git_info(repo)
    assert len(info["commit"]) == 40 and info["dirty"] == "false" and info["branch"] == "main"
    (repo / "a.py").write_text("x = 2\n")
    assert git_info(repo)["dirty"] == "true"


def test_git_info_outside_a_checkout(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"commit": UNKNOWN, "dirty": UNKNOWN, "branch": UNKNOWN}


def test_version_label() -> None:
    assert version_label(None) == "unversioned"
    assert version_label({"id": "ab12cd", "md5": "ab12cdef"}) == "ab12cd"
    assert version_label({"id": "ab12cd", "modified": True}) == "ab12cd+modified"


def test_lineage_tags(settings: Settings, tmp_path: Path) -> None:
    tags = lineage_tags(
        settings,
        zenml_run_id="z-1",
        run_name="train-x",
        profile="quick",
        seed=7,
        data_info={"id": "v1", "md5": "f" * 32, "tiles": 10},
        git={"commit": "c" * 40, "dirty": "true", "branch": "main"},
    )
    assert tags["pyrocast.git_commit"] == "c" * 40 and tags["pyrocast.git_dirty"] == "true"
    assert tags["pyrocast.data_version"] == "v1" and '"tiles": 10' in tags["pyrocast.data_version_info"]
    assert tags["pyrocast.zenml_run_id"] == "z-1" and tags["pyrocast.seed"] == "7"
    assert all(isinstance(v, str) for v in tags.values())
