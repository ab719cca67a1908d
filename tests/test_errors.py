"""User-facing errors: a write the disk refuses is said plainly, with what to do."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyrocast.errors import disk_error
from tests.support.disks import tmpfs


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.EROFS, "read-only"), (errno.EACCES, "permission"), (errno.ENOSPC, "disk is full")],
)
def test_refused_writes_name_the_path_and_what_to_do(code: int, hint: str) -> None:
    clear = disk_error(OSError(code, os.strerror(code), "/data/logs/gateway-8000.log"))
    assert clear is not None and hint in str(clear)
    assert clear.message == f"cannot write /data/logs/gateway-8000.log: {os.strerror(code)}"


def test_other_os_errors_stay_errors_of_ours() -> None:
    assert disk_error(OSError(errno.ENOENT, "No such file or directory", "x")) is None


@pytest.mark.integration
def test_the_cli_on_a_read_only_data_directory_says_so_in_one_line(tmp_path: Path) -> None:
    """A real read-only file system (a tmpfs mounted ro), where the review got a traceback."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        env = {**os.environ, "PYROCAST_DATA_DIR": str(mnt / "data")}
        done = subprocess.run(
            [sys.executable, "-m", "pyrocast.cli.main", "data", "synth", "--tiles", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Read-only file system" in done.stderr, done.stderr
    assert "choose a writable data directory" in done.stderr


def test_secrets_are_scrubbed_from_an_mlflow_error_and_from_every_log_line(monkeypatch: Any) -> None:
    """MLflow's transport errors quote the tracking URI, password and all: what we show or log has it removed."""
    import io
    import logging

    from mlflow import MlflowClient

    from pyrocast.errors import ScrubSecrets, scrub_secrets
    from pyrocast.ports import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("PYROCAST_ADMIN_TOKEN", "tok-123456")
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("m")
    except Exception as exc:  # MLflow raises its own kinds
        raw = f"{exc} (token tok-123456)"
    else:
        raise AssertionError("nothing listens there: the call cannot succeed")
    assert "s3cret-pw" in raw, raw  # else this test checks nothing
    assert "s3cret-pw" not in scrub_secrets(raw) and "tok-123456" not in scrub_secrets(raw)
    assert "alice:***@127.0.0.1" in scrub_secrets(raw)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubSecrets())
    logger = logging.getLogger("pyrocast.test-scrub")
    logger.addHandler(handler)
    try:
        logger.warning("promotion postponed: %s", raw)
        try:
            raise RuntimeError(raw)
        except RuntimeError:
            logger.exception("rollback failed")  # the traceback quotes it too
    finally:
        logger.removeHandler(handler)
    shown = stream.getvalue()
    assert "promotion postponed" in shown and "RuntimeError" in shown and "s3cret-pw" not in shown, shown
    assert "tok-123456" not in shown


def test_secrets_given_by_configuration_are_scrubbed_too(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from pyrocast.errors import scrub_secrets
    from pyrocast.settings import Settings

    hook = "json://127.0.0.1:9/hooks/abcdef-webhook-token"
    Settings(data_dir=tmp_path, notify_urls=SecretStr(hook), mapbox_token=SecretStr("pk.configured-in-yaml"))
    said = scrub_secrets(f"delivery to {hook} failed; tile with pk.configured-in-yaml refused")
    assert "abcdef-webhook-token" not in said and "pk.configured-in-yaml" not in said, said


def test_passwords_holding_slashes_or_at_signs_are_scrubbed() -> None:
    """The URL scrubber stopped at a "/" in a password (common in generated ones) and showed it whole."""
    from pyrocast.errors import scrub_secrets

    for pw in ("Xk9/aQ+zSecret", "s3cr/et?x", "p@ss/w0rd"):
        said = scrub_secrets(f"store at postgresql+psycopg://postgres:{pw}@127.0.0.1:5432/db refuses writes (x)")
        assert "postgresql+psycopg://postgres:***@127.0.0.1:5432/db refuses writes (x)" in said, said
    assert scrub_secrets("see http://host:8000/a and mail ops@example.org") == (
        "see http://host:8000/a and mail ops@example.org"
    )
    # Not past the URL: a UI link's path holding "@" beside a store URL in one JSON line was swallowed whole.
    both = '{"store":"postgresql://u:pw@h/db","mlflow":"http://mlflow:5000/#/models/pyrocast@champion"}'
    assert scrub_secrets(both) == both.replace("u:pw@", "u:***@")


def test_weak_or_split_passwords_do_not_scrub_ordinary_words(tmp_path: Path) -> None:
    """A store password "postgres" turned every "postgresql" into ***, and "pass@word" every "pass" and "word"."""
    from pyrocast.errors import scrub_secrets
    from pyrocast.settings import Settings

    Settings(
        data_dir=tmp_path,
        store_url="postgresql://postgres:postgres@db/x",
        optuna_storage="postgresql://u:pass@word@db/y",
    )
    said = "the password was refused; give a keyword or a passlist for postgresql"
    assert scrub_secrets(said) == said


def test_database_passwords_in_the_settings_are_scrubbed_wherever_a_driver_quotes_them(tmp_path: Path) -> None:
    """psycopg quotes what follows an unescaped "@" as the host name; an encoded password is shown decoded."""
    from pyrocast.errors import scrub_secrets
    from pyrocast.settings import MlflowSettings, Settings

    Settings(
        data_dir=tmp_path,
        store_url="postgresql://u:first-half@second-half@db/x",
        optuna_storage="postgresql://u:pct%2Fencoded-pw@db/y",
        mlflow=MlflowSettings(tracking_uri="http://ml:tracking-pw-1@ml:5000"),
    )
    said = scrub_secrets(
        'could not translate host name "second-half@db"; password for pct/encoded-pw refused; tracking-pw-1'
    )
    assert "second-half" not in said and "pct/encoded-pw" not in said and "tracking-pw-1" not in said, said
