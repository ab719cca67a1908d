"""Networks: shapes, what is frozen, config round trip, and ONNX export with a dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyrocast.errors import PyrocastError
from pyrocast.model.networks import NetworkConfig, build_network, count_parameters, dihedral_view


@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig("small_cnn", width=8),
        NetworkConfig("effnet_lite0", "head"),
        NetworkConfig("effnet_lite0", "last_blocks"),
        NetworkConfig("effnet_lite0", "all"),
    ],
    ids=lambda c: c.describe(),
)
def test_forward_gives_two_logits_and_freezes_the_trunk(cfg: NetworkConfig) -> None:
    torch.manual_seed(0)
    net = build_network(cfg, pretrained=cfg.kind == "effnet_lite0")
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2)
    trainable = count_parameters(net, trainable_only=True)
    total = count_parameters(net)
    if cfg.kind == "small_cnn" or cfg.finetune == "all":
        assert trainable == total
    elif cfg.finetune == "head":
        assert trainable == 1280 * 2 + 2
    else:
        assert 2562 < trainable < total
    # train() must keep a frozen trunk's batch-norm statistics fixed
    net.train()
    assert net.tail.training
    if net.has_frozen_trunk:
        assert not net.trunk.training


def test_pretrained_weights_come_from_the_wheel() -> None:
    a = build_network(NetworkConfig("effnet_lite0"), pretrained=True)
    b = build_network(NetworkConfig("effnet_lite0"), pretrained=True)
    c = build_network(NetworkConfig("effnet_lite0"), pretrained=False)
    wa, wb, wc = (next(m.trunk.parameters()).detach() for m in (a, b, c))
    assert torch.equal(wa, wb)  # the same stored weights, not a random init
    assert not torch.equal(wa, wc)


def test_test_time_augmentation_averages_the_dihedral_views() -> None:
    torch.manual_seed(0)
    one = build_network(NetworkConfig("small_cnn", width=8)).eval()
    tta = build_network(NetworkConfig("small_cnn", width=8, tta=8)).eval()
    tta.load_state_dict(one.state_dict())  # same weights: TTA adds no parameters
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = torch.stack([one(dihedral_view(x, k)) for k in range(8)]).mean(0)
        got = tta(x)
        # invariant to any of the 8 views of the input
        assert torch.allclose(tta(dihedral_view(x, 5)), got, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5)


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    cfg = NetworkConfig("effnet_lite0", "last_blocks", dropout=0.3, blocks=3)
    assert NetworkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert NetworkConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    with pytest.raises(PyrocastError, match="kind"):
        NetworkConfig("resnet")  # type: ignore[arg-type]
    with pytest.raises(PyrocastError, match="finetune"):
        NetworkConfig("effnet_lite0", "some")  # type: ignore[arg-type]
    with pytest.raises(PyrocastError, match="dropout"):
        NetworkConfig("small_cnn", dropout=1.5)


@pytest.mark.parametrize(("kind", "tta"), [("small_cnn", 1), ("effnet_lite0", 1), ("small_cnn", 8)])
def test_exports_to_onnx_with_a_dynamic_batch(kind: str, tta: int, tmp_path) -> None:
    import onnxruntime as ort

    cfg = NetworkConfig(kind, "last_blocks", width=8, tta=tta)  # type: ignore[arg-type]
    net = build_network(cfg, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        net,
        (x,),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        verbose=False,
    )
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        xb = torch.randn(n, 3, 64, 64)
        (got,) = sess.run(None, {"input": xb.numpy()})
        with torch.no_grad():
            want = net(xb).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
