"""Tracking store checks: a dead server fails fast and clearly; a real `mlflow server` works end to end."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from pyrocast.errors import ServiceUnavailableError
from pyrocast.ports import free_port
from pyrocast.registry import models
from pyrocast.registry.mlflow_store import (
    artifact_location,
    check_reachable,
    ensure_experiment,
    get_client,
    redact,
    start_server,
)
from pyrocast.settings import MlflowSettings, Settings
from tests.support.onnx_standin import make_standin_bundle


def _remote(settings: Settings, uri: str) -> Settings:
    return settings.model_copy(update={"mlflow": MlflowSettings(tracking_uri=uri)})


def test_dead_server_fails_fast_with_a_clear_message(settings: Settings) -> None:
    port = free_port()
    s = _remote(settings, f"http://user:hunter2@127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as err:
        get_client(s)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert f"127.0.0.1:{port} does not answer" in msg and "PYROCAST_MLFLOW__TRACKING_URI" in msg
    assert "hunter2" not in msg
    # the registry functions fail the same way
    with pytest.raises(ServiceUnavailableError):
        models.fetch_bundle(s, "champion")


def test_redact() -> None:
    assert redact("postgresql://u:pw@db:5432/mlflow?sslmode=require") == "postgresql://***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    # Generated passwords hold "/" and "?"; an unescaped "@" is a mistake, still not to be shown.
    assert redact("http://mlflow:5000/api?user=a@b") == "http://mlflow:5000/api"  # a port, not a password
    for pw in ("Xk9/aQ+zSecret", "a?b/c", "p@ss/word"):
        assert (
            redact(f"postgresql+psycopg://postgres:{pw}@db:5432/x?sslmode=require")
            == "postgresql+psycopg://***@db:5432/x"
        )


def test_unreachable_database_is_clear(settings: Settings) -> None:
    port = free_port()
    s = _remote(settings, f"postgresql://u:pw@127.0.0.1:{port}/mlflow")
    # The settings give a plain postgresql:// URL the installed driver (psycopg 3).
    with pytest.raises(ServiceUnavailableError, match=r"database at postgresql\+psycopg://\*\*\*@127\.0\.0\.1"):
        check_reachable(s)


def test_local_experiment_keeps_artifacts_in_the_data_dir(settings: Settings) -> None:
    from tests.support.mlflow_db import seed_mlflow_db

    seed_mlflow_db(settings)
    client = get_client(settings)
    exp_id = ensure_experiment(settings)
    assert ensure_experiment(settings) == exp_id  # idempotent
    loc = client.get_experiment(exp_id).artifact_location
    assert loc == Path(settings.mlflow_artifact_root).as_uri() and str(settings.root) in loc
    client.delete_experiment(exp_id)
    assert ensure_experiment(settings) == exp_id  # a deleted experiment is restored, not duplicated
    assert artifact_location(_remote(settings, "http://127.0.0.1:1")) is None


@pytest.mark.integration
def test_registry_through_a_real_mlflow_server(settings: Settings, tmp_path: Path) -> None:
    from tests.support.mlflow_db import seed_mlflow_db

    seed_mlflow_db(settings)  # the server skips its schema migration (several seconds)
    t0 = time.monotonic()
    with start_server(settings) as server:
        print(f"mlflow server healthy after {time.monotonic() - t0:.1f} s")
        s = _remote(settings, server.url)
        client = get_client(s)
        run = client.create_run(ensure_experiment(s, client))
        rv = models.register_bundle(s, run.info.run_id, make_standin_bundle(tmp_path / "b", "good"))
        models.set_alias(s, "champion", rv.version)
        bundle = models.fetch_bundle(s, "champion")
        assert bundle.version == rv.version and bundle.root.is_relative_to(settings.root / "cache")
        assert models.list_models(s)[0]["aliases"] == ["champion"]
        # artifacts were proxied by the server into the data dir's artifact root
        assert any(Path(settings.mlflow_artifact_root).rglob("model.onnx"))
        pid = server.process.pid
    assert server.process.poll() is not None
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/health", timeout=1)
    assert pid
