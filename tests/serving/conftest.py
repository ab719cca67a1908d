"""Fixtures for the serving tests: one real stack (classifiers, explainer, gateway) for the whole session."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyrocast.serving.store import PredictionStore
from tests.support.serving import ServingStack, start_stack, tiny_bundles


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def tile_image(seed: int = 0, size: int = 350, mode: str = "RGB") -> Image.Image:
    """A noisy tile (not a flat colour, so statistics and predictions vary with the seed)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    noise = rng.normal(0, 30, size=(size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return encode(tile_image(1))


@pytest.fixture(scope="session")
def bundle_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny exported bundles: "1" always says wildfire, "2" never does (built once per session)."""
    return tiny_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, bundle_dirs: dict[str, Path]) -> Iterator[ServingStack]:
    """Registered champion v1 (always wildfire), challenger v2 (always nowildfire), explainer, gateway."""
    s = start_stack(tmp_path_factory.mktemp("serving"), registry=True, bundles=bundle_dirs)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def gw(stack: ServingStack) -> Iterator[ServingStack]:
    """The shared stack with the rollout reset to champion only (and both classifiers running)."""
    if stack.challenger is None or not stack.challenger.alive():
        stack.start_challenger()
    view = stack.set_rollout("champion", {"reason": "test reset"})
    if view["state"]["champion"]["version"] != "1":  # a test promoted v2 and did not roll back
        stack.set_rollout("rollback", {"reason": "test reset"})
    yield stack


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionStore]:
    """A started prediction store on SQLite, then on a real PostgreSQL (skipped where none can start)."""
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = PredictionStore(url).start()
    yield s
    s.close()
