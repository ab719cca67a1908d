"""Out-of-distribution warnings end to end: real classifiers and gateway on 127.0.0.1.

The champion's bundle carries a drift reference made of the real Kaggle train tiles (../shared), the challenger's
none (a bundle exported before references existed). The classifier hands its acceptance ranges to the gateway in
`/model/info`; the gateway judges each tile's statistics, answers with `warnings` and stores the flag.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.novelty import bundles_with_reference, real_reference
from tests.support.serving import ServingStack, start_stack

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, real_tiles: Path) -> Iterator[ServingStack]:
    root = tmp_path_factory.mktemp("novelty")
    bundles = bundles_with_reference(root / "bundles", real_reference(real_tiles / "train"))
    s = start_stack(root, explainer=False, bundles=bundles)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def gw(stack: ServingStack) -> Iterator[ServingStack]:
    stack.set_rollout("champion", {"reason": "test reset"})
    yield stack
    stack.set_rollout("champion", {"reason": "test reset"})


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _predict(gw: ServingStack, data: bytes, client_id: str = "ood-test") -> dict[str, Any]:
    r = httpx.post(
        f"{gw.url}/v1/predict",
        files={"image": ("tile.jpg", data, "image/jpeg")},
        data={"client_id": client_id},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _served_row(gw: ServingStack, request_id: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/v1/predictions/{request_id}", timeout=30)  # waits for the store's queue
    r.raise_for_status()
    served = [row for row in r.json() if row["served"]]
    assert len(served) == 1, r.json()
    return served[0]


def test_the_classifier_hands_its_reference_ranges_to_the_gateway(gw: ServingStack) -> None:
    champion = httpx.get(f"{gw.champion.url}/model/info", timeout=10).json()  # type: ignore[union-attr]
    challenger = httpx.get(f"{gw.challenger.url}/model/info", timeout=10).json()  # type: ignore[union-attr]
    assert champion["novelty"]["tiles"] == 247  # the real train folder
    assert set(champion["novelty"]["ranges"]) >= {"brightness", "contrast", "sharpness", "colour_coherence"}
    assert challenger["novelty"] is None  # no reference in its bundle: nothing breaks, nothing is judged


def test_a_black_upload_is_answered_with_warnings_and_stored_flagged(gw: ServingStack) -> None:
    body = _predict(gw, _jpeg(Image.new("RGB", (4096, 4096))))  # the review's upload
    assert body["variant"] == "champion" and body["label"] == "wildfire"  # answered all the same
    warnings = body["warnings"]
    assert any(
        w.startswith("much darker than the training tiles (mean brightness 0.00; training tiles ") for w in warnings
    )
    assert len(warnings) >= 3
    row = _served_row(gw, body["request_id"])
    assert row["ood"] is True
    assert {"brightness", "contrast", "dark_fraction"} <= set(row["ood_stats"].split(","))


def test_a_real_tile_gets_no_warning_and_is_stored_in_distribution(gw: ServingStack, real_tiles: Path) -> None:
    tile = (real_tiles / "valid" / "wildfire" / "-57.25,51.51.jpg").read_bytes()  # held back from the reference
    body = _predict(gw, tile)
    assert body["warnings"] == []
    row = _served_row(gw, body["request_id"])
    assert row["ood"] is False and row["ood_stats"] is None


def test_a_model_without_reference_answers_without_warnings(gw: ServingStack) -> None:
    gw.set_rollout("ab", {"champion": 0, "challenger": 100})
    body = _predict(gw, _jpeg(Image.new("RGB", (512, 512))))
    assert body["variant"] == "challenger"
    assert body["warnings"] == []
    row = _served_row(gw, body["request_id"])
    assert row["ood"] is None and row["ood_stats"] is None  # not judged: not "in distribution" either
