"""Helpers shared by the CLI modules."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pyrocast.report import Report
from pyrocast.settings import Settings, get_settings

out = Console()


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
