"""Tuning with the study on a real PostgreSQL server: stored, continued, shared by concurrent workers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from pyrocast.errors import PyrocastError
from pyrocast.model.profiles import QUICK
from pyrocast.model.tune import tune
from pyrocast.settings import Settings
from tests.conftest import REPO
from tests.support.learnable import prepared_learnable

# Two cheap trials of a tiny CNN: the storage is under test here, not the search (tests/model/test_tune.py).
NANO = replace(
    QUICK,
    n_trials=2,
    timeout_s=120.0,
    max_epochs=1,
    tune_epochs=1,
    patience=1,
    sizes=(32,),
    batch_size=8,
    networks=({"kind": "small_cnn", "width": 8},),
    seed_params=({"lr": 5e-3, "weight_decay": 1e-4, "aug_strength": 0.2, "size": 32, "net": 0},),
    prune_warmup_epochs=1,
)


@pytest.fixture
def tiny_root(settings: Settings, tmp_path: Path) -> Path:
    return prepared_learnable(settings, tmp_path / "tiles", {"train": 12, "valid": 6, "test": 4})


def test_the_study_lives_in_postgresql_and_a_second_run_continues_it(
    tiny_root: Path, settings: Settings, postgres_url: str
) -> None:
    # A plain postgresql:// URL, as people write it: the settings give it the installed driver (psycopg 3).
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    pg = settings.model_copy(update={"optuna_storage": plain})
    res = tune(tiny_root, pg, NANO, seed=0)
    assert res.n_trials == 2 and all(t["state"] == "COMPLETE" for t in res.trials)
    assert not (settings.root / "optuna.db").exists()  # nothing went to the SQLite default
    study = optuna.load_study(study_name=res.study_name, storage=postgres_url)
    assert [t.number for t in study.trials] == [0, 1]
    assert study.trials[0].params["lr"] == 5e-3  # the seed trial, enqueued through the database
    assert study.trials[0].user_attrs["params"]["lr"] == 5e-3
    assert study.best_value == pytest.approx(res.best_value)
    again = tune(tiny_root, pg, replace(NANO, n_trials=1), seed=0)
    assert again.study_name == res.study_name and again.n_trials == 1 and len(again.trials) == 3


WORKER = """
import sys
from pathlib import Path
from pyrocast.model.tune import tune
from pyrocast.settings import Settings
from tests.model.test_tune_postgres import NANO
res = tune(Path(sys.argv[1]), Settings(), NANO, seed=0)
print(res.study_name, res.n_trials)
"""


def test_two_worker_processes_share_one_study(tiny_root: Path, settings: Settings, postgres_url: str) -> None:
    # What several machines do: same data, same profile, one PostgreSQL URL -> one study, trials split between them.
    env = {**os.environ, "PYROCAST_DATA_DIR": str(settings.root), "PYROCAST_OPTUNA_STORAGE": postgres_url}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tiny_root)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=120) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err.decode()[-2000:]
    reports = [out.decode().split() for out, _ in outs]
    assert reports[0][0] == reports[1][0]  # both joined the same study
    assert [int(n) for _, n in reports] == [2, 2]  # each counts its own trials, not the other worker's
    study = optuna.load_study(study_name=reports[0][0], storage=postgres_url)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # none lost, none numbered twice
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in study.trials)


def test_an_unreachable_postgresql_is_a_clear_error(tiny_root: Path, settings: Settings) -> None:
    from pyrocast.ports import free_port

    url = f"postgresql+psycopg://pyrocast:secret-pw@127.0.0.1:{free_port()}/optuna"  # nobody listens there
    s = settings.model_copy(update={"optuna_storage": url})
    with pytest.raises(PyrocastError, match="Optuna storage") as err:
        tune(tiny_root, s, NANO, seed=0)
    assert "secret-pw" not in str(err.value)  # the password never reaches the message
