"""Fixtures for the web app's browser tests: one serving stack and web app for the whole package, one chromium.

Starting the stack (two BentoML classifiers, the explainer, the gateway) costs seconds, so the browser test
modules share it; every test opens its own browser context, hence its own cookie and client id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pyrocast.serving.store import PredictionStore
from tests.support.browser_pages import Live, Tab, open_tab
from tests.support.serving import start_stack
from tests.support.webapp import browser, start_webapp


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    stack = start_stack(tmp_path_factory.mktemp("webapp"))
    web = None
    try:
        web = start_webapp(stack.settings, port=stack.settings.serving.webapp_port)
        store = PredictionStore(stack.settings.store_database_url)  # a reader; the gateway writes
        yield Live(stack, web, store)
        store.engine.dispose()
    finally:
        if web is not None:
            web.stop()
        stack.stop()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def tab(chromium: Any) -> Iterator[Tab]:
    with open_tab(chromium) as t:
        yield t
