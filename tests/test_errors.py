"""User-facing errors: a write the disk refuses is said plainly, with what to do."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyrocast.errors import disk_error
from tests.support.disks import tmpfs


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.EROFS, "read-only"), (errno.EACCES, "permission"), (errno.ENOSPC, "disk is full")],
)
def test_refused_writes_name_the_path_and_what_to_do(code: int, hint: str) -> None:
    clear = disk_error(OSError(code, os.strerror(code), "/data/logs/gateway-8000.log"))
    assert clear is not None and hint in str(clear)
    assert clear.message == f"cannot write /data/logs/gateway-8000.log: {os.strerror(code)}"


def test_other_os_errors_stay_errors_of_ours() -> None:
    assert disk_error(OSError(errno.ENOENT, "No such file or directory", "x")) is None


@pytest.mark.integration
def test_the_cli_on_a_read_only_data_directory_says_so_in_one_line(tmp_path: Path) -> None:
    """A real read-only file system (a tmpfs mounted ro), where the review got a traceback."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        env = {**os.environ, "PYROCAST_DATA_DIR": str(mnt / "data")}
        done = subprocess.run(
            [sys.executable, "-m", "pyrocast.cli.main", "data", "synth", "--tiles", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Read-only file system" in done.stderr, done.stderr
    assert "choose a writable data directory" in done.stderr
