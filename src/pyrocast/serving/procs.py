"""Start a service as a subprocess on a port, wait until it is healthy, stop it by process group.

Used by the tests, the benchmark and `pyrocast up`. Each service runs in its own session (process group);
stopping it signals the group and then sweeps every process of its tree, because BentoML's arbiter starts its
workers in sessions of their own, and every process carrying the service's tag (an environment variable its
workers inherit), because a worker whose leader was killed has left the tree: nothing is left behind. Output goes to a log file under the data directory
(`logs/<name>.log`), shown in the error when a service does not come up.

Each service we start gets a temporary directory of its own under the data directory (`tmp/<name>-<port>`, as
TMPDIR), removed once the service is stopped: BentoML keeps a temp dir per concurrent multipart request, one
per client and one for its sockets, and removes them only on a clean shutdown, so a killed service (a crash,
the challenger-kill tests, SIGKILL after the grace period) used to leave them in /tmp for good.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from pyrocast.errors import ServiceUnavailableError
from pyrocast.ports import port_in_use, service_url
from pyrocast.serving.bundles import ENV_BATCHING, ENV_BUNDLE, ENV_MODEL, ENV_PRECISION
from pyrocast.settings import Settings

_SECTIONS = ("serving", "imagery", "region", "mlflow", "dataset_bounds")
_NESTED_PREFIXES = tuple(f"PYROCAST_{k.upper()}__" for k in _SECTIONS)
# What a service serves: set by the start functions only, never inherited.
_SERVICE_CHOICES = frozenset({ENV_BUNDLE, ENV_MODEL, ENV_PRECISION, ENV_BATCHING, "PYROCAST_EXPLAIN_BUNDLES"})
CLASSIFIER = "pyrocast.serving.classifier_service:Classifier"
EXPLAINER = "pyrocast.serving.explainer_service:Explainer"
# BentoML's arbiter restarts a worker whose startup failed (a bad model, INT8 asked of a bundle without it)
# every ten seconds, forever: the process never exits, so its log is the only sign the start cannot succeed.
_STARTUP_FAILED = b"Application startup failed"


@dataclass
class ServiceProcess:
    """A running service: its process (group leader), URL and log file."""

    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path
    health_path: str = "/readyz"
    cmd: list[str] = field(default_factory=list)
    tmp_dir: Path | None = None  # the service's TMPDIR, removed by stop()
    log_offset: int = 0  # where this run's output starts in the (appended) log
    tag: str = ""  # PROCESS_TAG in the environment of every process of this service (see tagged)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            return httpx.get(self.url + self.health_path, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def descendants(self) -> list[psutil.Process]:
        """Every process the service forked, however deep (BentoML workers live in sessions of their own),
        found by its tree and by its tag: a worker whose leader was killed (SIGKILL, a crash) has left the tree
        (it belongs to init now) but still carries the tag in its environment."""
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        pids = {p.pid for p in tree} | {self.proc.pid}
        return tree + [p for p in tagged([self.tag]) if p.pid not in pids]

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process group, wait, then SIGKILL every process of the tree still alive; returns the exit code.

        BentoML's arbiter starts its workers with setsid, outside our process group, so the tree is collected
        first and swept after the leader is gone: nothing is left running.
        """
        tree = self.descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                _signal_all(tree, signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Workers the leader did not take down with it: ask, then insist.
        tree += [p for p in tagged([self.tag]) if p not in tree]  # forked while we were stopping
        _, alive = psutil.wait_procs(tree, timeout=0.5)
        _signal_all(alive, sig)
        _, alive = psutil.wait_procs(alive, timeout=5 if sig != signal.SIGKILL else 1)
        _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        # Only now is nobody writing there any more; whatever a crash left behind goes with it.
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            if self.tmp_dir.parent.parent == MEMORY_DIR:  # its data directory's folder in memory, once empty
                with contextlib.suppress(OSError):
                    self.tmp_dir.parent.rmdir()
        return self.proc.returncode

    def kill(self) -> None:
        """Kill the service and its workers abruptly (SIGKILL), as a crash would."""
        self.stop(timeout=5, sig=signal.SIGKILL)

    def wait_healthy(self, timeout: float = 90.0) -> ServiceProcess:
        """Block until the health URL answers 200; on exit or timeout stop the group and raise with the log."""
        deadline = time.monotonic() + timeout
        failed = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.healthy(timeout=1.0):
                return self
            if failed := self._startup_failure():
                break
            time.sleep(0.2)
        code = self.proc.poll()
        self.stop()
        if failed:
            why = f"failed to start: {failed}"
        else:
            why = f"exited with code {code}" if code is not None else f"not healthy after {timeout:.0f} s"
        raise ServiceUnavailableError(f"{self.name} {why}; end of {self.log_path}:\n{self.log_tail()}")

    def _startup_failure(self) -> str:
        """The error that failed this run's application startup (from its log), or "" while none did."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                out = f.read()
        except OSError:
            return ""
        if _STARTUP_FAILED not in out:
            return ""
        # The exception line of the traceback says what was wrong ("... has no model.int8.onnx ...").
        errors = [ln for ln in out.decode(errors="replace").splitlines() if "Error: " in ln or "Exception: " in ln]
        return errors[-1].strip() if errors else "its application startup failed"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines this run wrote (the log is appended to: earlier runs' lines would mislead)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PROCESS_TAG = "PYROCAST_PROCESS_TAG"


def tagged(tags: list[str]) -> list[psutil.Process]:
    """Live processes (zombies aside) whose environment carries one of `tags` as PROCESS_TAG.

    Every service starts with a tag of its own that its workers inherit, wherever they are re-parented: the one
    handle on them that survives the death of the process that started them (or of `pyrocast up` itself).
    """
    wanted = {t for t in tags if t}
    found: list[psutil.Process] = []
    if not wanted:
        return found
    me = os.getpid()
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if p.environ().get(PROCESS_TAG) in wanted:
                found.append(p)
    return found


def stop_tagged(tags: list[str], grace: float = 20.0) -> list[int]:
    """SIGTERM every process carrying one of `tags`, SIGKILL those still there after `grace` seconds.

    The grace matters for a gateway left running by a killed `pyrocast up`: on SIGTERM it writes (or spills)
    the predictions it still holds; SIGKILL alone lost them. Returns the pids that were found.
    """
    found = tagged(tags)
    _signal_all(found, signal.SIGTERM)
    _, alive = psutil.wait_procs(found, timeout=grace)
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in found]


def _signal_all(processes: list[psutil.Process], sig: int) -> None:
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def start_process(
    name: str,
    cmd: list[str],
    *,
    url: str,
    log_path: Path,
    health_path: str = "/readyz",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 90.0,
    wait: bool = True,
    tmp_dir: Path | None = None,
) -> ServiceProcess:
    """Start `cmd` in its own process group and wait until `url + health_path` answers 200.

    With `wait=False` it returns at once (start several services, then `wait_healthy` on each). With `tmp_dir`
    the process gets that folder (emptied first) as TMPDIR, and `stop()` removes it.

    Raises ServiceUnavailableError (with the end of the log) when the process exits or is not healthy in time;
    the process group is stopped first so nothing is left running.
    """
    where = urlsplit(url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    if port_in_use(host, port):
        raise ServiceUnavailableError(
            f"cannot start {name}: port {port} on {host} is already in use",
            "stop whatever listens there or choose another port in Settings.serving",
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    # Inherited PYROCAST_<SECTION>__* variables would override the JSON sections that settings_env passes, and an
    # exported PYROCAST_SERVE_BUNDLE (as bundles.py suggests for ad-hoc models) the model a caller chose.
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(_NESTED_PREFIXES) and k not in _SERVICE_CHOICES
    }
    tag = f"{name}-{uuid.uuid4().hex}"
    full_env = {**inherited, **(env or {}), PROCESS_TAG: tag}
    if tmp_dir is not None:
        full_env.update(fresh_tmp_env(tmp_dir))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    svc = ServiceProcess(name, proc, url, log_path, health_path, list(cmd), tmp_dir, log_offset, tag)
    if wait:
        svc.wait_healthy(timeout)
    return svc


def bentoml_exe() -> str:
    exe = Path(sys.executable).with_name("bentoml")
    return str(exe) if exe.exists() else "bentoml"


def fresh_tmp_env(tmp_dir: Path) -> dict[str, str]:
    """Empty `tmp_dir` (created) and return the environment that makes it a process's TMPDIR. Call once the
    service's port is known free: no live service of that name and port still uses a folder left by a crash."""
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp_dir), "TEMP": str(tmp_dir), "TMP": str(tmp_dir)}


def service_tmp_dir(settings: Settings, name: str, port: int) -> Path:
    """The TMPDIR of the service `name` on `port`: under the data directory, removed when it stops."""
    return settings.root / "tmp" / f"{name}-{port}"


MEMORY_DIR = Path("/dev/shm")  # memory-backed on Linux


def bento_tmp_dir(settings: Settings, name: str, port: int) -> Path:
    """The TMPDIR of the BentoML service `name` on `port`: in memory (/dev/shm) where there is one, else under the
    data directory; removed when it stops. BentoML makes a folder there for every request: with it on the data
    disk, a full data disk failed every prediction and had BentoML restart its workers in a loop."""
    if MEMORY_DIR.is_dir() and os.access(MEMORY_DIR, os.W_OK):
        digest = hashlib.sha256(str(settings.root.resolve()).encode()).hexdigest()[:12]  # one per data directory
        # The user's own, private: another user of a shared data directory, or one who made the folder first (its
        # name can be guessed), must neither block the service nor see its uploads and sockets.
        mine = MEMORY_DIR / f"pyrocast-{os.getuid()}-{digest}"
        with contextlib.suppress(OSError):
            mine.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(mine)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return mine / f"{name}-{port}"
    return service_tmp_dir(settings, name, port)


def bentoml_home(settings: Settings, name: str, port: int) -> str:
    """BENTOML_HOME of one BentoML service: inside its own TMPDIR, so it goes when the service stops (its Prometheus
    files are written at every request: in memory too, off a data disk that may fill up).

    BentoML keeps its Prometheus multiprocess files in BENTOML_HOME and wipes them whenever a server starts:
    with one home for all, restarting the challenger erased the champion's metrics, and every service's
    `/metrics` added up its neighbours' counts.
    """
    return str(bento_tmp_dir(settings, name, port) / "bentoml")


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process the same settings as `settings` (secrets excepted)."""
    # The child reads the same data directory as the parent, whatever the parent's working directory was.
    # (BENTOML_HOME is not here: each BentoML service gets a home of its own, see bentoml_home.)
    env = {"PYROCAST_DATA_DIR": str(settings.root)}
    # BentoML otherwise reports usage to its vendor from every server: our services talk to nobody outside.
    env["BENTOML_DO_NOT_TRACK"] = "True"
    # Nested settings travel as JSON (pydantic-settings decodes complex values), so in-process overrides
    # such as test ports reach the child too.
    for key in _SECTIONS:
        env[f"PYROCAST_{key.upper()}"] = getattr(settings, key).model_dump_json()
    if settings.store_url:
        env["PYROCAST_STORE_URL"] = settings.store_url
    return env


def start_classifier(
    settings: Settings,
    *,
    port: int | None = None,
    bundle_dir: Path | None = None,
    ref: str | None = None,
    precision: str | None = None,
    batching: bool = True,
    name: str = "classifier",
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    wait: bool = True,
) -> ServiceProcess:
    """Start the BentoML classifier for a bundle folder or a registry ref (alias or version).

    An alias is pinned to the version it names now: BentoML starts a new worker (after one died) with the same
    environment, and an alias that a promotion or rollback has moved since would make it load another model, which
    the gateway would then serve under the role of the one before."""
    port = port or settings.serving.champion_port
    child_env = settings_env(settings)
    if bundle_dir is not None:
        child_env[ENV_BUNDLE] = str(bundle_dir)
    if ref is not None:
        child_env[ENV_MODEL] = pinned_version(settings, ref)
    if precision is not None:
        child_env[ENV_PRECISION] = precision
    child_env[ENV_BATCHING] = "1" if batching else "0"
    return _start_bento(settings, name, CLASSIFIER, port, child_env, env, timeout, wait)


def pinned_version(settings: Settings, ref: str) -> str:
    """The version number a registry ref (alias, `latest`, `v3`, `3`) names now."""
    if ref.lstrip("vV").isdigit():
        return ref.lstrip("vV")
    from pyrocast.errors import PyrocastError
    from pyrocast.registry.models import resolve_version

    try:
        return str(resolve_version(settings, ref).version)
    except PyrocastError:
        raise
    except Exception as exc:  # the registry does not answer
        raise PyrocastError(
            f"cannot tell which version {ref!r} names: the model registry (MLflow) does not "
            f"answer ({type(exc).__name__})",
            "check the MLflow tracking store, or name the version (e.g. 3) instead of the alias",
        ) from exc


def start_explainer(
    settings: Settings,
    *,
    port: int | None = None,
    bundle_dirs: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    wait: bool = True,
) -> ServiceProcess:
    """Start the BentoML explainer. `bundle_dirs` maps model versions to bundle folders (else the registry)."""
    port = port or settings.serving.explainer_port
    child_env = settings_env(settings)
    if bundle_dirs:
        child_env["PYROCAST_EXPLAIN_BUNDLES"] = os.pathsep.join(f"{v}={p}" for v, p in bundle_dirs.items())
    return _start_bento(settings, "explainer", EXPLAINER, port, child_env, env, timeout, wait)


def _start_bento(
    settings: Settings,
    name: str,
    service: str,
    port: int,
    child_env: dict[str, str],
    env: Mapping[str, str] | None,
    timeout: float,
    wait: bool,
) -> ServiceProcess:
    """`bentoml serve` a service as `name` on `port`, with a BentoML home and TMPDIR of its own."""
    host = settings.serving.host
    child_env["BENTOML_HOME"] = bentoml_home(settings, name, port)
    child_env.update(env or {})
    return start_process(
        name,
        [bentoml_exe(), "serve", service, "--host", host, "--port", str(port)],
        url=service_url(host, port),
        log_path=settings.root / "logs" / f"{name}-{port}.log",
        env=child_env,
        cwd=settings.root,
        timeout=timeout,
        wait=wait,
        tmp_dir=bento_tmp_dir(settings, name, port),
    )


def start_gateway(
    settings: Settings,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    wait: bool = True,
) -> ServiceProcess:
    """Start the gateway (uvicorn) on `port`; its backends come from settings/env (PYROCAST_SERVING__*)."""
    host = settings.serving.host
    port = port or settings.serving.gateway_port
    child_env = settings_env(settings)
    child_env.update(env or {})
    cmd = [sys.executable, "-m", "pyrocast.serving.gateway", "--host", host, "--port", str(port)]
    return start_process(
        "gateway",
        cmd,
        url=service_url(host, port),
        log_path=settings.root / "logs" / f"gateway-{port}.log",
        health_path="/healthz",
        env=child_env,
        cwd=settings.root,
        timeout=timeout,
        wait=wait,
        tmp_dir=service_tmp_dir(settings, "gateway", port),
    )
