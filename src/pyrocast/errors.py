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


_KNOWN: set[str] = set()  # secrets given by configuration (pyrocast.yaml), not only by the environment


def add_secrets(*values: str | None) -> None:
    """Make `scrub_secrets` replace these values too (settings' secrets, wherever they were read from)."""
    _KNOWN.update(v for v in values if v and len(v) >= 4)


# A URL's user part: a user, then ":" and a password that is no port (":5000/" is a host's), up to the last "@"
# before something that reads as a host, within the URL (not past a quote or a comma: JSON holding two URLs). A
# password may hold "/", "?", "#" (generated ones do) or an unescaped "@".
_USER = r"[^/\s:@]*"
_PASSWORD = r""":(?!\d+(?:[/?#\s]|$))[^\s"'<>,]*"""
_HOST_AHEAD = r"(?=[\w.\[\]-]+(?::\d+)?(?:[/?#\s\"',;)\]}]|$))"
_IN_TEXT = re.compile(rf"(://{_USER}){_PASSWORD}@{_HOST_AHEAD}")
_URL_USERINFO = re.compile(rf"^([A-Za-z][\w+.-]*://)({_USER}(?:{_PASSWORD})?)@{_HOST_AHEAD}")


def scrub_secrets(text: str) -> str:
    """`text` with secrets (the environment's, those given to `add_secrets`) and passwords in URLs replaced by ***,
    to show or log it."""
    known = {os.environ.get(name) or "" for name in SECRET_ENV} | _KNOWN
    for value in sorted(known, key=len, reverse=True):  # a longer secret first: it may contain a shorter one
        if len(value) >= 4:
            text = text.replace(value, "***")
    return _IN_TEXT.sub(r"\1:***@", text)


def redact_url(uri: str) -> str:
    """A URL safe to print: its user part (user and password) replaced by ***, its query and fragment cut off."""
    m = _URL_USERINFO.match(uri)
    if m:
        uri = f"{m.group(1)}***@{uri[m.end() :]}"
    return re.split(r"[?#]", uri, maxsplit=1)[0]


def url_password(url: str | None) -> list[str]:
    """The password in a URL's user part, as written and percent-decoded, to give `add_secrets`: only where it
    does not also stand in the URL's other parts (a password "postgres" would turn every "postgresql" into ***)."""
    m = _URL_USERINFO.match(url or "")
    user_part = m.group(2) if m else ""
    if ":" not in user_part:
        return []
    from urllib.parse import unquote

    pw = user_part.split(":", 1)[1]
    rest = (url or "").replace(user_part, "", 1)
    # The parts around an unescaped "@" too (a driver quotes what follows one as the host name), when long enough
    # not to be ordinary words ("pass@word" would scrub every "word").
    parts = [p for p in pw.split("@") if len(p) >= 8] if "@" in pw else []
    return [v for v in {pw, unquote(pw), *parts} if v and v not in rest]


class ScrubSecrets(logging.Filter):
    """A handler filter that writes every record with `scrub_secrets` applied, its traceback included: a library's
    exception text (MLflow's "API request to http://user:password@host/... failed") is logged as it comes, wherever
    it is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it as it always did, never at the caller
            return True
        clean = scrub_secrets(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # formatted here, as the handler's formatter would, scrubbed
            record.exc_text = scrub_secrets(_FORMATTER.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_secrets(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


def scrub_log_secrets() -> None:
    """Put `ScrubSecrets` on every handler configured so far: the root logger's and any other logger's (uvicorn's
    and BentoML's do not propagate). Call after configuring them."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
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
