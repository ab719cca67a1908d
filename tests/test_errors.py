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
