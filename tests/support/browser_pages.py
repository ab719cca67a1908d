"""Driving the web app's pages in chromium for tests: a watched tab, held requests, polling in the page.

`Tab` records every request a page makes (none may leave 127.0.0.1) and every console error. `Hold` keeps
matching requests pending until the test lets each one go, which is how the tests recreate a slow gateway
deterministically (no sleeps in route handlers: the sync Playwright API would stall its own event loop).
Polling goes through Playwright calls (`page.evaluate`, `page.wait_for_timeout`) so that its events, route
handlers included, keep being dispatched while the test waits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pyrocast.serving import procs
from pyrocast.serving.store import PredictionStore
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


@dataclass
class Live:
    """The serving stack, the web app process in front of it, and a reader of the prediction store."""

    stack: ServingStack
    web: procs.ServiceProcess
    store: PredictionStore

    @property
    def url(self) -> str:
        return self.web.url


@dataclass
class Tab:
    """A browser page with everything it asked for and every console error recorded."""

    page: Any
    context: Any
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self, allow: Callable[[str], bool] = lambda _: False) -> None:
        assert self.outside == [], f"requests left 127.0.0.1: {self.outside}"
        bad = [e for e in self.errors if not allow(e)]
        assert bad == [], f"console errors: {bad}"


@contextmanager
def open_tab(chromium: Any, width: int = 1400, height: int = 900) -> Iterator[Tab]:
    """A fresh browser context (its own cookie, so its own client id) with one watched page."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    t = Tab(page, context)

    def guard(route: Any) -> None:
        url = route.request.url
        t.requests.append(url)
        host = urlparse(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:  # recorded, and never sent
            t.outside.append(url)
            route.abort()

    page.route("**/*", guard)
    page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: t.errors.append(f"page error: {e}"))
    try:
        yield t
    finally:
        context.close()


class Hold:
    """Requests matching `pattern` stay pending until `release(i)` lets the i-th one go (through the tab's guard)."""

    def __init__(self, page: Any, pattern: str) -> None:
        self.page = page
        self.pattern = pattern
        self.routes: list[Any] = []
        page.route(pattern, self._hold)

    def _hold(self, route: Any) -> None:  # Playwright wraps handlers: it must be a plain function or method
        self.routes.append(route)

    def wait(self, n: int, timeout: float = 5.0) -> None:
        """Until at least `n` matching requests were made."""
        until(self.page, lambda: len(self.routes) >= n, timeout, f"{n} request(s) to {self.pattern}")

    def release(self, i: int) -> Any:
        """Let the i-th held request go and return its response (once the body arrived)."""
        with self.page.expect_response(lambda r: r.request == self.routes[i].request, timeout=30_000) as info:
            self.routes[i].fallback()
        response = info.value
        response.finished()
        return response

    def stop(self) -> None:
        """Later requests are not held any more."""
        self.page.unroute(self.pattern, self._hold)


def until(page: Any, check: Callable[[], Any], timeout: float = 10.0, what: str = "a condition") -> Any:
    """Poll `check` (Python) while Playwright keeps dispatching the page's events; AssertionError on timeout."""
    return wait_for(check, timeout, what, sleep=lambda s: page.wait_for_timeout(1000 * s))


def wait_js(page: Any, expression: str, timeout: float) -> None:
    """Poll a JavaScript expression from Python (CDP evaluation: Playwright's in-page polling would need
    `eval`, which the app's Content-Security-Policy rightly forbids)."""
    wait_for(lambda: page.evaluate(expression), timeout=timeout, what=expression)


def served_row(live: Live, request_id: str) -> dict[str, Any]:
    """The one served row the gateway stored for `request_id` (it writes in the background: polled)."""
    rows = wait_for(lambda: live.store.predictions_for(request_id), what=f"prediction {request_id} in the store")
    served = [r for r in rows if r["served"]]
    assert len(served) == 1
    return served[0]
