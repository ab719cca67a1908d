"""Real small or read-only file systems for tests of full and read-only disks (a tmpfs; needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(where: Path, options: str = "size=24k") -> Iterator[Path]:
    """A tmpfs mounted at `where` (created) with mount `options`, unmounted afterwards; skips where it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here")
    try:
        yield where
    finally:
        # A descriptor still open in this process (what a failing test may leave) makes umount refuse: detach it
        # lazily then, rather than leave a mount behind for every later run to trip over.
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(disk: Path) -> Path:
    """Fill the small file system `disk` with one file, which is returned (delete it to free the space)."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"x" * 1024)
            f.flush()
    return filler
