"""Which model a service serves: a bundle folder, or a registered model by alias or version.

Services are configured through the environment so that `bentoml serve` (which imports the service module in
fresh worker processes) sees the same choice as the command that started it:

- `PYROCAST_SERVE_BUNDLE=/path/to/bundle` serves that folder (tests, ad-hoc models);
- otherwise `PYROCAST_SERVE_MODEL=champion|challenger|<version>` (default `champion`) is fetched from the
  registry with `pyrocast.registry.models.fetch_bundle`;
- `PYROCAST_SERVE_PRECISION=fp32|int8|auto` overrides Settings.serving.precision (`auto` = the bundle's
  preferred precision, INT8 only where training measured that it kept accuracy).
"""

from __future__ import annotations

import os
from pathlib import Path

from pyrocast.errors import PyrocastError
from pyrocast.model.bundle import QUIET_ORT_CONFIG, Bundle, Precision, load_bundle
from pyrocast.settings import Settings

ENV_BUNDLE = "PYROCAST_SERVE_BUNDLE"
ENV_MODEL = "PYROCAST_SERVE_MODEL"
ENV_PRECISION = "PYROCAST_SERVE_PRECISION"
ENV_BATCHING = "PYROCAST_SERVE_BATCHING"

# Services share their cores with the event loop and each other: ONNX Runtime's threads must not spin (see
# QUIET_ORT_CONFIG, the default of every session; named here so the services say it).
SERVING_ORT_CONFIG = QUIET_ORT_CONFIG


def resolve_bundle(settings: Settings, bundle_dir: str | Path | None = None, ref: str | None = None) -> Bundle:
    """The bundle to serve: an explicit folder, else `$PYROCAST_SERVE_BUNDLE`, else the registry's `ref`."""
    folder = bundle_dir or os.environ.get(ENV_BUNDLE)
    if folder:
        return load_bundle(Path(folder))
    ref = ref or os.environ.get(ENV_MODEL) or "champion"
    try:
        from pyrocast.registry.models import fetch_bundle
    except ModuleNotFoundError as exc:
        raise PyrocastError(
            f"cannot fetch model {ref!r}: the model registry is not available",
            f"serve a bundle folder instead ({ENV_BUNDLE}=/path or --bundle)",
        ) from exc
    return fetch_bundle(settings, ref)


def resolve_precision(bundle: Bundle, wanted: str | None) -> Precision:
    """fp32 or int8 for `wanted` (fp32|int8|auto); int8 without an INT8 graph is an error, not a silent fp32."""
    wanted = (wanted or "auto").lower()
    if wanted == "auto":
        return bundle.preferred_precision
    if wanted not in ("fp32", "int8"):
        raise PyrocastError(f"unknown precision {wanted!r}", "use fp32, int8 or auto")
    bundle.onnx_path(wanted)  # type: ignore[arg-type]  # raises naming the missing file
    return wanted  # type: ignore[return-value]


def serving_precision(bundle: Bundle, settings: Settings) -> Precision:
    """The precision a service scores `bundle` in: `$PYROCAST_SERVE_PRECISION`, else Settings.serving.precision.

    One rule for the classifier and the explainer, so that what is explained is what is served."""
    return resolve_precision(bundle, os.environ.get(ENV_PRECISION) or settings.serving.precision)


# Images per ONNX Runtime call. On these CPUs a call's cost per image is flat up to about 16 images and rises
# beyond (the 8-view model, CPU-ms per tile: 79-80 at 1-2 tiles, 85 at 4-16, 110 at 32, FP32): a batch the
# dispatcher formed is scored in chunks of this many images, so batching never makes a tile dearer.
IMAGES_PER_CALL = 16
# A GPU's cost per image falls with the batch: there the formed batch goes whole (up to this many images).
IMAGES_PER_CALL_GPU = 512


def tiles_per_call(bundle: Bundle, device: str = "cpu") -> int:
    """How many tiles of this bundle the classifier scores per ONNX Runtime call on `device`."""
    return max(1, (IMAGES_PER_CALL if device == "cpu" else IMAGES_PER_CALL_GPU) // bundle.views)


def batching_enabled() -> bool:
    """Adaptive batching is on unless PYROCAST_SERVE_BATCHING=0 (the benchmark's baseline)."""
    return os.environ.get(ENV_BATCHING, "1").strip().lower() not in ("0", "false", "no", "off")
