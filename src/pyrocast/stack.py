"""`pyrocast up`: start the whole system on this machine, print its URLs, stop all of it on Ctrl-C.

What runs (each a subprocess in its own process group, output in `Settings.root/logs/`):

| service    | what                                                         | default URL             |
| ---------- | ------------------------------------------------------------ | ----------------------- |
| mlflow     | MLflow's UI and tracking server on the SQL store             | http://127.0.0.1:5000   |
| champion   | the classifier serving the registry's `champion` alias       | http://127.0.0.1:3000   |
| challenger | the classifier serving `challenger` (only when one is set)   | http://127.0.0.1:3001   |
| explainer  | attribution heatmaps                                         | http://127.0.0.1:3002   |
| gateway    | the public API (OpenAPI at /docs)                            | http://127.0.0.1:8000   |
| webapp     | the map, feedback, models and monitoring pages               | http://127.0.0.1:8080   |

Ctrl-C (SIGINT), SIGTERM or SIGHUP stop every process group (the gateway first, so that it drains its store),
then check that no process of those groups is left. Nothing is restarted silently: a service that dies is
reported with the end of its log; the champion's or the gateway's death stops everything (exit code 1), the
others' is reported and the rest keeps running (the gateway falls back to the champion without a challenger).
The champion is the classifier the gateway gives the champion role, which a promotion or rollback moves to the
port of the one started as challenger (asked of the gateway's /healthz when a classifier dies).

A state file (`Settings.root/run/stack.json`) names the running processes, and an exclusive lock on
`run/stack.lock`, held for the life of `up`, claims the data directory: a second `pyrocast up` on it refuses to
start (of two started in the same instant, exactly one runs), and the leftovers of an `up` that was killed with
SIGKILL (the kernel drops its lock) are stopped by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from pyrocast.data.layout import atomic_write
from pyrocast.errors import PyrocastError, ServiceUnavailableError
from pyrocast.ports import port_in_use, service_url
from pyrocast.serving import procs
from pyrocast.settings import Settings

STATE_FILE = Path("run") / "stack.json"
LOCK_FILE = Path("run") / "stack.lock"  # never removed: a lock on a file that can be unlinked protects nothing
LEFTOVER_GRACE_S = 20.0  # for a killed `up`'s services to stop on SIGTERM (the gateway drains its store queue)
START_TIMEOUT_S = 180.0  # BentoML + ONNX Runtime + a registry download, on a busy 2-core machine
POLL_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Service:
    """One service of the stack: how to start it, where it answers, and its process once started."""

    name: str
    url: str
    port: int
    start: Callable[[], procs.ServiceProcess] | None  # None: not ours to start (an external MLflow)
    critical: bool = False
    what: str = ""
    setting: str = ""  # the setting that moves its port, for error hints
    proc: procs.ServiceProcess | None = None
    reported_dead: bool = False

    @property
    def external(self) -> bool:
        return self.start is None


@dataclass
class Stack:
    """The services of one `pyrocast up`, started together and stopped together."""

    settings: Settings
    services: list[Service] = field(default_factory=list)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    notes: list[str] = field(default_factory=list)

    # --- planning -----------------------------------------------------------------------------------------
    @classmethod
    def plan(
        cls,
        settings: Settings,
        *,
        mlflow: bool = True,
        explainer: bool = True,
        webapp: bool = True,
        challenger: bool = True,
        console: Console | None = None,
    ) -> Stack:
        """Decide what to run from the registry (champion, challenger) and the settings (ports)."""
        stack = cls(settings, console=console or Console(stderr=True))
        sv, host = settings.serving, settings.serving.host
        versions = registered_aliases(settings)
        if "champion" not in versions:
            raise PyrocastError(
                f"no champion model is registered for {settings.mlflow.model_name!r}",
                "train one with `pyrocast train --profile quick`, or run `pyrocast demo --no-serve`",
            )
        add = stack.services.append
        if mlflow:
            add(_mlflow_service(settings))
        add(
            Service(
                "champion",
                service_url(host, sv.champion_port),
                sv.champion_port,
                # The version, not the alias: see procs.start_classifier.
                lambda: procs.start_classifier(
                    settings, port=sv.champion_port, ref=versions["champion"], name="champion", wait=False
                ),
                critical=True,
                what=f"classifier, model v{versions['champion']}",
                setting="serving.champion_port",
            )
        )
        chall = versions.get("challenger")
        if challenger and chall and chall != versions["champion"]:
            add(
                Service(
                    "challenger",
                    service_url(host, sv.challenger_port),
                    sv.challenger_port,
                    lambda: procs.start_classifier(
                        settings, port=sv.challenger_port, ref=chall, name="challenger", wait=False
                    ),
                    what=f"classifier, model v{chall}",
                    setting="serving.challenger_port",
                )
            )
        elif challenger:
            stack.notes.append("no challenger is registered: the gateway serves the champion only")
        if explainer:
            add(
                Service(
                    "explainer",
                    service_url(host, sv.explainer_port),
                    sv.explainer_port,
                    lambda: procs.start_explainer(settings, wait=False),
                    what="attribution heatmaps",
                    setting="serving.explainer_port",
                )
            )
        # A gateway told that no explainer runs does not warn (or raise an alert) about it.
        no_explainer = {"serving": sv.model_copy(update={"explainer": False})}
        gw_settings = settings if explainer else settings.model_copy(update=no_explainer)
        add(
            Service(
                "gateway",
                service_url(host, sv.gateway_port),
                sv.gateway_port,
                lambda: procs.start_gateway(gw_settings, wait=False),
                critical=True,
                what="public API, OpenAPI at /docs",
                setting="serving.gateway_port",
            )
        )
        if webapp:
            if importlib.util.find_spec("pyrocast.webapp.app") is None:
                stack.notes.append("the web app is not installed (pyrocast.webapp): not started")
            else:
                add(_webapp_service(settings))
        if settings.admin_token is None:
            stack.notes.append("rollout changes are disabled: set PYROCAST_ADMIN_TOKEN before `pyrocast up`")
        return stack

    def get(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def urls(self) -> dict[str, str]:
        return {s.name: s.url for s in self.services}

    # --- starting -----------------------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Refuse to start anything when a port is taken (naming each one and the setting that moves it)."""
        busy = [s for s in self.services if not s.external and port_in_use(self.settings.serving.host, s.port)]
        if busy:
            names = ", ".join(f"{s.name} ({s.port})" for s in busy)
            envs = ", ".join(f"PYROCAST_{s.setting.upper().replace('.', '__')}" for s in busy if s.setting)
            raise ServiceUnavailableError(
                f"cannot start: port(s) already in use: {names}",
                f"stop what listens there (another `pyrocast up`?) or move them with {envs}",
            )

    def start(self, timeout: float = START_TIMEOUT_S) -> Stack:
        """Start every service; the classifiers, explainer and MLflow in parallel, then the gateway and web app.

        On any failure everything already started is stopped and a ServiceUnavailableError names the service
        and shows the end of its log.
        """
        claim_state(self.settings)
        first = [s for s in self.services if s.name not in ("gateway", "webapp") and not s.external]
        then = [s for s in self.services if s.name in ("gateway", "webapp")]
        try:
            self.check_ports()
            for group in (first, then):
                for s in group:
                    assert s.start is not None
                    s.proc = s.start()
                    self._save_state()
                for s in group:
                    assert s.proc is not None
                    s.proc.wait_healthy(timeout)
            self._describe_models()
        except BaseException:
            self.stop()
            raise
        return self

    def _describe_models(self) -> None:
        for name in ("champion", "challenger"):
            s = self.get(name)
            if s is None:
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                info = httpx.get(s.url + "/model/info", timeout=3.0, trust_env=False).json()
                s.what = f"classifier, {info['name']} v{info['version']} ({info.get('precision', '?')})"

    # --- watching -----------------------------------------------------------------------------------------
    def dead(self) -> list[Service]:
        """Services whose process has exited (each reported once, with the end of its log)."""
        newly = []
        for s in self.services:
            if s.proc is not None and not s.reported_dead and not s.proc.alive():
                s.reported_dead = True
                newly.append(s)
                # Its workers live in sessions of their own: a leader killed alone (SIGKILL of its group, the OOM
                # killer) leaves them answering on its port, "exited" while it still serves, and a restart by hand
                # refused with "port in use". They go with it.
                left = [p for p in s.proc.descendants() if p.pid != s.proc.pid]
                if left:
                    s.proc.stop(timeout=5.0)
                swept = f"; {len(left)} of its processes left running were stopped" if left else ""
                self.console.print(
                    f"[red]{s.name} exited with code {s.proc.proc.returncode}[/red] (not restarted{swept}); "
                    f"end of {s.proc.log_path}:\n{s.proc.log_tail(15)}",
                    highlight=False,
                )
                record(self.settings, f"{s.name} exited with code {s.proc.proc.returncode} (not restarted{swept})")
        return newly

    def supervise(self, until: Callable[[], bool] | None = None) -> int:
        """Block until interrupted (KeyboardInterrupt), `until()` is true, or a critical service dies (-> 1)."""
        while until is None or not until():
            for s in self.dead():
                if self._required(s):
                    what = "the champion" if s.name == "challenger" else s.name  # it served the champion role
                    self.console.print(f"[red]{what} is required: stopping everything[/red]")
                    record(self.settings, f"{what} is required: stopping everything")
                    return 1
            time.sleep(POLL_S)
        return 0

    def _required(self, s: Service) -> bool:
        """Whether everything must stop now that `s` died. A classifier is required while it serves the champion
        role, which a promotion or a rollback moves to the other classifier's port (the processes stay)."""
        if s.name not in ("champion", "challenger"):
            return s.critical
        role = self._roles_by_port().get(s.port, s.name)
        if role != s.name:
            say = (
                f"the classifier started as {s.name} on :{s.port} served the {role} role (a promotion or rollback "
                f"swapped the roles): {'stopping everything' if role == 'champion' else 'the champion still answers'}"
            )
            self.console.print(f"[yellow]{say}[/yellow]")
            record(self.settings, say)
        return role == "champion"

    def _roles_by_port(self) -> dict[int, str]:
        """port -> role as the gateway assigns them now (from its /healthz); {} when it does not answer."""
        gw = self.get("gateway")
        if gw is None:
            return {}
        try:
            backends = httpx.get(gw.url + "/healthz", timeout=3.0, trust_env=False).json()["backends"]
            return {int(urlsplit(b["url"]).port or 0): role for role, b in backends.items()}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    # --- stopping -----------------------------------------------------------------------------------------
    def stop(self) -> list[int]:
        """Stop every process group (gateway and web app first); returns pids that had to be killed after."""
        front = [s for s in self.services if s.proc is not None and s.name in ("gateway", "webapp")]
        back = [s for s in self.services if s.proc is not None and s.name not in ("gateway", "webapp")]
        for batch in (front, back):
            if batch:
                with ThreadPoolExecutor(len(batch)) as pool:
                    list(pool.map(_stop_quietly, batch))
        groups = [s.proc.pid for s in self.services if s.proc is not None]
        killed = kill_groups(groups)
        # Workers whose leader died before the stop (a crash, SIGKILL) are outside every group and tree.
        killed += procs.stop_tagged([s.proc.tag for s in self.services if s.proc is not None], grace=5)
        clear_state(self.settings)
        return killed

    # --- showing ------------------------------------------------------------------------------------------
    def render(self, console: Console) -> None:
        t = Table(title="Pyrocast is running", title_justify="left")
        t.add_column("service", no_wrap=True)
        # URLs are never cut: people copy them (the other columns wrap instead).
        t.add_column("URL", no_wrap=True, min_width=max((len(s.url) + 5 for s in self.services), default=10))
        t.add_column("what", overflow="fold")  # names (models, files) folded, never cut with an ellipsis
        logs = [s.proc.log_path.name if s.proc else "-" for s in self.services]
        t.add_column("log", no_wrap=True, min_width=max((len(name) for name in logs), default=3))
        for s, log in zip(self.services, logs, strict=True):
            url = s.url + ("/docs" if s.name == "gateway" else "")
            t.add_row(s.name, url, s.what, log)
        console.print(t)
        for note in self.notes:
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
        console.print(f"logs in {self.settings.root / 'logs'}; press Ctrl-C to stop everything", highlight=False)

    def _save_state(self) -> None:
        services = {}
        for s in self.services:
            if s.proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                services[s.name] = {
                    "pid": s.proc.pid,
                    "tag": s.proc.tag,  # finds its workers even once the leader is gone (procs.tagged)
                    "create_time": psutil.Process(s.proc.pid).create_time(),
                    "url": s.url,
                    "log": str(s.proc.log_path),
                }
        state = {
            "pid": os.getpid(),
            "create_time": psutil.Process().create_time(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "services": services,
        }
        atomic_write(self.settings.root / STATE_FILE, json.dumps(state, indent=2).encode())


def _stop_quietly(s: Service) -> None:
    assert s.proc is not None
    # The gateway drains its prediction store on SIGTERM: give it time before SIGKILL.
    with contextlib.suppress(Exception):
        s.proc.stop(timeout=25.0 if s.name == "gateway" else 15.0)


def _mlflow_service(settings: Settings) -> Service:
    """MLflow's UI on the SQL store (or, for a remote tracking server, just a link to it)."""
    from pyrocast.registry.mlflow_store import is_remote, redact, server_command

    uri = settings.mlflow_tracking_uri
    if is_remote(uri):
        url = redact(uri).rstrip("/")
        return Service("mlflow", url, 0, None, what="external tracking server (not started here)")
    host, port = settings.serving.host, settings.mlflow.port
    backend = uri
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Started without waiting so that it boots beside the model services.
    cmd = server_command(settings, backend, host, port)

    def start() -> procs.ServiceProcess:
        return procs.start_process(
            "mlflow",
            cmd,
            url=service_url(host, port),
            log_path=settings.root / "logs" / f"mlflow-{port}.log",
            health_path="/health",
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            cwd=settings.root,
            wait=False,
            tmp_dir=procs.service_tmp_dir(settings, "mlflow", port),
        )

    return Service(
        "mlflow", service_url(host, port), port, start, what="MLflow UI (runs, registry)", setting="mlflow.port"
    )


def _webapp_service(settings: Settings) -> Service:
    host, port = settings.serving.host, settings.serving.webapp_port

    def start() -> procs.ServiceProcess:
        return procs.start_process(
            "webapp",
            [sys.executable, "-m", "pyrocast.webapp.app", "--host", host, "--port", str(port)],
            url=service_url(host, port),
            log_path=settings.root / "logs" / f"webapp-{port}.log",
            health_path="/healthz",
            env=procs.settings_env(settings),
            cwd=settings.root,
            wait=False,
            tmp_dir=procs.service_tmp_dir(settings, "webapp", port),
        )

    return Service(
        "webapp",
        service_url(host, port),
        port,
        start,
        what="map, feedback, models, monitoring",
        setting="serving.webapp_port",
    )


def registered_aliases(settings: Settings) -> dict[str, str]:
    """alias -> version in the registry ({} when nothing is registered yet)."""
    import logging

    from pyrocast.registry.models import aliases

    # MLflow logs its schema set-up at INFO on a fresh store: noise in the middle of `up`'s output.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return aliases(settings)


# --- process groups and the state file ------------------------------------------------------------------------
def group_members(pgids: list[int]) -> list[psutil.Process]:
    """Live processes whose process group is one of `pgids` (zombies aside)."""
    wanted = set(pgids)
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) in wanted:
                found.append(p)
    return found


def kill_groups(pgids: list[int]) -> list[int]:
    """SIGKILL whatever is still alive in these process groups; returns the pids that were still there."""
    left = group_members(pgids)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
    return [p.pid for p in left]


def _alive(pid: int, create_time: float | None) -> bool:
    """The process `pid` still runs and is the one we recorded (not a reused pid)."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (create_time is None or abs(p.create_time() - create_time) < 1)
    except psutil.Error:
        return False


# The claims this process holds: lock file -> its open descriptor (closing it releases the lock).
_claims: dict[Path, int] = {}


def claim_state(settings: Settings) -> None:
    """Claim the data directory for this `pyrocast up`, or refuse when another one runs there; then stop the
    leftovers of a killed one.

    The claim is an exclusive lock on `run/stack.lock`, kept until `clear_state` or the end of this process: the
    kernel drops it however the process ends (SIGKILL too), so of two `up` started in the same instant exactly one
    gets it, and a lock that is free means that no `up` runs. (Checking the state file's pid alone let both pass:
    neither had written it yet.) The descriptor is not inherited by the services (Python opens it close-on-exec).
    """
    lock = (settings.root / LOCK_FILE).resolve()
    if lock not in _claims:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PyrocastError(
                f"cannot open the lock file {lock} to claim {settings.root}: {exc.strerror or exc}",
                "make the data directory writable (or free space on its disk), or use another --data-dir",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid just after locking: wait for it a moment
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            raise ServiceUnavailableError(
                f"pyrocast up is already running on {settings.root} (pid {holder or 'unknown'})",
                "stop it with Ctrl-C in its terminal (or `kill -INT <pid>`), or use another --data-dir",
            ) from None
        except OSError as exc:
            # ENOLCK and the like (a file system without locks, e.g. some NFS mounts): not another `up`.
            os.close(fd)
            raise PyrocastError(
                f"cannot lock {lock} to claim {settings.root}: {exc.strerror or exc}",
                "put the data directory on a local disk that supports file locks (--data-dir)",
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message of the `up` that is refused
        except OSError as exc:
            # Not recorded in _claims, the lock could never be released by clear_state: closing drops it now.
            os.close(fd)
            raise PyrocastError(
                f"cannot write this process's pid to the lock file {lock}: {exc.strerror or exc}",
                "free space on the data directory's disk (or make it writable), then start again",
            ) from exc
        _claims[lock] = fd
    try:
        _take_over_state(settings)
    except BaseException:
        release_claim(settings)
        raise


def release_claim(settings: Settings) -> None:
    """Give up this process's claim on the data directory (nothing when it holds none)."""
    fd = _claims.pop((settings.root / LOCK_FILE).resolve(), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _take_over_state(settings: Settings) -> None:
    """With the claim held: refuse when the state file names a live `up` (one started before claims were locks),
    else stop what a killed one left running and remove its state file."""
    path = settings.root / STATE_FILE
    if not path.exists():
        return
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return
    owner = int(state.get("pid", 0))
    if owner and owner != os.getpid() and _alive(owner, state.get("create_time")):
        raise ServiceUnavailableError(
            f"pyrocast up is already running on {settings.root} (pid {owner})",
            "stop it with Ctrl-C in its terminal (or `kill -INT <pid>`), or use another --data-dir",
        )
    services = state.get("services", {}).values()
    # SIGTERM first, with time to act on it: a gateway left running writes (or spills) the predictions it holds.
    stopped = procs.stop_tagged([str(s.get("tag", "")) for s in services], grace=LEFTOVER_GRACE_S)
    stale = [int(s["pid"]) for s in services if _alive(int(s["pid"]), s.get("create_time"))]
    stopped += kill_groups(stale)  # a state file written before services were tagged
    if stopped:
        Console(stderr=True).print(
            f"[yellow]stopped {len(set(stopped))} process(es) left by an earlier `pyrocast up` that did not stop "
            "cleanly[/]"
        )
    path.unlink(missing_ok=True)


def clear_state(settings: Settings) -> None:
    """Remove the state file if this process wrote it (never another running `up`'s), then release the claim."""
    path = settings.root / STATE_FILE
    try:
        owner = int(json.loads(path.read_text()).get("pid", 0))
    except (OSError, ValueError):
        owner = 0
    if owner == os.getpid():
        path.unlink(missing_ok=True)
    release_claim(settings)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, so one path stops everything."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While stopping, a second Ctrl-C must not interrupt the stop and leave processes behind."""
    old = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_up(
    stack: Stack,
    console: Console,
    *,
    after_start: Callable[[Stack], None] | None = None,
    until: Callable[[], bool] | None = None,
) -> int:
    """Start the stack, show its URLs, run `after_start` (e.g. a replay), supervise, stop on Ctrl-C.

    Returns the exit code: 0 after Ctrl-C/SIGTERM or `until()`, 1 when a required service died.
    """
    code = 0
    settings = stack.settings
    try:
        with stop_signals_interrupt():
            t0 = time.monotonic()
            record(settings, f"pyrocast up (pid {os.getpid()}) starting")
            with console.status("starting " + ", ".join(s.name for s in stack.services if not s.external)):
                stack.start()
            console.print(f"[green]everything answers after {time.monotonic() - t0:.1f} s[/green]")
            record(settings, "running: " + ", ".join(f"{s.name} {s.url}" for s in stack.services))
            stack.render(console)
            if after_start is not None:
                after_start(stack)
            code = stack.supervise(until)
    except KeyboardInterrupt:
        console.print("stopping ...")
        record(settings, "stop asked (Ctrl-C, SIGTERM or SIGHUP)")
    except Exception as exc:
        record(settings, f"failed: {exc}")
        raise
    finally:
        started = any(s.proc is not None for s in stack.services)
        with signals_ignored():
            left = stack.stop()
        if left:
            console.print(f"[yellow]killed {len(left)} process(es) that outlived their service: {left}[/yellow]")
        if started or left:  # a start refused before any process (a busy port) has nothing to say it stopped
            console.print("[green]stopped: no process left behind[/green]" if not left else "stopped")
            record(settings, "stopped: no process left behind" if not left else f"stopped; killed leftovers {left}")
    return code


def record(settings: Settings, message: str) -> None:
    """One line in <data dir>/logs/up.log: what `pyrocast up` did and when, for whoever reads it after the
    terminal is gone (which service died, when everything stopped). Never fails the caller."""
    path = settings.root / "logs" / "up.log"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}\n")
