"""`pyrocast demo`: the main job end to end on embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.rule import Rule

from pyrocast.cli.common import out, settings
from pyrocast.errors import PyrocastError
from pyrocast.settings import Settings


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    tiles: int = typer.Option(600, "--tiles", "-n", min=20, help="Synthetic tiles to render."),
    seed: int = typer.Option(42, "--seed"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data directory (default ./.pyrocast)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after training (CI-style runs)."),
    replay_tiles: int = typer.Option(60, "--replay", min=0, help="Test tiles replayed once everything runs."),
) -> None:
    """Render the synthetic region, validate, split, version, train (quick), start everything, replay; Ctrl-C stops."""
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

    out.print(Rule("6. train (quick profile): tune, train, evaluate, export, register, decide"))
    _train(data_dir, seed)
    if no_serve:
        out.print(f"[green]demo finished in {time.perf_counter() - t0:.1f} s[/green] (--no-serve: nothing started)")
        return

    out.print(Rule("7. start everything"))
    raise typer.Exit(_serve(s, replay_tiles, seed))


def _train(data_dir: Path | None, seed: int) -> None:
    from pyrocast.cli.models import train

    train(profile="quick", data=None, seed=seed, as_json=False, data_dir=data_dir)


def _serve(s: Settings, replay_tiles: int, seed: int) -> int:
    """Start the stack, replay part of the test split so the pages have data, then run until Ctrl-C."""
    from pyrocast.simulate.replay import run_replay
    from pyrocast.stack import Stack, run_up

    stack = Stack.plan(s, console=out)

    def replay(stack: Stack) -> None:
        if replay_tiles:
            out.print(Rule(f"8. replay {replay_tiles} held-back test tiles through the gateway"))
            gateway = stack.get("gateway")
            result = run_replay(
                s, rate=10.0, duration_s=120.0, limit=replay_tiles, seed=seed, gateway=gateway.url if gateway else None
            )
            if result.stopped == "interrupted":
                raise KeyboardInterrupt
            result.render(out)
        out.print(Rule("9. running: open the URLs above; Ctrl-C stops everything"))

    return run_up(stack, out, after_start=replay)
