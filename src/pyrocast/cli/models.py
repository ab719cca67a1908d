"""`pyrocast train | evaluate | models | schedule`: training runs, registered models, and the cron daemon.

Imports of ZenML, MLflow and torch stay inside the commands so that `pyrocast --help` and the other
commands start fast.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer
from rich.measure import Measurement
from rich.table import Table

from pyrocast.cli.common import out, settings, show
from pyrocast.errors import InvalidInputError, scrub_log_secrets
from pyrocast.report import Report
from pyrocast.settings import Settings

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: PYROCAST_DATA_DIR or ./.pyrocast).")
PROFILE = typer.Option(
    "quick",
    "--profile",
    "-p",
    help="quick (synthetic region, tests), full (real imagery: EfficientNet-Lite0 head) or thorough (also searches the small CNN and last-block fine-tuning).",
)


def _fmt(v: object, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


class _OwnInfo(logging.Filter):
    """Pyrocast's INFO messages and everyone's warnings: ZenML lowers the root level while a step runs, which
    would otherwise let every library's debug chatter through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (
            record.levelno >= logging.INFO and record.name.startswith("pyrocast")
        )


def _log_to_stderr() -> None:
    """Pyrocast's progress messages on stderr (stdout stays clean for --json)."""
    handler = logging.StreamHandler()
    handler.addFilter(_OwnInfo())
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    scrub_log_secrets()
    logging.getLogger("pyrocast").setLevel(logging.INFO)


def train(
    profile: str = PROFILE,
    data: Path | None = typer.Option(
        None, "--data", help="A folder in the Kaggle layout (default: the data directory's dataset)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed for tuning and training (default: settings.seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the training pipeline: tune, train, evaluate, export, explain, register, decide, notify."""
    from pyrocast.pipelines.training import run_training

    s = settings(data_dir)
    _log_to_stderr()
    outcome = run_training(s, profile=profile, data=data, seed=seed)
    rep = Report(f"Training run {outcome.run_name}")
    rep.add("model version", f"{s.mlflow.model_name} v{outcome.version}")
    rep.add("decision", outcome.verdict)
    rep.add("reason", outcome.reason)
    for k in ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "ece"):
        if k in outcome.metrics:
            rep.add(f"test {k}", _fmt(outcome.metrics[k]))
    if outcome.data.get("quarantined"):
        rep.add("quarantined tiles", f"{outcome.data['quarantined']} (corrupt or unusable; see the quarantine folder)")
    if outcome.metrics.get("skipped"):
        rep.add("test tiles skipped", f"{outcome.metrics['skipped']} (could not be decoded)")
    rep.add("steps (s)", ", ".join(f"{k} {v:.1f}" for k, v in outcome.step_s.items()))
    rep.add("total", f"{outcome.total_s:.1f} s")
    rep.add("notified", f"{outcome.notified.get('sent', 0)} of {outcome.notified.get('configured', 0)} targets")
    rep.add("run folder", str(outcome.run_dir))
    rep.details = outcome.as_dict()
    show(rep, as_json)


def evaluate(
    model: str = typer.Option("champion", "--model", "-m", help="champion, challenger, latest or a version number."),
    data: Path = typer.Option(..., "--data", help="A folder in the Kaggle layout (every split folder is scored)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 or int8 (default: what the model serves)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (accuracy, n, and the other metrics)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Score a registered model on every tile of a folder and print its metrics."""
    from pyrocast.model.evaluate import evaluate_folder
    from pyrocast.registry.models import fetch_bundle

    if precision not in (None, "fp32", "int8"):
        raise InvalidInputError(f"--precision {precision!r} is not fp32 or int8")
    if not data.is_dir():
        raise InvalidInputError(f"{data} is not a folder", "pass a folder in the Kaggle layout {split}/{class}/*.jpg")
    s = settings(data_dir)
    bundle = fetch_bundle(s, model)
    result = evaluate_folder(bundle, data, precision)  # type: ignore[arg-type]
    result["model_ref"] = model
    if as_json:
        import json

        print(json.dumps(result, indent=2, default=str))
        return
    rep = Report(f"{bundle.name} v{bundle.version} ({model}) on {data}")
    for k in ("n", "accuracy", "accuracy_ci95", "precision", "recall", "f1", "roc_auc", "ece", "brier"):
        if k in result:
            v = result[k]
            rep.add(k, f"[{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) else _fmt(v))
    rep.add("precision used", result.get("onnx_precision"))
    rep.add("splits", ", ".join(f"{k} {v}" for k, v in (result.get("splits") or {}).items()))
    rep.add("skipped files", result.get("skipped", 0))
    for item in result.get("skipped_files", [])[:5]:
        rep.add(f"  skipped {item['path']}", item["reason"])
    rep.render(out)


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    alias: list[str] = typer.Option(
        [],
        "--alias",
        help="Move an alias first: champion=3, or challenger= to remove it (repeatable; both move or neither). What "
        "`pyrocast up` starts next; a running gateway changes roles with `pyrocast rollout promote|rollback`.",
    ),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """List registered model versions with their aliases, test metrics and decisions.

    A table where the terminal is wide enough, else one block per version (80 columns, or piped).
    """
    from pyrocast.registry.models import list_models

    s = settings(data_dir)
    if alias:
        _move_aliases(s, alias)
    rows = list_models(s)
    if as_json:
        import json

        # MLflow stores every metric as a float; a count reads better as one.
        for r in rows:
            if isinstance(r["n_test"], float) and r["n_test"].is_integer():
                r["n_test"] = int(r["n_test"])
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        out.print(f"No versions of {s.mlflow.model_name} yet: run `pyrocast train`.")
        return
    title = f"{s.mlflow.model_name} (tracking: {_where(s)})"
    table = _models_table(rows, title)
    # Measured unbounded: a measurement within the console's width would always fit it.
    if Measurement.get(out, out.options.update_width(10_000), table).maximum <= out.width:
        out.print(table)
        return
    out.print(title, highlight=False)
    for r in rows:
        out.print(
            f"v{r['version']}  {', '.join(r['aliases']) or 'no alias'}  decision {r['decision'] or '-'}\n"
            f"    accuracy {_accuracy(r)}  f1 {_fmt(r['f1'])}  roc_auc {_fmt(r['roc_auc'])}  "
            f"ece {_fmt(r['ece'])}  test n {_count(r['n_test'])}\n"
            f"    artifacts {r['artifacts']}  created {_created(r['created'])}",
            style=_style(r),
            highlight=False,
        )


def _move_aliases(s: Settings, given: list[str]) -> None:
    """Move (`alias=version`) or remove (`alias=`) registry aliases, all or none: the runbooks' way to have
    `pyrocast up` start on another champion when its own one cannot start."""
    from pyrocast.registry.models import ALIASES, aliases, delete_alias, move_aliases, put_back_aliases

    wanted: dict[str, str | None] = {}
    for item in given:
        name, eq, version = item.partition("=")
        version = version.strip().lstrip("vV")
        if not eq or name not in ALIASES or (version and not version.isdigit()):
            raise InvalidInputError(
                f"--alias {item!r} is not ALIAS=VERSION",
                f"e.g. --alias champion=3, or --alias challenger= to remove it (aliases: {', '.join(ALIASES)})",
            )
        wanted[name] = version or None
    was = aliases(s)
    after = {**was, **wanted}
    shown = [v for v in after.values() if v is not None]
    if len(shown) != len(set(shown)):
        raise InvalidInputError(
            f"--alias would give one version two aliases ({', '.join(f'{k} v{v}' for k, v in after.items() if v)})",
            "a champion and a challenger are two versions: move or remove the other alias in the same command",
        )
    moves = {k: v for k, v in wanted.items() if v is not None}
    try:  # removals first: a version may move to an alias only once the other has let it go
        for name, version in wanted.items():
            if version is None:
                delete_alias(s, name)
        if moves:
            move_aliases(s, moves)  # puts its own moves back when it fails part-way
    except Exception:
        put_back_aliases(s, was, list(wanted))
        raise
    out.print(
        "aliases: "
        + ", ".join(f"{k} -> {f'v{v}' if v else 'none'}" for k, v in wanted.items())
        + " (a running gateway keeps its roles until it restarts or is told with `pyrocast rollout`)"
    )


def _accuracy(row: dict, sep: str = " ") -> str:
    """The trained model's test accuracy, and the served model's (its precision) where the decision measured a
    different one: the page showed 94.4% for an INT8 model that scored 93.3% on the same tiles."""
    served = row.get("served_accuracy")
    extra = f"{sep}(served {_fmt(served)})" if served is not None and served != row["accuracy"] else ""
    return _fmt(row["accuracy"]) + extra


def _models_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("version", "aliases", "accuracy", "f1", "roc_auc", "ece", "test n", "decision", "artifacts", "created"):
        right = col in ("accuracy", "f1", "roc_auc", "ece", "test n")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for r in rows:
        table.add_row(
            r["version"],
            ", ".join(r["aliases"]) or "-",
            _accuracy(r, "\n"),
            _fmt(r["f1"]),
            _fmt(r["roc_auc"]),
            _fmt(r["ece"]),
            _count(r["n_test"]),
            r["decision"] or "-",
            r["artifacts"],
            _created(r["created"]),
            style=_style(r),
        )
    return table


def _style(row: dict) -> str | None:
    return "bold green" if "champion" in row["aliases"] else ("yellow" if "challenger" in row["aliases"] else None)


def _count(v: float | None) -> str:
    return _fmt(int(v) if v is not None else None)


def _created(iso: str) -> str:
    """'2026-11-27T17:57:03+00:00' as '2026-11-27 17:57 UTC': the seconds and offset only cost width."""
    return f"{iso[:10]} {iso[11:16]} UTC" if iso.endswith("+00:00") else iso


def _where(s: object) -> str:
    from pyrocast.registry.mlflow_store import redact

    return redact(s.mlflow_tracking_uri)  # type: ignore[attr-defined]


def schedule(
    cron: str = typer.Option("0 3 * * *", "--cron", help='Cron expression, local time (e.g. "0 3 * * *").'),
    profile: str = PROFILE,
    data: Path | None = typer.Option(
        None, "--data", help="Train on this Kaggle-layout folder instead of ingesting new tiles."
    ),
    once: bool = typer.Option(False, "--once", help="Run ingest + train once, now, and exit."),
    max_runs: int | None = typer.Option(None, "--max-runs", min=1, help="Stop after this many scheduled runs."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run ingest + train on a cron schedule until Ctrl-C (or --once / --max-runs)."""
    from pyrocast.schedule import ingest_and_train, parse_cron, run_schedule

    expr = parse_cron(cron)
    s = settings(data_dir)
    _log_to_stderr()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_wait(due: object) -> None:
        out.print(f"next run at {due} (Ctrl-C to stop)")

    result = run_schedule(
        expr,
        lambda: ingest_and_train(s, profile=profile, data=data),
        max_runs=max_runs,
        once=once,
        stop=stop,
        on_wait=on_wait,
    )
    out.print(f"schedule stopped ({result.stopped_by}) after {result.runs} run(s), {result.failures} failed")
    if once and result.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the training and registry commands to the top-level `pyrocast` app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("models")(models)
    app.command("schedule")(schedule)
