"""ZenML set-up, isolated in the data directory.

ZenML keeps a global configuration and a local SQLite store; by default both live in the user's home
(`~/.config/zenml`). Pyrocast points them at `Settings.root/zenml/` so that each data directory (and each
test) has its own runs, stacks and artifacts, and nothing leaks between projects. The environment variables
must be set before `zenml` reads them: `activate(settings)` sets them and resets ZenML's singletons, so a
process can switch data directories (tests do).

The stack `pyrocast`: the local orchestrator and artifact store, plus the MLflow experiment tracker
`pyrocast-mlflow` registered with an explicit tracking URI (`Settings.mlflow_tracking_uri`; ZenML's own
default would be a file store, which MLflow 3 refuses).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from pyrocast.errors import PyrocastError
from pyrocast.registry.mlflow_store import is_remote, quiet_mlflow_env
from pyrocast.settings import Settings

log = logging.getLogger(__name__)

STACK = "pyrocast"
TRACKER = "pyrocast-mlflow"
# Placeholder credential: ZenML insists on one for an http(s) tracking URI, an open MLflow server ignores it.
NO_AUTH_TOKEN = "pyrocast-no-auth"


def zenml_home(settings: Settings) -> Path:
    return settings.root / "zenml"


def set_env(settings: Settings) -> bool:
    """Point ZenML at the data directory; True when this changed where ZenML looks."""
    home = zenml_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    wanted = {
        "ZENML_CONFIG_PATH": str(home),
        "ZENML_LOCAL_STORES_PATH": str(home / "local_stores"),
        # no `.zen` repository discovered in the current directory: a user's own ZenML repo stays out of it
        "ZENML_REPOSITORY_PATH": str(home),
    }
    changed = any(os.environ.get(k) != v for k, v in wanted.items())
    os.environ.update(wanted)
    prepare_import()
    return changed


def prepare_import() -> None:
    """Environment ZenML reads when it is imported: quiet, offline, no print() wrapping.

    Call before `import zenml` (pipelines.training does): ZenML otherwise wraps print() globally, echoing
    every line through its log handlers, and logs its set-up chatter at INFO.
    """
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_REPO_INIT_WARNINGS", "false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "ERROR")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")
    os.environ.setdefault("ZENML_CAPTURE_PRINTS", "false")
    os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")


def detach_stdout_logging() -> None:
    """Remove the stdout handler ZenML adds to the root logger on import.

    Log lines on stdout would corrupt `--json` output; Pyrocast's CLI logs to stderr.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
            root.removeHandler(h)


def activate(settings: Settings) -> str:
    """Configure ZenML for `settings` and make the `pyrocast` stack active; returns the stack name.

    The first call on a fresh data directory creates ZenML's database (about 10 s).
    """
    quiet_mlflow_env()
    changed = set_env(settings)
    t0 = time.perf_counter()
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    if changed:
        GlobalConfiguration._reset_instance()
        Client._reset_instance()
    client = Client()
    _ensure_tracker(client, settings)
    _ensure_stack(client)
    if client.active_stack_model.name != STACK:
        client.activate_stack(STACK)
    log.debug("zenml ready in %.1f s (%s)", time.perf_counter() - t0, zenml_home(settings))
    return STACK


def tracker_configuration(settings: Settings) -> dict[str, object]:
    """The experiment tracker's configuration for the configured tracking URI."""
    uri = settings.mlflow_tracking_uri
    conf: dict[str, object] = {"tracking_uri": uri}
    if is_remote(uri):
        user, pw = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and pw:
            conf.update(tracking_username=user, tracking_password=pw)
        else:
            conf["tracking_token"] = token or NO_AUTH_TOKEN
    return conf


def _ensure_tracker(client: object, settings: Settings) -> None:
    conf = tracker_configuration(settings)
    try:
        comp = client.get_stack_component("experiment_tracker", TRACKER)  # type: ignore[attr-defined]
    except KeyError:
        try:
            client.create_stack_component(TRACKER, "mlflow", "experiment_tracker", configuration=conf)  # type: ignore[attr-defined]
        except Exception as exc:
            raise PyrocastError(f"could not register ZenML's MLflow experiment tracker: {exc}") from None
        return
    # Credentials may have changed in the environment since the last run: resync them for a server.
    uri = str(conf["tracking_uri"])
    if (comp.configuration or {}).get("tracking_uri") != uri or is_remote(uri):
        client.update_stack_component(TRACKER, "experiment_tracker", configuration=conf)  # type: ignore[attr-defined]


def _ensure_stack(client: object) -> None:
    try:
        client.get_stack(STACK)  # type: ignore[attr-defined]
    except KeyError:
        client.create_stack(  # type: ignore[attr-defined]
            STACK,
            components={"orchestrator": "default", "artifact_store": "default", "experiment_tracker": TRACKER},
        )
