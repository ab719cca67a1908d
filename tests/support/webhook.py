"""A webhook receiver on 127.0.0.1: records every POST (path, headers, JSON body) and answers a fixed status.

Used as the target of apprise notifications (`json://127.0.0.1:PORT/hook`) and as a stand-in for Discord's
webhook endpoint (POST /api/webhooks/<id>/<token>, answered 204 like Discord does).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.servers import ThreadedServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON


class WebhookReceiver(ThreadedServer):
    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._launch(Handler)
        return self

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < n:
            time.sleep(0.02)
        return list(self.received)
