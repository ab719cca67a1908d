"""`pyrocast data ...`: render, import, ingest, validate, split, version, show."""

from __future__ import annotations

from pathlib import Path

import typer

from pyrocast.cli.common import out, settings, show
from pyrocast.data.layout import Dataset

app = typer.Typer(help="Build, check, split and version the tile dataset.", no_args_is_help=True)

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: PYROCAST_DATA_DIR or ./.pyrocast).")


@app.command()
def synth(
    tiles: int = typer.Option(400, "--tiles", "-n", min=2, help="How many tiles to render."),
    seed: int = typer.Option(42, "--seed", help="Seed: the same seed renders the same region and tiles."),
    scenario: str = typer.Option(
        "baseline", "--scenario", help="baseline, winter, smoke, clouds, sensor-shift, north."
    ),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Render the synthetic region into the dataset."""
    from pyrocast.data.synthetic.dataset import render_into

    s = settings(data_dir)
    ds = Dataset(s.dataset_dir)
    show(render_into(ds, s, n_tiles=tiles, seed=seed, scenario=scenario))


@app.command("import-kaggle")
def import_kaggle(
    source: Path | None = typer.Argument(None, help="A zip or folder in the Kaggle layout."),
    download: bool = typer.Option(False, "--download", help="Download the dataset with kagglehub (needs network)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Import the Kaggle wildfire dataset (corrupt files are quarantined with their reason)."""
    from pyrocast.data.kaggle import import_kaggle as run

    s = settings(data_dir)
    show(run(source, Dataset(s.dataset_dir), s, download=download))


@app.command()
def ingest(
    feed: str | None = typer.Option(None, "--feed", help="CWFIS active-fires CSV: URL or file (default: synthetic)."),
    days: int = typer.Option(7, "--days", min=1, help="Fires that started in the last N days."),
    provider: str | None = typer.Option(None, "--provider", help="synthetic, mapbox, xyz or folder."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """New labelled tiles from the fire feed and an imagery provider."""
    from pyrocast.data.ingest import ingest as run

    s = settings(data_dir)
    show(run(Dataset(s.dataset_dir), s, feed=feed, days=days, provider=provider))


@app.command()
def validate(
    path: Path | None = typer.Argument(
        None, help="Dataset folder, Kaggle-layout folder or feed CSV (default: the dataset)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quarantine: bool = typer.Option(False, "--quarantine", help="Move files with errors to the quarantine folder."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Validate a dataset or an incoming batch; exits non-zero on errors."""
    from pyrocast.data.validate import validate_path

    s = settings(data_dir)
    report = validate_path(path or s.dataset_dir, s, quarantine=quarantine)
    if as_json:
        print(report.to_json())
    else:
        report.render(out)
    if report.errors:
        raise typer.Exit(1)


@app.command()
def split(
    cell_km: float | None = typer.Option(None, "--cell-km", help="Cell size in km (default from settings: 10)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for assigning cells to splits."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Redraw all cells (a changed --cell-km/--seed needs it: test tiles may move)."
    ),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Spatial train/valid/test split: no place lands in two splits; earlier cell assignments are kept."""
    from pyrocast.data.split import split_dataset

    s = settings(data_dir)
    show(split_dataset(Dataset(s.dataset_dir), s, cell_km=cell_km, seed=seed, fresh=fresh))


@app.command()
def version(
    push: bool = typer.Option(False, "--push", help="Push the data to the DVC remote."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Record the dataset version with DVC (and push it to the remote)."""
    from pyrocast.data.version import record_version

    s = settings(data_dir)
    show(record_version(s, push=push))


@app.command()
def pull(
    version_id: str | None = typer.Argument(None, help="Version id (a prefix of its md5; default: the current one)."),
    force: bool = typer.Option(False, "--force", help="Replace the dataset even if it has unrecorded changes."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Restore the dataset folder of a recorded version from the DVC cache or remote."""
    from pyrocast.data.version import pull_version

    s = settings(data_dir)
    show(pull_version(s, version_id, force=force))


@app.command("show")
def show_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Counts per split, class and source; the current version."""
    from pyrocast.data.summary import summarize

    s = settings(data_dir)
    show(summarize(s), as_json=as_json)
