"""The training pipeline for real: ZenML + MLflow (SQLite) + the model code, on the synthetic region.

One data directory serves the module (ZenML's store takes ~10 s to create): an interrupted run, a complete
run compared with a (stand-in) champion, and runs that fail on bad input. The profile is `quick` cut down
(fewer trials and epochs) so the whole module stays within about three minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pyrocast.data.layout import Dataset
from pyrocast.errors import PyrocastError, ServiceUnavailableError
from pyrocast.monitoring.reference import read_reference
from pyrocast.pipelines.training import run_training
from pyrocast.ports import free_port
from pyrocast.registry import models
from pyrocast.registry.mlflow_store import ensure_experiment, get_client
from pyrocast.serving.store import STAT_COLUMNS
from pyrocast.settings import MlflowSettings, Settings, get_settings
from tests.support.mlflow_db import seed_mlflow_db
from tests.support.onnx_standin import make_standin_bundle, write_tiles
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

TINY = {"n_trials": 1, "timeout_s": 20.0, "max_epochs": 4, "tune_epochs": 2, "patience": 2, "sizes": [64]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A data dir with 160 split synthetic tiles (two of them corrupt) and a stand-in champion (always says wildfire) as version 1."""
    from pyrocast.data.split import split_dataset
    from pyrocast.data.synthetic.dataset import render_into

    root = tmp_path_factory.mktemp("pipeline") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYROCAST_DATA_DIR", str(root))
        mp.setenv("PYROCAST_QUIET", "1")
        mp.delenv("PYROCAST_NOTIFY_URLS", raising=False)
        mp.chdir(root.parent)
        get_settings.cache_clear()
        s = Settings()
        s.ensure_dirs()
        seed_mlflow_db(s)
        render_into(Dataset(s.dataset_dir), s, n_tiles=160, seed=3)
        split_dataset(Dataset(s.dataset_dir), s)
        # one corrupt tile in train and one in test: skipped and reported, never fatal
        ds = Dataset(s.dataset_dir)
        for split in ("train", "test"):
            ds.abspath(ds.in_split(split)[0]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
        client = get_client(s)
        run_id = client.create_run(ensure_experiment(s, client), run_name="standin-champion").info.run_id
        rv = models.register_bundle(s, run_id, make_standin_bundle(root.parent / "standin", "always_fire"))
        client.set_terminated(run_id)
        models.set_alias(s, "champion", rv.version)
        yield s
    get_settings.cache_clear()


def _interrupt_when(path_glob: str, root: Path, delay: float = 0.0, timeout: float = 150) -> threading.Thread:
    """Send Ctrl-C to this process `delay` seconds after a file matching `path_glob` appears under `root`."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(root.glob(path_glob)):
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_interrupted_run_moves_nothing_then_a_full_run(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    client = get_client(env)
    hook = WebhookReceiver().start()
    url = f"json://127.0.0.1:{hook.port}/pyrocast"
    monkeypatch.setenv("PYROCAST_NOTIFY_URLS", url)  # what the steps read (secrets never travel as parameters)
    env = env.model_copy(update={"notify_urls": SecretStr(url)})  # what the CLI's settings would hold
    # 1. Ctrl-C in the middle of the train step (tuning is done): no version, no alias change, run KILLED
    watcher = _interrupt_when("runs/*/trials.json", env.root, delay=3.0)
    with pytest.raises(KeyboardInterrupt):
        run_training(env, profile="quick", overrides=TINY, explain_tiles=2)
    watcher.join(timeout=5)
    assert "interrupted" in hook.wait_for(1)[0].body["title"]
    assert models.aliases(env) == {"champion": "1"}
    assert [r["version"] for r in models.list_models(env)] == ["1"]
    exp = client.get_experiment_by_name(env.mlflow.experiment)
    killed = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'KILLED'")
    assert len(killed) == 1 and killed[0].info.run_name.startswith("train-")
    failure = env.root / "runs" / killed[0].info.run_name / "failure.json"
    if failure.exists():  # Ctrl-C landed inside a step (not in ZenML's bookkeeping between two)
        assert json.loads(failure.read_text())["type"] == "KeyboardInterrupt"

    # 2. the next run works: registered, compared with the champion, tracked in full
    t0 = time.monotonic()
    out = run_training(env, profile="quick", overrides=TINY, explain_tiles=2)
    print(f"\npipeline run: {time.monotonic() - t0:.1f} s; ZenML step times {out.step_s}; work {out.work_s}")
    assert out.version == "2"
    assert out.verdict in ("challenger", "rejected") and "champion v1" in out.reason
    assert models.aliases(env)["champion"] == "1"
    if out.verdict == "challenger":
        assert models.aliases(env)["challenger"] == "2"
    assert set(out.step_s) == {"load", "tune", "train", "evaluate", "export", "explain", "register", "decide", "notify"}
    assert out.notified == {"configured": 1, "sent": 1, "failed": []}
    message = hook.wait_for(2)[1].body
    hook.stop()
    assert out.verdict in message["title"] and "version 2" in message["message"]

    assert out.metrics["skipped"] == 1  # the corrupt test tile, reported by evaluation
    run = client.get_run(out.mlflow_run_id)
    assert run.data.metrics["test_skipped"] == 1 and run.data.metrics["valid_skipped_tiles"] >= 1
    assert run.info.status == "FINISHED" and run.info.run_name == out.run_name
    tags = run.data.tags
    assert tags["pyrocast.zenml_run_id"] == out.zenml_run_id
    assert len(tags["pyrocast.git_commit"]) in (40, len("unknown")) and tags["pyrocast.git_dirty"] in (
        "true",
        "false",
        "unknown",
    )
    assert tags["pyrocast.profile"] == "quick" and tags["pyrocast.seed"] == str(env.seed)
    assert tags["pyrocast.data_version"]
    assert tags["pyrocast.decision"] == out.verdict
    assert run.data.params["profile"] == "quick" and any(k.startswith("best_") for k in run.data.params)
    m = run.data.metrics
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_n"] > 0 and m["time_total_s"] > 0
    listed = {a.path for a in client.list_artifacts(out.mlflow_run_id)}
    assert {"plots", "bundle", "model_card.md", "explanations", "evaluation"} <= listed
    plots = [a.path for a in client.list_artifacts(out.mlflow_run_id, "plots")]
    assert plots and all(p.endswith(".png") for p in plots)
    card = (out.run_dir / "model_card.md").read_text()
    assert "version 2" in card and out.verdict in card and tags["pyrocast.data_version"] in card

    bundle = models.fetch_bundle(env, "2")
    assert bundle.version == "2" and bundle.meta["run_id"] == out.mlflow_run_id
    # The drift reference travels with the model version: training tiles' statistics, as the gateway stores them.
    reference = read_reference(bundle.root)
    assert reference and len(reference) == bundle.meta["reference"]["tiles"]
    assert {r["label"] for r in reference} == {"wildfire", "nowildfire"}
    assert set(bundle.meta["reference"]["summary"]) == set(STAT_COLUMNS)
    assert "plots/reference_stats.png" in plots


def test_one_class_and_empty_data_fail_clearly(env: Settings, tmp_path: Path) -> None:
    one_class = tmp_path / "one-class"
    write_tiles(one_class, {"train": 12, "valid": 4}, wildfire_share=1.0)
    with pytest.raises(PyrocastError, match=r"failed in step \w+: .*") as err:
        run_training(env, profile="quick", data=one_class, overrides=TINY)
    assert "wildfire" in str(err.value) or "class" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PyrocastError, match="failed in step load"):
        run_training(env, profile="quick", data=tmp_path / "empty", overrides=TINY)
    assert models.aliases(env)["champion"] == "1"


def test_unreachable_mlflow_fails_before_anything_starts(env: Settings) -> None:
    dead = env.model_copy(update={"mlflow": MlflowSettings(tracking_uri=f"http://127.0.0.1:{free_port()}")})
    runs_before = set((env.root / "runs").glob("*"))
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="does not answer"):
        run_training(dead, profile="quick", overrides=TINY)
    assert time.monotonic() - t0 < 5
    assert set((env.root / "runs").glob("*")) == runs_before


def test_a_ctrl_c_is_noticed_whatever_the_handlers_above_it_raise() -> None:
    # What ZenML's step launchers do: chain to the handler they found, after failing with their own error.
    import signal

    from pyrocast.pipelines.training import _noticing_ctrl_c

    with _noticing_ctrl_c() as seen:
        below = signal.getsignal(signal.SIGINT)

        def launcher(signum: int, frame: object) -> None:
            try:
                raise RuntimeError("database is locked")
            finally:
                below(signum, frame)  # type: ignore[operator]

        signal.signal(signal.SIGINT, launcher)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        assert seen
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
