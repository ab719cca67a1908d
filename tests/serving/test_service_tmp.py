"""Temporary files of the services we start: kept in a folder of their own (in memory for BentoML's, under the data
directory for the others), gone once a service is stopped.

BentoML keeps a temp dir per concurrent multipart request (a pool, emptied after each request), one for its
client and one for its sockets, and removes them only on a clean shutdown: a killed service used to leave
them in /tmp for good. The test's own TMPDIR points at a sentinel folder, so anything a service wrote outside
its private folder would land there (and not in a /tmp that other test runs share).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.settings import Settings
from tests.serving.conftest import encode, tile_image
from tests.support.onnx_standin import make_standin_bundle, tile_jpeg

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def _uploads(url: str, bodies: list[tuple[str, bytes]]) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as c:
        rs = await asyncio.gather(
            *(c.post(url + "/predict", files={field: ("t.jpg", data, "image/jpeg")}) for field, data in bodies)
        )
    return [r.status_code for r in rs]


def _predict_requests(url: str) -> float:
    """Requests to /predict that a BentoML service's /metrics has counted."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_total{") and 'endpoint="/predict"' in line
    )


def test_stopped_and_killed_services_leave_no_temp_files(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = tmp_path / "outer-tmp"
    outer.mkdir()
    monkeypatch.setenv("TMPDIR", str(outer))  # inherited by the services unless procs gives them their own
    bundle = make_standin_bundle(tmp_path / "bundle", "good", version="1")
    rng = np.random.default_rng(0)
    good = [("images", tile_jpeg(i % 2, rng)) for i in range(16)]
    bad = [
        ("images", b"not an image at all"),  # 415
        ("images", b""),  # 400
        ("images", encode(tile_image(1, 64))[:200]),  # 422 truncated
        ("images", b"\xff\xd8" + b"\0" * (settings.serving.max_upload_bytes + 1000)),  # 413 before reading
    ]
    services = {
        how: procs.start_classifier(settings, port=free_port(), bundle_dir=bundle, name=how, wait=False)
        for how in ("stopped", "killed")
    }
    try:
        for svc in services.values():
            svc.wait_healthy(60)
        for n, svc in enumerate(services.values()):
            assert svc.tmp_dir is not None and svc.tmp_dir.is_relative_to(procs.MEMORY_DIR), svc.tmp_dir
            codes = asyncio.run(_uploads(svc.url, good + bad))
            assert codes == [200] * len(good) + [415, 400, 422, 413], codes
            inside = _files(svc.tmp_dir)
            # BentoML's request dirs (one per concurrent upload, emptied after each) live in the private folder.
            requests = [f for f in inside if f.startswith("bentoml-request-")]
            assert requests and all("/" not in f for f in requests), inside  # and no upload is left in them
            # Each service counts only its own requests (BentoML's metric files live in its own home).
            counts = [_predict_requests(s.url) for s in services.values()]
            assert counts == [len(good + bad)] * (n + 1) + [0] * (len(services) - n - 1), counts
    finally:
        services["stopped"].stop()
        services["killed"].kill()  # SIGKILL: no shutdown hook runs, as in a crash
    for how, svc in services.items():
        assert svc.tmp_dir is not None and not svc.tmp_dir.exists(), (how, _files(svc.tmp_dir))
    assert _files(outer) == []  # nothing was written to the inherited TMPDIR
    assert not (settings.root / "tmp").exists() or _files(settings.root / "tmp") == []


def test_a_crash_leftover_is_cleared_on_the_next_start(settings: Settings, tmp_path: Path) -> None:
    """A folder left by a parent that died before stopping its service is emptied when that service restarts."""
    port = free_port()
    tmp = procs.service_tmp_dir(settings, "toy", port)
    log = tmp_path / "toy.log"
    (tmp / "bentoml-request-old").mkdir(parents=True)
    svc = procs.start_process(
        "toy",
        [sys.executable, "-c", "import os, sys, time; print(os.environ['TMPDIR'], flush=True); time.sleep(60)"],
        url=f"http://127.0.0.1:{port}",
        log_path=log,
        wait=False,
        tmp_dir=tmp,
    )
    try:
        assert tmp.is_dir() and _files(tmp) == []
        deadline = time.monotonic() + 10
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().strip() == str(tmp)  # the child was given it as TMPDIR
    finally:
        svc.stop(timeout=5)
    assert not tmp.exists()


def test_a_classifier_answers_on_a_full_data_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BentoML makes a folder for every request in its TMPDIR, which was under the data directory: on a full data
    disk every prediction failed ("No space left on device") and BentoML restarted its workers in a loop, so the
    champion was down while the runbook said predictions go on. Its TMPDIR and home are in memory now."""
    from tests.support.disks import fill_up, tmpfs

    if not procs.MEMORY_DIR.is_dir():
        pytest.skip(f"no {procs.MEMORY_DIR} here: BentoML's temporary files stay under the data directory")
    bundle = make_standin_bundle(tmp_path / "bundle", "good", version="1")
    with tmpfs(tmp_path / "data", "size=8m") as data:
        monkeypatch.setenv("PYROCAST_DATA_DIR", str(data))
        settings = Settings()
        settings.ensure_dirs()
        svc = procs.start_classifier(settings, port=free_port(), bundle_dir=bundle)
        try:
            rng = np.random.default_rng(0)
            tiles = [("images", tile_jpeg(i % 2, rng)) for i in range(8)]
            assert asyncio.run(_uploads(svc.url, tiles)) == [200] * 8
            fill_up(data)  # its log, in the data directory, can no longer grow either
            for _ in range(3):
                assert asyncio.run(_uploads(svc.url, tiles)) == [200] * 8
        finally:
            svc.stop()
        assert svc.tmp_dir is not None and not svc.tmp_dir.exists()
