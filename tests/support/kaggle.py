"""A local stand-in for the Kaggle API, enough for `kagglehub.dataset_download`, on 127.0.0.1.

kagglehub (through kagglesdk) talks JSON-over-POST to `{endpoint}/api/v1/datasets.DatasetApiService/<Call>`
and follows a redirect to the archive. Its endpoint cannot be set to an arbitrary URL: the only overrides
are fixed (`KAGGLE_API_ENVIRONMENT=LOCALHOST` means http://localhost, port 80). So the stub is also an HTTP
proxy: with HTTP_PROXY pointing at it, kagglehub's requests for http://localhost/... arrive here on a free
port, and nothing else on the machine is involved. `KaggleStub.env()` gives the variables to set.

Calls answered: GetDataset (current version), DownloadDataset (302 to the archive), GET of the archive.
A handle in `private` answers 403 like Kaggle does for a dataset the caller may not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.support.servers import ThreadedServer

API = "/api/v1/datasets.DatasetApiService/"


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any]


class KaggleStub(ThreadedServer):
    """`with KaggleStub({"owner/slug": zip_bytes}) as k: monkeypatch env from k.env(); kagglehub...`"""

    def __init__(self, datasets: dict[str, bytes], private: set[str] | None = None, version: int = 3) -> None:
        self.datasets = datasets
        self.private = private or set()
        self.version = version
        self.calls: list[Call] = []
        super().__init__()

    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        self.calls.append(Call(method, path, body))
        if method == "POST" and path.startswith(API):
            handle = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
            if handle in self.private:
                return _json(403, {"code": 403, "message": "Permission 'datasets.get' was denied"})
            if handle not in self.datasets:
                return _json(404, {"code": 404, "message": f"Dataset {handle} not found"})
            call = path[len(API) :]
            if call == "GetDataset":
                return _json(200, {"ref": handle, "currentVersionNumber": self.version, "title": handle})
            if call == "DownloadDataset":
                v = body.get("datasetVersionNumber", self.version)
                return 302, {"Location": f"http://localhost/files/{handle}/{v}/archive.zip"}, b""
            return _json(404, {"code": 404, "message": f"no such call {call}"})
        if method == "GET" and path.startswith("/files/"):
            handle = "/".join(path.split("/")[2:4])
            if handle in self.datasets:
                return 200, {"Content-Type": "application/zip"}, self.datasets[handle]
        return 404, {"Content-Type": "text/plain"}, b"not found"

    def start(self) -> KaggleStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                # As a proxy the request line holds the full URL; only its path matters here.
                status, headers, payload = stub._answer(method, urlsplit(self.path).path, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return self._launch(Handler)


def _json(status: int, obj: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()
