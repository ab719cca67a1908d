"""Attribution heatmaps: which parts of a tile drove P(wildfire).

* `integrated_gradients` (Captum) needs the torch network: the training report uses it.
* `occlusion_onnx` (Captum Occlusion) needs only the served ONNX graph: it slides a neutral patch over the
  tile and records how much the probability falls. The explainer service uses it, so an explanation is
  always of the exact graph that answered, and no torch weights need to be shipped to it.

Both return an (S, S) float32 heat in [0, 1] at the model's input size (S = spec.size); `overlay_png` lays a
heat over the tile at the tile's own size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pyrocast.data.layout import CLASSES, atomic_write
from pyrocast.errors import InvalidInputError
from pyrocast.imaging import to_rgb
from pyrocast.model.bundle import OnnxClassifier
from pyrocast.model.preprocess import PreprocessSpec, preprocess

if TYPE_CHECKING:
    from torch import nn

    from pyrocast.model.train import TrainedModel

CLASS_NAMES = CLASSES


def normalize_heat(heat: np.ndarray, pct: float = 99.0) -> np.ndarray:
    """Scale a non-negative heat to [0, 1] by its `pct` percentile (one hot pixel must not wash out the rest)."""
    h = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h = np.clip(h, 0.0, None)
    hi = float(np.percentile(h, pct)) if h.size else 0.0
    if hi <= 0.0:
        hi = float(h.max()) if h.size else 0.0
    return np.clip(h / hi, 0.0, 1.0).astype(np.float32) if hi > 0 else np.zeros_like(h)


def _spec_of(obj: Any, spec: PreprocessSpec | None) -> PreprocessSpec:
    if spec is not None:
        return spec
    for candidate in (getattr(obj, "spec", None), getattr(getattr(obj, "bundle", None), "spec", None)):
        if isinstance(candidate, PreprocessSpec):
            return candidate
    raise InvalidInputError("no preprocessing spec given and none attached to the model")


def integrated_gradients(
    trained_or_module: TrainedModel | nn.Module,
    image: Image.Image,
    spec: PreprocessSpec | None = None,
    target: int | None = None,
    n_steps: int = 32,
) -> np.ndarray:
    """Integrated gradients from a black tile to this one, for `target` (default: the predicted class).

    The heat is the attribution magnitude summed over colour channels: pixel-level signs of integrated
    gradients flicker, their magnitude shows where the network looked.
    """
    from captum.attr import IntegratedGradients

    from pyrocast.model.export import module_of

    module = module_of(trained_or_module).eval()
    spec = _spec_of(trained_or_module, spec)
    x = torch.from_numpy(preprocess(image, spec))[None]
    # Black in the network's normalized space (not zero, which is the mean colour).
    black = ((0.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)).view(1, 3, 1, 1).expand_as(x).contiguous()
    with torch.enable_grad():
        if target is None:
            with torch.no_grad():
                target = int(module(x).argmax(dim=1).item())
        attr = IntegratedGradients(module).attribute(
            x.clone().requires_grad_(True),
            baselines=black,
            target=target,
            n_steps=n_steps,
            internal_batch_size=min(n_steps, 8),  # bounds memory: 8 backward passes of the network at a time
        )
    return normalize_heat(attr.detach().abs().sum(dim=1)[0].numpy())


def occlusion_onnx(
    classifier: OnnxClassifier,
    image: Image.Image,
    spec: PreprocessSpec | None = None,
    window: int | None = None,
    stride: int | None = None,
    target: int | None = None,
) -> np.ndarray:
    """Occlusion over the ONNX graph: heat = drop of P(target) when a mean-colour patch hides each region.

    window defaults to about a seventh of the input side, stride to half the window (a 224 px input takes
    about 170 forward passes, batched 16 at a time). target defaults to the predicted class.
    """
    from captum.attr import Occlusion

    spec = _spec_of(classifier, spec)
    s = spec.size
    window = window or max(4, s // 7)
    stride = stride or max(1, window // 2)
    if not 0 < stride <= window <= s:
        raise InvalidInputError(f"occlusion needs 0 < stride ({stride}) <= window ({window}) <= input size ({s})")
    x = torch.from_numpy(preprocess(image, spec))[None]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        p = torch.from_numpy(classifier.predict_proba(batch.detach().numpy()))
        return torch.stack([1.0 - p, p], dim=1)

    if target is None:
        target = int(forward(x)[0, 1].item() >= 0.5)
    # Baseline 0 is the mean colour in normalized space: a neutral patch, not a black hole.
    attr = Occlusion(forward).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.0,
        target=target,
        perturbations_per_eval=16,
    )
    # Positive attribution = the probability fell when this region was hidden = evidence for the target.
    return normalize_heat(attr[0].mean(dim=0).numpy(), pct=100.0)


def overlay_rgb(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The tile with the heat laid over it (inferno colours, opacity growing with the heat)."""
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha {alpha} must be within [0, 1]")
    h = np.asarray(heat, dtype=np.float32)
    if h.ndim != 2:
        raise InvalidInputError(f"heat must be a 2-D array, got shape {h.shape}")
    img = to_rgb(image)
    h = np.asarray(Image.fromarray(np.clip(h, 0, 1)).resize(img.size, Image.Resampling.BILINEAR), dtype=np.float32)
    colour = colormaps["inferno"](h)[..., :3]
    base = np.asarray(img, dtype=np.float32) / 255.0
    w = (alpha * h)[..., None]
    return Image.fromarray(np.clip((base * (1 - w) + colour * w) * 255.0, 0, 255).astype(np.uint8))


def overlay_png(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes of the tile with the heat overlaid."""
    buf = io.BytesIO()
    overlay_rgb(image, heat, alpha).save(buf, format="PNG")
    return buf.getvalue()


def choose_examples(labels: np.ndarray, probs: np.ndarray, k: int = 6) -> list[int]:
    """Indices of a handful of tiles worth explaining: the most confident mistakes, then the most confident
    right answers of each class in turn."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    conf = np.abs(p - 0.5)
    wrong = [int(i) for i in np.argsort(-conf) if (p[i] >= 0.5) != (y[i] == 1)]
    picked = wrong[: k // 2]
    right = {c: [int(i) for i in np.argsort(-conf) if y[i] == c and (p[i] >= 0.5) == (c == 1)] for c in (1, 0)}
    while len(picked) < k and (right[0] or right[1]):
        for c in (1, 0):
            if right[c] and len(picked) < k:
                picked.append(right[c].pop(0))
    return picked


def explain_tiles(
    trained: TrainedModel,
    images: Sequence[Image.Image],
    labels: Sequence[int] | np.ndarray,
    out_dir: Path,
    n_steps: int = 16,
) -> list[Path]:
    """One PNG per tile (tile | integrated-gradients overlay), titled with true label and P(wildfire).

    16 integration steps are plenty for a picture (EfficientNet-Lite0 at 224 px: 11 s a tile at 32 steps on one
    thread of a heavily loaded 2-core machine); pass more for attributions that must add up to the score gap.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pyrocast.model.export import module_of, torch_predict
    from pyrocast.model.preprocess import preprocess_batch

    y = np.asarray(labels).reshape(-1)
    if len(images) != y.size:
        raise InvalidInputError(f"{len(images)} tiles but {y.size} labels")
    module = module_of(trained)
    spec = _spec_of(trained, None)
    probs = torch_predict(module, preprocess_batch(list(images), spec)) if images else np.zeros(0)
    out_dir = Path(out_dir)
    paths = []
    for i, (img, label, p) in enumerate(zip(images, y, probs, strict=True)):
        heat = integrated_gradients(module, img, spec, target=int(p >= 0.5), n_steps=n_steps)
        fig = Figure(figsize=(7.0, 3.8))
        FigureCanvasAgg(fig)
        a, b = fig.subplots(1, 2)
        a.imshow(to_rgb(img))
        a.set_title("tile")
        b.imshow(overlay_rgb(img, heat))
        b.set_title(f"integrated gradients: evidence for {CLASS_NAMES[int(p >= 0.5)]}")
        for ax in (a, b):
            ax.axis("off")
        verdict = "right" if (p >= 0.5) == (int(label) == 1) else "WRONG"
        fig.suptitle(f"true: {CLASS_NAMES[int(label)]}   P(wildfire) = {p:.3f}   ({verdict})")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        path = out_dir / f"explain_{i:02d}_{CLASS_NAMES[int(label)]}.png"
        atomic_write(path, buf.getvalue())
        paths.append(path)
    return paths
