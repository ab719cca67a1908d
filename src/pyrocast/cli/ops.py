"""`pyrocast up | replay | load`: run the whole system, replay the test split, load-test the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import TaskID

from pyrocast.cli.common import GATEWAY, old_gateway_name, out, pick_gateway, settings
from pyrocast.errors import PyrocastError
from pyrocast.progress import progress

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: PYROCAST_DATA_DIR or ./.pyrocast).")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("replay")(replay)
    app.command("load")(load)


def up(
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not start MLflow's UI."),
    no_webapp: bool = typer.Option(False, "--no-webapp", help="Do not start the web app."),
    no_explainer: bool = typer.Option(False, "--no-explainer", help="Do not start the explainer."),
    no_challenger: bool = typer.Option(False, "--no-challenger", help="Serve the champion only."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Start MLflow's UI, the classifiers (champion, challenger), the explainer, the gateway and the web app.

    Prints their URLs and keeps running; Ctrl-C (or SIGTERM) stops all of them and leaves no process behind.
    """
    from pyrocast.stack import Stack, run_up

    s = settings(data_dir)
    stack = Stack.plan(
        s, mlflow=not no_mlflow, explainer=not no_explainer, webapp=not no_webapp, challenger=not no_challenger
    )
    raise typer.Exit(run_up(stack, out))


def replay(
    split: str = typer.Option("test", "--split", help="test (held back, the default) or valid; never train."),
    rate: float = typer.Option(5.0, "--rate", "-r", help="Requests per second."),
    duration: float = typer.Option(60.0, "--duration", "-d", help="Stop after this many seconds."),
    by: str = typer.Option("image", "--by", help="image (upload the tile) or coordinates (the gateway fetches it)."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Replay at most this many tiles."),
    users: int = typer.Option(20, "--users", "-u", help="Simulated clients (each keeps its A/B assignment)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Requests in flight at most."),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="Do not store the true labels as ground truth."),
    seed: int = typer.Option(0, "--seed", help="Order in which tiles are replayed."),
    gateway: str | None = GATEWAY,
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Send held-back tiles through the gateway as production traffic; report live accuracy per model version.

    True labels go back as ground truth, with PYROCAST_ADMIN_TOKEN if set (a gateway with a token needs it).
    """
    from pyrocast.simulate.replay import run_replay

    s = settings(data_dir)
    with progress() as bar:
        tasks: list[TaskID] = []  # added once the run starts, so that a refused argument draws no bar
        result = run_replay(
            s,
            split=split,
            rate=rate,
            duration_s=duration,
            by=by,
            limit=limit,
            users=users,
            concurrency=concurrency,
            gateway=gateway,
            feedback=not no_feedback,
            seed=seed,
            on_start=lambda n: tasks.append(bar.add_task("replaying", total=n)),
            on_done=lambda o: bar.advance(tasks[0]),
        )
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        result.render(out)
    _fail_if_unanswered(result.sent, result.errors)
    if result.stopped == "interrupted":
        raise typer.Exit(INTERRUPTED)


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C: a script must not read the run as complete


def _fail_if_unanswered(sent: int, failed: int) -> None:
    """Exit 1 when every request failed: a run that measured nothing must not look like a success to scripts."""
    if sent and failed == sent:
        raise PyrocastError(f"none of the {sent} requests was answered", "see the errors above")


def load(
    shape: str = typer.Option("constant", "--shape", "-s", help="constant, ramp, spike or diurnal."),
    users: int = typer.Option(10, "--users", "-u", help="Most simulated users at once."),
    duration: float = typer.Option(30.0, "--duration", "-d", help="Length of the whole shape, in seconds."),
    gateway: str | None = GATEWAY,
    host: str | None = old_gateway_name("--host"),
    coordinates: float = typer.Option(
        0.25, "--coordinates", help="Share of requests that send coordinates instead of an image."
    ),
    wait_min: float = typer.Option(0.1, "--wait-min", help="Shortest think time between a user's requests (s)."),
    wait_max: float = typer.Option(0.5, "--wait-max", help="Longest think time between a user's requests (s)."),
    tiles: int = typer.Option(200, "--tiles", help="Test tiles to draw requests from."),
    split: str = typer.Option("test", "--split", help="Split the tiles come from."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Load-test the gateway with Locust (headless): throughput, p50/p95/p99 latency and errors per stage."""
    from pyrocast.simulate.load import run_load
    from pyrocast.simulate.shapes import build_stages

    url = pick_gateway(gateway, host, "--host")
    build_stages(shape, users, duration)  # a bad shape fails before any progress bar
    s = settings(data_dir)
    with progress() as bar:
        tasks: list[TaskID] = []  # added once Locust runs, so that a refused argument or gateway draws no bar

        def tick(elapsed: float, stage: str) -> None:
            if not tasks:
                tasks.append(bar.add_task(f"load ({shape})", total=duration))
            bar.update(tasks[0], completed=elapsed, description=f"load ({shape}): {stage}")

        result = run_load(
            s,
            shape,
            users,
            duration,
            url,
            split=split,
            tiles=tiles,
            coordinates_share=coordinates,
            wait_s=(wait_min, wait_max),
            on_progress=tick,
        )
        if tasks and not result.stopped_early:
            bar.update(tasks[0], completed=duration)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        result.render(out)
    _fail_if_unanswered(result.total.requests, result.total.failures)
    if result.interrupted:
        raise typer.Exit(INTERRUPTED)
