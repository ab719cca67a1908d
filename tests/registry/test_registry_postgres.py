"""The model registry on a real PostgreSQL server: MLflow's tracking store by URL, and an MLflow server on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pyrocast.errors import ServiceUnavailableError
from pyrocast.model.bundle import missing_files
from pyrocast.ports import free_port
from pyrocast.registry import models
from pyrocast.registry.mlflow_store import check_reachable, ensure_experiment, get_client, start_server
from pyrocast.settings import Settings
from tests.support.onnx_standin import make_standin_bundle


def on_postgresql(settings: Settings, url: str) -> Settings:
    # A plain postgresql:// URL, as an operator writes it: the settings give it psycopg 3, the installed driver.
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": plain})})


def test_register_alias_fetch_and_serve_the_registry_from_postgresql(
    settings: Settings, postgres_url: str, tmp_path: Path
) -> None:
    s = on_postgresql(settings, postgres_url)
    assert s.mlflow_tracking_uri == postgres_url
    client = get_client(s)  # reachability checked, schema created by MLflow's migrations
    run = client.create_run(ensure_experiment(s, client))
    client.log_metric(run.info.run_id, "test_accuracy", 0.91)
    for v in ("1", "2"):
        bundle = make_standin_bundle(tmp_path / f"bundle-{v}", "good", version=v)
        assert models.register_bundle(s, run.info.run_id, bundle, client=client).version == v
    models.set_alias(s, "champion", "1", client)
    models.set_alias(s, "challenger", "2", client)
    assert models.aliases(s, client) == {"champion": "1", "challenger": "2"}
    assert str(models.resolve_version(s, "latest", client).version) == "2"
    shutil.rmtree(models.cache_dir(s, "1"))  # fetched again from the artifact store, not from the cache
    assert missing_files(models.fetch_bundle(s, "champion").root) == []
    assert not (Path(settings.root) / "mlflow" / "mlflow.db").exists()  # nothing went to the SQLite default

    # `pyrocast up` runs an MLflow server on the configured database: it sees the same registry.
    with start_server(s) as server:
        remote = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        champion = remote.get_model_version_by_alias(s.mlflow.model_name, "champion")
        assert str(champion.version) == "1" and champion.run_id == run.info.run_id
        assert remote.get_run(run.info.run_id).data.metrics["test_accuracy"] == pytest.approx(0.91)


def test_an_unreachable_postgresql_registry_is_a_clear_error(settings: Settings) -> None:
    url = f"postgresql://pyrocast:secret-pw@127.0.0.1:{free_port()}/mlflow"  # nobody listens there
    s = on_postgresql(settings, url)
    with pytest.raises(ServiceUnavailableError, match="MLflow database") as err:
        check_reachable(s, timeout=2)
    assert "secret-pw" not in str(err.value) and "pyrocast" not in str(err.value)
