"""Train one configuration: seeded, early-stopped on the valid split, reporting to an Optuna trial.

Two regimes, one function:
- a network with a frozen trunk (EfficientNet-Lite0 `head` / `last_blocks`): the trunk's outputs are computed
  once per tile and dihedral view (through ONNX Runtime, several times faster than torch eager on CPU) and
  cached on disk, then only the tail is trained on them. Colour jitter and crops enter as extra jittered copies
  of each tile (`Profile.jitter_copies`, strength `aug_strength`).
- a network trained end to end (small CNN, `all`): each batch is augmented on the fly (`augment_batch`).

Training reads only `train` and `valid`, through `pyrocast.data.access.training_view`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyrocast.data.access import training_view
from pyrocast.errors import PyrocastError
from pyrocast.model.augment import N_VIEWS, augment_batch, dihedral, jitter_and_crop
from pyrocast.model.data import load_split
from pyrocast.model.networks import NetworkConfig, SplitNet, build_network
from pyrocast.model.preprocess import PreprocessSpec, normalize
from pyrocast.model.profiles import Profile
from pyrocast.progress import progress
from pyrocast.settings import Settings

log = logging.getLogger(__name__)
THREADS = 2


def torch_threads_for(cfg: NetworkConfig) -> int:
    """Intra-op threads for training `cfg`: 2 only where the layers are big enough to gain from them.

    The small CNN's layers (and a linear head) are too small: measured on the shared 2-core machine, one epoch
    took 2.7 s wall with 1 thread and 11 s with 2 (OpenMP threads spin while the other core is busy).
    """
    big = cfg.kind == "effnet_lite0" and cfg.finetune != "head"
    return THREADS if big else 1


LABEL_SMOOTHING = 0.0
EVAL_BATCH = 64
MIN_EPOCH_SHARE = 0.5  # early stopping may end a run only after this share of its epochs
TRUNK_FORMAT = 1  # bump when the cached trunk outputs change meaning


class DivergedError(PyrocastError):
    """The training loss became NaN or infinite (learning rate too high for this network)."""


@dataclass
class TrainedModel:
    """A trained network and everything needed to serve and describe it."""

    module: nn.Module
    net: NetworkConfig
    spec: PreprocessSpec
    params: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    valid_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def normalize_params(params: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """Fill defaults and check a parameter dict (from the tuner, a file or a user)."""
    p = dict(params)
    net = p.get("net") or profile.networks[0]
    if isinstance(net, NetworkConfig):
        net = net.to_dict()
    p["net"] = NetworkConfig.from_dict(dict(net)).to_dict()
    p.setdefault("lr", 1e-3)
    p.setdefault("weight_decay", 1e-4)
    p.setdefault("aug_strength", 0.5)
    p.setdefault("size", profile.sizes[0])
    p.setdefault("batch_size", profile.batch_size)
    p.setdefault("epochs", profile.max_epochs)
    p.setdefault("patience", profile.patience)
    for k in ("lr", "weight_decay", "aug_strength"):
        p[k] = float(p[k])
    for k in ("size", "batch_size", "epochs", "patience"):
        p[k] = int(p[k])
    if not (p["lr"] > 0 and p["weight_decay"] >= 0 and 0 <= p["aug_strength"] <= 1):
        raise PyrocastError(
            f"bad training parameters: lr={p['lr']}, weight_decay={p['weight_decay']}, aug_strength={p['aug_strength']}"
        )
    if p["size"] < 32 or p["size"] % 8:
        raise PyrocastError(f"input size {p['size']} must be a multiple of 8, at least 32")
    return p


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# --- frozen trunks: outputs computed once, through ONNX Runtime -------------------------------------------


class TrunkRunner:
    """Runs a frozen trunk on uint8 NHWC batches; ONNX Runtime when the export works, torch otherwise."""

    def __init__(self, net: SplitNet, spec: PreprocessSpec, cache_dir: Path) -> None:
        self.net, self.spec = net, spec
        self.session: Any = None
        key = _digest(net.cfg.kind, net.cfg.finetune, net.cfg.blocks, spec.size, _trunk_weights_digest(net))
        path = cache_dir / f"trunk-{key}.onnx"
        try:
            if not path.is_file():
                self._export(path)
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            # Idle ORT threads sleep instead of spinning: on a shared machine spinning steals the other core.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        except Exception as exc:  # the torch path gives the same numbers, only slower
            log.warning("ONNX Runtime trunk unavailable (%s): using torch", exc)
            self.session = None

    def _export(self, path: Path) -> None:
        from pyrocast.model.export import _quiet_exporter

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        example = torch.zeros(2, 3, self.spec.size, self.spec.size)
        with _quiet_exporter():
            torch.onnx.export(
                self.net.trunk.eval(),
                (example,),
                str(tmp),
                dynamo=True,
                external_data=False,
                input_names=["input"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                verbose=False,
            )
        tmp.replace(path)

    def __call__(self, x_uint8: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x_uint8), 32):
            xb = normalize(x_uint8[i : i + 32], self.spec)
            if self.session is not None:
                out.append(self.session.run(None, {self.input_name: xb})[0])
            else:
                with torch.inference_mode():
                    out.append(self.net.trunk.eval()(torch.from_numpy(xb)).numpy())
        return np.concatenate(out).astype(np.float32)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _trunk_weights_digest(net: SplitNet) -> str:
    h = hashlib.sha256()
    for name, t in sorted(net.trunk.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def cached_trunk_outputs(
    runner: TrunkRunner,
    x: np.ndarray,
    records: list,
    views: list[tuple[int, float, int]],
    cache_dir: Path,
    what: str,
) -> np.ndarray:
    """Trunk outputs (V, N, ...) for views given as (dihedral k, jitter strength, jitter seed), cached on disk."""
    ident = [r.sha256 for r in records]
    out = []
    with progress() as bar:
        task = bar.add_task(f"trunk outputs, {what}", total=len(views))
        for k, strength, jseed in views:
            key = _digest(
                TRUNK_FORMAT,
                runner.net.cfg.kind,
                runner.net.cfg.finetune,
                runner.net.cfg.blocks,
                runner.spec.size,
                k,
                round(strength, 3),
                jseed,
                ident,
            )
            path = cache_dir / f"{key}.npy"
            arr = None
            if path.is_file():
                try:
                    arr = np.load(path)
                except (OSError, ValueError):
                    arr = None
            if arr is None or len(arr) != len(x):
                xv = dihedral(x, k)
                if strength > 0:
                    xv = jitter_and_crop(xv, strength, np.random.default_rng(jseed))
                arr = runner(xv).astype(np.float16)  # half the disk and memory; ample precision
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + ".tmp.npy")
                np.save(tmp, arr)
                tmp.replace(path)
            out.append(arr)
            bar.advance(task)
    return np.stack(out)


# --- the training loop ------------------------------------------------------------------------------


def _metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    p = torch.softmax(logits.float(), 1)[:, 1].clamp(1e-6, 1 - 1e-6)
    pred = (p > 0.5).long()
    yf = y.float()
    return {
        "loss": float(F.binary_cross_entropy(p, yf)),
        "accuracy": float((pred == y).float().mean()),
        "tp": float(((pred == 1) & (y == 1)).sum()),
        "fp": float(((pred == 1) & (y == 0)).sum()),
        "fn": float(((pred == 0) & (y == 1)).sum()),
        "n": float(len(y)),
    }


def _optimizer(module: nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    # No weight decay on biases and batch-norm parameters (1-d tensors): decaying them only hurts.
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def train_model(
    dataset_root: Path,
    params: dict[str, Any],
    settings: Settings,
    profile: Profile,
    seed: int = 42,
    trial: Any = None,
) -> TrainedModel:
    """Train `params` (lr, weight_decay, aug_strength, size, net, batch_size, ...) on train, early-stopped on valid.

    With an Optuna `trial`, the valid loss is reported after every epoch and the trial is pruned when the
    pruner says so (raises optuna.TrialPruned). Same seed, same data, same parameters: same weights (CPU).
    """
    t0 = time.perf_counter()
    p = normalize_params(params, profile)
    cfg = NetworkConfig.from_dict(p["net"])
    spec = PreprocessSpec(size=p["size"])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(min(torch_threads_for(cfg), threads_before) or 1)
    try:
        seed_everything(seed)
        view = training_view(dataset_root)
        tr = load_split(view, "train", spec.size)
        va = load_split(view, "valid", spec.size)
        if len(tr.y) == 0 or len(set(tr.y.tolist())) < 2:
            raise PyrocastError(
                f"the train split of {dataset_root} needs tiles of both classes (has {len(tr.y)} usable tiles)",
                "add tiles, or re-split the dataset",
            )
        if len(va.y) == 0:
            raise PyrocastError(f"the valid split of {dataset_root} has no usable tiles", "re-split the dataset")
        net = build_network(cfg, pretrained=True)
        seed_everything(seed)  # building a network consumed random numbers: restart from the seed
        refit_fn: RefitFn | None = None
        if net.has_frozen_trunk:
            step_fn, eval_fn, refit_fn = _frozen_trunk_fns(net, spec, tr, va, p, profile, settings, seed)
        else:
            step_fn, eval_fn = _end_to_end_fns(net, spec, tr, va, p, seed)
        history, best_state, best_epoch, best = _fit(net, step_fn, eval_fn, p, trial, cfg.describe())
        net.load_state_dict(best_state)
        if refit_fn is not None and profile.refit and trial is None:
            # The valid split chose the parameters and the epoch count; the final model then learns from it
            # too (measured on the real tiles: +1-4 points on the held-out test split). The reported valid
            # metrics stay those of the early-stopped model, the honest ones.
            refit_fn(best_epoch)
            p["refit_epochs"] = best_epoch
        net.eval()
    finally:
        torch.set_num_threads(threads_before)
    skipped = len(tr.skipped) + len(va.skipped)
    valid_metrics = {**best, "skipped_tiles": float(skipped)}
    return TrainedModel(net, cfg, spec, p, history, best_epoch, valid_metrics, time.perf_counter() - t0)


StepFn = Callable[[int], float]  # epoch -> mean train loss
EvalFn = Callable[[], dict[str, float]]
RefitFn = Callable[[int], None]  # epochs -> the tail retrained on train + valid


def _fit(
    net: SplitNet, step_fn: StepFn, eval_fn: EvalFn, p: dict[str, Any], trial: Any, name: str
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], int, dict[str, float]]:
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state = copy.deepcopy(net.state_dict())
    best_epoch, bad = 0, 0
    min_epochs = math.ceil(p["epochs"] * MIN_EPOCH_SHARE)
    with progress() as bar:
        task = bar.add_task(f"training {name}", total=p["epochs"])
        for epoch in range(1, p["epochs"] + 1):
            t = time.perf_counter()
            train_loss = step_fn(epoch)
            m = eval_fn()
            row = {
                "epoch": float(epoch),
                "train_loss": train_loss,
                **{f"valid_{k}": v for k, v in m.items()},
                "seconds": time.perf_counter() - t,
            }
            history.append(row)
            bar.update(task, advance=1, description=f"training {name} · valid acc {m['accuracy']:.3f}")
            if not math.isfinite(train_loss):
                raise DivergedError(
                    f"training diverged at epoch {epoch} (loss {train_loss})", "lower the learning rate"
                )
            # Early stopping on valid loss; accuracy breaks ties (it is coarse on a few dozen tiles).
            if not best or (m["loss"], -m["accuracy"]) < (best["loss"], -best["accuracy"]):
                best, best_epoch, bad = dict(m), epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
            if trial is not None:
                import optuna

                trial.report(m["loss"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (valid loss {m['loss']:.4f})")
            # No stopping in the first half: the one-cycle learning rate is high there and the valid loss
            # jumps around (measured: a quick run stopped at epoch 9 of 18 on a 0.78 model).
            if bad >= p["patience"] and epoch >= min_epochs:
                break
    return history, best_state, best_epoch, best


def _schedule(opt: torch.optim.Optimizer, total_steps: int, lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(total_steps, 2), pct_start=0.15, anneal_strategy="cos"
    )


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


JITTER_STRENGTH = 0.5  # colour jitter / crop strength of the cached jittered copies (frozen trunks)


class _TailTrainer:
    """Trains a tail on cached trunk outputs: clean views (V, N, ...) and jittered copies (J, N, ...).

    One epoch shows every tile once: with probability `aug_strength` one of its jittered copies, otherwise one
    of its clean dihedral views.
    """

    def __init__(
        self,
        tail: nn.Module,
        clean: torch.Tensor,
        jitter: torch.Tensor | None,
        y: torch.Tensor,
        p: dict[str, Any],
        epochs: int,
        gen: torch.Generator,
    ) -> None:
        self.tail, self.clean, self.jitter, self.y, self.p, self.gen = tail, clean, jitter, y, p, gen
        self.n = clean.shape[1]
        self.opt = _optimizer(tail, p["lr"], p["weight_decay"])
        self.sched = _schedule(self.opt, math.ceil(self.n / p["batch_size"]) * epochs, p["lr"])

    def step(self, epoch: int) -> float:
        self.tail.train()
        n = self.n
        vidx = torch.randint(0, self.clean.shape[0], (n,), generator=self.gen)
        use_jit = torch.rand(n, generator=self.gen) < self.p["aug_strength"]
        if self.jitter is not None:
            jidx = torch.randint(0, self.jitter.shape[0], (n,), generator=self.gen)
        total = 0.0
        for idx in _batches(n, self.p["batch_size"], self.gen):
            z = self.clean[vidx[idx], idx].float()
            if self.jitter is not None:
                j = use_jit[idx]
                if j.any():
                    z[j] = self.jitter[jidx[idx][j], idx[j]].float()
            loss = F.cross_entropy(self.tail(z), self.y[idx], label_smoothing=LABEL_SMOOTHING)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += loss.item() * len(idx)
        return total / n


def _frozen_trunk_fns(
    net: SplitNet,
    spec: PreprocessSpec,
    tr: Any,
    va: Any,
    p: dict[str, Any],
    profile: Profile,
    settings: Settings,
    seed: int,
) -> tuple[StepFn, EvalFn, RefitFn]:
    cache = settings.root / "cache" / "trunk"
    runner = TrunkRunner(net, spec, cache)
    n_views = max(1, min(profile.views, N_VIEWS))
    clean_views = [(k, 0.0, 0) for k in range(n_views)]
    ztr = torch.from_numpy(cached_trunk_outputs(runner, tr.x, tr.records, clean_views, cache, "train"))
    jtr = None
    if p["aug_strength"] > 0 and profile.jitter_copies > 0:
        # Jittered copies in random dihedral views, at one fixed strength and fixed seeds so that the cache
        # serves every trial; aug_strength sets how often training draws them.
        rng = np.random.default_rng(1234)
        jit_views = [(int(rng.integers(N_VIEWS)), JITTER_STRENGTH, 1000 + j) for j in range(profile.jitter_copies)]
        jtr = torch.from_numpy(cached_trunk_outputs(runner, tr.x, tr.records, jit_views, cache, "train, jittered"))
    va_views = [(k, 0.0, 0) for k in range(max(net.cfg.tta, n_views if profile.refit else 1))]
    zva = torch.from_numpy(cached_trunk_outputs(runner, va.x, va.records, va_views, cache, "valid"))
    ytr, yva = torch.from_numpy(tr.y), torch.from_numpy(va.y)
    tail = net.tail
    initial = copy.deepcopy(tail.state_dict())
    gen = torch.Generator().manual_seed(seed)
    trainer = _TailTrainer(tail, ztr, jtr, ytr, p, p["epochs"], gen)

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.inference_mode():
            logits = torch.stack(
                [
                    torch.cat([tail(zva[v, i : i + EVAL_BATCH].float()) for i in range(0, zva.shape[1], EVAL_BATCH)])
                    for v in range(net.cfg.tta)
                ]
            ).mean(0)  # the model's own test-time augmentation, on cached views
        return _metrics(logits, yva)

    def refit(epochs: int) -> None:
        # Train the tail afresh on train + valid for the early-stopped number of epochs. Valid tiles have no
        # jittered copies: their clean views stand in for them.
        tail.load_state_dict(initial)
        clean = torch.cat([ztr, zva[:n_views]], dim=1)
        jit = None
        if jtr is not None:
            stand_in = zva[[j % zva.shape[0] for j in range(jtr.shape[0])]]
            jit = torch.cat([jtr, stand_in], dim=1)
        t = _TailTrainer(tail, clean, jit, torch.cat([ytr, yva]), p, epochs, torch.Generator().manual_seed(seed))
        for e in range(1, epochs + 1):
            t.step(e)
        net.eval()

    return trainer.step, evaluate, refit


def _end_to_end_fns(
    net: SplitNet, spec: PreprocessSpec, tr: Any, va: Any, p: dict[str, Any], seed: int
) -> tuple[StepFn, EvalFn]:
    ytr, yva = torch.from_numpy(tr.y), torch.from_numpy(va.y)
    xva = torch.from_numpy(normalize(va.x, spec))
    opt = _optimizer(net, p["lr"], p["weight_decay"])
    N = len(ytr)
    per_epoch = math.ceil(N / p["batch_size"])
    sched = _schedule(opt, per_epoch * p["epochs"], p["lr"])
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def step(epoch: int) -> float:
        net.train()
        total = 0.0
        for idx in _batches(N, p["batch_size"], gen):
            if len(idx) < 2:  # batch norm cannot train on a single tile
                continue
            xb = augment_batch(tr.x[idx.numpy()], p["aug_strength"], rng)
            out = net.tail(torch.from_numpy(normalize(xb, spec)))  # trunk is the identity; no TTA in training
            loss = F.cross_entropy(out, ytr[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        return total / N

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.inference_mode():
            logits = torch.cat([net(xva[i : i + EVAL_BATCH]) for i in range(0, len(xva), EVAL_BATCH)])
        return _metrics(logits, yva)

    return step, evaluate


def predict_arrays(trained: TrainedModel, x_uint8: np.ndarray, settings: Settings) -> np.ndarray:
    """P(wildfire) for uint8 NHWC tiles at the model's input size: the same numbers as `trained.module`, faster.

    A frozen trunk runs through ONNX Runtime (its export is cached in the data directory) and the model's
    test-time-augmentation views are averaged on the logits, exactly as the module's forward does.
    """
    net = trained.module
    if not isinstance(net, SplitNet) or not net.has_frozen_trunk:
        net.eval()
        with torch.inference_mode():
            xb = torch.from_numpy(normalize(x_uint8, trained.spec))
            logits = torch.cat([net(xb[i : i + EVAL_BATCH]) for i in range(0, len(xb), EVAL_BATCH)])
        return torch.softmax(logits.float(), 1)[:, 1].numpy()
    runner = TrunkRunner(net, trained.spec, settings.root / "cache" / "trunk")
    net.eval()
    with torch.inference_mode():
        logits = torch.stack(
            [net.tail(torch.from_numpy(runner(dihedral(x_uint8, k))).float()) for k in range(net.cfg.tta)]
        ).mean(0)
    return torch.softmax(logits, 1)[:, 1].numpy()
