"""ZenML lives in the data directory, with MLflow as its experiment tracker on our tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

from pyrocast.pipelines import zenml_env
from pyrocast.settings import MlflowSettings, Settings


def test_activate_isolates_zenml_in_the_data_dir(settings: Settings, tmp_path: Path) -> None:
    zenml_env.activate(settings)
    from zenml.client import Client

    client = Client()
    home = settings.root / "zenml"
    assert os.environ["ZENML_CONFIG_PATH"] == str(home)
    assert client.zen_store.url.startswith(f"sqlite:///{home}")
    stack = client.active_stack_model
    assert stack.name == zenml_env.STACK
    tracker = client.get_stack_component("experiment_tracker", zenml_env.TRACKER)
    assert tracker.flavor_name == "mlflow"
    assert tracker.configuration["tracking_uri"] == settings.mlflow_tracking_uri
    assert (home / "local_stores" / "default_zen_store" / "zenml.db").is_file()

    # a new tracking URI updates the component; activating again is idempotent
    moved = settings.model_copy(update={"mlflow": MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/other.db")})
    zenml_env.activate(moved)
    tracker = Client().get_stack_component("experiment_tracker", zenml_env.TRACKER)
    assert tracker.configuration["tracking_uri"] == f"sqlite:///{tmp_path}/other.db"
    assert len(Client().list_stacks(name=zenml_env.STACK)) == 1


def test_remote_tracking_uri_gets_a_placeholder_credential(settings: Settings, monkeypatch) -> None:
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    remote = settings.model_copy(update={"mlflow": MlflowSettings(tracking_uri="http://127.0.0.1:5000")})
    conf = zenml_env.tracker_configuration(remote)
    assert conf == {"tracking_uri": "http://127.0.0.1:5000", "tracking_token": zenml_env.NO_AUTH_TOKEN}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p")
    assert zenml_env.tracker_configuration(remote)["tracking_username"] == "u"
    assert zenml_env.tracker_configuration(settings) == {"tracking_uri": settings.mlflow_tracking_uri}
