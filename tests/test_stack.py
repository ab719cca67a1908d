"""`pyrocast up`: planning from the registry, refusing busy ports, clean failure, supervision, and the real thing.

The end-to-end test starts `pyrocast up` as a subprocess on free ports (MLflow, two classifiers served from the
registry, the explainer, the gateway, the web app), checks that every URL answers, sends SIGINT as Ctrl-C does,
and checks that no process of any service group survives and that every port is free again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from rich.console import Console

from pyrocast.errors import PyrocastError, ServiceUnavailableError
from pyrocast.ports import free_port, port_in_use
from pyrocast.serving import procs
from pyrocast.settings import Settings
from pyrocast.stack import STATE_FILE, Service, Stack, claim_state, group_members, release_claim, run_up
from tests.support.disks import tmpfs
from tests.support.mlflow_db import seed_mlflow_db
from tests.support.serving import tiny_bundles

REPO = Path(__file__).resolve().parents[1]


def _register(settings: Settings, bundles_root: Path, challenger: bool = True) -> None:
    """Register tiny bundles: v1 as champion (and v2 as challenger) in the settings' MLflow store."""
    from pyrocast.registry import models
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client

    seed_mlflow_db(settings)
    bundles = tiny_bundles(bundles_root)
    client = get_client(settings)
    for version, alias in (("1", "champion"), ("2", "challenger"))[: 2 if challenger else 1]:
        run = client.create_run(ensure_experiment(settings, client))
        rv = models.register_bundle(settings, run.info.run_id, bundles[version])
        models.set_alias(settings, alias, rv.version)


def _http_server(settings: Settings, name: str, port: int | None = None, files: Path | None = None) -> Service:
    """A stand-in service: Python's http.server (answers 200 on /, and serves `files`), in its own process group."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    if files is not None:
        cmd += ["--directory", str(files)]

    def start() -> procs.ServiceProcess:
        return procs.start_process(
            name, cmd, url=url, log_path=settings.root / "logs" / f"{name}.log", health_path="/", wait=False
        )

    return Service(name, url, port, start, setting=f"serving.{name}_port")


def _failing(settings: Settings, name: str) -> Service:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "import sys; print('cannot load the model'); sys.exit(3)"]

    def start() -> procs.ServiceProcess:
        return procs.start_process(name, cmd, url=url, log_path=settings.root / "logs" / f"{name}.log", wait=False)

    return Service(name, url, port, start)


def test_a_busy_port_is_refused_before_anything_starts(settings: Settings) -> None:
    started: list[str] = []
    svc = _http_server(settings, "gateway")
    svc.start = lambda: started.append("gateway")  # type: ignore[assignment,return-value]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", svc.port))
        sock.listen()
        with pytest.raises(ServiceUnavailableError) as exc:
            Stack(settings, [svc]).start()
    assert f"gateway ({svc.port})" in str(exc.value) and "PYROCAST_SERVING__GATEWAY_PORT" in str(exc.value)
    assert started == []
    assert not (settings.root / STATE_FILE).exists()
    # Through `run_up`: the refusal, and no "stopped: no process left behind" before it (nothing had started).
    shown = io.StringIO()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", svc.port))
        sock.listen()
        with pytest.raises(ServiceUnavailableError):
            run_up(Stack(settings, [svc]), Console(file=shown, width=120))
    assert "stopped" not in shown.getvalue(), shown.getvalue()


def test_a_service_that_fails_to_start_stops_the_others(settings: Settings) -> None:
    good, bad = _http_server(settings, "explainer"), _failing(settings, "champion")
    stack = Stack(settings, [good, bad])
    with pytest.raises(ServiceUnavailableError, match="exited with code 3") as exc:
        stack.start(timeout=30)
    assert "cannot load the model" in str(exc.value)  # the end of its log is shown
    assert good.proc is not None and not good.proc.alive()
    assert group_members([good.proc.pid, bad.proc.pid]) == []  # type: ignore[union-attr]
    assert not port_in_use("127.0.0.1", good.port)
    assert not (settings.root / STATE_FILE).exists()


def test_supervision_reports_deaths_and_stops_on_a_required_one(settings: Settings) -> None:
    side, required = _http_server(settings, "explainer"), _http_server(settings, "gateway")
    required.critical = True
    stack = Stack(settings, [side, required]).start(timeout=30)
    try:
        state = json.loads((settings.root / STATE_FILE).read_text())
        assert state["pid"] == os.getpid() and set(state["services"]) == {"explainer", "gateway"}
        # A side service dies: reported once, nothing restarted, supervision goes on.
        side.proc.kill()  # type: ignore[union-attr]
        polls = iter(range(4))
        assert stack.supervise(until=lambda: next(polls, None) is None) == 0
        assert side.reported_dead and not side.proc.alive()  # type: ignore[union-attr]
        # The required one dies: supervision ends with exit code 1.
        required.proc.kill()  # type: ignore[union-attr]
        assert stack.supervise() == 1
    finally:
        assert stack.stop() == []
    assert not (settings.root / STATE_FILE).exists()
    up_log = (settings.root / "logs" / "up.log").read_text()
    assert "explainer exited with code -9 (not restarted)" in up_log and "gateway is required" in up_log


def test_supervision_follows_the_champion_role_after_a_promotion_swapped_the_ports(
    settings: Settings, tmp_path: Path
) -> None:
    """After a promotion (or rollback) the classifier started as `challenger` serves the champion role: its death
    stops everything, and the death of the one started as `champion` (now the challenger) does not."""
    champion, challenger = _http_server(settings, "champion"), _http_server(settings, "challenger")
    champion.critical = True
    site = tmp_path / "gateway-site"
    site.mkdir()
    swapped = {"champion": {"url": challenger.url}, "challenger": {"url": champion.url}}
    (site / "healthz").write_text(json.dumps({"backends": swapped}))  # what the gateway's /healthz says
    gateway = _http_server(settings, "gateway", files=site)
    gateway.critical = True
    stack = Stack(settings, [champion, challenger, gateway]).start(timeout=30)
    try:
        champion.proc.kill()  # type: ignore[union-attr]
        polls = iter(range(4))
        assert stack.supervise(until=lambda: next(polls, None) is None) == 0  # the champion still answers
        challenger.proc.kill()  # type: ignore[union-attr]
        assert stack.supervise() == 1
    finally:
        assert stack.stop() == []
    up_log = (settings.root / "logs" / "up.log").read_text()
    assert f"the classifier started as champion on :{champion.port} served the challenger role" in up_log
    assert "the champion still answers" in up_log
    assert f"the classifier started as challenger on :{challenger.port} served the champion role" in up_log
    assert "the champion is required: stopping everything" in up_log


def test_a_second_up_is_refused_and_leftovers_of_a_killed_one_are_stopped(settings: Settings) -> None:
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = settings.root / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        born = psutil.Process(sleeper.pid).create_time()
        # Another live `pyrocast up` owns the data directory.
        path.write_text(json.dumps({"pid": sleeper.pid, "create_time": born, "services": {}}))
        with pytest.raises(ServiceUnavailableError, match="already running"):
            claim_state(settings)
        Stack(settings, [_http_server(settings, "gateway")]).stop()  # what `up` does after a refused start
        assert path.exists()  # the running one's state file is not ours to remove
        # Its owner was killed (SIGKILL): its services are leftovers, stopped by the next `up`.
        gone = subprocess.Popen(["true"])
        gone.wait()
        path.write_text(
            json.dumps(
                {
                    "pid": gone.pid,
                    "create_time": 0.0,
                    "services": {"gateway": {"pid": sleeper.pid, "create_time": born}},
                }
            )
        )
        claim_state(settings)
        sleeper.wait(10)  # (already reaped by the kill: the return code says nothing here)
        assert not psutil.pid_exists(sleeper.pid)
        assert not path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_full_disk_when_claiming_is_a_clear_error_and_leaves_no_lock_held(settings: Settings, tmp_path: Path) -> None:
    """Writing the pid into the lock file fails on a full disk (ENOSPC) after the lock is taken: the descriptor is
    closed (the lock released, not held unrecorded where clear_state cannot free it) and the error says what to do."""
    with tmpfs(tmp_path / "disk", "size=16k") as disk:
        full = settings.model_copy(update={"data_dir": disk / "data"})
        (disk / "data" / "run").mkdir(parents=True)
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:  # fill the disk up
            f.write(b"x" * 64 * 1024)
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(PyrocastError, match="cannot write this process's pid to the lock file") as caught:
            claim_state(full)
        assert "No space left on device" in str(caught.value) and "free space" in (caught.value.hint or "")
        assert len(os.listdir("/proc/self/fd")) == fds  # the descriptor was closed
        lock = disk / "data" / "run" / "stack.lock"
        with open(lock, "rb") as other:  # another `up` gets the lock: nothing holds it
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        release_claim(full)  # nothing recorded: nothing to release


def test_a_read_only_data_directory_is_a_clear_error_when_claiming(settings: Settings, tmp_path: Path) -> None:
    """The lock file cannot be created on a read-only disk: one error naming the file and what to do."""
    with tmpfs(tmp_path / "disk", "size=16k,ro") as disk:
        ro = settings.model_copy(update={"data_dir": disk})
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(PyrocastError, match="cannot open the lock file") as caught:
            claim_state(ro)
        assert "Read-only file system" in str(caught.value) and "writable" in (caught.value.hint or "")
        assert len(os.listdir("/proc/self/fd")) == fds
        release_claim(ro)  # nothing recorded: nothing to release


def test_a_file_system_without_locks_is_told_apart_from_another_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOLCK (some NFS mounts): the kernel, not another `up`, refuses the lock; the error says so, and the
    descriptor is closed. (The system call is the stand-in here: no local file system here refuses locks.)"""

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    fds = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as m:
        m.setattr(fcntl, "flock", no_locks)
        with pytest.raises(PyrocastError, match="cannot lock") as caught:
            claim_state(settings)
    assert not isinstance(caught.value, ServiceUnavailableError)  # not "already running"
    assert "No locks available" in str(caught.value) and "supports file locks" in (caught.value.hint or "")
    assert len(os.listdir("/proc/self/fd")) == fds
    claim_state(settings)  # with locks again, the claim is taken
    release_claim(settings)


def test_the_next_up_stops_workers_whose_leader_died_with_the_killed_up(settings: Settings) -> None:
    """`pyrocast up` and a service's leader both SIGKILLed: the service's worker (a session of its own, now a child
    of init) kept its port, and every later `up` refused to start. The next `up` finds it by its tag."""
    from tests.serving.test_procs import start_toy

    svc = start_toy("champion", settings.root / "logs" / "champion.log")
    port = svc.port
    worker = svc.descendants()[0]
    os.kill(svc.pid, signal.SIGKILL)
    svc.proc.wait(5)
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = settings.root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    leader = {"pid": svc.pid, "tag": svc.tag, "create_time": 0.0}
    path.write_text(json.dumps({"pid": gone.pid, "create_time": 0.0, "services": {"champion": leader}}))
    try:
        assert port_in_use("127.0.0.1", port)
        claim_state(settings)
        assert not worker.is_running() and not port_in_use("127.0.0.1", port)
        assert not path.exists()
    finally:
        with contextlib.suppress(psutil.Error):
            worker.kill()


# One `pyrocast up` as its own process: a stand-in service on a given port, started once the file `go` appears.
RACER = """
import sys, time
from pathlib import Path
from pyrocast.errors import PyrocastError
from pyrocast.settings import Settings
from pyrocast.stack import Stack
from tests.test_stack import _http_server

root, go, name, port = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
settings = Settings(data_dir=root)
stack = Stack(settings, [_http_server(settings, name, port)])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    stack.start(timeout=30)
except PyrocastError as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("running", stack.services[0].proc.pid, flush=True)
time.sleep(60)  # until the test kills it
"""


def test_two_ups_started_in_the_same_instant_one_runs_and_a_killed_one_is_cleaned_up(settings: Settings) -> None:
    """Both passed the "already running" check (neither had written its state file yet) and both ran. The claim is
    a lock now: exactly one runs; once it is SIGKILLed the kernel drops its lock and the next `up` stops what it
    left running."""
    go = settings.root / "go"
    ports = {"racer-a": free_port(), "racer-b": free_port()}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(settings.root), str(go), name, str(port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for name, port in ports.items()
    ]
    port_of = {r.pid: port for r, port in zip(racers, ports.values(), strict=True)}
    services: list[int] = []
    try:
        assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]  # type: ignore[union-attr]
        go.touch()
        said = {r.pid: r.stdout.readline().strip() for r in racers}  # type: ignore[union-attr]
        services = [int(line.split()[1]) for line in said.values() if line.startswith("running")]
        (winner,) = [r for r in racers if said[r.pid].startswith("running")]
        (loser,) = [r for r in racers if said[r.pid].startswith("refused")]
        assert loser.wait(30) == 3
        assert f"pyrocast up is already running on {settings.root} (pid {winner.pid})" in said[loser.pid]
        with pytest.raises(ServiceUnavailableError, match=f"pid {winner.pid}"):  # held for the life of `up`
            claim_state(settings)

        winner.kill()  # SIGKILL: it cannot stop its service, which lives in a session of its own
        winner.wait(10)
        (service,) = services
        assert psutil.pid_exists(service) and port_in_use("127.0.0.1", port_of[winner.pid])
        claim_state(settings)  # the lock is free: the leftovers are stopped by tag
        assert not psutil.pid_exists(service) or psutil.Process(service).status() == psutil.STATUS_ZOMBIE
        assert not any(port_in_use("127.0.0.1", p) for p in ports.values())
        assert not (settings.root / STATE_FILE).exists()
        release_claim(settings)
    finally:
        for r in racers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.pid, signal.SIGKILL)
            r.wait(10)
        for pid in services:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def test_plan_needs_a_champion_and_follows_the_registry_and_settings(settings: Settings, tmp_path: Path) -> None:
    seed_mlflow_db(settings)
    with pytest.raises(PyrocastError, match="no champion model is registered"):
        Stack.plan(settings)
    _register(settings, tmp_path / "bundles", challenger=False)
    stack = Stack.plan(settings, webapp=False)
    sv = settings.serving
    assert stack.urls() == {
        "mlflow": f"http://127.0.0.1:{settings.mlflow.port}",
        "champion": f"http://127.0.0.1:{sv.champion_port}",
        "explainer": f"http://127.0.0.1:{sv.explainer_port}",
        "gateway": f"http://127.0.0.1:{sv.gateway_port}",
    }
    assert [s.name for s in stack.services if s.critical] == ["champion", "gateway"]
    assert any("no challenger" in n for n in stack.notes)
    assert any("PYROCAST_ADMIN_TOKEN" in n for n in stack.notes)
    # --no-explainer: the gateway is told, so it neither warns nor exposes a down explainer (no alert).
    settings.serving.gateway_port = free_port()
    gateway = Stack.plan(settings, mlflow=False, webapp=False, explainer=False).get("gateway")
    assert gateway is not None and gateway.start is not None
    with gateway.start().wait_healthy(60) as proc:
        health = httpx.get(f"{proc.url}/healthz", timeout=10).json()
        assert health["explainer"] is None and not [w for w in health["warnings"] if "explainer" in w], health
        assert 'role="explainer"' not in httpx.get(f"{proc.url}/metrics", timeout=10).text


@pytest.mark.integration
def test_up_starts_everything_and_ctrl_c_leaves_nothing_behind(settings: Settings, tmp_path: Path) -> None:
    _register(settings, tmp_path / "bundles")
    ports = {
        "PYROCAST_SERVING__CHAMPION_PORT": free_port(),
        "PYROCAST_SERVING__CHALLENGER_PORT": free_port(),
        "PYROCAST_SERVING__EXPLAINER_PORT": free_port(),
        "PYROCAST_SERVING__GATEWAY_PORT": free_port(),
        "PYROCAST_SERVING__WEBAPP_PORT": free_port(),
        "PYROCAST_MLFLOW__PORT": free_port(),
    }
    env = {**os.environ, "PYROCAST_DATA_DIR": str(settings.root), **{k: str(v) for k, v in ports.items()}}
    env["PYROCAST_ADMIN_TOKEN"] = "stack-test-token"
    env["COLUMNS"] = "200"
    up = subprocess.Popen(
        [sys.executable, "-m", "pyrocast.cli.main", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # the test's own safety net: the group is killed at the end whatever happens
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    groups: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and up.poll() is None and not any("press Ctrl-C" in ln for ln in lines):
            time.sleep(0.5)
        output = "".join(lines)
        assert up.poll() is None, output
        assert "press Ctrl-C" in output, output
        services = json.loads((settings.root / STATE_FILE).read_text())["services"]
        assert set(services) == {"mlflow", "champion", "challenger", "explainer", "gateway", "webapp"}
        groups = [int(s["pid"]) for s in services.values()]
        # Every URL is printed and answers.
        for path, port in (
            ("/health", ports["PYROCAST_MLFLOW__PORT"]),
            ("/readyz", ports["PYROCAST_SERVING__CHAMPION_PORT"]),
            ("/readyz", ports["PYROCAST_SERVING__CHALLENGER_PORT"]),
            ("/readyz", ports["PYROCAST_SERVING__EXPLAINER_PORT"]),
            ("/healthz", ports["PYROCAST_SERVING__GATEWAY_PORT"]),
            ("/healthz", ports["PYROCAST_SERVING__WEBAPP_PORT"]),
        ):
            assert f"http://127.0.0.1:{port}" in output
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
        health = httpx.get(f"http://127.0.0.1:{ports['PYROCAST_SERVING__GATEWAY_PORT']}/healthz", timeout=10).json()
        assert health["backends"]["champion"]["model"]["version"] == "1"
        assert "v2" in output  # the challenger serves the registry's challenger
        assert len(group_members(groups)) >= len(groups)

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert up.wait(90) == 0
        reader.join(5)
        output = "".join(lines)
        assert "no process left behind" in output, output
        assert group_members(groups) == []
        assert [p for p in ports.values() if port_in_use("127.0.0.1", p)] == []
        assert not (settings.root / STATE_FILE).exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pgid in groups:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def test_sigterm_stops_run_up_like_ctrl_c(settings: Settings) -> None:
    from rich.console import Console

    from pyrocast.stack import run_up

    svc = _http_server(settings, "explainer")
    stack = Stack(settings, [svc])
    before = signal.getsignal(signal.SIGTERM)
    console = Console(quiet=True)
    # The signal is sent only once run_up has installed its handlers (after_start runs inside them).
    code = run_up(
        stack, console, after_start=lambda _: threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    )
    assert code == 0
    assert svc.proc is not None and not svc.proc.alive()
    assert group_members([svc.proc.pid]) == [] and not port_in_use("127.0.0.1", svc.port)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    # What happened, for whoever reads it after the terminal is gone.
    events = [ln.split(" ", 1)[1] for ln in (settings.root / "logs" / "up.log").read_text().splitlines()]
    assert events[0].startswith("pyrocast up (pid") and events[1] == f"running: explainer {svc.url}"
    assert events[2:] == ["stop asked (Ctrl-C, SIGTERM or SIGHUP)", "stopped: no process left behind"]


def test_a_service_whose_leader_died_alone_leaves_no_worker_answering_on_its_port(settings: Settings) -> None:
    """BentoML's workers live in sessions of their own: the leader's group SIGKILLed, a worker went on answering on
    the port while `up` said the service exited, and starting it again by hand failed with "port in use"."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = f"{sys.executable} -m http.server {port} --bind 127.0.0.1"
    cmd = ["bash", "-c", f"setsid {server} & wait"]  # the worker in a session of its own, as BentoML's are

    def start() -> procs.ServiceProcess:
        log = settings.root / "logs" / "c.log"
        return procs.start_process("challenger", cmd, url=url, log_path=log, health_path="/", wait=False)

    side = Service("challenger", url, port, start)
    stack = Stack(settings, [side]).start(timeout=30)
    try:
        assert side.proc is not None
        os.killpg(side.proc.pid, signal.SIGKILL)  # the leader's group only: the worker is outside it
        time.sleep(0.5)
        assert port_in_use("127.0.0.1", port), "the worker died with its leader: nothing was checked"
        polls = iter(range(4))
        assert stack.supervise(until=lambda: next(polls, None) is None) == 0
        assert not port_in_use("127.0.0.1", port)
    finally:
        assert stack.stop() == []
    up_log = (settings.root / "logs" / "up.log").read_text()
    assert "challenger exited with code -9 (not restarted; 1 of its processes left running were stopped)" in up_log
