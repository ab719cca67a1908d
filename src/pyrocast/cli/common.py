"""Helpers shared by the CLI modules."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pyrocast.errors import InvalidInputError
from pyrocast.report import Report
from pyrocast.settings import Settings, get_settings

out = Console()

GATEWAY = typer.Option(
    None, "--gateway", help="Gateway base URL (default: http://<serving.host>:<serving.gateway_port>)."
)


def old_gateway_name(name: str) -> typer.models.OptionInfo:
    """A hidden alias of --gateway: the gateway option had a different name per command until 27 Nov 2026."""
    return typer.Option(None, name, hidden=True, help="Old name of --gateway.")


def pick_gateway(gateway: str | None, alias: str | None, alias_name: str) -> str | None:
    """--gateway, or its old name; both at once must agree."""
    if gateway and alias and gateway.rstrip("/") != alias.rstrip("/"):
        raise InvalidInputError(f"--gateway and {alias_name} name different gateways", "pass --gateway only")
    return gateway or alias


def settings(data_dir: Path | None = None) -> Settings:
    """The settings, with the data directory overridden from the command line when given."""
    s = get_settings()
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    s.ensure_dirs()
    return s


def show(report: Report, as_json: bool = False) -> None:
    if as_json:
        print(report.to_json())
    else:
        report.render(out)
