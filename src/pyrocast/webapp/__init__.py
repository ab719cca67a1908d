"""The Pyrocast web app (FastAPI, server-rendered pages): `create_app(settings)` and `run(settings)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyrocast.webapp.app import create_app, run

__all__ = ["create_app", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not here: `python -m pyrocast.webapp.app` imports this package first, and an eager
    # import would put `pyrocast.webapp.app` in sys.modules before runpy executes it (a RuntimeWarning, and two
    # copies of the module).
    if name in __all__:
        from pyrocast.webapp import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
