"""The Pyrocast web app (FastAPI, server-rendered pages): `create_app(settings)` and `run(settings)`."""

from pyrocast.webapp.app import create_app, run

__all__ = ["create_app", "run"]
