"""Who may read which split: the held-out test split is out of training code's reach.

Two guards:

* `training_view(root)` is the only way training code reads the dataset: it lists and reads `train` and
  `valid` tiles and raises `HeldOutAccessError` for the test split or any path under `test/`.
* `forbid_test_reads(root)` is a belt for the braces: while it is active, any `open()` of a file under
  `<root>/test/` anywhere in the process (PIL, numpy, a stray `open`, a data-loader thread) raises
  `HeldOutAccessError`, through a Python audit hook (PEP 578). Files opened by C code that bypasses
  Python's I/O (e.g. a native decoder given a path) are not seen by the hook: read bytes through a view.

Evaluation code uses `evaluation_view(root)`, which may read every split.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from pyrocast.data.layout import SPLITS, Dataset, TileRecord
from pyrocast.errors import HeldOutAccessError, InvalidInputError
from pyrocast.imaging import decode_image

TEST = "test"
TRAINING_SPLITS: tuple[str, ...] = ("train", "valid")


class DatasetView:
    """Read access to some splits of a dataset folder; everything else raises HeldOutAccessError."""

    def __init__(self, dataset_root: Path, allowed: tuple[str, ...], purpose: str) -> None:
        self.root = Path(dataset_root).resolve()
        self.allowed = allowed
        self.purpose = purpose
        if not self.root.is_dir():
            raise InvalidInputError(f"there is no dataset at {self.root}", "render or import tiles first")
        self._dataset = Dataset(self.root)
        self._forbidden_roots = tuple(self.root / s for s in SPLITS if s not in allowed)

    def _refuse(self, what: str) -> HeldOutAccessError:
        return HeldOutAccessError(
            f"{self.purpose} code may not read {what}: the test split is held out",
            "evaluation code reads it through pyrocast.data.access.evaluation_view",
        )

    def records(self, split: str | None = None) -> list[TileRecord]:
        """Tiles of one split (or of every allowed split), sorted by path."""
        if split is None:
            return [r for r in self._dataset if r.split in self.allowed]
        if split == TEST and TEST not in self.allowed:
            raise self._refuse("the test split")
        if split not in self.allowed:
            raise InvalidInputError(f"unknown split {split!r}", f"this view reads {', '.join(self.allowed)}")
        return self._dataset.in_split(split)

    def path(self, record: TileRecord | str | Path) -> Path:
        """The checked absolute path of a record (or of a path relative to the dataset root)."""
        rel = record.path if isinstance(record, TileRecord) else record
        if isinstance(record, TileRecord) and record.split not in self.allowed:
            raise self._refuse(f"a {record.split} tile ({record.path})")
        # Resolve symlinks and `..` first: `train/../test/x.jpg` or a link into test/ is still test.
        p = (self.root / rel).resolve()
        for forbidden in self._forbidden_roots:
            if p == forbidden or forbidden in p.parents:
                raise self._refuse(f"{p}")
        if self.root not in p.parents:
            raise InvalidInputError(f"{rel} is outside the dataset {self.root}")
        return p

    def read_bytes(self, record: TileRecord | str | Path) -> bytes:
        """The file's bytes, after the split check."""
        return self.path(record).read_bytes()

    def open_image(self, record: TileRecord | str | Path) -> Image.Image:
        """The decoded image (guarded decode: a corrupt tile raises InvalidInputError naming it)."""
        rel = record.path if isinstance(record, TileRecord) else str(record)
        return decode_image(self.read_bytes(record), what=rel)

    def __repr__(self) -> str:
        return f"DatasetView({str(self.root)!r}, allowed={self.allowed})"


def training_view(dataset_root: Path) -> DatasetView:
    """Train and valid tiles only: the view training, tuning and pipelines use."""
    return DatasetView(dataset_root, TRAINING_SPLITS, "training")


def evaluation_view(dataset_root: Path) -> DatasetView:
    """Every split, the held-out test split included: for evaluation code only."""
    return DatasetView(dataset_root, SPLITS, "evaluation")


# --- the audit hook --------------------------------------------------------------------------------
# Audit hooks cannot be removed once added, so one hook is installed on first use and consults this
# process-wide table (a plain dict rather than a ContextVar: a data-loader thread does not inherit a
# context, and the training process as a whole is what must not read the test split).
_lock = threading.Lock()
_forbidden: dict[str, int] = {}  # realpath of a forbidden folder -> how many active guards forbid it
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _forbidden:
        return
    target = args[0] if args else None
    if target is None or isinstance(target, int):  # an already-open file descriptor
        return
    try:
        path = os.fsdecode(target)
    except TypeError:
        return
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        for folder in tuple(_forbidden):
            if candidate == folder or candidate.startswith(folder + os.sep):
                raise HeldOutAccessError(
                    f"training code may not open {path}: the test split is held out",
                    "read tiles through pyrocast.data.access.training_view",
                )


@contextmanager
def forbid_test_reads(dataset_root: Path) -> Iterator[None]:
    """While active, opening any file under `<dataset_root>/test/` in this process raises HeldOutAccessError."""
    global _hook_installed
    folder = os.path.realpath(Path(dataset_root) / TEST)
    with _lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
        _forbidden[folder] = _forbidden.get(folder, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _forbidden[folder] -= 1
            if not _forbidden[folder]:
                del _forbidden[folder]


def is_test_read_forbidden(dataset_root: Path) -> bool:
    """Whether a `forbid_test_reads` guard is active for this dataset."""
    return os.path.realpath(Path(dataset_root) / TEST) in _forbidden
