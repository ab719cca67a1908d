"""Tiny model bundles for serving tests: a real (small) CNN exported to ONNX the way training exports.

`make_tiny_bundle(root, version="1", bias=0.0)` writes a complete bundle (FP32 ONNX with a dynamic batch,
preprocess.json, meta.json); torch's import and the dynamo export take a few seconds. `bias` shifts the
wildfire logit, so a test can build a challenger that always disagrees with its champion (bias=+20 says
"wildfire" to everything, -20 never does). `rebias_bundle(src, root, version, bias)` derives another version
from an exported one by editing the final bias in the ONNX graph: milliseconds instead of a second export.
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


def rebias_bundle(src: Path, root: Path, version: str, bias: float) -> Path:
    """A copy of bundle `src` as `version` whose wildfire logit is shifted by `bias` (edits the ONNX graph)."""
    import json

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src / FP32))
    # The last 1-D initializer of length 2 is the final Linear's bias: (nowildfire, wildfire).
    init = [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 1 and t.dims[0] == 2
    ][-1]
    values = numpy_helper.to_array(init).copy()
    values[1] += bias
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / FP32))
    meta = json.loads((src / "meta.json").read_text())
    spec = PreprocessSpec.from_dict(json.loads((src / "preprocess.json").read_text()))
    write_bundle_files(root, spec, {**meta, "version": str(version)})
    return root
