"""Hyperparameter search with Optuna: cheap, pruned trials; the best configuration is trained once afterwards.

The study lives in `Settings.optuna_url` (SQLite in the data directory by default). Its name is derived from
the profile, the dataset's train/valid content and the seed, so running again on the same data continues the
same study, and workers on several machines pointed at one PostgreSQL URL share it (`load_if_exists`).

Searched: learning rate and weight decay (log-uniform), augmentation strength, input size, and the network
(the profile's list: a small CNN from scratch, pretrained EfficientNet-Lite0 with its head or its last blocks
trained). Trials train for `Profile.tune_epochs` epochs and report the valid loss after each; the median
pruner stops trials that are worse than the median of earlier trials at the same epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrocast.data.access import training_view
from pyrocast.database import create_schema
from pyrocast.errors import PyrocastError
from pyrocast.model.networks import NetworkConfig
from pyrocast.model.profiles import Profile
from pyrocast.model.train import DivergedError, normalize_params, train_model
from pyrocast.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """What the search found. `best_params` goes straight into `train_model`."""

    best_params: dict[str, Any]
    best_value: float
    n_trials: int
    n_pruned: int
    study_name: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def network_choices(profile: Profile) -> dict[str, dict[str, Any]]:
    """The profile's networks by short name (Optuna categorical choices must be plain values)."""
    out: dict[str, dict[str, Any]] = {}
    for d in profile.networks:
        cfg = NetworkConfig.from_dict(dict(d))
        out[cfg.describe()] = cfg.to_dict()
    return out


def suggest_params(trial: Any, profile: Profile) -> dict[str, Any]:
    """One point of the profile's search space."""
    nets = network_choices(profile)
    name = trial.suggest_categorical("net", list(nets))
    params: dict[str, Any] = {
        "net": nets[name],
        "lr": trial.suggest_float("lr", *profile.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *profile.weight_decay, log=True),
        "aug_strength": trial.suggest_float("aug_strength", *profile.aug_strength),
        "size": trial.suggest_categorical("size", list(profile.sizes)),
        "batch_size": profile.batch_size,
    }
    return params


def _storage(settings: Settings) -> Any:
    import optuna

    url = settings.optuna_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        # Optuna creates its tables when the storage opens: workers starting together race on a fresh database.
        return create_schema(lambda: optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}))
    except Exception as exc:  # a wrong URL or an unreachable database server
        raise PyrocastError(
            f"cannot open the Optuna storage ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
            "check PYROCAST_OPTUNA_STORAGE (a SQLAlchemy URL) and that its database server is reachable",
        ) from None


def study_name_for(dataset_root: Path, profile: Profile, seed: int) -> str:
    """A stable name: same search space, same train/valid tiles, same seed -> same study."""
    view = training_view(dataset_root)
    h = hashlib.sha256()
    for rec in view.records():
        h.update(f"{rec.split}:{rec.sha256}\n".encode())
    # The search space and what a trial does, not the budget: a run with more trials continues the study.
    keys = (
        "networks",
        "sizes",
        "lr",
        "weight_decay",
        "aug_strength",
        "batch_size",
        "tune_epochs",
        "views",
        "jitter_copies",
    )
    space = json.dumps({k: getattr(profile, k) for k in keys}, sort_keys=True, default=str)
    h.update(space.encode())
    return f"pyrocast-{profile.name}-s{seed}-{h.hexdigest()[:12]}"


def _seed_trials(profile: Profile) -> list[dict[str, Any]]:
    """The profile's known-good starting points, as Optuna parameter dicts."""
    names = list(network_choices(profile))
    out = []
    for sp in profile.seed_params:
        d = dict(sp)
        net = d.get("net", 0)
        d["net"] = names[net] if isinstance(net, int) else net
        if d["net"] in names and d.get("size", profile.sizes[0]) in profile.sizes:
            out.append(d)
    return out


def tune(dataset_root: Path, settings: Settings, profile: Profile, seed: int = 42) -> TuneResult:
    """Search the profile's space within its trial budget and time limit; see the module docstring."""
    import optuna

    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(settings)
    name = study_name_for(dataset_root, profile, seed)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, len(profile.seed_params))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=profile.prune_warmup_epochs),
    )
    # The trials this process runs: other workers on the same study (one PostgreSQL URL) add theirs meanwhile.
    mine: set[int] = set()
    if not study.trials:
        for params in _seed_trials(profile):
            study.enqueue_trial(params, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        mine.add(trial.number)
        params = suggest_params(trial, profile)
        params["epochs"] = profile.tune_epochs
        params["patience"] = profile.patience
        trial.set_user_attr("params", normalize_params(params, profile))
        try:
            trained = train_model(dataset_root, params, settings, profile, seed=seed, trial=trial)
        except DivergedError as exc:
            raise optuna.TrialPruned(str(exc)) from None
        m = trained.valid_metrics
        trial.set_user_attr("valid_accuracy", m.get("accuracy"))
        trial.set_user_attr("best_epoch", trained.best_epoch)
        trial.set_user_attr("seconds", round(trained.seconds, 2))
        return float(m["loss"])

    study.optimize(objective, n_trials=profile.n_trials, timeout=profile.timeout_s, gc_after_trial=False)
    ours = [t for t in study.trials if t.number in mine]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise PyrocastError(
            f"no tuning trial finished ({len(ours)} tried, all pruned or failed)",
            "look at the log above; a smaller learning-rate range or a longer time limit may help",
        )
    best = study.best_trial
    best_params = dict(best.user_attrs.get("params") or {})
    if not best_params:  # a trial written by an older version: rebuild from the distributions
        best_params = {**best.params, "net": network_choices(profile).get(best.params.get("net"), {})}
    # The final training gets the full epoch budget; early stopping picks the epoch.
    best_params["epochs"] = profile.max_epochs
    best_params["patience"] = profile.patience
    best_params = normalize_params(best_params, profile)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "valid_accuracy": t.user_attrs.get("valid_accuracy"),
            "best_epoch": t.user_attrs.get("best_epoch"),
            "seconds": t.user_attrs.get("seconds"),
        }
        for t in study.trials
    ]
    return TuneResult(
        best_params=best_params,
        best_value=float(best.value),
        n_trials=len(ours),
        n_pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in ours),
        study_name=name,
        trials=trials,
        seconds=time.perf_counter() - t0,
    )
