"""The explainer service over real processes: models kept by the folder they come from, not the name asked."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from tests.support.onnx_standin import make_standin_bundle
from tests.support.serving import stack_settings

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


def test_two_unregistered_bundles_are_two_models(tmp_path: Path, jpeg: bytes) -> None:
    """Bundles never registered all say version 0: kept by that version, the second folder asked for was explained
    with the first one's model."""
    fire = make_standin_bundle(tmp_path / "fire", "always_fire")
    calm = make_standin_bundle(tmp_path / "calm", "never_fire")
    settings = stack_settings(tmp_path / "stack")
    with procs.start_explainer(settings, port=free_port(), bundle_dirs={"1": fire, "2": calm}) as svc:
        probability = {}
        for version in ("1", "2", "1"):
            r = httpx.post(
                f"{svc.url}/explain",
                files={"image": ("t.jpg", jpeg, "image/jpeg")},
                data={"version": version},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            probability.setdefault(version, set()).add(round(float(r.headers["x-probability"]), 3))
    assert probability["1"] == {1.0} and probability["2"] == {0.0}, probability


def test_a_registry_that_stops_answering_keeps_the_model_a_name_gave_last(tmp_path: Path, jpeg: bytes) -> None:
    """With the registry down, "champion" is explained with the model it named last time (was a 500); a name never
    asked before is a 503 that says the registry does not answer."""
    from pyrocast.registry import models
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client, start_server
    from tests.support.mlflow_db import seed_mlflow_db

    settings = stack_settings(tmp_path / "stack")
    seed_mlflow_db(settings)
    server = start_server(settings)
    try:
        remote = settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": server.url})})
        client = get_client(remote)
        exp = ensure_experiment(remote, client)
        for kind, alias in (("always_fire", "champion"), ("never_fire", "challenger")):
            run_id = client.create_run(exp).info.run_id
            rv = models.register_bundle(remote, run_id, make_standin_bundle(tmp_path / kind, kind))
            models.set_alias(remote, alias, rv.version)
        with procs.start_explainer(remote, port=free_port()) as svc:

            def explain(version: str) -> httpx.Response:
                files = {"image": ("t.jpg", jpeg, "image/jpeg")}
                return httpx.post(f"{svc.url}/explain", files=files, data={"version": version}, timeout=120)

            first = explain("champion")
            assert first.status_code == 200, first.text
            server.stop()
            with pytest.raises(httpx.HTTPError):
                httpx.get(server.url + "/health", timeout=1)
            again = explain("champion")
            assert again.status_code == 200, again.text
            assert again.headers["x-model-version"] == first.headers["x-model-version"] == "1"
            assert float(again.headers["x-probability"]) == pytest.approx(1.0, abs=1e-3)
            never = explain("challenger")
            assert never.status_code == 503, never.text
            assert "registry does not answer" in never.text and "challenger" in never.text
    finally:
        server.stop()
