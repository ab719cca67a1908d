"""Tuning: a real Optuna study in the data directory, pruning, budgets, resumable studies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from pyrocast.errors import PyrocastError
from pyrocast.model.profiles import QUICK
from pyrocast.model.train import train_model
from pyrocast.model.tune import network_choices, study_name_for, suggest_params, tune
from pyrocast.settings import Settings
from tests.support.learnable import prepared_learnable

MICRO = replace(
    QUICK,
    n_trials=3,
    timeout_s=120.0,
    max_epochs=3,
    tune_epochs=2,
    patience=2,
    sizes=(32, 40),
    batch_size=8,
    networks=({"kind": "small_cnn", "width": 8}, {"kind": "small_cnn", "width": 12}),
    seed_params=({"lr": 5e-3, "weight_decay": 1e-4, "aug_strength": 0.2, "size": 32, "net": 0},),
    prune_warmup_epochs=1,
)


@pytest.fixture
def tiny_root(settings: Settings, tmp_path: Path) -> Path:
    return prepared_learnable(settings, tmp_path / "tiles", {"train": 16, "valid": 8, "test": 6})


def test_tune_searches_the_profile_space_and_stores_the_study(tiny_root: Path, settings: Settings) -> None:
    res = tune(tiny_root, settings, MICRO, seed=0)
    assert res.n_trials == 3 and len(res.trials) == 3
    assert res.trials[0]["params"]["lr"] == 5e-3  # the profile's known-good starting point runs first
    p = res.best_params
    assert p["epochs"] == MICRO.max_epochs  # the final training gets the full budget
    assert p["size"] in MICRO.sizes and p["net"] in network_choices(MICRO).values()
    assert MICRO.lr[0] <= p["lr"] <= MICRO.lr[1]
    assert res.best_value == min(t["value"] for t in res.trials if t["state"] == "COMPLETE")
    # the study lives in the data directory's SQLite database and a second run continues it
    assert (settings.root / "optuna.db").is_file()
    study = optuna.load_study(study_name=res.study_name, storage=settings.optuna_url)
    assert len(study.trials) == 3
    again = tune(tiny_root, settings, replace(MICRO, n_trials=1), seed=0)
    assert again.study_name == res.study_name and again.n_trials == 1 and len(again.trials) == 4
    # the best parameters train as they are
    trained = train_model(tiny_root, res.best_params, settings, MICRO, seed=0)
    assert trained.valid_metrics["n"] == 8


def test_a_bad_trial_is_pruned_through_the_trial(tiny_root: Path, settings: Settings) -> None:
    # A real study whose pruner prunes anything with a valid loss above 0: the first report prunes it.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=0))
    trial = study.ask()
    params = suggest_params(trial, MICRO)
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        train_model(tiny_root, params, settings, MICRO, seed=0, trial=trial)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values.keys() == {1}


def test_study_names_follow_data_profile_and_seed(tiny_root: Path) -> None:
    a = study_name_for(tiny_root, MICRO, 0)
    assert a == study_name_for(tiny_root, MICRO, 0)
    assert a != study_name_for(tiny_root, MICRO, 1)
    assert a != study_name_for(tiny_root, replace(MICRO, lr=(1e-4, 1e-3)), 0)


def test_an_unreachable_storage_is_a_clear_error(tiny_root: Path, settings: Settings) -> None:
    # The driver is installed and nothing listens on port 1: the failure is the connection, not a missing module.
    s = settings.model_copy(update={"optuna_storage": "postgresql://u:secret-pw@127.0.0.1:1/nothing"})
    with pytest.raises(PyrocastError, match="Optuna storage") as err:
        tune(tiny_root, s, MICRO, seed=0)
    assert "secret-pw" not in str(err.value)
