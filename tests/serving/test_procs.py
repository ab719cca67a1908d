"""Process control: health waiting, clear failures, and a stop that leaves no process behind."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from pyrocast.errors import ServiceUnavailableError
from pyrocast.ports import free_port, port_in_use
from pyrocast.serving import procs
from pyrocast.settings import Settings

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1

# A service shaped like BentoML's: the leader forks a worker into a session of its own (outside the process
# group), and the worker is the one that answers HTTP.
LEADER = textwrap.dedent(
    """
    import subprocess, sys, time
    port = sys.argv[1]
    subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"], start_new_session=True)
    while True:
        time.sleep(1)
    """
)


def start_toy(name: str, log_path: Path) -> procs.ServiceProcess:
    """The BentoML-shaped service (LEADER) on a free port, healthy."""
    port = free_port()
    return procs.start_process(
        name,
        [sys.executable, "-c", LEADER, str(port)],
        url=f"http://127.0.0.1:{port}",
        health_path="/",
        log_path=log_path,
        timeout=30,
    )


def test_stop_sweeps_workers_outside_the_process_group(tmp_path: Path) -> None:
    svc = start_toy("toy", tmp_path / "toy.log")
    port = svc.port
    tree = [svc.pid, *(p.pid for p in svc.descendants())]
    assert len(tree) == 2 and svc.healthy()
    svc.stop(timeout=5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in tree)
    assert not port_in_use("127.0.0.1", port)


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stop_finds_workers_whose_leader_was_killed(tmp_path: Path) -> None:
    """A crashed (SIGKILLed) leader leaves its worker re-parented to init, in a session of its own: neither
    the tree nor the group finds it any more; the tag in its environment does."""
    import os
    import signal

    svc = start_toy("toy", tmp_path / "toy.log")
    port = svc.port
    worker = svc.descendants()[0].pid
    os.kill(svc.pid, signal.SIGKILL)
    svc.proc.wait(5)
    assert not _gone(worker) and port_in_use("127.0.0.1", port)  # the leftover the review found
    assert [p.pid for p in procs.tagged([svc.tag])] == [worker]
    svc.stop(timeout=5)
    assert _gone(worker) and not port_in_use("127.0.0.1", port)


def test_leftovers_get_sigterm_and_time_before_sigkill(tmp_path: Path) -> None:
    """What a killed `pyrocast up` left is asked to stop first: a gateway then writes what it holds."""
    port = free_port()
    done = tmp_path / "drained"
    trap = textwrap.dedent(
        f"""
        import signal, sys, time, http.server, threading
        def bye(*_):
            time.sleep(0.5)  # draining takes a moment
            open({str(done)!r}, "w").write("ok")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        srv = http.server.HTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        while True:
            time.sleep(0.1)
        """
    )
    svc = procs.start_process(
        "gw", [sys.executable, "-c", trap], url=f"http://127.0.0.1:{port}", health_path="/", log_path=tmp_path / "g.log"
    )
    assert procs.stop_tagged([svc.tag], grace=10) == [svc.pid]
    assert done.read_text() == "ok" and not port_in_use("127.0.0.1", port)
    svc.proc.wait(5)


def test_a_service_that_dies_reports_its_log(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(ServiceUnavailableError, match="exited with code 3") as info:
        procs.start_process(
            "broken",
            [sys.executable, "-c", "import sys; print('model bundle is missing'); sys.exit(3)"],
            url=f"http://127.0.0.1:{port}",
            log_path=tmp_path / "broken.log",
            timeout=30,
        )
    assert "model bundle is missing" in str(info.value)


def test_the_log_shown_is_this_runs_own(tmp_path: Path) -> None:
    """Logs are appended to: the end shown when a service fails must not be an earlier run's."""
    log = tmp_path / "broken.log"
    log.write_text("an earlier run: all fine\n")
    port = free_port()
    with pytest.raises(ServiceUnavailableError) as info:
        procs.start_process(
            "broken",
            [sys.executable, "-c", "import sys; print('this run failed'); sys.exit(3)"],
            url=f"http://127.0.0.1:{port}",
            log_path=log,
            timeout=30,
        )
    assert "this run failed" in str(info.value) and "earlier run" not in str(info.value)


def test_a_busy_port_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceUnavailableError, match=f"port {port}"):
            procs.start_process(
                "late", [sys.executable, "-c", "pass"], url=f"http://127.0.0.1:{port}", log_path=tmp_path / "l.log"
            )


def test_a_version_named_v3_is_pinned_without_asking_the_registry(tmp_path: Path) -> None:
    from pyrocast.serving.procs import pinned_version
    from pyrocast.settings import Settings

    settings = Settings(data_dir=tmp_path)  # no registry exists here: a lookup would fail
    assert pinned_version(settings, "v3") == "3" and pinned_version(settings, "12") == "12"


def test_an_exported_model_choice_never_reaches_a_service_started_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export PYROCAST_SERVE_BUNDLE=...` (for an ad-hoc `bentoml serve`) then `pyrocast up`: the classifiers started
    by ref and the explainer must not serve that folder instead of what they were started for."""
    monkeypatch.setenv("PYROCAST_SERVE_BUNDLE", "/ad-hoc/bundle")
    monkeypatch.setenv("PYROCAST_EXPLAIN_BUNDLES", "1=/ad-hoc/bundle")
    monkeypatch.setenv("PYROCAST_SERVE_PRECISION", "int8")
    port = free_port()
    show = "import os, sys; print(sorted(k for k in os.environ if k.startswith('PYROCAST_SERVE') or 'EXPLAIN' in k))"
    with pytest.raises(ServiceUnavailableError) as info:
        procs.start_process(
            "env",
            [sys.executable, "-c", f"{show}; sys.exit(3)"],
            url=f"http://127.0.0.1:{port}",
            log_path=tmp_path / "env.log",
            env={"PYROCAST_SERVE_MODEL": "3"},  # what the start function chose
            timeout=30,
        )
    assert "['PYROCAST_SERVE_MODEL']" in str(info.value), str(info.value)


def test_a_bentoml_service_s_memory_folder_is_private_to_its_user(settings: Settings) -> None:
    """BentoML services keep their temporary files in /dev/shm, under a folder whose name can be guessed: a folder
    another user made there first (or opened to others) is not used; the data directory is."""
    import hashlib
    import os
    import shutil

    if not procs.MEMORY_DIR.is_dir() or os.geteuid() != 0:
        pytest.skip("needs /dev/shm, and root to give a folder to another user")
    digest = hashlib.sha256(str(settings.root.resolve()).encode()).hexdigest()[:12]
    mine = procs.MEMORY_DIR / f"pyrocast-{os.getuid()}-{digest}"
    try:
        got = procs.bento_tmp_dir(settings, "classifier", 3000)
        assert got == mine / "classifier-3000" and (mine.stat().st_mode & 0o777) == 0o700
        mine.chmod(0o755)  # opened to others
        assert procs.bento_tmp_dir(settings, "classifier", 3000) == procs.service_tmp_dir(settings, "classifier", 3000)
        mine.chmod(0o700)
        os.chown(mine, 12345, -1)  # made by another user first
        assert procs.bento_tmp_dir(settings, "classifier", 3000) == procs.service_tmp_dir(settings, "classifier", 3000)
    finally:
        shutil.rmtree(mine, ignore_errors=True)
