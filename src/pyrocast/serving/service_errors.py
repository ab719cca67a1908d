"""Why a BentoML service could not answer, said to its caller.

BentoML answers every 5xx with the same sentence ("An unexpected error has occurred, please check the server
log"), even for a refusal the service gives on purpose, such as a model registry that does not answer. The gateway
then had nothing better to tell a person than that sentence. A reason given with `tell_caller` before raising
replaces it; unexpected failures keep BentoML's sentence (their cause is for the log, not the caller).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

# One holder per request, set by the middleware: the API function runs in a worker thread with a copy of the
# request's context, which shares the holder (a dict), not later assignments to the variable.
_reason: ContextVar[dict[str, str] | None] = ContextVar("pyrocast_service_error_reason", default=None)


def tell_caller(message: str) -> None:
    """Make `message` the body of this request's 5xx answer (outside a request, nothing happens)."""
    holder = _reason.get()
    if holder is not None:
        holder["error"] = message


class ServerErrorReason:
    """ASGI middleware: a 5xx answer's body becomes `{"error": <reason>}` where the request gave one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: dict[str, str] = {}
        token = _reason.set(holder)
        held: dict[str, Any] | None = None

        async def send_reason(message: Any) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 500:
                held = message  # the start waits for the body, whose length may change
                return
            if held is not None and message["type"] == "http.response.body":
                start, held = held, None
                if "error" in holder and not message.get("more_body"):
                    body = json.dumps({"error": holder["error"]}).encode()
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
                    message = {"type": "http.response.body", "body": body}
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_reason)
        finally:
            _reason.reset(token)
