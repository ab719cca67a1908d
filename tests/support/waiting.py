"""Polling until a condition holds, for tests that watch real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Any:
    """Call `check` every 0.1 s until it returns something truthy, and return that.

    On timeout: the last (falsy) value, for the caller to assert on; or, when `what` names the condition, an
    AssertionError that says what was awaited. `sleep` waits between calls (a browser test passes one that lets
    Playwright dispatch the page's events meanwhile).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            if what is not None:
                raise AssertionError(f"timed out waiting for {what}")
            return value
        sleep(0.1)
