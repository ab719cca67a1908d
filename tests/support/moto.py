"""A real `moto_server` (S3 and friends) on 127.0.0.1 in a subprocess, for tests of S3 code paths.

    with MotoServer() as moto:
        boto3.client("s3", endpoint_url=moto.url, ...).create_bucket(Bucket="b")

or the `moto_server` pytest fixture (one server per test session). Dummy credentials are exposed in
`moto.env`; set them in the environment of the code under test (e.g. with monkeypatch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from pyrocast.ports import free_port

MOTO_BIN = Path(sys.executable).with_name("moto_server")
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "pyrocast-test-key",
    "AWS_SECRET_ACCESS_KEY": "pyrocast-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """Start `moto_server -H 127.0.0.1 -p PORT` and stop it (its whole process group) on exit."""

    def __init__(self, startup_timeout_s: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(DUMMY_ENV)
        self._timeout = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> MotoServer:
        if not MOTO_BIN.exists():
            pytest.skip(f"moto_server not installed beside {sys.executable} (pip install 'moto[server]')")
        env = {**os.environ, **self.env}
        # Request logs go to a file: a pipe nobody reads would fill up and stall the server.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() ends it and anything it spawned
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                self._log.close()
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}: {err[-500:]}")
            try:
                if httpx.get(f"{self.url}/moto-api/", timeout=1.0).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.url} within {self._timeout:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def s3(self):  # -> botocore client; typed loosely to keep boto3 an import-time-optional dependency
        """A boto3 S3 client talking to this server with the dummy credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto_server for the test session (stopped at the end)."""
    with MotoServer() as server:
        yield server
