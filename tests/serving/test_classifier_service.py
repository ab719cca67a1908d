"""The BentoML classifier as a real process: predictions, model info, probes, metrics, batching, guards."""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from tests.serving.conftest import encode, tile_image
from tests.support.serving import ServingStack, stack_settings

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


def test_predicts_and_says_which_model(stack: ServingStack, jpeg: bytes) -> None:
    url = stack.champion.url
    r = httpx.post(url + "/predict", files={"images": ("t.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    (item,) = r.json()
    assert item["label"] == "wildfire" and 0.5 < item["probability"] <= 1.0
    assert item["model"] == {"name": stack.model_name, "version": "1"} and item["precision"] == "fp32"
    info = httpx.get(url + "/model/info").json()
    assert info["version"] == "1" and info["batching"] is True and info["source"] == "registry"
    assert info["run_id"]  # registered models carry their lineage
    assert info["input_size"] == 32


def test_probes_and_metrics(stack: ServingStack) -> None:
    url = stack.champion.url
    assert httpx.get(url + "/livez").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    metrics = httpx.get(url + "/metrics").text
    assert "bentoml_service_request_total" in metrics or "bentoml_service_request_duration_seconds" in metrics


def test_concurrent_requests_are_batched(stack: ServingStack) -> None:
    url = stack.champion.url
    images = [encode(tile_image(i, 64)) for i in range(48)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(client.post(url + "/predict", files={"images": ("t.jpg", im, "image/jpeg")}) for im in images)
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert all(len(r.json()) == 1 for r in responses)  # each caller gets its own answer back
    metrics = httpx.get(url + "/metrics").text
    count = sum(
        float(v) for v in re.findall(r'adaptive_batch_size_count\{[^}]*method_name="predict"[^}]*\} (\S+)', metrics)
    )
    total = sum(
        float(v) for v in re.findall(r'adaptive_batch_size_sum\{[^}]*method_name="predict"[^}]*\} (\S+)', metrics)
    )
    assert count > 0 and total / count > 1.0, (count, total)  # some batches held more than one image


@pytest.mark.parametrize(
    ("files", "status"),
    [
        ({"images": ("t.txt", b"not an image at all", "text/plain")}, 415),
        ({"images": ("t.jpg", b"", "image/jpeg")}, 400),
        ({"images": ("t.gif", encode(tile_image(1, 64), "GIF"), "image/gif")}, 415),
        ({"images": ("t.png", encode(tile_image(1, 64).convert("I;16"), "PNG"), "image/png")}, 422),
        ({"images": ("t.jpg", encode(tile_image(1, 64))[:200], "image/jpeg")}, 422),
        ({"other": ("t.jpg", b"x", "image/jpeg")}, 400),
        ({"image": ("t.jpg", encode(tile_image(1, 64)), "image/jpeg")}, 400),  # binary under the wrong name: was a 500
    ],
)
def test_bad_uploads_get_a_4xx_with_a_message(stack: ServingStack, files: dict, status: int) -> None:
    r = httpx.post(stack.champion.url + "/predict", files=files)
    assert r.status_code == status, r.text
    assert "error" in r.text
    if "images" not in files:
        assert "'images'" in r.text  # says what the field should be called


def test_huge_upload_is_refused_before_reading(stack: ServingStack) -> None:
    big = b"\xff\xd8" + b"\0" * (stack.settings.serving.max_upload_bytes + 100_000)
    r = httpx.post(stack.champion.url + "/predict", files={"images": ("t.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.text


def test_a_huge_chunked_upload_is_a_413_not_a_500(stack: ServingStack) -> None:
    """No Content-Length to refuse up front: the limit is passed while the body streams in, inside BentoML, which
    answered any exception not its own with a 500 (the classifier and the explainer both)."""
    boundary = "pyrocastboundary"
    big = b"\xff\xd8" + b"\0" * (stack.settings.serving.max_upload_bytes + 100_000)
    for url, field in ((stack.champion.url + "/predict", "images"), (stack.explainer.url + "/explain", "image")):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="t.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()

        def chunks(body: bytes = head + big + f"\r\n--{boundary}--\r\n".encode()) -> Iterator[bytes]:
            for i in range(0, len(body), 1 << 20):
                yield body[i : i + (1 << 20)]

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        r = httpx.post(url, content=chunks(), headers=headers, timeout=60)
        assert r.status_code == 413 and "over the limit" in r.text, (url, r.status_code, r.text)


def test_grayscale_and_rgba_are_converted(stack: ServingStack) -> None:
    for img, fmt in ((tile_image(2).convert("L"), "JPEG"), (tile_image(2).convert("RGBA"), "PNG")):
        r = httpx.post(
            stack.champion.url + "/predict", files={"images": ("t", encode(img, fmt), f"image/{fmt.lower()}")}
        )
        assert r.status_code == 200, r.text


def test_a_batch_larger_than_one_model_call_is_scored_in_order(stack: ServingStack) -> None:
    # The dispatcher may form batches of up to 32 tiles; the model is called on chunks of at most 16 images.
    url = stack.champion.url
    assert httpx.get(url + "/model/info").json()["tiles_per_model_call"] == 16  # a one-view model
    images = [encode(tile_image(100 + i, 64)) for i in range(40)]
    files = [("images", (f"t{i}.jpg", im, "image/jpeg")) for i, im in enumerate(images)]
    together = httpx.post(url + "/predict", files=files, timeout=60)
    assert together.status_code == 200, together.text
    alone = [
        httpx.post(url + "/predict", files={"images": ("t.jpg", im, "image/jpeg")}).json()[0]["probability"]
        for im in images
    ]
    got = [item["probability"] for item in together.json()]
    assert got == pytest.approx(alone, abs=1e-6) and len(set(round(p, 6) for p in got)) > 1


def test_after_a_stall_answers_are_as_quick_as_before_within_seconds(
    tmp_path: Path, bundle_dirs: dict[str, Path], jpeg: bytes
) -> None:
    """A classifier paused for seconds (a VM pause, a starved CPU; here SIGSTOP) with a request waiting: BentoML's
    batcher learned from that request's wait to make every later one wait about as long, decaying over minutes
    (seen: 158 ms a call for 5 minutes against 11 ms before). It must be as quick as before within seconds."""
    settings = stack_settings(tmp_path)
    files = {"images": ("t.jpg", jpeg, "image/jpeg")}

    def p50(client: httpx.Client, n: int = 15) -> float:
        took = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert client.post("/predict", files=files).status_code == 200
            took.append(time.perf_counter() - t0)
        return statistics.median(took)

    start = procs.start_classifier(settings, port=free_port(), bundle_dir=bundle_dirs["1"], name="stall")
    with start as svc, httpx.Client(base_url=svc.url, timeout=60) as client:
        before = p50(client, 30)
        busy = threading.Event()

        def traffic() -> None:  # requests in flight when the stall comes: one of them waits through it
            with httpx.Client(base_url=svc.url, timeout=60) as c:
                while not busy.is_set():
                    c.post("/predict", files=files)

        senders = [threading.Thread(target=traffic) for _ in range(8)]
        for t in senders:
            t.start()
        time.sleep(1.0)
        stopped = [psutil.Process(svc.pid), *svc.descendants()]
        for p in stopped:
            p.send_signal(signal.SIGSTOP)
        time.sleep(6.0)
        for p in stopped:
            p.send_signal(signal.SIGCONT)
        busy.set()
        for t in senders:
            t.join(60)
        time.sleep(6.0)  # a refresh of the batcher's estimates (at most every 5 s)
        after = p50(client)
    assert after < max(3 * before, before + 0.02), (
        f"p50 {after * 1000:.0f} ms after the stall, {before * 1000:.0f} before"
    )
