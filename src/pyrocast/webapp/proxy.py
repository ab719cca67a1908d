"""The web app's side of the gateway: server-side calls with httpx, and errors people can act on.

The browser only ever talks to the web app; the web app calls the gateway (default http://127.0.0.1:8000).
Every failure becomes a `GatewayError` with an HTTP status for the browser, a one-line message and a hint:
the gateway not running, a model service down, a refused place, a timeout. Never a stack trace.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from pyrocast.ports import service_url
from pyrocast.settings import Settings

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 30.0
# Longer than the gateway's own worst cases, so that the web app never gives up on an answer the gateway still
# gives: a hung challenger's call (30 s) before the champion answers in its place, after a place's tile fetch; a
# heatmap within serving.explain_timeout_s (120 s by default). A 504 here would hide an answer stored meanwhile.
PREDICT_TIMEOUT_S = 90.0
EXPLAIN_TIMEOUT_S = 150.0
# ...but a gateway that stops answering meanwhile (a hung or paused process still accepts connections) is given up
# on once its health check has gone unanswered twice in a row (about 10-13 s), not after those 90 s of a spinner.
WATCH_EVERY_S = 5.0
WATCH_TIMEOUT_S = 3.0


class GatewayError(Exception):
    """A gateway call that did not give what was asked: `status` for the browser, a message and a hint."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **({"hint": self.hint} if self.hint else {})}


def gateway_url(settings: Settings) -> str:
    """The gateway's base URL from the settings (a wildcard listen address is reached on loopback)."""
    return service_url(settings.serving.host, settings.serving.gateway_port)


@dataclass
class Response:
    """What a successful gateway call gave back."""

    status: int
    content: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        import json

        return json.loads(self.content)


class GatewayClient:
    """An async client for the gateway; one per web app process (connections are pooled)."""

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Response:
        """Call the gateway; a non-2xx answer or no answer raises GatewayError. `what` names the action."""
        try:
            r = await self.client.request(
                method, path, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout, **kwargs
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GatewayError(
                503,
                f"The prediction service is not running: no answer from the gateway at {self.base_url} ({what}).",
                "Start the services with `pyrocast up` (or `pyrocast serve gateway`), then try again.",
            ) from exc
        except httpx.TimeoutException as exc:
            raise GatewayError(
                504,
                f"The prediction service took too long to answer ({what}).",
                "It may be overloaded or still loading a model: try again in a moment.",
            ) from exc
        except httpx.HTTPError as exc:
            raise GatewayError(
                502,
                f"The connection to the prediction service failed ({what}): {type(exc).__name__}.",
                "Check that the gateway is running and healthy (GET /healthz).",
            ) from exc
        if r.is_success:
            return Response(r.status_code, r.content, dict(r.headers))
        raise _error_from(r, what)

    async def call_watched(self, method: str, path: str, *, what: str, timeout: float, **kwargs: Any) -> Response:
        """`call` for long calls: given up with a 503 once the gateway's health check goes unanswered twice in a row
        while it waits (any answer to it, an error included, is a gateway that lives)."""
        call = asyncio.ensure_future(self.call(method, path, what=what, timeout=timeout, **kwargs))
        silent = 0
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=WATCH_EVERY_S)
                if done:
                    return call.result()
                try:
                    await self.client.get("/healthz", timeout=WATCH_TIMEOUT_S)
                    silent = 0
                except httpx.HTTPError:
                    silent += 1
                if silent >= 2:
                    raise GatewayError(
                        503,
                        f"The prediction service stopped answering ({what}): the gateway at {self.base_url} "
                        "accepts connections but has not answered its health check twice in a row.",
                        "Try again in a moment. Whoever runs Pyrocast: the gateway may be hung or paused "
                        "(docs/OPERATIONS.md, Gateway down).",
                    )
        finally:
            if not call.done():
                call.cancel()


def _error_from(r: httpx.Response, what: str) -> GatewayError:
    """A GatewayError from a gateway error answer ({"detail": {"error", "hint"}} or FastAPI's 422 list)."""
    message, hint = _detail(r)
    status = r.status_code
    if status >= 500 and _service(r) == "imagery":
        # Not a model service: the satellite imagery for the place could not be had (the gateway says which way).
        return GatewayError(
            status,
            f"The satellite imagery is unavailable ({what}): {message}",
            "Try again in a moment, or upload a tile instead. Whoever runs Pyrocast: the imagery provider's "
            "settings and server (docs/OPERATIONS.md, On call).",
        )
    if status == 503 and _service(r) == "explainer-off":  # not down: never started (`pyrocast up --no-explainer`)
        return GatewayError(
            503,
            "Heatmaps are off: this Pyrocast runs without an explainer.",
            "The prediction itself is not affected. Whoever runs Pyrocast: start it without --no-explainer.",
        )
    if status == 503:
        # The gateway's own hint speaks to API users ("check /healthz"); people get one they can act on. (Not "run
        # `pyrocast up` again": a second `up` on a running one refuses to start.)
        if what == "explanation":
            hint = "Heatmaps are unavailable for now; the prediction itself is not affected. Try again in a moment."
        else:
            hint = (
                "The gateway answers but the model service behind it does not: try again in a moment. Whoever runs "
                "Pyrocast: the gateway's /healthz names the service that is down (docs/OPERATIONS.md, On call)."
            )
        return GatewayError(503, f"A model service is down ({what}): {message}", hint)
    if status >= 500:
        return GatewayError(502, f"The prediction service failed ({what}): {message}", hint)
    # 4xx: the request was refused; keep the gateway's status (404 no imagery, 422 invalid, ...).
    return GatewayError(status, message, hint)


def _service(r: httpx.Response) -> str | None:
    """The part of the system an error answer blames (`detail.service`), where the gateway names one."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return None
    return detail.get("service") if isinstance(detail, dict) else None


def _detail(r: httpx.Response) -> tuple[str, str | None]:
    try:
        body = r.json()
    except ValueError:
        return (r.text.strip()[:300] or f"HTTP {r.status_code}"), None
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        return str(detail.get("error") or detail.get("message") or detail)[:500], detail.get("hint")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI validation errors: say which field and why.
        first = detail[0]
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return (f"{where}: {first.get('msg')}" if where else str(first.get("msg")))[:500], None
    return str(detail)[:500], None
