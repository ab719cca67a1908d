"""The web app as a real process on a free port, for browser and integration tests.

`start_webapp(settings)` runs `python -m pyrocast.webapp.app` with the same settings (data directory, ports of
the gateway it calls) and waits for `/healthz`. `browser()` opens Debian's chromium through Playwright, or skips
the test with a clear message where chromium or Playwright is missing (never `playwright install`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def start_webapp(
    settings: Settings, *, port: int | None = None, gateway_port: int | None = None, wait: bool = True
) -> procs.ServiceProcess:
    """Start the web app for `settings` (optionally calling a gateway on another port); `wait` until it answers."""
    sv = settings.serving.model_copy(
        update={
            "webapp_port": port or free_port(),
            **({"gateway_port": gateway_port} if gateway_port is not None else {}),
        }
    )
    s = settings.model_copy(update={"serving": sv})
    url = f"http://127.0.0.1:{sv.webapp_port}"
    return procs.start_process(
        "webapp",
        [sys.executable, "-m", "pyrocast.webapp.app", "--host", "127.0.0.1", "--port", str(sv.webapp_port)],
        url=url,
        log_path=s.root / "logs" / f"webapp-{sv.webapp_port}.log",
        health_path="/healthz",
        env=procs.settings_env(s),
        cwd=s.root,
        timeout=60,
        wait=wait,
    )


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless Debian chromium driven by Playwright; skips the test where it cannot run."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make test-deps` (as root) to install Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install -c constraints.txt -e '.[dev]'`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
