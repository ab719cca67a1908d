"""The serving bundle: the folder a trained model travels in, from training to registry to servers.

```
bundle/
  model.onnx         FP32 ONNX, input "input" float32 (N, 3, S, S), output "logits" (N, 2)
  model.int8.onnx    statically quantized INT8 ONNX (optional)
  preprocess.json    PreprocessSpec: input size, mean, std
  meta.json          name, version, run_id, data_version, network, metrics, chosen precision, ...
```
Training writes it, the registry stores it with the model version and fetches it back, and the classifier,
the explainer, evaluation and the champion comparison all score tiles through `OnnxClassifier`, so every
number is measured on the exact graph that is served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pyrocast.errors import PyrocastError
from pyrocast.model.preprocess import PreprocessSpec

FP32 = "model.onnx"
INT8 = "model.int8.onnx"
PREPROCESS = "preprocess.json"
META = "meta.json"
REQUIRED = (FP32, PREPROCESS, META)

Precision = Literal["fp32", "int8"]


@dataclass
class Bundle:
    """A bundle folder on disk."""

    root: Path
    spec: PreprocessSpec
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "unregistered"))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "0"))

    def onnx_path(self, precision: Precision = "fp32") -> Path:
        p = self.root / (INT8 if precision == "int8" else FP32)
        if not p.exists():
            raise PyrocastError(f"bundle {self.root} has no {p.name}", "re-export the model")
        return p

    @property
    def views(self) -> int:
        """Images the graph scores per tile: its test-time views (8 for the full profile's dihedral averaging)."""
        network = self.meta.get("network")
        tta = network.get("tta", 1) if isinstance(network, dict) else 1
        try:
            return max(1, int(tta or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def preferred_precision(self) -> Precision:
        """What training measured as the faster safe choice (INT8 only if it kept accuracy)."""
        p = self.meta.get("serve_precision", "fp32")
        return "int8" if p == "int8" and (self.root / INT8).exists() else "fp32"


def missing_files(root: Path) -> list[str]:
    """Required bundle files absent from `root` (empty when complete)."""
    return [f for f in REQUIRED if not (Path(root) / f).is_file() or (Path(root) / f).stat().st_size == 0]


def load_bundle(root: Path) -> Bundle:
    """Open a bundle folder; raises PyrocastError naming what is missing."""
    root = Path(root)
    miss = missing_files(root)
    if miss:
        raise PyrocastError(f"model bundle {root} is incomplete: missing {', '.join(miss)}")
    spec = PreprocessSpec.from_dict(json.loads((root / PREPROCESS).read_text()))
    meta = json.loads((root / META).read_text())
    return Bundle(root, spec, meta)


def write_bundle_files(root: Path, spec: PreprocessSpec, meta: dict[str, Any]) -> None:
    """Write preprocess.json and meta.json into a bundle folder (ONNX files are written by export)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / PREPROCESS).write_text(json.dumps(spec.to_dict(), indent=2))
    (root / META).write_text(json.dumps(meta, indent=2, default=str))


def softmax_wildfire(logits: np.ndarray) -> np.ndarray:
    """P(wildfire) from (N, 2) logits; class 1 is wildfire."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


# ONNX Runtime's worker threads spin while they wait for work. On 2 cores shared with an event loop, other
# services or another session, the spinning steals the CPU the rest needs: EfficientNet-Lite0 at batch 1 took 9.9
# CPU-ms per tile without spinning against 18.9 with it (half the wall time under load), and export, timing FP32
# and INT8 in turn, saw the FP32 session's spinning threads slow the INT8 one down to FP32's speed (0.95x instead
# of 2.2x for the 8-view EfficientNet, so the full profile shipped FP32). Every session here runs without it.
QUIET_ORT_CONFIG = {"session.intra_op.allow_spinning": "0"}


# Where a session runs. `cuda` needs the onnxruntime-gpu package and an NVIDIA GPU (not on the project's CPU
# machines): it is what the batching bar needs, since a CPU's cost per tile does not fall with the batch size.
DEVICES: dict[str, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def provider_for(device: str) -> str:
    """ONNX Runtime's execution provider for `device`; an error saying what to do where it is not available."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise PyrocastError(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    provider, available = DEVICES[device], ort.get_available_providers()
    if provider not in available:
        raise PyrocastError(
            f"device {device!r} asked, but this ONNX Runtime has no {provider} (it has {', '.join(available)})",
            "on a machine with an NVIDIA GPU install onnxruntime-gpu in place of onnxruntime; "
            "else set PYROCAST_SERVING__DEVICE=cpu",
        )
    return provider


class OnnxClassifier:
    """An ONNX Runtime session for one bundle and precision: preprocessed batch in, P(wildfire) out."""

    def __init__(
        self,
        bundle: Bundle,
        precision: Precision = "fp32",
        threads: int = 1,
        config: dict[str, str] | None = None,
        device: str = "cpu",
    ) -> None:
        """`config`: ONNX Runtime session config entries (default `QUIET_ORT_CONFIG`: worker threads sleep).
        `device`: cpu or cuda; a device this machine's ONNX Runtime cannot use is an error, never a silent CPU."""
        import onnxruntime as ort

        provider = provider_for(device)
        self.bundle = bundle
        self.precision = precision
        self.device = device
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        for key, value in (QUIET_ORT_CONFIG if config is None else config).items():
            opts.add_session_config_entry(key, value)
        providers = [provider] if provider == DEVICES["cpu"] else [provider, DEVICES["cpu"]]
        self.session = ort.InferenceSession(str(bundle.onnx_path(precision)), sess_options=opts, providers=providers)
        if self.session.get_providers()[0] != provider:  # ONNX Runtime falls back to the CPU without a word
            raise PyrocastError(
                f"device {device!r} asked, but ONNX Runtime could not start {provider} (it runs on "
                f"{', '.join(self.session.get_providers())})",
                "check the GPU driver and CUDA libraries (its log says why), or set PYROCAST_SERVING__DEVICE=cpu",
            )
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N,) P(wildfire)."""
        if batch.shape[0] == 0:
            return np.zeros((0,), np.float32)
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return softmax_wildfire(np.asarray(logits))
