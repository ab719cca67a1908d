"""Training profiles: how much tuning and training a run may spend, and what the tuner may choose from.

`quick` is for the synthetic region, tests and demos (a small CNN at 64-96 px, about a minute on 2 cores);
`full` is for real imagery (pretrained EfficientNet-Lite0's head on cached features, a few minutes on 2 cores);
`thorough` searches every network the system has (small CNN, EfficientNet head, last blocks fine-tuned): hours.
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
    # Colour-jittered/cropped copies per training tile cached for frozen trunks; aug_strength is the share of
    # training samples drawn from them.
    jitter_copies: int = 0
    # Frozen trunks: after early stopping, retrain the tail on train + valid for the chosen number of epochs.
    refit: bool = False
    # Trials pruned by the median of earlier trials after this many epochs.
    prune_warmup_epochs: int = 2
    # The first trials follow these parameters (known-good starting points), then TPE takes over.
    seed_params: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A small CNN trained end to end, one thread: about 0.9 s per epoch on 280 synthetic tiles at 64 px (measured on
# the shared 2-core machine), so 3 trials of 6 epochs and 24 final epochs take about 40 s.
QUICK = Profile(
    name="quick",
    n_trials=3,
    timeout_s=25.0,
    max_epochs=24,
    patience=24,  # no early stopping: the valid loss of 60 tiles is too noisy mid-schedule to stop on
    tune_epochs=6,
    networks=({"kind": "small_cnn", "width": 16, "dropout": 0.1},),
    sizes=(64,),
    lr=(2e-3, 2e-2),
    weight_decay=(1e-5, 1e-3),
    aug_strength=(0.1, 0.6),
    batch_size=32,
    views=1,
    prune_warmup_epochs=2,
    seed_params=({"lr": 6e-3, "weight_decay": 1e-4, "aug_strength": 0.3, "size": 64, "net": 0},),
)

# Pretrained EfficientNet-Lite0, head trained on cached trunk outputs of the 8 dihedral views (+ 2 jittered
# copies) of each tile, 8-view test-time augmentation inside the model, refit on train + valid. Once the trunk
# outputs are cached (the one expensive part: ~3,000 trunk passes), a trial takes seconds, so the search is
# wide and every trial trains to convergence.
FULL = Profile(
    name="full",
    n_trials=16,
    timeout_s=180.0,
    max_epochs=40,
    patience=10,
    tune_epochs=40,
    networks=({"kind": "effnet_lite0", "finetune": "head", "dropout": 0.1, "tta": 8},),
    sizes=(224,),
    lr=(3e-3, 1e-1),
    weight_decay=(1e-6, 1e-3),
    aug_strength=(0.0, 0.5),
    batch_size=64,
    views=8,
    jitter_copies=2,
    refit=True,
    prune_warmup_epochs=10,
    seed_params=({"lr": 1e-2, "weight_decay": 1e-5, "aug_strength": 0.0, "size": 224, "net": 0},),
)

# Everything the issue lists in one search: a small CNN from scratch, the EfficientNet head, its last blocks
# fine-tuned, two input sizes. Far beyond a 20-minute budget on 2 cores (fine-tuning blocks on CPU costs
# minutes per trial); for machines with time or cores to spare.
THOROUGH = Profile(
    name="thorough",
    n_trials=30,
    timeout_s=3600.0,
    max_epochs=40,
    patience=10,
    tune_epochs=20,
    networks=(
        {"kind": "effnet_lite0", "finetune": "head", "dropout": 0.1, "tta": 8},
        {"kind": "effnet_lite0", "finetune": "last_blocks", "blocks": 2, "dropout": 0.2, "tta": 8},
        {"kind": "small_cnn", "width": 32, "dropout": 0.2},
    ),
    sizes=(224, 320),
    lr=(1e-4, 1e-1),
    weight_decay=(1e-6, 1e-2),
    aug_strength=(0.0, 1.0),
    batch_size=64,
    views=8,
    jitter_copies=2,
    refit=True,
    prune_warmup_epochs=5,
    seed_params=FULL.seed_params,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, FULL, THOROUGH)}


def get_profile(name: str) -> Profile:
    """The profile called `name`, or a PyrocastError listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise PyrocastError(f"unknown profile {name!r}", f"use one of {', '.join(PROFILES)}") from None
