"""Tiny model bundles for serving tests: a real (small) CNN exported to ONNX the way training exports.

`make_tiny_bundle(root, version="1", bias=0.0)` writes a complete bundle (FP32 ONNX with a dynamic batch,
preprocess.json, meta.json) in about a second. `bias` shifts the wildfire logit, so a test can build a
challenger that always disagrees with its champion (bias=+20 says "wildfire" to everything, -20 never does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from pyrocast.model.bundle import FP32, write_bundle_files
from pyrocast.model.preprocess import PreprocessSpec

TINY_SIZE = 32


def make_tiny_bundle(
    root: Path, version: str = "1", bias: float = 0.0, name: str = "pyrocast-test", seed: int = 0
) -> Path:
    """Export a tiny CNN (32 px input) into `root` as a serving bundle; returns `root`."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()
    with torch.no_grad():
        net[-1].bias[1] += bias
    root.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, TINY_SIZE, TINY_SIZE)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # The dynamo exporter warns about torchvision ops and prints progress: keep test output clean.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(root / FP32),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    write_bundle_files(
        root,
        PreprocessSpec(size=TINY_SIZE),
        {"name": name, "version": str(version), "network": "tiny-test-cnn", "serve_precision": "fp32"},
    )
    return root
