"""Where MLflow lives: the tracking URI, the experiment, a reachability check, and a local server.

Every MLflow call in Pyrocast goes through an explicit `MlflowClient(tracking_uri)` built here, never the
process-global `mlflow.set_tracking_uri` (ZenML's experiment tracker resets that after each step). The
default is the embedded SQLite store under the data directory; `PYROCAST_MLFLOW__TRACKING_URI` points at
a server (`http://...`) or a database (`postgresql://...`) instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from pyrocast.errors import PyrocastError, ServiceUnavailableError
from pyrocast.errors import redact_url as redact  # the name this module's callers use
from pyrocast.ports import free_port, service_url
from pyrocast.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# How long a dead tracking server may keep a command waiting before we say so.
REACH_TIMEOUT_S = 3.0


def quiet_mlflow_env() -> None:
    """Process-wide MLflow defaults: no tqdm bars in our output, and few, short retries against a server.

    MLflow's own defaults (7 retries with exponential backoff, 120 s timeouts) turn a dead server into a
    hang of several minutes; users who want more can still set the variables themselves.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(settings: Settings, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail fast with a clear message when the tracking store cannot be reached.

    A server is asked for `/health`; a database URL gets one connection; SQLite gets its folder created.
    """
    uri = settings.mlflow_tracking_uri
    if is_remote(uri):
        try:
            r = httpx.get(uri.rstrip("/") + "/health", timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                f"the MLflow tracking server at {redact(uri)} does not answer ({type(exc).__name__})",
                "start it (`mlflow server ...`) or set PYROCAST_MLFLOW__TRACKING_URI to a reachable server "
                "(unset it to use the embedded SQLite store)",
            ) from None
        if r.status_code != 200:
            raise ServiceUnavailableError(
                f"the MLflow tracking server at {redact(uri)} answered /health with HTTP {r.status_code}",
                "check the server's logs",
            )
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif "://" in uri and not uri.startswith("file:"):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(uri, connect_args=_connect_timeout(uri, timeout))
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:  # any driver error means the same thing to the user
            raise ServiceUnavailableError(
                f"the MLflow database at {redact(uri)} cannot be reached ({type(exc).__name__})",
                "check that the database runs and PYROCAST_MLFLOW__TRACKING_URI is right",
            ) from None


def _connect_timeout(uri: str, timeout: float) -> dict:
    if uri.startswith(("postgresql", "mysql")):
        return {"connect_timeout": max(1, int(timeout))}
    return {}


def get_client(settings: Settings, check: bool = True) -> MlflowClient:
    """An MLflow client on the configured tracking and registry store (checked for reachability first)."""
    quiet_mlflow_env()
    if check:
        check_reachable(settings)
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(settings: Settings) -> str | None:
    """Where a new experiment keeps its artifacts.

    With a local store: the data directory's artifact folder (MLflow would otherwise write `./mlruns` in the
    current directory). With a server and no explicit root: None, so the server decides (it proxies them).
    """
    if settings.mlflow.artifact_root:
        return settings.mlflow.artifact_root
    if is_remote(settings.mlflow_tracking_uri):
        return None
    root = Path(settings.mlflow_artifact_root)
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def ensure_experiment(settings: Settings, client: MlflowClient | None = None) -> str:
    """The id of the configured experiment, created (or restored from deletion) when needed."""
    client = client or get_client(settings)
    name = settings.mlflow.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location(settings))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


# --- a local tracking server ------------------------------------------------------------------------


@dataclass
class MlflowServer:
    """A running `mlflow server` process (own process group, so stop() ends its workers too)."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_command(settings: Settings, backend: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line: one worker (with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false in its
    environment: 2 processes, ~0.5 GB instead of 15 and 2.8 GB), artifacts served from the data directory."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        settings.mlflow_artifact_root,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_server(
    settings: Settings, port: int | None = None, host: str = "127.0.0.1", timeout: float = 60.0
) -> MlflowServer:
    """Start an MLflow tracking server on the data directory's store and wait until it is healthy.

    One worker and no job runner: 2 processes and about 0.5 GB instead of 15 processes and 2.8 GB.
    The backend is the configured SQL store (the SQLite file under the data directory by default);
    artifacts are served from `Settings.mlflow_artifact_root`.
    """
    backend = settings.mlflow_tracking_uri
    if is_remote(backend):
        backend = f"sqlite:///{settings.root / 'mlflow' / 'mlflow.db'}"
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = settings.root / "logs" / f"mlflow-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = server_command(settings, backend, host, port)
    with log_path.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = MlflowServer(proc, service_url(host, port), log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PyrocastError(f"mlflow server exited with code {proc.returncode}", f"see {log_path}")
        try:
            if httpx.get(server.url + "/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise ServiceUnavailableError(f"mlflow server did not become healthy within {timeout:.0f} s", f"see {log_path}")
