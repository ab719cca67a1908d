"""Serving: gateway + classifier latency against a bare ONNX Runtime call, and what adaptive batching buys.

Run with `make bench` or `.venv/bin/python -m benchmarks serving`. The model is the registry's champion when
one exists (`PYROCAST_BENCH_BUNDLE=/path` picks a bundle folder), else EfficientNet-Lite0 at 224 px with its
ImageNet trunk and an untrained head (the production network's size: what matters here is the cost of a
forward pass, not its answer), exported once into the data directory.

Measured within one run, on one real tile:
- bare: `OnnxClassifier.predict_proba` on the already preprocessed tile (batch 1), p50;
- the HTTP hops' fixed cost: p50 of an empty round trip to the gateway plus one to the classifier;
- gateway + classifier: p50 of `POST /v1/predict` with the tile JPEG (decode, guards, statistics, routing,
  the classifier call with its own decode and preprocessing, the store write queued);
- throughput at 32 concurrent clients straight to the classifier, with adaptive batching and without
  (`PYROCAST_SERVE_BATCHING=0`), and through the gateway with batching.
Targets: (p50 - hops) / bare <= 1.5; batching throughput / no batching >= 2. The machines are shared and
have 2 cores for the clients and the servers together: absolute numbers move with the load.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx
from PIL import Image

from pyrocast.model.bundle import Bundle, OnnxClassifier, load_bundle, write_bundle_files
from pyrocast.model.preprocess import PreprocessSpec, preprocess
from pyrocast.serving import procs
from pyrocast.settings import ServingSettings, Settings, get_settings

SEED_SECONDS_PER_REQUEST = 2.63  # the seed project's figure for one image request
N_SEQUENTIAL = 150
N_CONCURRENT = 320
CONCURRENCY = 32
REAL_TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wildfire-tiles"


def _bundle(settings: Settings) -> Bundle:
    """The champion, an explicit folder, or an EfficientNet-Lite0 bundle exported once into the data dir."""
    if os.environ.get("PYROCAST_BENCH_BUNDLE"):
        return load_bundle(Path(os.environ["PYROCAST_BENCH_BUNDLE"]))
    local_store = settings.mlflow_tracking_uri.removeprefix("sqlite:///")
    if settings.mlflow.tracking_uri or Path(local_store).exists():  # never create a registry just to look
        try:
            from pyrocast.registry.models import fetch_bundle

            return fetch_bundle(settings, "champion")
        except Exception:  # no champion yet: use the stand-in below
            pass
    root = settings.root / "bench" / "effnet-lite0-224"
    if not (root / "meta.json").exists():
        import torch

        from pyrocast.model.export import export_onnx
        from pyrocast.model.networks import NetworkConfig, build_network

        torch.set_num_threads(2)
        root.mkdir(parents=True, exist_ok=True)
        net = build_network(NetworkConfig("effnet_lite0"), pretrained=True).eval()
        export_onnx(net, 224, root / "model.onnx")
        write_bundle_files(
            root,
            PreprocessSpec(size=224),
            {"name": "bench-effnet-lite0", "version": "0", "network": "effnet_lite0/head (untrained head)"},
        )
    return load_bundle(root)


def _tile() -> tuple[Image.Image, bytes]:
    """A real tile when the shared folder is there, else a synthetic one; with its JPEG bytes."""
    files = sorted(REAL_TILES.glob("*/*/*.jpg"))
    if files:
        data = files[0].read_bytes()
        return Image.open(files[0]).convert("RGB"), data
    from pyrocast.data.imagery import make_provider
    from pyrocast.imaging import encode_jpeg

    img = make_provider(Settings()).fetch(-73.5, 46.0)
    return img, encode_jpeg(img, quality=90)


def _p50_ms(fn, n: int, warmup: int = 10) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _throughput(url: str, path: str, field: str, data: bytes, n: int, concurrency: int) -> tuple[float, int]:
    """Answered requests per second with `concurrency` clients in flight, and how many failed (shed, 5xx)."""

    async def go() -> tuple[float, int]:
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

            async def one() -> int:
                async with sem:
                    r = await client.post(path, files={field: ("tile.jpg", data, "image/jpeg")})
                    return r.status_code

            await asyncio.gather(*(one() for _ in range(concurrency)))  # warm-up: connections, batcher
            t = time.perf_counter()
            codes = await asyncio.gather(*(one() for _ in range(n)))
            ok = sum(c == 200 for c in codes)
            return ok / (time.perf_counter() - t), n - ok

    return asyncio.run(go())


def run() -> list[tuple[str, float | str, str]]:
    base = get_settings()
    bundle = _bundle(base)
    img, jpeg = _tile()
    ports = [procs.free_port() for _ in range(4)]
    settings = Settings(
        data_dir=base.root / "bench" / "serving",
        serving=ServingSettings(champion_port=ports[0], challenger_port=ports[1], gateway_port=ports[2]),
    )
    settings.ensure_dirs()
    (settings.root / "predictions.db").unlink(missing_ok=True)

    clf = OnnxClassifier(bundle, "fp32", threads=2)
    x = preprocess(img, bundle.spec)[None]
    bare = _p50_ms(lambda: clf.predict_proba(x), 100)

    results: list[tuple[str, float | str, str]] = [
        ("model", f"{bundle.name} v{bundle.version} ({bundle.spec.size} px, fp32)", ""),
        ("bare ONNX Runtime p50 (batch 1, 2 threads)", bare, "ms"),
    ]
    classifier = procs.start_classifier(settings, port=ports[0], bundle_dir=bundle.root, precision="fp32")
    gateway = None
    try:
        gateway = procs.start_gateway(settings)
        with httpx.Client(timeout=60) as c:
            hop_gw = _p50_ms(lambda: c.get(gateway.url + "/readyz"), N_SEQUENTIAL)
            hop_clf = _p50_ms(lambda: c.get(classifier.url + "/livez"), N_SEQUENTIAL)
            direct = _p50_ms(
                lambda: c.post(classifier.url + "/predict", files={"images": ("t.jpg", jpeg, "image/jpeg")}),
                N_SEQUENTIAL,
            )
            full = _p50_ms(
                lambda: c.post(gateway.url + "/v1/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")}),
                N_SEQUENTIAL,
            )
        hops = hop_gw + hop_clf
        results += [
            ("HTTP hops fixed cost p50 (empty gateway + classifier round trips)", hops, "ms"),
            ("classifier alone p50 (POST /predict)", direct, "ms"),
            ("gateway + classifier p50 (POST /v1/predict)", full, "ms"),
            ("gateway + classifier / bare", full / bare, "x"),
            ("(gateway + classifier - hops) / bare (target <= 1.5)", (full - hops) / bare, "x"),
        ]
        batched, err_b = _throughput(classifier.url, "/predict", "images", jpeg, N_CONCURRENT, CONCURRENCY)
        via_gw, err_g = _throughput(gateway.url, "/v1/predict", "image", jpeg, N_CONCURRENT, CONCURRENCY)
    finally:
        if gateway is not None:
            gateway.stop()
        classifier.stop()
    plain = procs.start_classifier(
        settings, port=ports[3], bundle_dir=bundle.root, precision="fp32", batching=False, name="no-batching"
    )
    try:
        unbatched, err_u = _throughput(plain.url, "/predict", "images", jpeg, N_CONCURRENT, CONCURRENCY)
    finally:
        plain.stop()
    results += [
        (f"classifier throughput, {CONCURRENCY} clients, adaptive batching", batched, "req/s"),
        (f"classifier throughput, {CONCURRENCY} clients, no batching", unbatched, "req/s"),
        ("batching / no batching (target >= 2)", batched / unbatched, "x"),
        (f"gateway + classifier throughput, {CONCURRENCY} clients, batching", via_gw, "req/s"),
        ("failed requests in the throughput runs", float(err_b + err_u + err_g), "requests"),
        ("seed: per image request", SEED_SECONDS_PER_REQUEST * 1000, "ms"),
        ("seed / gateway + classifier p50", SEED_SECONDS_PER_REQUEST * 1000 / full, "x"),
    ]
    return results


if __name__ == "__main__":
    for name, value, unit in run():
        print(f"{name:70s} {value:>10.4g} {unit}" if isinstance(value, float) else f"{name:70s} {value} {unit}")
