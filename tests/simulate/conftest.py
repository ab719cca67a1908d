"""One real serving stack (two tiny classifiers and the gateway, no explainer) with a test split on disk.

Champion v1 says "wildfire" to every tile and challenger v2 "nowildfire" (tests/support/serving.py), so the
live accuracy of each is known exactly from the true labels of the tiles it answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyrocast.data.layout import Dataset
from pyrocast.geo import LonLat
from tests.support.serving import ServingStack, start_stack
from tests.support.tiles import jpeg_tile

N_TEST = 24
TRAIN_LAT = 46.5  # every train tile's latitude, which no test tile has


def write_test_split(stack: ServingStack, n: int = N_TEST) -> Dataset:
    """`n` test tiles inside the synthetic region (2 of 3 wildfire) plus a few train tiles replay must skip."""
    ds = Dataset(stack.settings.dataset_dir)
    for i in range(n):
        label = "wildfire" if i % 3 else "nowildfire"
        ds.add(jpeg_tile(i, size=96), LonLat(-75.0 + i * 0.05, 45.5 + i * 0.03), label, "test", "synthetic")
    for i in range(4):
        ds.add(jpeg_tile(1000 + i, size=96), LonLat(-73.0 + i * 0.05, TRAIN_LAT), "wildfire", "train", "synthetic")
    ds.save()
    return ds


@pytest.fixture(scope="session")
def sim_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingStack]:
    stack = start_stack(tmp_path_factory.mktemp("simulate"), explainer=False)
    try:
        write_test_split(stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(sim_stack: ServingStack) -> Iterator[ServingStack]:
    """The shared stack with both classifiers running and the rollout reset to champion only."""
    if sim_stack.challenger is None or not sim_stack.challenger.alive():
        sim_stack.start_challenger()
    sim_stack.set_rollout("champion", {"reason": "test reset"})
    yield sim_stack
