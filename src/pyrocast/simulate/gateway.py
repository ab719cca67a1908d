"""Reaching the gateway from the command line: where it is, whether it answers, its admin token, why a call failed.

Shared by `pyrocast replay`, `pyrocast load` and `pyrocast rollout`, so that each reports a dead or
misconfigured gateway (or a token no HTTP header can carry) the same way before doing any work.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.ports import service_url
from pyrocast.settings import Settings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
START_HINT = "start it with `pyrocast up` or `pyrocast serve gateway`, or pass --gateway"


def gateway_url(settings: Settings, url: str | None = None) -> str:
    """The gateway's base URL (default from Settings.serving); anything but a loopback address is refused."""
    url = (url or service_url(settings.serving.host, settings.serving.gateway_port)).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"{url!r} is not an http(s) URL", "e.g. http://127.0.0.1:8000")
    if parts.hostname not in LOOPBACK_HOSTS:
        raise InvalidInputError(
            f"refusing to send traffic to {parts.hostname}: replay and load only target this machine",
            "use http://127.0.0.1:<port>, where `pyrocast up` runs the gateway",
        )
    return url


def check_token(token: str | None) -> str:
    """The admin token, or a clear error naming what is wrong with it (never the token itself)."""
    if not token:
        raise PyrocastError("rollout changes need the admin token", "export PYROCAST_ADMIN_TOKEN=<the gateway's token>")
    problems = []
    if token != token.strip():
        problems.append("starts or ends with whitespace (a space or a newline, e.g. from a file)")
    if not token.isascii():
        problems.append("holds non-ASCII characters")
    elif not token.strip().isprintable():
        problems.append("holds control characters")
    if problems:
        raise PyrocastError(
            f"PYROCAST_ADMIN_TOKEN {' and '.join(problems)}: an HTTP header cannot carry it",
            "set it to the gateway's token exactly: printable ASCII, no surrounding whitespace",
        )
    return token


def admin_headers(settings: Settings) -> dict[str, str]:
    """`Authorization: Bearer <PYROCAST_ADMIN_TOKEN>` when the token is set (checked), else no header."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return {"Authorization": f"Bearer {check_token(token)}"} if token else {}


def transport_error(url: str, exc: httpx.HTTPError) -> PyrocastError:
    """A user-facing error naming what went wrong on the way to the gateway.

    The exception's own text is never shown: httpx quotes header values in it, and one is the admin token.
    """
    kind = type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return InvalidInputError(f"{url!r} is not an http(s) URL", "e.g. --gateway http://127.0.0.1:8000")
    if isinstance(exc, httpx.LocalProtocolError):
        return PyrocastError(
            f"the request to {url} could not be sent: it is not valid HTTP ({kind})",
            "a header this command sends holds characters HTTP forbids",
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return ServiceUnavailableError(f"the gateway at {url} does not answer (connecting timed out)", START_HINT)
    if isinstance(exc, httpx.ConnectError):
        return ServiceUnavailableError(f"the gateway at {url} does not answer ({kind})", START_HINT)
    if isinstance(exc, httpx.TimeoutException):
        return ServiceUnavailableError(f"the gateway at {url} accepted the connection but did not answer in time")
    if isinstance(exc, httpx.RemoteProtocolError):
        return ServiceUnavailableError(
            f"{url} did not answer with valid HTTP ({kind})", "is this the Pyrocast gateway's address?"
        )
    return ServiceUnavailableError(f"the connection to the gateway at {url} failed ({kind})")


def check_gateway(url: str, timeout_s: float = 5.0) -> None:
    """Raise unless the gateway at `url` answers `/healthz` with 200: before a run, not after it failed."""
    try:
        # trust_env=False: no proxy from the environment may see where test traffic goes.
        r = httpx.get(url + "/healthz", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise transport_error(url, exc) from None
    if r.status_code != 200:
        raise ServiceUnavailableError(
            f"the gateway at {url} is not healthy (HTTP {r.status_code} from /healthz)",
            "is this the Pyrocast gateway's address?",
        )
    try:
        health = r.json()
    except ValueError:
        health = None
    if not isinstance(health, dict) or not isinstance(health.get("backends"), dict):
        # The web app's /healthz answers 200 too: every request would then fail with its 404s and 413s.
        raise ServiceUnavailableError(
            f"{url} answers /healthz but is not a Pyrocast gateway (its answer names no model backends)",
            "give the gateway's address (default http://127.0.0.1:8000), not the web app's",
        )
