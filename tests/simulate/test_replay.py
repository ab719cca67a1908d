"""`pyrocast replay`: held-back tiles through a real gateway, ground truth stored, live accuracy per version."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from pyrocast.cli.main import app
from pyrocast.errors import InvalidInputError, ServiceUnavailableError
from pyrocast.ports import free_port
from pyrocast.serving.store import PredictionStore
from pyrocast.settings import get_settings
from pyrocast.simulate.replay import Outcome, run_replay
from tests.simulate.conftest import N_TEST, TRAIN_LAT
from tests.support.serving import ServingStack


def _wait_count(store: PredictionStore, table: str, n: int, timeout: float = 20.0, **where: str) -> int:
    """The store's writer is asynchronous: wait until `n` rows are there (or the timeout)."""
    deadline = time.monotonic() + timeout
    got = store.count(table, **where)
    while got < n and time.monotonic() < deadline:
        time.sleep(0.2)
        got = store.count(table, **where)
    return got


def test_ab_replay_measures_each_version_and_stores_ground_truth(stack: ServingStack) -> None:
    stack.set_rollout("ab", {"champion": 1, "challenger": 1})
    seen: list[int] = []
    # 16 users (each sends at least one of the 24 tiles): all on one side has odds 1 in 32768 (8 users: 1 in 128).
    result = run_replay(stack.settings, rate=50, duration_s=60, users=16, concurrency=4, on_start=seen.append)
    assert seen == [N_TEST] and result.sent == N_TEST and result.stopped == "all planned tiles sent"
    assert result.errors == 0 and result.feedback_stored == N_TEST
    # Sticky assignment: no simulated user is answered by both models.
    assert result.switching_clients() == 0
    clients = {o.client_id for o in result.outcomes}
    assert clients == {f"replay-user-{k}" for k in range(16)}
    # v1 says wildfire to everything, v2 nowildfire: each one's accuracy is its share of such tiles.
    by_version = {g.model_version: g for g in result.versions}
    assert set(by_version) == {"1", "2"}
    for version, says in (("1", "wildfire"), ("2", "nowildfire")):
        mine = [o for o in result.outcomes if o.model_version == version]
        assert by_version[version].n == len(mine)
        assert by_version[version].accuracy == pytest.approx(sum(o.true_label == says for o in mine) / len(mine))
        lo, hi = by_version[version].ci95
        assert lo <= by_version[version].accuracy <= hi
    assert {(g.model_version, g.variant) for g in result.groups} == {("1", "champion"), ("2", "challenger")}
    assert result.latency(50) is not None and result.latency(50) <= result.latency(95)

    # Stored as production traffic with replayed ground truth, apart from users' verdicts.
    store = PredictionStore(stack.settings.store_database_url)
    try:
        rid = result.outcomes[0].request_id
        assert _wait_count(store, "feedback", 1, request_id=rid) == 1
        fb = store.feedback_for(rid)[0]
        assert fb["source"] == "replay" and fb["true_label"] == result.outcomes[0].true_label
        assert fb["client_id"] == result.outcomes[0].client_id
        row = next(r for r in store.predictions_for(rid) if r["served"])
        assert row["source"] == "replay" and row["lat"] is not None and row["client_id"].startswith("replay-user-")
    finally:
        store.engine.dispose()
    d = result.as_dict()
    assert d["answered"] == N_TEST and d["switching_clients"] == 0 and len(d["by_version"]) == 2


def test_replay_is_paced_and_bounded_in_time(stack: ServingStack) -> None:
    t0 = time.monotonic()
    result = run_replay(stack.settings, rate=4, duration_s=1.0, feedback=False)
    assert result.stopped == "duration reached" or result.sent == 4
    assert 1 <= result.sent <= 4  # 4 per second for one second, never the whole split
    assert result.feedback_stored == 0
    assert time.monotonic() - t0 < 30


def test_replay_reports_the_rate_it_sent_at(stack: ServingStack) -> None:
    result = run_replay(stack.settings, rate=4, limit=4, duration_s=60, feedback=False)
    # 4 requests due at 0, 0.25, 0.5 and 0.75 s: three intervals of 0.25 s, whatever the answers took.
    assert result.sent == 4 and result.achieved_rate == pytest.approx(4.0, rel=0.1)
    assert result.as_dict()["achieved_rate"] == pytest.approx(4.0, rel=0.1)
    one = run_replay(stack.settings, rate=4, limit=1, duration_s=60, feedback=False)
    assert one.sent == 1 and one.achieved_rate is None  # one send has no interval to measure
    # Each finite, the product of rate and duration overflowed (a traceback): as many tiles as there are then.
    huge = run_replay(stack.settings, rate=1e200, limit=2, duration_s=1e200, feedback=False)
    assert huge.sent == 2


def test_replay_refuses_the_training_split(stack: ServingStack) -> None:
    with pytest.raises(InvalidInputError, match="does not send the train split") as err:
        run_replay(stack.settings, split="train", gateway=stack.url)
    assert "--split test or --split valid" in str(err.value)
    res = CliRunner().invoke(app, ["replay", "--split", "train", "--data-dir", str(stack.settings.root)])
    assert res.exit_code == 1 and "fitted on those tiles" in str(res.exception)
    store = PredictionStore(stack.settings.store_database_url)
    try:
        time.sleep(0.5)  # the gateway's writer flushes every 100 ms: anything sent would be there by now
        assert store.count("predictions", lat=TRAIN_LAT) == 0  # no train tile reached the gateway
    finally:
        store.engine.dispose()


def test_replay_by_coordinates_lets_the_gateway_fetch_the_tile(stack: ServingStack) -> None:
    result = run_replay(stack.settings, by="coordinates", limit=2, rate=10, duration_s=60)
    assert result.sent == 2 and result.errors == 0, result.error_kinds()
    assert all(o.variant == "champion" and o.model_version == "1" for o in result.outcomes)


def test_replay_refuses_what_it_cannot_do(stack: ServingStack, tmp_path) -> None:
    s = stack.settings
    with pytest.raises(InvalidInputError, match="refusing to send traffic"):
        run_replay(s, gateway="http://192.0.2.1:8000")
    with pytest.raises(InvalidInputError, match="--by"):
        run_replay(s, by="video")
    with pytest.raises(InvalidInputError, match="unknown split"):
        run_replay(s, split="holdout")
    with pytest.raises(InvalidInputError, match="--rate"):
        run_replay(s, rate=0)
    empty = s.model_copy(update={"data_dir": tmp_path / "empty"})
    (tmp_path / "empty" / "dataset").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="has no tiles"):
        run_replay(empty)
    with pytest.raises(ServiceUnavailableError, match="does not answer"):
        run_replay(s, gateway=f"http://127.0.0.1:{free_port()}")


def test_replay_refuses_the_web_app_for_a_gateway(stack: ServingStack) -> None:
    """The web app's /healthz answers 200 too: replay went on, and every request failed with its 404s and 413s."""
    from tests.support.webapp import start_webapp

    web = start_webapp(stack.settings)
    try:
        with pytest.raises(ServiceUnavailableError, match="not a Pyrocast gateway") as err:
            run_replay(stack.settings, gateway=web.url, limit=2)
        assert "not the web app's" in (err.value.hint or "")
    finally:
        web.stop()


def test_shadow_replay_reports_the_challengers_accuracy_on_the_copies(stack: ServingStack) -> None:
    stack.set_rollout("shadow", {"sample": 1.0})
    try:
        result = run_replay(stack.settings, rate=50, duration_s=60, users=4, concurrency=4)
    finally:
        stack.set_rollout("champion", {"reason": "shadow replay done"})
    assert result.errors == 0 and {o.variant for o in result.outcomes} == {"champion"}
    groups = {(g.model_version, g.variant): g for g in result.groups}
    assert set(groups) == {("1", "champion"), ("2", "shadow")}
    # v2 says nowildfire to everything: its shadow accuracy is the share of such tiles among those it answered.
    shadow = groups[("2", "shadow")]
    assert shadow.n >= N_TEST - 2, shadow  # a copy still in flight at the end may be missing
    truth = [o.true_label for o in result.outcomes]
    assert shadow.accuracy == pytest.approx(truth.count("nowildfire") / len(truth), abs=2 / N_TEST)
    assert shadow.p50_ms is None  # no client round trip to report
    assert [g.variant for g in result.versions] == ["all"] and result.versions[0].model_version == "1"


@pytest.fixture
def operator_env(stack: ServingStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The gateway's token exported as an operator would; settings read afresh (a command reads its environment
    once per process: this test's, not an earlier test's)."""
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", stack.token)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("operator_env")
def test_replay_command_prints_json(stack: ServingStack) -> None:
    res = CliRunner().invoke(
        app,
        [
            "replay",
            "--limit",
            "3",
            "--rate",
            "20",
            "--json",
            "--gateway",
            stack.url,
            "--data-dir",
            str(stack.settings.root),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["sent"] == 3 and out["errors"] == 0 and out["by_version"][0]["model_version"] == "1"
    assert (out["feedback_stored"], out["feedback_error_kinds"]) == (3, {})


@pytest.mark.integration
def test_killing_the_challenger_during_a_canary_replay_fails_no_request(stack: ServingStack) -> None:
    """The challenger dies while a canary sends it every client: every tile is still answered."""
    import threading

    loose = {"max_error_rate": 1.0, "max_disagreement": 1.0, "max_p95_ms": 600000, "min_requests": 1000, "window": 1000}
    stack.set_rollout("canary", {"steps": [1.0], "step_seconds": 600, "guardrails": loose})
    first_challenger = threading.Event()
    killer = threading.Thread(target=lambda: first_challenger.wait(60) and stack.challenger.kill())  # type: ignore[union-attr]
    killer.start()

    def seen(o: Outcome) -> None:
        if o.variant == "challenger":
            first_challenger.set()

    result = run_replay(stack.settings, rate=8, duration_s=60, users=12, concurrency=4, on_done=seen)
    killer.join(60)
    assert not stack.challenger.alive()  # type: ignore[union-attr]
    assert result.sent == N_TEST and result.errors == 0, result.error_kinds()
    variants = {o.variant for o in result.outcomes}
    assert {"challenger", "champion-fallback"} <= variants, variants
    assert result.feedback_stored == N_TEST


def test_a_tile_that_vanished_is_an_error_and_the_replay_goes_on(stack: ServingStack, tmp_path) -> None:
    from pyrocast.data.layout import Dataset
    from pyrocast.geo import LonLat
    from tests.support.tiles import jpeg_tile

    s = stack.settings.model_copy(update={"data_dir": tmp_path / "other"})
    ds = Dataset(s.dataset_dir)
    recs = [
        ds.add(jpeg_tile(500 + i, size=64), LonLat(-74.0, 45.6 + i * 0.01), "wildfire", "test", "t") for i in range(3)
    ]
    ds.save()
    ds.abspath(recs[1]).unlink()  # type: ignore[arg-type]
    result = run_replay(s, rate=20, gateway=stack.url)
    assert result.sent == 3 and result.errors == 1
    assert "FileNotFoundError" in next(iter(result.error_kinds()))


def test_replay_sends_the_admin_token_the_gateway_needs_for_ground_truth(stack: ServingStack) -> None:
    from io import StringIO

    from pydantic import SecretStr
    from rich.console import Console

    from pyrocast.errors import PyrocastError

    # The gateway has an admin token; the operator's PYROCAST_ADMIN_TOKEN (stack.settings) is sent with the labels.
    sent = run_replay(stack.settings, limit=3, rate=20, duration_s=60)
    assert sent.errors == 0 and sent.feedback_stored == 3 and sent.feedback_error_kinds() == {}
    # Without it the answers still come, but the gateway refuses the ground truth, and the report says why.
    unset = run_replay(stack.settings.model_copy(update={"admin_token": None}), limit=3, rate=20, duration_s=60)
    assert unset.errors == 0 and unset.feedback_stored == 0
    ((why, n),) = unset.feedback_error_kinds().items()
    assert n == 3 and why.startswith("HTTP 401: ") and "admin token" in why and "PYROCAST_ADMIN_TOKEN" in why
    assert unset.as_dict()["feedback_error_kinds"] == {why: 3}
    shown = StringIO()
    unset.render(Console(file=shown, width=300))
    assert f"3 x ground truth not stored: {why}" in shown.getvalue()
    # A token no HTTP header can carry is refused before anything is sent (and never echoed).
    store = PredictionStore(stack.settings.store_database_url)
    try:
        time.sleep(1.0)  # the gateway writes in the background: the runs above are in by now
        before = store.count("predictions")
        torn = stack.settings.model_copy(update={"admin_token": SecretStr(stack.token + "\n")})
        with pytest.raises(PyrocastError, match="whitespace") as err:
            run_replay(torn, limit=3, rate=20, duration_s=60)
        assert stack.token not in str(err.value.message) + str(err.value.hint)
        time.sleep(0.5)
        assert store.count("predictions") == before
    finally:
        store.engine.dispose()


def test_the_replay_table_cuts_nothing_at_80_columns() -> None:
    from io import StringIO

    from rich.console import Console

    from pyrocast.simulate.replay import GroupStats, ReplayResult

    groups = [
        GroupStats("12", "champion-fallback", 1200, 1100, 0.917, (0.65, 0.99), 1400.1, 20000.2),
        GroupStats("1", "champion", 30, 27, 0.9, (0.74, 0.97), 12.3, 18.4),
    ]
    shown = StringIO()
    ReplayResult(
        "http://127.0.0.1:8000", "test", "image", 60, [], 10.0, 6.0, "all planned tiles sent", groups, groups
    ).render(Console(file=shown, width=80))
    table = shown.getvalue()
    assert "…" not in table and "champion-fallback" in table and "0.650-0.990" in table and "20000.2" in table


def test_a_replay_stopped_with_ctrl_c_reports_and_exits_130(stack: ServingStack) -> None:
    """A script must not read an interrupted replay as a complete one (it exited 0)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("pyrocast")
    env = {**os.environ, "PYROCAST_ADMIN_TOKEN": stack.token, "PYROCAST_QUIET": "1"}
    cmd = [str(exe), "replay", "--rate", "2", "--duration", "60", "--no-feedback", "--gateway", stack.url]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(stack.settings.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(4.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in out and "Traceback" not in err, (out, err)
