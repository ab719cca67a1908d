"""`pyrocast rollout ...` against a real gateway: token checks, units of shares, error wording, status windows."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from pyrocast.cli.main import app
from pyrocast.cli.serve import _window
from pyrocast.errors import PyrocastError
from pyrocast.settings import get_settings
from pyrocast.simulate.gateway import transport_error
from tests.support.serving import ServingStack

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

runner = CliRunner()


def invoke(stack: ServingStack, *args: str) -> Result:
    return runner.invoke(app, ["rollout", *args, "--gateway", stack.url], env={"COLUMNS": "200"})


def view(stack: ServingStack) -> dict:
    return httpx.get(stack.url + "/v1/rollout", timeout=30).json()


def error_of(result: Result) -> str:
    assert result.exit_code != 0 and isinstance(result.exception, PyrocastError), result.output
    return str(result.exception)


@pytest.mark.parametrize(
    ("token", "problem"),
    [("{} ", "whitespace"), ("{}\n", "whitespace"), ("{}-tökén", "non-ASCII"), ("{}\x07x", "control characters")],
)
def test_a_malformed_token_is_named_not_sent_and_not_printed(
    gw: ServingStack, monkeypatch: pytest.MonkeyPatch, token: str, problem: str
) -> None:
    secret = token.format(gw.token)
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", secret)
    get_settings.cache_clear()
    result = invoke(gw, "champion", "--reason", "token test")
    msg = error_of(result)
    assert "PYROCAST_ADMIN_TOKEN" in msg and problem in msg, msg
    assert "does not answer" not in msg  # the gateway is up: nobody should be told to restart it
    assert gw.token not in msg and gw.token not in result.output
    assert view(gw)["events"][0]["reason"] != "token test"  # nothing was sent


def test_transport_errors_are_reported_by_what_they_are(gw: ServingStack) -> None:
    # httpx quotes the offending header in its message: it must not reach the user.
    exc = httpx.LocalProtocolError(f"Illegal header value b'Bearer {gw.token} '")
    msg = str(transport_error(gw.url, exc))
    assert gw.token not in msg and "not valid HTTP" in msg and "does not answer" not in msg
    with tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as url:
        msg = error_of(runner.invoke(app, ["rollout", "status", "--gateway", url]))
    assert "did not answer with valid HTTP" in msg and "does not answer" not in msg
    with tcp_server(NOT_THE_GATEWAY) as url:  # e.g. MLflow's or the web app's port: named, without its page
        msg = error_of(runner.invoke(app, ["rollout", "status", "--gateway", url]))
    assert "answered 404, not as the gateway does" in msg and "<html>" not in msg
    msg = error_of(runner.invoke(app, ["rollout", "status", "--gateway", "notaurl"]))
    assert "is not an http(s) URL" in msg


@pytest.mark.parametrize("steps", ["0.05,0.25,1", "5%,25%,100%", "5,25,100"])
def test_canary_steps_in_fractions_or_percents_mean_the_same(gw: ServingStack, steps: str) -> None:
    result = invoke(gw, "canary", "--steps", steps, "--every", "600")
    assert result.exit_code == 0, result.output
    unit = "fractions" if steps.startswith("0.") else "percent"
    assert f"--steps {steps} read as {unit}: 5% -> 25% -> 100%" in result.output
    assert view(gw)["state"]["canary"]["steps"] == pytest.approx([0.05, 0.25, 1.0])


def test_small_shares_keep_their_decimals(gw: ServingStack) -> None:
    result = invoke(gw, "canary", "--steps", "0.5%,1%", "--every", "600")
    assert result.exit_code == 0, result.output
    assert "0.5% -> 1%, every 600 s" in result.output
    assert view(gw)["state"]["canary"]["steps"] == pytest.approx([0.005, 0.01])


def test_canary_errors_use_the_cli_units_and_flags(gw: ServingStack) -> None:
    msg = error_of(invoke(gw, "canary", "--steps", "5,200"))
    assert "--steps" in msg and "got 200 (read as percent)" in msg and "2.0" not in msg
    msg = error_of(invoke(gw, "shadow", "--sample", "1"))  # 100%? while 2 is 2%: asked, not guessed
    assert "ambiguous" in msg and "1%" in msg, msg
    msg = error_of(invoke(gw, "canary", "--steps", "5%,0.25"))
    assert "mixes values with and without %" in msg
    msg = error_of(invoke(gw, "canary", "--every", "0"))
    assert "--every" in msg and "step_seconds" not in msg
    msg = error_of(invoke(gw, "canary", "--max-error-rate", "2"))  # refused by the gateway, named by the CLI
    assert "--max-error-rate: Input should be less than or equal to 1" in msg and "guardrails" not in msg
    for flag in ("--max-p95-ms", "--max-error-rate", "--max-disagreement"):  # typer takes them; JSON cannot
        for value in ("inf", "nan"):
            msg = error_of(invoke(gw, "canary", flag, value))
            assert f"{flag} must be a finite number" in msg, msg
    msg = error_of(invoke(gw, "ab", "inf", "1"))
    assert "the champion's weight must be a finite number" in msg, msg
    msg = error_of(invoke(gw, "canary", "--min-requests", "300"))  # a rule across two flags: both named
    assert "--min-requests (300) must not exceed --window (200)" in msg and "min_requests" not in msg, msg
    assert view(gw)["mode"] == "champion"


def test_shadow_sample_takes_the_same_units(gw: ServingStack) -> None:
    result = invoke(gw, "shadow", "--sample", "25%")
    assert result.exit_code == 0, result.output
    assert "--sample 25% read as percent: 25%" in result.output
    assert view(gw)["state"]["shadow_sample"] == pytest.approx(0.25)


def test_shadow_without_sample_does_not_echo_a_flag_never_given(gw: ServingStack) -> None:
    result = invoke(gw, "shadow")
    assert result.exit_code == 0, result.output
    assert "--sample" not in result.output and "read as" not in result.output
    assert view(gw)["state"]["shadow_sample"] == pytest.approx(1.0)


def test_canary_without_steps_shows_its_schedule_without_echoing_a_flag(gw: ServingStack) -> None:
    result = invoke(gw, "canary", "--every", "3600")
    assert result.exit_code == 0, result.output
    assert "no --steps given: 5% -> 25% -> 50% -> 100%" in result.output and "read as" not in result.output
    assert view(gw)["state"]["canary"]["steps"] == pytest.approx([0.05, 0.25, 0.5, 1.0])


def test_ab_without_weights_says_it_splits_evenly(gw: ServingStack) -> None:
    result = invoke(gw, "ab")
    assert result.exit_code == 0, result.output
    assert "no weights given: an even split, champion 50 / challenger 50" in result.output
    assert view(gw)["state"]["ab"] == {"champion": 50.0, "challenger": 50.0}
    assert "give both weights" in error_of(invoke(gw, "ab", "90"))


def test_status_shows_both_windows(gw: ServingStack) -> None:
    gw.set_rollout("ab", {"champion": 1, "challenger": 1})
    with gw.client() as client:
        variants = {
            client.post("/v1/predict", json={"lat": 45.5, "lon": -74.0, "client_id": f"c{i}"}).json()["variant"]
            for i in range(40)
        }
    assert variants == {"champion", "challenger"}
    result = invoke(gw, "status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for role in ("champion", "challenger"):
        line = next(x for x in lines if f"{role} (recent, this gateway)" in x)
        assert " last " in line, line
        assert " calls, 0 failed (0.0%), p95 " in line, line


def test_a_window_with_comparisons_but_no_calls_reads_coherently() -> None:
    """After a guardrail stop a late comparison can land in the fresh window: no '0 calls ... over 1 compared'."""
    w = {"requests": 0, "errors": 0, "error_rate": 0.0, "p95_ms": None, "compared": 1, "disagreement": 0.0}
    assert _window(w) == "no calls since the last change; disagrees with the champion on 0.0% of 1 compared"
    w = {"requests": 3, "errors": 1, "error_rate": 1 / 3, "p95_ms": 12.3456, "compared": 0, "disagreement": 0.0}
    assert _window(w) == "last 3 calls, 1 failed (33.3%), p95 12.3 ms"


def test_a_full_window_is_not_read_as_a_total() -> None:
    """After ~900 calls the window holds its newest 200: the line must say so, not "200 calls"."""
    w = {"requests": 200, "errors": 0, "error_rate": 0.0, "p95_ms": 5.0, "compared": 0, "disagreement": 0.0}
    assert _window(w).startswith("last 200 calls, 0 failed")


def test_gateway_option_has_one_name_and_the_old_ones_still_work(gw: ServingStack) -> None:
    for command in (["rollout", "status"], ["replay"], ["load"]):
        help_text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output
        assert "--gateway" in help_text and "--url" not in help_text and "--host" not in help_text
    result = runner.invoke(app, ["rollout", "status", "--url", gw.url, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["mode"] == "champion"
    msg = error_of(runner.invoke(app, ["rollout", "status", "--url", gw.url, "--gateway", "http://127.0.0.1:9"]))
    assert "name different gateways" in msg


HTML_404 = b"<html><body><h1>Not Found</h1></body></html>"
NOT_THE_GATEWAY = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nConnection: close\r\n"
    + f"Content-Length: {len(HTML_404)}\r\n\r\n".encode()
    + HTML_404
)


@contextmanager
def tcp_server(reply: bytes) -> Iterator[str]:
    """A server on 127.0.0.1 answering every connection with `reply` (raw bytes, HTTP or not)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)  # accept() must wake up to see `stop`: closing the socket would not wake it
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = sock.accept()[0]
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        sock.close()
