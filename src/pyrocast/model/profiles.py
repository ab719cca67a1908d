"""Training profiles: how much tuning and training a run may spend, and what the tuner may choose from.

`quick` is for the synthetic region, tests and demos (a small CNN at 64-96 px, about a minute on 2 cores);
`full` is for real imagery (pretrained EfficientNet-Lite0, head or last blocks, a few minutes on 2 cores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pyrocast.errors import PyrocastError


@dataclass(frozen=True)
class Profile:
    """A run's budget and search space.

    Budget: `n_trials` and `timeout_s` bound the Optuna study; `max_epochs` and `patience` bound each
    training (early stopping on the valid split); `tune_epochs` bounds each trial (cheap trials, then one
    final training of the best configuration with `max_epochs`).
    Search space: `networks` are NetworkConfig dicts the tuner picks from; `sizes` are input sizes (px);
    `lr`, `weight_decay` are log-uniform ranges; `aug_strength` a uniform range in [0, 1].
    """

    name: str
    n_trials: int
    timeout_s: float
    max_epochs: int
    patience: int
    tune_epochs: int
    networks: tuple[dict[str, Any], ...]
    sizes: tuple[int, ...]
    lr: tuple[float, float]
    weight_decay: tuple[float, float]
    aug_strength: tuple[float, float] = (0.0, 1.0)
    batch_size: int = 32
    # Dihedral views (flips x 90-degree rotations) of each training tile whose trunk outputs are cached for
    # a frozen-trunk network; 8 is all of them.
    views: int = 8
    # Extra colour-jittered/cropped copies per tile cached for frozen trunks (scaled by aug_strength).
    jitter_copies: int = 0
    # Trials pruned by the median of earlier trials after this many epochs.
    prune_warmup_epochs: int = 2
    # The first trials follow these parameters (known-good starting points), then TPE takes over.
    seed_params: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Profile(
    name="quick",
    n_trials=4,
    timeout_s=45.0,
    max_epochs=14,
    patience=4,
    tune_epochs=5,
    networks=({"kind": "small_cnn", "width": 16, "dropout": 0.2},),
    sizes=(64, 96),
    lr=(1e-3, 1e-2),
    weight_decay=(1e-5, 1e-3),
    aug_strength=(0.2, 0.8),
    batch_size=32,
    views=1,
    prune_warmup_epochs=2,
    seed_params=({"lr": 3e-3, "weight_decay": 1e-4, "aug_strength": 0.5, "size": 64, "net": 0},),
)

FULL = Profile(
    name="full",
    n_trials=10,
    timeout_s=300.0,
    max_epochs=40,
    patience=8,
    tune_epochs=15,
    networks=(
        {"kind": "effnet_lite0", "finetune": "head", "dropout": 0.2},
        {"kind": "effnet_lite0", "finetune": "last_blocks", "blocks": 2, "dropout": 0.2},
        {"kind": "small_cnn", "width": 32, "dropout": 0.2},
    ),
    sizes=(224,),
    lr=(1e-4, 1e-2),
    weight_decay=(1e-6, 1e-2),
    aug_strength=(0.0, 1.0),
    batch_size=64,
    views=8,
    jitter_copies=0,
    prune_warmup_epochs=4,
    seed_params=(
        {"lr": 3e-3, "weight_decay": 1e-4, "aug_strength": 0.5, "size": 224, "net": 0},
        {"lr": 1e-3, "weight_decay": 1e-4, "aug_strength": 0.5, "size": 224, "net": 1},
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, FULL)}


def get_profile(name: str) -> Profile:
    """The profile called `name`, or a PyrocastError listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise PyrocastError(f"unknown profile {name!r}", f"use one of {', '.join(PROFILES)}") from None
