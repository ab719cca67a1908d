"""`pyrocast rollout ...` against a real gateway (the CLI tests live here to share the serving stack)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyrocast.cli.main import app
from pyrocast.errors import PyrocastError
from pyrocast.settings import get_settings
from tests.support.serving import ServingStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

runner = CliRunner()


@pytest.fixture
def cli_env(gw: ServingStack, monkeypatch: pytest.MonkeyPatch) -> ServingStack:
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", gw.token)
    monkeypatch.setenv("PYROCAST_DATA_DIR", str(gw.settings.root))
    get_settings.cache_clear()
    yield gw
    get_settings.cache_clear()


def rollout(stack: ServingStack, *args: str) -> dict:
    result = runner.invoke(app, ["rollout", *args, "--url", stack.url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_rollout_commands_drive_the_gateway(cli_env: ServingStack) -> None:
    assert rollout(cli_env, "status")["mode"] == "champion"
    view = rollout(cli_env, "ab", "90", "10")
    assert view["mode"] == "ab" and view["challenger_share"] == pytest.approx(0.1)
    view = rollout(cli_env, "canary", "--steps", "10,50,100", "--every", "30", "--max-disagreement", "0.5")
    assert view["state"]["canary"]["steps"] == [0.1, 0.5, 1.0]
    assert view["state"]["canary"]["guardrails"]["max_disagreement"] == 0.5
    assert rollout(cli_env, "shadow", "--sample", "0.5")["state"]["shadow_sample"] == 0.5
    view = rollout(cli_env, "promote", "--reason", "cli test")
    assert view["state"]["champion"]["version"] == "2"
    assert rollout(cli_env, "rollback")["state"]["champion"]["version"] == "1"
    assert rollout(cli_env, "champion")["mode"] == "champion"
    table = runner.invoke(app, ["rollout", "status", "--url", cli_env.url])
    assert table.exit_code == 0 and "champion" in table.output and f"{cli_env.model_name} v1" in table.output
    # The changes above were recorded within a second or two: each is listed, none replaces another.
    assert all(f"  {action}" in table.output for action in ("champion-only", "rollback", "promote", "shadow")), (
        table.output
    )
    assert "champion-only:" not in table.output  # no reason given: no dangling colon


def test_promoting_a_rejected_version_takes_force(cli_env: ServingStack) -> None:
    from pyrocast.registry.mlflow_store import get_client
    from pyrocast.registry.models import TAG_DECISION

    client = get_client(cli_env.settings)
    client.set_model_version_tag(cli_env.model_name, "2", TAG_DECISION, "rejected")
    try:
        result = runner.invoke(app, ["rollout", "promote", "--url", cli_env.url])
        assert result.exit_code != 0 and "v2 was rejected when it was trained" in str(result.exception)
        assert "--force" in str(result.exception)
        # Nor does a canary that would promote it by itself at its end start; one that waits for a person does.
        result = runner.invoke(app, ["rollout", "canary", "--auto-promote", "--url", cli_env.url])
        assert result.exit_code != 0 and "canary not started" in str(result.exception), result.output
        assert "v2 was rejected when it was trained" in str(result.exception)
        assert rollout(cli_env, "status")["mode"] == "champion"
        view = rollout(cli_env, "canary", "--steps", "50%,100%")
        assert view["mode"] == "canary" and not view["state"]["canary"]["auto_promote"]
        rollout(cli_env, "champion")
        view = rollout(cli_env, "promote", "--force", "--reason", "its test split is stale")
        assert view["state"]["champion"]["version"] == "2" and "forced" in view["events"][0]["reason"]
        rollout(cli_env, "rollback")
    finally:
        client.delete_model_version_tag(cli_env.model_name, "2", TAG_DECISION)


def test_status_shows_the_gateways_warnings(cli_env: ServingStack) -> None:
    rollout(cli_env, "ab", "0", "1")
    assert cli_env.challenger is not None
    cli_env.challenger.kill()
    try:
        # The gateway notices at its next probe or failed call.
        wait_for(lambda: rollout(cli_env, "status")["warnings"], timeout=30, what="a warning in the rollout view")
        table = runner.invoke(app, ["rollout", "status", "--url", cli_env.url])
        assert table.exit_code == 0 and "warnings" in table.output and "does not answer" in table.output
    finally:
        cli_env.start_challenger()
        rollout(cli_env, "champion")


def test_rollout_errors_are_one_clear_line(cli_env: ServingStack, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["rollout", "canary", "--steps", "50,10", "--url", cli_env.url])
    assert result.exit_code != 0 and "steps must increase" in str(result.exception)
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", "wrong")
    get_settings.cache_clear()
    result = runner.invoke(app, ["rollout", "ab", "1", "1", "--url", cli_env.url])
    assert result.exit_code != 0 and "admin token" in str(result.exception)
    result = runner.invoke(app, ["rollout", "status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "does not answer" in str(result.exception)


def test_serve_classifier_refuses_a_gpu_this_machine_lacks(bundle_dirs: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime has CUDA")
    args = ["serve", "classifier", "--bundle", str(bundle_dirs["1"]), "--device", "cuda", "--data-dir", str(tmp_path)]
    result = runner.invoke(app, args)  # before BentoML is started: the error is the command's own
    assert result.exit_code != 0 and isinstance(result.exception, PyrocastError), result.output
    assert "no CUDAExecutionProvider" in str(result.exception) and "onnxruntime-gpu" in str(result.exception)


@pytest.mark.parametrize("service", ["classifier", "explainer", "gateway", "webapp"])
def test_serving_on_a_busy_port_is_one_clear_error_before_anything_starts(
    service: str, bundle_dirs: dict, tmp_path: Path
) -> None:
    """The runbook's `pyrocast serve classifier --role champion` after a promotion meets the port the other
    classifier holds: a clear error naming the port and `rollout status`, not BentoML's traceback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        extra = ["--bundle", str(bundle_dirs["1"])] if service == "classifier" else []
        result = runner.invoke(app, ["serve", service, *extra, "--port", str(port), "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, PyrocastError), result.output
    assert f"port {port} is in use" in str(result.exception) and "rollout status" in (result.exception.hint or "")


def test_rollout_bodies_with_unknown_fields_are_refused(cli_env: ServingStack) -> None:
    """A misspelt field ("step_secs", "guardrail", "autopromote") is a 422, never a canary on the defaults."""
    import httpx

    headers = {"Authorization": f"Bearer {cli_env.token}"}
    for path, body in (
        ("canary", {"steps": [0.1, 1.0], "step_secs": 5}),
        ("canary", {"steps": [0.1], "guardrails": {"max_error": 0.0}}),
        ("canary", {"sample": 0}),  # a shadow body sent to the canary's address
        ("ab", {"champion": 1, "challenger": 1, "sticky": True}),
        ("ab", '{"champion": NaN, "challenger": 1}'),
    ):
        data = body if isinstance(body, str) else json.dumps(body)
        r = httpx.post(
            f"{cli_env.url}/v1/rollout/{path}",
            content=data,
            headers={**headers, "content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 422, (path, body, r.text)
    assert rollout(cli_env, "status")["mode"] == "champion"


def test_guardrails_that_could_never_judge_are_refused_and_window_makes_them_possible(cli_env: ServingStack) -> None:
    result = runner.invoke(app, ["rollout", "canary", "--min-requests", "300", "--url", cli_env.url])
    assert result.exit_code != 0 and "must not exceed --window (200)" in str(result.exception), result.output
    view = rollout(cli_env, "canary", "--min-requests", "300", "--window", "300")
    assert view["state"]["canary"]["guardrails"]["window"] == 300
    rollout(cli_env, "champion")


def test_a_negative_weight_is_named_as_a_weight_not_an_unknown_flag() -> None:
    result = runner.invoke(app, ["rollout", "ab", "-1", "5", "--url", "http://127.0.0.1:9"])
    said = " ".join(result.output.replace("│", " ").split())  # the error box wraps its lines
    assert result.exit_code == 2 and "No such option" not in said
    assert "champion_weight" in said and "greater than or equal to 0" in said, said


def test_a_hand_started_classifier_keeps_its_temporary_files_in_a_folder_of_its_own(
    bundle_dirs: dict, tmp_path: Path, jpeg: bytes
) -> None:
    """The runbook's `pyrocast serve classifier`, killed with SIGKILL, left BentoML's per-request folders and
    sockets in /tmp for good (`pyrocast up` gives its services a TMPDIR of their own; a hand-started one had
    none). It gets the one `up` gives it (in memory, per data directory), and the next start on that port empties
    it."""
    import shutil
    import signal
    import sys

    import httpx

    from pyrocast.ports import free_port
    from pyrocast.serving import procs
    from pyrocast.settings import Settings

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "pyrocast"), "serve", "classifier", "--bundle", str(bundle_dirs["1"])]
    cmd += ["--port", str(port), "--data-dir", str(tmp_path)]
    tmp = procs.bento_tmp_dir(Settings(data_dir=tmp_path), "classifier-champion", port)

    def start() -> procs.ServiceProcess:
        return procs.start_process(
            "classifier", cmd, url=f"http://127.0.0.1:{port}", log_path=tmp_path / "classifier.log", timeout=90
        )

    service = start()
    try:
        r = httpx.post(f"{service.url}/predict", files={"images": ("t.jpg", jpeg, "image/jpeg")}, timeout=30)
        assert r.status_code == 200, r.text
        assert tmp.is_dir() and any(tmp.iterdir()), "BentoML's temporary files went elsewhere"
        service.stop(sig=signal.SIGKILL)
        (tmp / "left-by-the-killed-run").write_text("x")
        service = start()
        assert not (tmp / "left-by-the-killed-run").exists()
    finally:
        service.stop()
        shutil.rmtree(tmp.parent, ignore_errors=True)  # in memory: not a test folder pytest removes


def test_serving_the_challenger_alias_serves_it_as_the_challenger(
    bundle_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runbook's `pyrocast serve classifier --model challenger` printed "as champion" and took the champion's
    port and BentoML home: `--role` defaulted to champion. The alias given is now the role."""
    import socket

    from pyrocast.settings import Settings
    from tests.support.serving import register_bundles

    register_bundles(Settings(data_dir=tmp_path), bundle_dirs)  # champion -> 1, challenger -> 2
    # Both roles' ports taken: the command stops on the one it chose, and says which.
    with socket.socket() as champion, socket.socket() as challenger:
        for sock, role in ((champion, "CHAMPION"), (challenger, "CHALLENGER")):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            monkeypatch.setenv(f"PYROCAST_SERVING__{role}_PORT", str(sock.getsockname()[1]))
        port = challenger.getsockname()[1]
        result = runner.invoke(app, ["serve", "classifier", "--model", "challenger", "--data-dir", str(tmp_path)])
    assert isinstance(result.exception, PyrocastError), result.output
    assert f"port {port} is in use" in str(result.exception), result.exception
