"""One real serving stack (two tiny classifiers and the gateway) for the `pyrocast rollout` CLI tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyrocast.settings import get_settings
from tests.support.serving import ServingStack, start_stack


@pytest.fixture(scope="session")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingStack]:
    stack = start_stack(tmp_path_factory.mktemp("cli"), explainer=False)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def gw(cli_stack: ServingStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServingStack]:
    """The shared stack at champion only, its token and data directory exported as an operator would."""
    if cli_stack.challenger is None or not cli_stack.challenger.alive():
        cli_stack.start_challenger()
    cli_stack.set_rollout("champion", {"reason": "test reset"})
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", cli_stack.token)
    monkeypatch.setenv("PYROCAST_DATA_DIR", str(cli_stack.settings.root))
    get_settings.cache_clear()
    yield cli_stack
    get_settings.cache_clear()
