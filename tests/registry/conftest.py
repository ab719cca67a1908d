"""Registry tests run on a real MLflow SQLite store (a migrated copy per test) in the test's data dir."""

from __future__ import annotations

import pytest

from pyrocast.settings import Settings
from tests.support.mlflow_db import seed_mlflow_db


@pytest.fixture
def mlflow_settings(settings: Settings) -> Settings:
    seed_mlflow_db(settings)
    return settings
