"""The classifier: one model version as ONNX on ONNX Runtime, behind BentoML 1.4 with adaptive batching.

Run it with `pyrocast serve classifier` (or `bentoml serve pyrocast.serving.classifier_service:Classifier`);
which model it serves comes from the environment (see `pyrocast.serving.bundles`).

HTTP API (an internal service: the gateway is the public entry point):
- `POST /predict`, multipart field `images` (one or more JPEG/PNG files) -> a JSON list, one item per image:
  `{"probability": P(wildfire), "label": "wildfire"|"nowildfire", "model": {"name", "version"}, "precision"}`.
  Concurrent requests are merged into batches of up to `max_batch_size` images, waiting at most
  `max_latency_ms` (Settings.serving); `PYROCAST_SERVE_BATCHING=0` turns batching off (benchmark baseline).
- `GET /model/info`: the model name, version, precision, input size and batching configuration, and which process
  answers (`worker`: BentoML's worker index, pid and start time, and its service's): BentoML restarts a worker
  that died without a word in any log, and the gateway finds out from this.
  `novelty`: the acceptance ranges of the bundle's drift reference (`pyrocast.monitoring.novelty`; null without
  one), with which the gateway warns about tiles unlike the training tiles.
- `GET /livez`, `/readyz` (probes) and `/metrics` (Prometheus), from BentoML.

Bad uploads are refused before they reach a batch (so one bad image never fails its batch neighbours):
413 too large, 400 empty, 415 not JPEG/PNG, 422 corrupt, a decompression bomb or an unusable pixel mode.
"""

from __future__ import annotations

import csv
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from bentoml._internal.marshal.dispatcher import Optimizer
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from fastapi import FastAPI
from PIL import Image
from pydantic import AfterValidator

from pyrocast.data.layout import CLASSES
from pyrocast.errors import PyrocastError, scrub_log_secrets
from pyrocast.model.bundle import Bundle, OnnxClassifier
from pyrocast.model.preprocess import PreprocessSpec, preprocess
from pyrocast.monitoring.novelty import Novelty
from pyrocast.monitoring.reference import read_reference
from pyrocast.serving.bundles import (
    ENV_BUNDLE,
    SERVING_ORT_CONFIG,
    batching_enabled,
    resolve_bundle,
    serving_precision,
    tiles_per_call,
)
from pyrocast.serving.guards import MULTIPART_SLACK, BodyLimit, load_upload_file, quiet_client_errors
from pyrocast.serving.worker import worker_identity
from pyrocast.settings import get_settings

log = logging.getLogger("pyrocast.classifier")

LABELS = CLASSES  # index = the model's output (1 = wildfire)
_settings = get_settings()
quiet_client_errors()
_serving = _settings.serving
BATCHING = batching_enabled()
MAX_UPLOAD_BYTES = _serving.max_upload_bytes


class UploadError(BentoMLException):
    """A rejected upload; BentoML answers with its status code and message."""


# The served model's preprocessing, set when the service instance starts in this worker process. Uploads are
# preprocessed while their request is parsed (on the event loop), so the inference thread only stacks arrays
# and runs ONNX Runtime: decoding the next requests overlaps with the current batch.
_SPEC: PreprocessSpec | None = None


def _novelty(bundle: Bundle) -> Novelty | None:
    """The acceptance ranges of the bundle's drift reference (`/model/info`: the gateway checks every tile with
    them); None for a bundle without one. A broken reference costs the warnings, never the service."""
    try:
        return Novelty.from_reference(read_reference(bundle.root))
    except (PyrocastError, OSError, ValueError, csv.Error) as exc:
        log.warning("the drift reference of %s is unusable (%s): no out-of-distribution warnings", bundle.root, exc)
        return None


def _checked_image(path: Path) -> np.ndarray | Image.Image:
    """Runs while the request is parsed, before batching: guards, decode, RGB, preprocessing."""
    img = load_upload_file(path, max_bytes=MAX_UPLOAD_BYTES, refuse=_refuse)
    return preprocess(img, _SPEC) if _SPEC is not None else img


def _refuse(message: str, status: HTTPStatus) -> UploadError:
    return UploadError(message, error_code=status)


class _StrictMultipart(MultipartSerde):
    """BentoML's multipart parsing, refusing unknown fields with a 400.

    BentoML json-decodes unknown fields and only catches JSONDecodeError: a JPEG sent as `image` instead of
    `images` raised UnicodeDecodeError, a 500. (A private BentoML class, pinned at 1.4.40; tested.)
    """

    async def parse_request(self, request: Any, cls: Any) -> Any:
        unknown = sorted(set(await request.form()) - set(cls.model_fields))  # starlette caches the parsed form
        if unknown:
            raise UploadError(
                f"unknown form field(s) {', '.join(map(repr, unknown))}: send the tiles as 'images'",
                error_code=HTTPStatus.BAD_REQUEST,
            )
        return await super().parse_request(request, cls)


ALL_SERDE["multipart/form-data"] = _StrictMultipart  # type: ignore[index]

_log_outbound = Optimizer.log_outbound


def _log_outbound_bounded(self: Optimizer, n: int, wait: float, duration: float) -> None:
    """BentoML's batcher keeps later requests waiting about as long as the first requests of recent batches waited,
    each new wait 5% shorter: a stall (a paused VM, a starved CPU) with a request queued taught it seconds, and
    answers then waited over 100 ms for minutes (4 ms before). A wait is counted as at most its batch's own call:
    waiting longer never forms a batch sooner than the model could run one. (BentoML 1.4.40's Optimizer; tested.)"""
    _log_outbound(self, n, min(wait, duration), duration)


Optimizer.log_outbound = _log_outbound_bounded  # type: ignore[method-assign]

Upload = Annotated[Path, AfterValidator(_checked_image)]
# A declared media type spares BentoML building the output's JSON schema again for every response (~0.5 ms).
Answers = Annotated[list[dict[str, Any]], ContentType("application/json")]

meta_app = FastAPI(title="pyrocast classifier: model information")


@bentoml.asgi_app(meta_app, path="/model")
@bentoml.service(
    name="pyrocast-classifier",
    workers=1,
    threads=1,
    # Many requests in flight at once is what lets the dispatcher form batches.
    traffic={"timeout": 30, "max_concurrency": _settings.serving.max_concurrency, "concurrency": 64},
    logging={"access": {"enabled": False}},
)
class Classifier:
    """One model version, scored with ONNX Runtime."""

    def __init__(self) -> None:
        scrub_log_secrets()  # BentoML's handlers exist by now: a traceback quoting a password is scrubbed
        self.bundle = resolve_bundle(_settings)
        # "registry" models have aliases the gateway moves on promote/rollback; bundle folders have none.
        self.source = "folder" if os.environ.get(ENV_BUNDLE) else "registry"
        self.precision = serving_precision(self.bundle, _settings)
        threads = int(os.environ.get("PYROCAST_SERVE_THREADS", "2"))
        self.model = OnnxClassifier(
            self.bundle, self.precision, threads=threads, config=SERVING_ORT_CONFIG, device=_serving.device
        )
        self.threshold = float(self.bundle.meta.get("threshold", 0.5))
        self.chunk = tiles_per_call(self.bundle, _serving.device)
        global _SPEC
        _SPEC = self.bundle.spec
        self.novelty = _novelty(self.bundle)
        self.worker = worker_identity()
        # Warm-up: the first ONNX Runtime run allocates; no user request should pay for it.
        self.model.predict_proba(np.zeros((1, 3, self.bundle.spec.size, self.bundle.spec.size), np.float32))

    @bentoml.api(
        route="/predict",
        batchable=BATCHING,
        max_batch_size=max(2, _serving.max_batch_size),
        max_latency_ms=_serving.max_latency_ms,
    )
    def predict(self, images: list[Upload]) -> Answers:
        """P(wildfire) for each uploaded JPEG/PNG tile, in order."""
        items = [x if isinstance(x, np.ndarray) else preprocess(x, self.bundle.spec) for x in images]  # type: ignore[arg-type]
        batch = np.stack(items) if items else np.zeros((0, 3, self.bundle.spec.size, self.bundle.spec.size), np.float32)
        probs = np.concatenate(
            [self.model.predict_proba(batch[i : i + self.chunk]) for i in range(0, len(batch), self.chunk)]
            or [np.zeros((0,), np.float32)]
        )
        model = {"name": self.bundle.name, "version": self.bundle.version}
        return [
            {
                "probability": float(p),
                "label": LABELS[int(p >= self.threshold)],
                "model": model,
                "precision": self.precision,
            }
            for p in probs
        ]

    @meta_app.get("/info")
    def info(self) -> dict[str, Any]:
        """Which model this service serves, at which precision, with which batching."""
        return {
            "name": self.bundle.name,
            "version": self.bundle.version,
            "precision": self.precision,
            "device": self.model.device,
            "input_size": self.bundle.spec.size,
            "threshold": self.threshold,
            "batching": BATCHING,
            "max_batch_size": _serving.max_batch_size,
            "tiles_per_model_call": self.chunk,
            "max_latency_ms": _serving.max_latency_ms,
            "network": self.bundle.meta.get("network"),
            "run_id": self.bundle.meta.get("run_id"),
            "source": self.source,
            # Acceptance ranges of the image statistics (monitoring.novelty), or None: the gateway warns with them.
            "novelty": self.novelty.to_dict() if self.novelty is not None else None,
            "worker": self.worker,
        }


Classifier.add_asgi_middleware(
    BodyLimit,
    max_bytes=MAX_UPLOAD_BYTES + MULTIPART_SLACK,
    refuse=_refuse,
)
