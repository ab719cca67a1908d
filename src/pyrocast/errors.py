"""User-facing errors: each carries a one-line reason and, where possible, what to do about it."""

from __future__ import annotations

import logging
import os
import re

# Environment variables that hold secrets a library may echo in its error text (a URL, a failed request).
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PYROCAST_MAPBOX_TOKEN",
    "PYROCAST_ADMIN_TOKEN",
)


def scrub_secrets(text: str) -> str:
    """`text` with secrets from the environment and passwords in URLs replaced by ***, to show or log it."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"(://[^/\s:@]+):[^@\s/]+@", r"\1:***@", text)


class ScrubSecrets(logging.Filter):
    """A handler filter that writes every record with `scrub_secrets` applied: a library's exception text (MLflow's
    "API request to http://user:password@host/... failed") is logged as it comes, wherever it is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_secrets(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def scrub_log_secrets() -> None:
    """Put `ScrubSecrets` on the root logger's handlers (call after configuring them)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubSecrets) for f in handler.filters):
            handler.addFilter(ScrubSecrets())


class PyrocastError(Exception):
    """An error whose message is shown to the user as is (the CLI exits non-zero with it)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class InvalidInputError(PyrocastError):
    """Input that cannot be used: a corrupt image, a wrong coordinate, a malformed feed row."""


class HeldOutAccessError(PyrocastError):
    """Training code tried to read the held-out test split."""


class ServiceUnavailableError(PyrocastError):
    """A server we depend on (MLflow, a model service, a tile server) does not answer."""


# What to do when the file system refuses a write, by errno (the message names the path).
_DISK_HINTS = {
    30: "the file system is read-only: choose a writable data directory (--data-dir or PYROCAST_DATA_DIR)",
    13: "no permission to write there: choose a data directory you own (--data-dir or PYROCAST_DATA_DIR)",
    1: "no permission to write there: choose a data directory you own (--data-dir or PYROCAST_DATA_DIR)",
    28: "the disk is full: free some space (or choose a data directory on another disk), then run it again",
    122: "the disk quota is used up: free some space, then run it again",
}


def disk_error(exc: OSError) -> PyrocastError | None:
    """A clear error for a write the file system refused (read-only, no permission, full), else None."""
    hint = _DISK_HINTS.get(exc.errno or 0)
    if hint is None:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    return PyrocastError(f"cannot write{where}: {exc.strerror or exc}", hint)
