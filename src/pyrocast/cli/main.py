"""Entry point: `pyrocast` with one sub-command group per stage."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from pyrocast.cli import data as data_cli
from pyrocast.errors import PyrocastError, disk_error

app = typer.Typer(
    name="pyrocast",
    help="Wildfire-risk prediction from satellite tiles: data, training, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data")

# Later stages register their commands here (each module adds commands to `app`).
for _mod in ("pyrocast.cli.models", "pyrocast.cli.serve", "pyrocast.cli.ops", "pyrocast.cli.demo"):
    try:
        __import__(_mod, fromlist=["register"]).register(app)
    except ModuleNotFoundError as _exc:  # a stage not built yet
        if _exc.name != _mod:
            raise

err = Console(stderr=True)


def main() -> None:
    """Run the CLI; a PyrocastError (or a write the disk refused) becomes one red line and exit code 1."""
    try:
        app()
    except PyrocastError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # a read-only or full disk is the machine's state, not a bug: say what to do
        clear = disk_error(exc)
        if clear is None:
            raise
        err.print(f"[red]error:[/red] {clear}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
