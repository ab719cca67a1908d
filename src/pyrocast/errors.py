"""User-facing errors: each carries a one-line reason and, where possible, what to do about it."""

from __future__ import annotations


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
