"""The web app in front of a gateway that hangs (a paused process: it still accepts connections)."""

from __future__ import annotations

import os
import signal
import time

import httpx

from pyrocast.webapp.proxy import PREDICT_TIMEOUT_S, WATCH_EVERY_S, WATCH_TIMEOUT_S
from tests.support.browser_pages import Live


def test_a_hung_gateway_is_given_up_on_when_its_health_check_goes_unanswered(live: Live) -> None:
    """A prediction through a gateway that stopped answering waited out the web app's 90 s timeout (longer than any
    answer the gateway gives) before the map said anything. The web app now watches the gateway's health check while
    it waits, and says the gateway stopped answering once that goes unanswered twice."""
    gateway = live.stack.gateway
    assert gateway is not None
    place = {"lat": 46.25, "lon": -73.5}
    assert httpx.post(f"{live.url}/api/predict", json=place, timeout=60).status_code == 200
    os.killpg(gateway.pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        r = httpx.post(f"{live.url}/api/predict", json=place, timeout=PREDICT_TIMEOUT_S + 10)
        took = time.monotonic() - t
    finally:
        os.killpg(gateway.pid, signal.SIGCONT)
    assert r.status_code == 503, r.text
    assert "stopped answering" in r.json()["error"] and "health check" in r.json()["error"], r.json()
    assert took < 3 * (WATCH_EVERY_S + WATCH_TIMEOUT_S), f"waited {took:.0f} s"
    # Back: answers again.
    assert httpx.post(f"{live.url}/api/predict", json=place, timeout=60).status_code == 200
