"""A ready MLflow SQLite database for tests: created once per session (about 4 s), copied per test (ms).

`seed_mlflow_db(settings)` puts a fresh copy at the settings' default tracking store
(`<data dir>/mlflow/mlflow.db`) so a test starts on an empty but fully migrated store. The template's folder is
removed when the test process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from pyrocast.settings import Settings


@lru_cache(maxsize=1)
def _template() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="pyrocast-mlflow-template-"))
    # One per test session (and per xdist worker); without this every run left one in /tmp.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.search_experiments()  # creates and migrates the schema
    return db


def seed_mlflow_db(settings: Settings) -> Path:
    """Copy the migrated template to the settings' SQLite tracking store; returns its path."""
    uri = settings.mlflow_tracking_uri
    assert uri.startswith("sqlite:///"), f"seed_mlflow_db needs a SQLite store, not {uri}"
    target = Path(uri.removeprefix("sqlite:///"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), target)
    return target
