"""Pipeline tests point ZenML at their own data directory; the process environment is restored afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_zenml_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(("ZENML_", "MLFLOW_"))}
    yield
    for k in [k for k in os.environ if k.startswith(("ZENML_", "MLFLOW_"))]:
        if k not in saved:
            del os.environ[k]
    os.environ.update(saved)
