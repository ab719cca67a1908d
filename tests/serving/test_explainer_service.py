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
