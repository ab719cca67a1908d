"""`pyrocast load`: per-stage statistics, loopback only, and a real Locust run against a real gateway."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyrocast.cli.main import app
from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError
from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.settings import Settings
from pyrocast.simulate.load import gateway_url, run_load, summarize
from pyrocast.simulate.shapes import build_stages
from tests.support.serving import ServingStack, metric_sum, stack_settings


def test_samples_are_split_by_the_stage_they_started_in() -> None:
    stages = build_stages("spike", 10, 10)  # baseline 0-4 s, spike 4-6 s, recovery 6-10 s
    samples = [
        [0.5, 10.0, True, "image", "champion", "1"],
        [3.9, 30.0, True, "image", "challenger", "2"],
        [4.1, 50.0, True, "coordinates", "champion", "1"],
        [5.0, 70.0, False, "image", "HTTP 503: down", None],
        [9.5, 20.0, True, "image", "champion-fallback", "1"],
    ]
    per, total = summarize(stages, samples, end_s=10.0)
    assert [s.requests for s in per] == [2, 2, 1]
    assert [s.failures for s in per] == [0, 1, 0]
    assert per[0].throughput_rps == pytest.approx(2 / 4)
    assert per[1].errors == {"HTTP 503: down": 1}
    assert per[1].variants == {"champion": 1}
    assert total.requests == 5 and total.failures == 1 and total.seconds == 10
    assert total.p50_ms == 30.0
    assert total.variants == {"champion": 2, "challenger": 1, "champion-fallback": 1}


def test_a_run_cut_short_reports_the_time_it_really_had() -> None:
    stages = build_stages("ramp", 4, 8)
    per, total = summarize(stages, [[0.1, 5.0, True, "image", "champion", "1"]] * 6, end_s=3.0)
    assert [s.seconds for s in per] == [2.0, 1.0, 0.0, 0.0]
    assert total.seconds == 3.0 and total.throughput_rps == 2.0


def test_an_interrupted_run_reports_the_users_it_reached() -> None:
    stages = build_stages("ramp", 4, 8)  # 1, 2, 3, 4 users, 2 s each
    reached = [[0.5, 5.0, True, "image", "champion", "1", 1], [2.5, 5.0, True, "image", "champion", "1", 2]]
    _, total = summarize(stages, reached, end_s=3.0)
    assert total.users == 2  # Locust's own count, not the 4 the shape planned
    _, total = summarize(stages, [s[:6] for s in reached], end_s=3.0)  # samples without a count
    assert total.users == 2  # the most of any stage that began
    _, total = summarize(stages, reached, end_s=None)
    assert total.users == 2


def test_only_this_machine_is_targeted(settings: Settings) -> None:
    assert gateway_url(settings) == f"http://127.0.0.1:{settings.serving.gateway_port}"
    assert gateway_url(settings, "http://localhost:9000/") == "http://localhost:9000"
    for url in ("http://10.0.0.5:8000", "https://example.org", "ftp://127.0.0.1/x", "127.0.0.1:8000"):
        with pytest.raises(InvalidInputError):
            gateway_url(settings, url)


def test_load_refuses_bad_options_before_starting_locust(stack: ServingStack) -> None:
    with pytest.raises(InvalidInputError, match="unknown load shape"):
        run_load(stack.settings, "sawtooth", 2, 4, stack.url)
    with pytest.raises(InvalidInputError, match=r"within 0\.\.1"):
        run_load(stack.settings, "constant", 2, 4, stack.url, coordinates_share=1.5)


@pytest.mark.integration
def test_killing_the_challenger_during_a_load_test_fails_no_request(stack: ServingStack) -> None:
    """The bar: the challenger dies mid-run under an A/B test, and users see no error (champion fallback)."""
    # Every user on the challenger: with 6 random client ids at 1:1 all of them landed on the champion once in 64
    # runs (seen in `make test`), and the test then had no challenger to kill.
    stack.set_rollout("ab", {"champion": 0, "challenger": 1})
    result: dict = {}

    def load() -> None:
        result["r"] = run_load(
            stack.settings, "ramp", users=6, duration_s=8, host=stack.url, coordinates_share=0.0, wait_s=(0.05, 0.2)
        )

    worker = threading.Thread(target=load)
    worker.start()
    # Let traffic reach both models, then kill the challenger's whole process group, as a crash would.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _challenger_answered(stack):
        time.sleep(0.2)
    assert _challenger_answered(stack), "the challenger never answered before the kill"
    stack.challenger.kill()
    worker.join(120)
    r = result["r"]
    assert r.total.requests > 20
    assert r.total.failures == 0, r.total.errors
    assert r.total.variants.get("challenger", 0) > 0
    assert r.total.variants.get("champion-fallback", 0) > 0  # challenger-assigned users got the champion
    assert len(r.stages) == 4 and all(s.requests > 0 for s in r.stages)
    assert all(s.p50_ms is not None and s.p50_ms <= s.p95_ms <= s.p99_ms for s in r.stages)
    assert r.as_dict()["total"]["failures"] == 0


def _challenger_answered(stack: ServingStack) -> bool:
    import httpx

    text = httpx.get(stack.url + "/metrics", timeout=5).text
    return any(
        line.startswith("pyrocast_predictions_total{")
        and all(f'{k}="{v}"' in line for k, v in (("variant", "challenger"), ("outcome", "ok")))
        and float(line.rsplit(" ", 1)[1]) > 0
        for line in text.splitlines()
    )


def test_load_command_prints_json_per_stage(stack: ServingStack) -> None:
    import json

    from typer.testing import CliRunner

    from pyrocast.cli.main import app

    args = ["load", "--shape", "spike", "--users", "3", "--duration", "5", "--host", stack.url, "--json"]
    res = CliRunner().invoke(app, [*args, "--data-dir", str(stack.settings.root)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert [s["name"] for s in out["stages"]] == ["baseline", "spike", "recovery"]
    assert [s["users"] for s in out["stages"]] == [1, 3, 1]
    assert out["total"]["requests"] > 0 and out["total"]["failures"] == 0
    assert 1 <= out["total"]["users"] <= 3  # as many as Locust ran (`--host`, the old name of --gateway, works)
    assert set(out["by_kind"]) <= {"image", "coordinates"}


def _load(*args: str) -> tuple[int, object, str]:
    res = CliRunner().invoke(app, ["load", *args])
    return res.exit_code, res.exception, res.stdout


def test_load_against_a_dead_gateway_fails_at_once(stack: ServingStack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="does not answer"):
        run_load(stack.settings, "constant", 2, 5, dead)
    code, exc, _ = _load("--gateway", dead, "--duration", "5", "--data-dir", str(stack.settings.root))
    assert code == 1 and isinstance(exc, ServiceUnavailableError) and f"gateway at {dead} does not answer" in str(exc)
    assert time.monotonic() - t0 < 5  # not the 2 x 5 s the runs would have lasted


@pytest.fixture(scope="module")
def bare_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.ServiceProcess]:
    """A live gateway without classifiers: /healthz answers, every prediction is a 503."""
    gateway = procs.start_gateway(stack_settings(tmp_path_factory.mktemp("bare")))
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_load_run_where_every_request_failed_exits_non_zero(
    stack: ServingStack, bare_gateway: procs.ServiceProcess
) -> None:
    args = ["--gateway", bare_gateway.url, "--duration", "2", "--users", "2", "--json"]
    code, exc, stdout = _load(*args, "--data-dir", str(stack.settings.root))
    total = json.loads(stdout[stdout.index("{") :])["total"]
    assert total["requests"] > 0 and total["failures"] == total["requests"]
    assert code == 1 and isinstance(exc, PyrocastError), stdout
    assert f"none of the {total['requests']} requests was answered" in str(exc)


def test_gateway_and_its_old_name_must_agree(stack: ServingStack, tmp_path: Path) -> None:
    code, exc, _ = _load("--host", stack.url, "--gateway", "http://127.0.0.1:9", "--data-dir", str(tmp_path))
    assert code == 1 and "--gateway and --host name different gateways" in str(exc)


def test_a_spike_reports_every_request_the_gateway_answered(stack: ServingStack) -> None:
    """Users a shape stops mid-request finish it and count it: the report's total, with the requests it says started
    after the run's end, is what the gateway answered."""
    stack.set_rollout("champion", {"reason": "test reset"})

    def answered() -> float:
        return metric_sum(stack.url, "pyrocast_gateway_http_requests_total", endpoint="/v1/predict")

    before = answered()
    r = run_load(stack.settings, "spike", users=6, duration_s=6, host=stack.url, wait_s=(0.0, 0.05))
    assert r.total.requests > 20 and r.total.failures == 0, r.total.errors
    assert answered() - before == r.total.requests + r.late_requests


def test_the_load_table_cuts_nothing_at_80_columns() -> None:
    from io import StringIO

    from rich.console import Console

    from pyrocast.simulate.load import LoadResult, StageStats

    def stage(name: str, users: int | None) -> StageStats:
        return StageStats(name, users, 10.0, 12345, 67, 1234.5, 12345.6, 23456.7, 34567.8)

    stages = [stage("late evening", 1000), stage("afternoon", 900)]
    result = LoadResult(
        "diurnal", "http://127.0.0.1:8000", 1000, 60.0, stages, stage("total", 1000), {}, "now", 60.0, Path("x.log")
    )
    shown = StringIO()
    result.render(Console(file=shown, width=80))
    table = shown.getvalue()
    assert "…" not in table and "late evening" in table and "34567.8" in table and "67 (0.5%)" in table, table


def test_requests_started_after_the_runs_end_are_left_out_not_counted_in_its_time() -> None:
    """Locust checks its shape about once a second: requests that start after the planned end were counted in a
    time capped at that end (10 req/s for 10 s reported as 10.9)."""
    stages = build_stages("constant", 10, 10)
    samples = [[i / 10, 5.0, True, "image", "champion", "1"] for i in range(109)]  # 0.0 .. 10.8 s
    per, total = summarize(stages, samples, end_s=None)
    assert total.requests == 100 and total.throughput_rps == 10.0
    assert sum(s.requests for s in per) == 100


def test_a_stopped_runs_table_keeps_its_errors_column_at_80_columns() -> None:
    """The "(not reached)" stages of a stopped ramp made the table too wide for 80 columns, and Rich left out the
    errors column: the stage names wrap instead."""
    from io import StringIO

    from rich.console import Console

    from pyrocast.simulate.load import LoadResult, StageStats

    def stage(name: str, users: int, requests: int = 0, failures: int = 0) -> StageStats:
        ran = requests > 0
        return StageStats(
            name,
            users,
            10.0 if ran else 0.0,
            requests,
            failures,
            123.4 if ran else 0.0,
            *((1234.5, 2345.6, 3456.7) if ran else (None, None, None)),
        )

    stages = [
        stage("ramp 1 of 4", 250, 1234, 5),
        stage("ramp 2 of 4", 500, 2345),
        stage("ramp 3 of 4", 750),
        stage("ramp 4 of 4", 1000),
    ]
    result = LoadResult(
        "ramp",
        "http://127.0.0.1:8000",
        1000,
        60.0,
        stages,
        stage("total", 500, 3579, 5),
        {},
        "now",
        60.0,
        Path("x.log"),
        stopped_early=True,
    )
    shown = StringIO()
    result.render(Console(file=shown, width=80))
    table = shown.getvalue()
    assert "errors" in table and "5 (0.4%)" in table and "not" in table and "…" not in table, table
