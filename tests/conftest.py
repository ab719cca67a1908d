"""Shared fixtures: an isolated data directory per test and the real tiles from ../shared."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pyrocast.settings import Settings, get_settings
from tests.support.postgres import postgres_server, postgres_url  # noqa: F401 - one PostgreSQL per session

REPO = Path(__file__).resolve().parents[1]
REAL_TILES = Path(os.environ.get("PYROCAST_REAL_TILES", REPO.parent / "shared" / "data" / "wildfire-tiles"))

os.environ.setdefault("PYROCAST_QUIET", "1")

# A suite started in the background of a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and
# so would every process it starts: the Ctrl-C tests would then test nothing but that. Ctrl-C acts as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data directory is a fresh temporary folder (also exported to the environment)."""
    data_dir = tmp_path / "pyrocast-data"
    monkeypatch.setenv("PYROCAST_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)  # no stray pyrocast.yaml is read
    get_settings.cache_clear()
    s = Settings()
    s.ensure_dirs()
    yield s
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def real_tiles() -> Path:
    """The 369 real Kaggle tiles in ../shared; tests that need them skip where the folder is absent."""
    if not (REAL_TILES / "train").is_dir():
        pytest.skip(f"real tiles not found at {REAL_TILES} (they live in ../shared beside the checkout)")
    return REAL_TILES
