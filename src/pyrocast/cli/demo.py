"""`pyrocast demo`: the main job end to end on embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.rule import Rule

from pyrocast.cli.common import out, settings
from pyrocast.errors import PyrocastError


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    tiles: int = typer.Option(600, "--tiles", "-n", min=20, help="Synthetic tiles to render."),
    seed: int = typer.Option(42, "--seed"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data directory (default ./.pyrocast)."),
) -> None:
    """Render the synthetic region, validate, split and version it (then train and serve as those land)."""
    from pyrocast.data.layout import Dataset
    from pyrocast.data.split import split_dataset
    from pyrocast.data.summary import summarize
    from pyrocast.data.synthetic import render_into
    from pyrocast.data.validate import validate_path
    from pyrocast.data.version import record_version

    s = settings(data_dir)
    t0 = time.perf_counter()
    out.print(Rule(f"Pyrocast demo · data directory {s.root}"))

    out.print(Rule("1. render the synthetic region"))
    ds = Dataset(s.dataset_dir)
    render_into(ds, s, n_tiles=tiles, seed=seed, scenario="baseline").render(out)

    out.print(Rule("2. validate"))
    report = validate_path(s.dataset_dir, s)
    report.render(out)
    if report.errors:
        raise PyrocastError(f"the dataset has {len(report.errors)} validation errors", "see the table above")

    out.print(Rule("3. spatial split (test set put aside)"))
    split_dataset(Dataset(s.dataset_dir), s).render(out)

    out.print(Rule("4. version with DVC"))
    record_version(s, push=True).render(out)

    out.print(Rule("5. the dataset now"))
    summarize(s).render(out)
    out.print(f"[green]demo finished in {time.perf_counter() - t0:.1f} s[/green]")
