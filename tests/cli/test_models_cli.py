"""`pyrocast evaluate | models | schedule` on a real MLflow SQLite store.

Most tests invoke the Typer app in-process (MLflow's import costs seconds per process); the dead-server and
Ctrl-C tests run the installed command. `pyrocast train` end to end is in tests/pipelines/test_training.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyrocast.ports import free_port
from pyrocast.registry import models as registry
from pyrocast.registry.mlflow_store import ensure_experiment, get_client
from pyrocast.settings import Settings
from tests.support.mlflow_db import seed_mlflow_db
from tests.support.onnx_standin import make_standin_bundle, write_tiles

PYROCAST = Path(sys.executable).parent / "pyrocast"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str) -> Result:
    """The `pyrocast` app in-process; a PyrocastError becomes exit 1 with its message, as `main()` does."""
    from typer.testing import CliRunner

    from pyrocast.cli.main import app
    from pyrocast.errors import PyrocastError

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    if isinstance(r.exception, PyrocastError):
        return Result(1, r.stdout, f"error: {r.exception}")
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, "")


def cli(*args: str, settings: Settings, env: dict[str, str] | None = None, timeout: float = 120):
    full_env = {**os.environ, "PYROCAST_DATA_DIR": str(settings.root), "PYROCAST_QUIET": "1", "COLUMNS": "160"}
    full_env.update(env or {})
    return subprocess.run(
        [str(PYROCAST), *args], capture_output=True, text=True, env=full_env, cwd=settings.root.parent, timeout=timeout
    )


@pytest.fixture
def registered(settings: Settings, tmp_path: Path) -> Settings:
    """A store with version 1 (good, champion) and version 2 (always says wildfire, challenger)."""
    seed_mlflow_db(settings)
    client = get_client(settings)
    exp = ensure_experiment(settings, client)
    for kind, alias in (("good", "champion"), ("always_fire", "challenger")):
        run_id = client.create_run(exp).info.run_id
        client.log_metric(run_id, "test_accuracy", 0.9 if kind == "good" else 0.5)
        client.log_metric(run_id, "test_n", 40)
        if kind == "always_fire":  # the decision measured the exported model as served: lower than torch's
            client.log_metric(run_id, "decision_new_accuracy", 0.45)
        rv = registry.register_bundle(settings, run_id, make_standin_bundle(tmp_path / kind, kind))
        registry.set_alias(settings, alias, rv.version)
    return settings


def test_evaluate_json_on_a_kaggle_folder(registered: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "kaggle"
    write_tiles(folder, {"train": 10, "valid": 6, "test": 4})
    (folder / "valid" / "wildfire" / "-73.0,46.0.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    r = run("evaluate", "--data", str(folder), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["n"] == 20 and got["accuracy"] == 1.0 and got["version"] == "1"
    assert set(got["splits"]) == {"test", "train", "valid"}
    assert got["skipped"] == 1 and "-73.0,46.0.jpg" in got["skipped_files"][0]["path"]
    r2 = run("evaluate", "--model", "challenger", "--data", str(folder / "test"), "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["accuracy"] == 0.5
    table = run("evaluate", "--model", "2", "--data", str(folder))
    assert table.returncode == 0 and "accuracy" in table.stdout and "0.5000" in table.stdout


def test_evaluate_bad_input_is_clear(registered: Settings, tmp_path: Path) -> None:
    r = run("evaluate", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "is not a folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("evaluate", "--data", str(tmp_path / "empty"))
    assert r.returncode == 1 and "no tiles found" in r.stderr
    r = run("evaluate", "--model", "12", "--data", str(tmp_path / "empty"))
    assert r.returncode == 1 and "has no version 12" in r.stderr


def test_evaluate_with_a_dead_tracking_server(settings: Settings, tmp_path: Path) -> None:
    write_tiles(tmp_path / "k", {"test": 2})
    port = free_port()
    t0 = time.monotonic()
    r = cli(
        "evaluate",
        "--data",
        str(tmp_path / "k"),
        settings=settings,
        env={"PYROCAST_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{port}"},
    )
    assert r.returncode == 1
    assert f"MLflow tracking server at http://127.0.0.1:{port} does not answer" in r.stderr
    assert time.monotonic() - t0 < 30  # process start included; the check itself takes < 3 s
    assert "Traceback" not in r.stderr


def test_models_table_and_json(registered: Settings) -> None:
    r = run("models")
    assert r.returncode == 0, r.stderr
    assert "champion" in r.stdout and "challenger" in r.stdout and "0.9000" in r.stdout
    rows = json.loads(run("models", "--json").stdout)
    assert [(x["version"], x["aliases"]) for x in rows] == [("2", ["challenger"]), ("1", ["champion"])]


def test_models_moves_the_aliases_the_runbook_says_to_roll_back(registered: Settings) -> None:
    """The Champion-down runbook says to roll the aliases back so that `up` starts on the previous champion; no
    command did that. `--alias` moves them (never two on one version) before listing."""
    r = run("models", "--alias", "champion=v2", "--alias", "challenger=1", "--json")
    assert r.returncode == 0, r.stderr
    assert registry.aliases(registered) == {"champion": "2", "challenger": "1"}
    r = run("models", "--alias", "challenger=")  # removed
    assert r.returncode == 0 and "challenger -> none" in r.stdout, r.stdout + r.stderr
    assert registry.aliases(registered) == {"champion": "2"}
    for bad, said in (
        (["--alias", "challenger=2"], "two aliases"),
        (["--alias", "champion=latest"], "is not ALIAS=VERSION"),
        (["--alias", "winner=1"], "is not ALIAS=VERSION"),
        (["--alias", "champion=9"], "no version 9"),
        (["--alias", "champion=", "--alias", "challenger=9"], "no version 9"),  # the removal is put back
    ):
        r = run("models", *bad)
        assert r.returncode == 1 and said in r.stderr, (bad, r.stderr)
    assert registry.aliases(registered) == {"champion": "2"}  # nothing moved by a refused command


def test_models_reads_at_80_columns_when_piped(registered: Settings) -> None:
    r = cli("models", settings=registered, env={"COLUMNS": "80"})  # captured: not a terminal, as `| cat` is
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    for whole in (
        "v2  challenger",
        "v1  champion",
        "accuracy 0.9000",
        "accuracy 0.5000 (served 0.4500)",
        "test n 40",
        "created 20",
    ):
        assert whole in r.stdout, r.stdout
    rows = json.loads(cli("models", "--json", settings=registered, env={"COLUMNS": "80"}).stdout)
    assert [x["n_test"] for x in rows] == [40, 40] and all(type(x["n_test"]) is int for x in rows)


def test_models_when_nothing_is_registered(settings: Settings) -> None:
    seed_mlflow_db(settings)
    r = run("models")
    assert r.returncode == 0 and "No versions of pyrocast-wildfire yet" in r.stdout


def test_schedule_rejects_a_bad_cron(settings: Settings) -> None:
    r = run("schedule", "--cron", "every night")
    assert r.returncode == 1 and "not a cron expression" in r.stderr


def test_schedule_stops_cleanly_on_ctrl_c(settings: Settings) -> None:
    env = {**os.environ, "PYROCAST_DATA_DIR": str(settings.root), "PYROCAST_QUIET": "1"}
    proc = subprocess.Popen(
        [str(PYROCAST), "schedule", "--cron", "0 3 * * *"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=settings.root.parent,
    )
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and "next run at" not in line:
            line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "next run at" in line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "schedule stopped (signal) after 0 run(s)" in out
    assert "Traceback" not in err


def test_train_refuses_bad_arguments_before_starting(settings: Settings, tmp_path: Path) -> None:
    r = run("train", "--profile", "huge")
    assert r.returncode == 1 and "unknown profile 'huge'" in r.stderr and "quick" in r.stderr
    r = run("train", "--data", str(tmp_path / "missing"))
    assert r.returncode == 1 and "is not a folder" in r.stderr
    assert not (settings.root / "zenml").exists()  # nothing was started
