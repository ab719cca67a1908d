"""The explainer: an attribution heatmap (PNG) for a tile and a model version, behind BentoML.

Run it with `pyrocast serve explainer`. HTTP API (internal; the gateway's `/v1/explain` is the public door):
- `POST /explain`, multipart: `image` (JPEG/PNG), `version` (a registry version or alias; default `champion`),
  `precision` (fp32|int8|auto; default: as the classifier, `PYROCAST_SERVE_PRECISION` else serving.precision)
  -> `image/png`: the tile with the occlusion heatmap laid over it (at most 512 pixels a side). Headers
  `X-Model-Name`, `X-Model-Version`, `X-Model-Precision`, `X-Probability`.
- `GET /model/info`: the models loaded and which process answers (`worker`, as the classifier's: the gateway
  tells a worker BentoML restarted by it).
- `GET /livez`, `/readyz`, `/metrics` from BentoML.

Models come from the registry (`fetch_bundle`) or, for tests and bundle-folder deployments, from
`PYROCAST_EXPLAIN_BUNDLES="<version>=<folder>:<version>=<folder>"`; the last few used stay loaded.
The attribution is occlusion over the served ONNX graph (`pyrocast.model.explain.occlusion_onnx`): what is
explained is exactly what the classifier serves.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections import OrderedDict
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI
from mlflow.exceptions import MlflowException
from PIL import Image
from pydantic import AfterValidator, BeforeValidator, Field

from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError, scrub_log_secrets, scrub_secrets
from pyrocast.model.bundle import Bundle, OnnxClassifier, load_bundle
from pyrocast.registry.refs import check_model_ref
from pyrocast.serving.bundles import SERVING_ORT_CONFIG, resolve_bundle, resolve_precision, serving_precision
from pyrocast.serving.guards import MULTIPART_SLACK, BodyLimit, load_upload_file, quiet_client_errors
from pyrocast.serving.service_errors import ServerErrorReason, tell_caller
from pyrocast.serving.worker import worker_identity
from pyrocast.settings import get_settings

_settings = get_settings()
quiet_client_errors()
MAX_UPLOAD_BYTES = _settings.serving.max_upload_bytes
KEEP_MODELS = 3
MAX_SIDE = 512  # pixels: the longest side of the returned heatmap (tiles are 350)


class ExplainError(BentoMLException):
    """A request the explainer cannot serve; answered with its status code."""


def _refuse(message: str, status: HTTPStatus) -> ExplainError:
    return ExplainError(message, error_code=status)


def _checked_image(path: Path) -> Image.Image:
    return load_upload_file(path, max_bytes=MAX_UPLOAD_BYTES, refuse=_refuse)


def parse_bundle_map(text: str | None) -> dict[str, Path]:
    """`"1=/a:2=/b"` -> {"1": Path("/a"), "2": Path("/b")} (os.pathsep separates entries)."""
    out: dict[str, Path] = {}
    for part in (text or "").split(os.pathsep):
        if part.strip():
            version, _, folder = part.partition("=")
            out[version.strip()] = Path(folder.strip())
    return out


def simple_occlusion(classifier: OnnxClassifier, image: Image.Image, grid: int = 7) -> np.ndarray:
    """Fallback attribution: drop of P(predicted class) when each cell of a grid x grid mesh is greyed out."""
    from pyrocast.model.preprocess import preprocess

    x = preprocess(image, classifier.bundle.spec)
    p0 = float(classifier.predict_proba(x[None])[0])
    target_fire = p0 >= 0.5
    s = x.shape[-1]
    edges = np.linspace(0, s, grid + 1).astype(int)
    batch = []
    for i in range(grid):
        for j in range(grid):
            xi = x.copy()
            xi[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = 0.0  # the mean colour once normalized
            batch.append(xi)
    p = classifier.predict_proba(np.stack(batch))
    drop = (p0 - p) if target_fire else (p - p0)
    heat = np.clip(drop.reshape(grid, grid), 0, None)
    return heat / heat.max() if heat.max() > 0 else heat


def _heat_and_png(classifier: OnnxClassifier, image: Image.Image) -> bytes:
    try:
        from pyrocast.model.explain import occlusion_onnx, overlay_png
    except ImportError:  # the model package's explain module is optional for serving
        occlusion_onnx, overlay_png = None, None
    if occlusion_onnx is not None and overlay_png is not None:
        heat = occlusion_onnx(classifier, image, classifier.bundle.spec)
        return overlay_png(image, heat)
    heat = simple_occlusion(classifier, image)
    h = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    red = Image.new("RGB", image.size, (255, 40, 0))
    out = Image.composite(red, image, h.point(lambda v: int(v * 0.5)))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


meta_app = FastAPI(title="pyrocast explainer: service information")


@bentoml.asgi_app(meta_app, path="/model")
@bentoml.service(
    name="pyrocast-explainer",
    workers=1,
    threads=1,
    traffic={"timeout": 120, "max_concurrency": 32},
    logging={"access": {"enabled": False}},
)
class Explainer:
    """Occlusion heatmaps for any served model version."""

    def __init__(self) -> None:
        scrub_log_secrets()  # BentoML's handlers exist by now: a traceback quoting a password is scrubbed
        self.folders = parse_bundle_map(os.environ.get("PYROCAST_EXPLAIN_BUNDLES"))
        self.models: OrderedDict[str, OnnxClassifier] = OrderedDict()
        self.last_for: dict[tuple[str, str | None], str] = {}  # (name asked, precision) -> its model's key, last time
        self.lock = threading.Lock()
        self.worker = worker_identity()
        # Import the attribution code now (torch, captum: seconds), not on the first user's request.
        with contextlib.suppress(ImportError):
            import pyrocast.model.explain  # noqa: F401

    def _bundle(self, version: str) -> Bundle:
        if version in self.folders:
            return load_bundle(self.folders[version])
        if self.folders:  # folder mode: no registry, so no alias but "champion", the first folder given
            if version == "champion":
                return load_bundle(next(iter(self.folders.values())))
            raise ExplainError(
                f"model version {version!r} is not available here (have {', '.join(self.folders)}; bundle folders "
                "know no alias but 'champion')",
                error_code=HTTPStatus.NOT_FOUND,
            )
        return resolve_bundle(_settings, ref=version)

    def classifier(self, version: str, precision: str | None = None) -> OnnxClassifier:
        """The model `version` names now, in `precision` (default: the classifier's own rule).

        Loaded models are kept by the version they are, not the name asked for: cached under "champion", the old
        champion was explained for as long as it stayed loaded after a promotion."""
        with self.lock:
            try:
                ref = check_model_ref(version)
                bundle = self._bundle(ref)
                served = resolve_precision(bundle, precision) if precision else serving_precision(bundle, _settings)
            except ExplainError:
                raise
            except InvalidInputError as exc:  # names no possible version: the client's mistake
                raise ExplainError(str(exc), error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from exc
            except (ServiceUnavailableError, MlflowException, OSError) as exc:  # the registry does not answer
                last = self.last_for.get((version, precision))
                if last in self.models:  # the model that name gave last time: better than no heatmap
                    return self.models[last]
                why = scrub_secrets(str(exc))  # an MLflow error may quote the tracking URI, password and all
                message = f"cannot tell which model {version!r} names: the model registry does not answer ({why})"
                tell_caller(message)
                raise ExplainError(message, error_code=HTTPStatus.SERVICE_UNAVAILABLE) from exc
            except PyrocastError as exc:
                raise ExplainError(str(exc), error_code=HTTPStatus.NOT_FOUND) from exc
            # The folder, not the version: bundles never registered all say version 0.
            key = f"{bundle.root.resolve()}/{served}"
            self.last_for[(version, precision)] = key
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            clf = OnnxClassifier(bundle, served, threads=2, config=SERVING_ORT_CONFIG)
            self.models[key] = clf
            while len(self.models) > KEEP_MODELS:
                self.models.popitem(last=False)
            return clf

    @meta_app.get("/info")
    def info(self) -> dict[str, Any]:
        """The model versions loaded (most recently used last) and which process answers."""
        with self.lock:
            loaded = [f"v{m.bundle.version} ({m.precision})" for m in self.models.values()]
        return {"kind": "explainer", "models_loaded": loaded, "worker": self.worker}

    @bentoml.api(route="/explain")
    def explain(
        self,
        image: Annotated[Path, AfterValidator(_checked_image)],
        # BentoML's multipart parser JSON-decodes fields, so a version "3" arrives as the number 3.
        version: Annotated[str, BeforeValidator(str), Field(max_length=64)] = "champion",
        # The precision the classifier serving this version scores in (the gateway knows it); default: the
        # classifier's own rule (PYROCAST_SERVE_PRECISION, else serving.precision).
        precision: Annotated[str | None, Field(pattern="^(fp32|int8|auto)$")] = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> Annotated[Path, bentoml.validators.ContentType("image/png")]:
        """The tile with the heatmap of `version` over it, as PNG."""
        clf = self.classifier(version.strip() or "champion", precision)
        img: Image.Image = image  # type: ignore[assignment]  # the validator turned the path into an image
        # The heatmap is drawn over a copy at most MAX_SIDE wide: the occlusion sees the model's input size
        # anyway, and colouring and encoding a 4096-pixel upload took seconds (a lever against 2 cores).
        shown = img.copy()
        shown.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
        png = _heat_and_png(clf, shown)
        from pyrocast.model.preprocess import preprocess

        prob = float(clf.predict_proba(preprocess(img, clf.bundle.spec)[None])[0])
        ctx.response.headers["X-Model-Name"] = clf.bundle.name
        ctx.response.headers["X-Model-Version"] = clf.bundle.version
        ctx.response.headers["X-Model-Precision"] = clf.precision
        ctx.response.headers["X-Probability"] = f"{prob:.6f}"
        out = Path(ctx.temp_dir) / "explanation.png"
        out.write_bytes(png)
        return out


Explainer.add_asgi_middleware(ServerErrorReason)
Explainer.add_asgi_middleware(
    BodyLimit,
    max_bytes=MAX_UPLOAD_BYTES + MULTIPART_SLACK,
    refuse=_refuse,
)
