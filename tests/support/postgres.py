"""A throwaway PostgreSQL server on 127.0.0.1 for tests of the production database paths.

    with PostgresServer() as pg:
        url = pg.create_database("store")  # postgresql+psycopg://postgres@127.0.0.1:PORT/store

or the session fixtures `postgres_server` (one cluster per test run) and `postgres_url` (a fresh, empty
database per test on that cluster: tests never see each other's tables).

The cluster is made with `initdb` (trust authentication, no fsync: a test cluster need not survive a power
cut) in a temporary folder and runs `postgres` as a child process listening on a free loopback port only.
PostgreSQL refuses to run as root, so as root the folder is handed to an unprivileged user (`postgres`
where Debian's package made it, else `nobody`) and the server runs as that user. Binaries are found on
PATH, in $PYROCAST_PG_BIN, or in /usr/lib/postgresql/*/bin (Debian); where there are none the tests
skip and say how to install them. Start-up takes about a second.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyrocast.ports import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) not found on PATH, in $PYROCAST_PG_BIN or in "
    "/usr/lib/postgresql/*/bin: install them with `apt-get install postgresql` (scripts/test-deps.sh does "
    "this as root); the PostgreSQL tests are skipped"
)
SUPERUSER = "postgres"
# Settings that make a throwaway cluster fast (durability is not wanted here), and a server time zone that is not
# UTC, as on many real servers: code that takes the session's times for UTC fails here, not in production.
SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=60",
    "shared_buffers=32MB",
    "timezone=America/Toronto",
)


def find_bin_dir() -> Path | None:
    """The folder holding `initdb` and `postgres`: $PYROCAST_PG_BIN, PATH, then the newest Debian version."""
    candidates: list[Path] = []
    if os.environ.get("PYROCAST_PG_BIN"):
        candidates.append(Path(os.environ["PYROCAST_PG_BIN"]))
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)  # /usr/local/bin/initdb may be a symlink into Debian's
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)], reverse=True)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder; `stop()` ends the server and removes the folder."""

    def __init__(self, startup_timeout_s: float = 30.0) -> None:
        self.bin_dir = find_bin_dir()
        self.port = 0
        self.dir: Path | None = None
        self._timeout = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = _run_as()
        self._names = itertools.count(1)

    @property
    def admin_url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _popen_kw(self) -> dict[str, object]:
        kw: dict[str, object] = {"cwd": self.dir, "env": {**os.environ, "LC_ALL": "C", "TZ": "UTC"}}
        if self._user is not None:
            # Drop root: PostgreSQL refuses it. extra_groups=[] also drops root's supplementary groups.
            kw.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return kw

    def start(self) -> PostgresServer:
        if self.bin_dir is None:
            pytest.skip(INSTALL_HINT)
        pytest.importorskip("psycopg", reason="the psycopg driver is missing: pip install 'psycopg[binary]'")
        base = Path(tempfile.gettempdir())
        if self._user is not None and not _world_traversable(base):
            base = Path("/tmp")  # the server's user must reach its folder; TMPDIR may sit under /root
        self.dir = Path(tempfile.mkdtemp(prefix="pyrocast-pg-", dir=base))
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        data = self.dir / "data"
        init = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            **self._popen_kw(),  # type: ignore[arg-type]
        )
        if init.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.decode(errors='replace')[-800:]}")
        for attempt in range(3):  # a free port can be taken by someone else before the server binds it
            self.port = free_port()
            if self._launch(data):
                return self
            if attempt == 2:
                log = self._log_tail()
                self._cleanup()
                raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {log}")
        return self

    def _launch(self, data: Path) -> bool:
        assert self.dir is not None
        args = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.dir}",
        ]
        for setting in SETTINGS:
            args += ["-c", setting]
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._popen_kw(),  # type: ignore[arg-type]
            )
        finally:
            log.close()
        import psycopg

        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with psycopg.connect(self.admin_url.replace("+psycopg", ""), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self._terminate()
        return False

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """An outage: the server is stopped inside the block and started again (same port, same data) after it."""
        assert self.dir is not None, "server not started"
        self._terminate()
        try:
            yield
        finally:
            if not self._launch(self.dir / "data"):
                raise RuntimeError(f"PostgreSQL did not come back on 127.0.0.1:{self.port}: {self._log_tail()}")

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name by default) and return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{next(self._names)}"
        with psycopg.connect(self.admin_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _log_tail(self) -> str:
        assert self.dir is not None
        with contextlib.suppress(OSError):
            return (self.dir / "postgres.log").read_text(errors="replace")[-800:]
        return "(no log)"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: roll back open sessions, stop at once
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop(self) -> None:
        self._terminate()
        self._cleanup()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the test session (skips where PostgreSQL is not installed)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
