"""The training pipeline (ZenML): load -> tune -> train -> evaluate -> export -> explain -> register -> decide
-> notify.

Each step is a thin call into a plain function (`pyrocast.model.*`, `pyrocast.registry.*`, `pyrocast.notify`)
plus its MLflow logging. Steps hand each other small JSON dicts of paths and numbers, never torch objects:
the trained model is written once to `Settings.root/runs/<run>/trained.pt` by the train step and read back by
the steps that need it. That keeps ZenML's artifact store small (no multi-MB pickles per step), keeps every
file of a run in one folder, and lets each step's time be measured on its own.

ZenML's MLflow experiment tracker opens one MLflow run per pipeline run (named like the ZenML run) and makes
it active inside each step; steps write to it through an explicit client on `Settings.mlflow_tracking_uri`.
`run_training` is the entry point: it checks the tracking store, sets ZenML up in the data directory, runs the
pipeline, and turns a failure (or Ctrl-C) into a clear error, a failed MLflow run and a notification. No
alias moves before the decide step, so an interrupted run leaves the registry as it was.
"""

# No `from __future__ import annotations` here: ZenML reads the steps' annotations as live types.
import contextlib
import csv
import functools
import json
import logging
import re
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyrocast.database import release_abandoned_sqlite
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.pipelines import zenml_env
from pyrocast.pipelines.zenml_env import TRACKER
from pyrocast.settings import Settings

zenml_env.prepare_import()
from zenml import get_step_context, pipeline, step  # noqa: E402  (after prepare_import, on purpose)

zenml_env.detach_stdout_logging()

log = logging.getLogger(__name__)

PIPELINE = "pyrocast_training"
STEPS = ("load", "tune", "train", "evaluate", "export", "explain", "register", "decide", "notify")
SECRET_FIELDS = {"mapbox_token", "notify_urls", "admin_token"}
TRAINED = "trained.pt"
CALIB_TILES = 32  # INT8 calibration tiles (training split)
EXPORT_EVAL_TILES = 64  # tiles (validation split) on which export measures ONNX against torch
EXPLAIN_TILES = 6


# --- plumbing shared by the steps -----------------------------------------------------------------


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as a JSON-able dict for step parameters; secrets stay out (steps re-read them from the env)."""
    return settings.model_dump(mode="json", exclude=SECRET_FIELDS)


def _settings(cfg: dict[str, Any]) -> Settings:
    return Settings(**cfg["settings"])


def _profile(cfg: dict[str, Any]) -> Any:
    """The run's Profile: a named one, with test/CLI overrides applied (lists back to tuples)."""
    from pyrocast.model.profiles import get_profile

    prof = get_profile(cfg["profile"])
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.get("overrides") or {}).items()}
    if over.get("networks"):
        over["networks"] = tuple(dict(n) for n in over["networks"])
    return replace(prof, **over) if over else prof


def _run_dir(cfg: dict[str, Any]) -> Path:
    d = Path(cfg["run_dir"])
    d.mkdir(parents=True, exist_ok=True)
    return d


def _mlflow_run_id() -> str:
    """The MLflow run ZenML's experiment tracker opened for this pipeline run."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise PyrocastError("no active MLflow run inside the step", "the stack's experiment tracker is missing")
    return run.info.run_id


class _Tracker:
    """Logging into the pipeline run's MLflow run through an explicit client."""

    def __init__(self, settings: Settings) -> None:
        from pyrocast.registry.mlflow_store import get_client

        self.client = get_client(settings, check=False)
        self.run_id = _mlflow_run_id()

    def params(self, values: dict[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Param

        items = []
        for k, v in values.items():
            if isinstance(v, dict | list | tuple):
                v = json.dumps(v, default=str)
            items.append(Param(f"{prefix}{k}", str(v)[:6000]))
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, values: dict[str, Any], prefix: str = "", step: int = 0) -> None:
        """Numeric leaves of `values` (nested keys joined by `_`) in one batch per 1000."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(f"{prefix}{k}"), v, now, step) for k, v in _numeric(values).items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)


def metric_name(key: str) -> str:
    """A key MLflow accepts as a metric name (`brightness_+10%` -> `brightness_plus10pct`)."""
    key = key.replace("+", "plus").replace("%", "pct").replace("-", "minus")
    return re.sub(r"[^A-Za-z0-9_.:/ ]", "_", key)


def _numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts to `a_b` keys, keeping finite numbers (bools and None dropped)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numeric(v, f"{key}_"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
            out[key] = float(v)
    return out


def _timed(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _save_trained(trained: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(trained, tmp)
    tmp.replace(path)


def _load_trained(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise PyrocastError(f"the trained model {path} is missing", "re-run `pyrocast train`")
    # Our own file, written by the train step of this run: unpickling it is safe.
    return torch.load(path, weights_only=False)


def _predictions(evaluated: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the evaluation's predictions CSV: the test tiles it could decode, with label and P(wildfire)."""
    with Path(evaluated["predictions_csv"]).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _sample_tiles(root: Path, split: str, k: int, seed: int) -> Iterator[tuple[Any, int]]:
    """Up to k decodable tiles of a training-side split with their labels, one at a time, read through the
    held-out guard."""
    import random

    from pyrocast.data.access import training_view
    from pyrocast.data.layout import CLASSES

    view = training_view(root)
    records = view.records(split)
    random.Random(seed).shuffle(records)
    n = 0
    for rec in records:
        if n >= k:
            break
        try:
            img = view.open_image(rec)
        except InvalidInputError:
            continue  # corrupt tiles were reported by load; they must not stop export
        n += 1
        yield img, CLASSES.index(rec.label)


def _sample_images(root: Path, split: str, k: int, seed: int) -> tuple[list[Any], list[int]]:
    """Up to k decodable tiles (and labels) of a training-side split, in memory."""
    pairs = list(_sample_tiles(root, split, k, seed))
    return [img for img, _ in pairs], [label for _, label in pairs]


FAILURE = "failure.json"


def _record_failure(cfg: dict[str, Any], name: str, exc: BaseException) -> None:
    """Keep what failed where `run_training` can read it: ZenML re-raises step errors as a bare RuntimeError."""
    from pyrocast.data.layout import atomic_write

    record = {
        "step": name,
        "type": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "hint": getattr(exc, "hint", None),
        "user_error": isinstance(exc, PyrocastError),
        "traceback": traceback.format_exc(),
    }
    try:
        atomic_write(_run_dir(cfg) / FAILURE, json.dumps(record, indent=2).encode())
    except Exception:  # the original error matters more than its record
        log.exception("could not record the failure of step %s", name)


def _recording(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Record a step's exception (with its traceback) in the run folder, then let it propagate."""

    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(fn)
        def wrapper(cfg: dict, *args: Any, **kwargs: Any) -> dict:
            try:
                return fn(cfg, *args, **kwargs)
            except BaseException as exc:
                _record_failure(cfg, name, exc)
                raise

        return wrapper

    return deco


# --- steps ---------------------------------------------------------------------------------------


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("load")
def load_step(cfg: dict) -> dict:
    """Prepare the split dataset (import/split PATH if given) and record lineage on the run."""
    from pyrocast.data.layout import Dataset
    from pyrocast.model.data import preparation_info, prepare_dataset
    from pyrocast.registry.lineage import data_version, git_info, lineage_tags

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    root = Path(prepare_dataset(s, Path(cfg["data"]) if cfg.get("data") else None))
    counts: dict[str, dict[str, int]] = {}
    for (split, label, _src), n in Dataset(root).counts().items():
        counts.setdefault(split, {}).setdefault(label, 0)
        counts[split][label] += n
    info = data_version(s) if root.resolve() == s.dataset_dir.resolve() else _folder_version(root, cfg.get("data"))
    git = git_info()
    tags = lineage_tags(
        s,
        zenml_run_id=str(get_step_context().pipeline_run.id),
        run_name=cfg["run_name"],
        profile=cfg["profile"],
        seed=cfg["seed"],
        data_info=info,
        git=git,
    )
    tr.tags(tags)
    tr.params({"profile": cfg["profile"], "seed": cfg["seed"], "data": cfg.get("data") or str(s.dataset_dir)})
    tr.metrics({f"n_{split}": sum(c.values()) for split, c in counts.items()})
    # A folder given with --data was imported: its corrupt tiles were quarantined, say how many and which.
    prep = preparation_info(root)
    quarantined = int(prep.get("quarantined") or 0)
    tr.metrics({"data_quarantined": quarantined})
    if quarantined:
        log.warning("%d tiles of %s could not be used and were quarantined", quarantined, cfg.get("data"))
        tr.tags({"pyrocast.quarantined_files": json.dumps(prep.get("quarantined_files", [])[:50], default=str)})
    return {
        "root": str(root),
        "counts": counts,
        "lineage": tags,
        "quarantined": quarantined,
        "quarantined_files": json.loads(json.dumps(prep.get("quarantined_files", [])[:20], default=str)),
        "seconds": _timed(t0),
    }


def _folder_version(root: Path, data: str | None) -> dict[str, Any]:
    """A version label for a dataset outside the data directory: the hash of its manifest."""
    import hashlib

    mf = root / "manifest.csv"
    digest = hashlib.sha256(mf.read_bytes()).hexdigest() if mf.is_file() else None
    return {"id": f"folder-{digest[:12]}" if digest else "folder-unversioned", "path": data or str(root)}


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("tune")
def tune_step(cfg: dict, loaded: dict) -> dict:
    """Optuna search over the profile's space; logs the best parameters and the trial counts."""
    from pyrocast.model.tune import tune

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    result = tune(Path(loaded["root"]), s, _profile(cfg), cfg["seed"])
    best = dict(result.best_params)
    tr.params(best, prefix="best_")
    tr.metrics({"best_value": result.best_value, "trials": result.n_trials, "pruned": result.n_pruned}, prefix="tune_")
    trials_path = _run_dir(cfg) / "trials.json"
    trials_path.write_text(json.dumps(getattr(result, "trials", []), indent=2, default=str))
    tr.artifact(trials_path, "tuning")
    return {
        "best_params": json.loads(json.dumps(best, default=str)),
        "best_value": result.best_value,
        "n_trials": result.n_trials,
        "n_pruned": result.n_pruned,
        "study_name": result.study_name,
        "seconds": _timed(t0),
    }


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("train")
def train_step(cfg: dict, loaded: dict, tuned: dict) -> dict:
    """Train the best configuration (early stopping on valid); the model goes to the run folder."""
    from pyrocast.model.train import train_model

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    trained = train_model(Path(loaded["root"]), tuned["best_params"], s, _profile(cfg), cfg["seed"])
    path = _run_dir(cfg) / TRAINED
    _save_trained(trained, path)
    valid = dict(getattr(trained, "valid_metrics", {}) or {})
    tr.metrics(valid, prefix="valid_")
    for epoch, row in enumerate(getattr(trained, "history", None) or []):
        if isinstance(row, dict):
            tr.metrics(row, prefix="epoch_", step=epoch)
    return {"model": str(path), "valid_metrics": json.loads(json.dumps(valid, default=str)), "seconds": _timed(t0)}


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("evaluate")
def evaluate_step(cfg: dict, loaded: dict, trained: dict) -> dict:
    """Test-split metrics, slices, behavioural checks and plots (PNG artifacts)."""
    from pyrocast.model.evaluate import evaluate_model

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    out = _run_dir(cfg) / "evaluation"
    res = evaluate_model(_load_trained(Path(trained["model"])), Path(loaded["root"]), out, seed=cfg["seed"])
    metrics = {k: v for k, v in res.metrics.items() if k != "skipped_files"}
    tr.metrics(metrics, prefix="test_")
    tr.metrics(res.behaviour, prefix="behaviour_")
    for p in res.plots:
        tr.artifact(Path(p), "plots")
    tr.artifact(Path(res.predictions_csv), "evaluation")
    if res.summary_json:
        tr.artifact(Path(res.summary_json), "evaluation")
    if res.metrics.get("skipped"):
        log.warning("%d test tiles could not be decoded and were skipped", res.metrics["skipped"])
    return json.loads(
        json.dumps(
            {
                "metrics": res.metrics,
                "slices": res.slices,
                "behaviour": res.behaviour,
                "plots": [str(p) for p in res.plots],
                "predictions_csv": str(res.predictions_csv),
                "seconds": _timed(t0),
            },
            default=str,
        )
    )


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("export")
def export_step(cfg: dict, loaded: dict, trained: dict) -> dict:
    """FP32 + INT8 ONNX bundle, measured against torch on validation tiles."""
    from pyrocast.model.export import export_bundle

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    root = Path(loaded["root"])
    calib, _ = _sample_images(root, "train", CALIB_TILES, cfg["seed"])
    images, labels = _sample_images(root, "valid", EXPORT_EVAL_TILES, cfg["seed"] + 1)
    if not images:  # a tiny dataset without valid tiles still gets measured, on training tiles
        images, labels = _sample_images(root, "train", EXPORT_EVAL_TILES, cfg["seed"] + 1)
    import numpy as np

    from pyrocast.monitoring.reference import REFERENCE_TILES, reference_png, reference_rows

    # The drift reference: what the tiles this model learned from look like (the gateway stores the same numbers).
    reference = reference_rows(_sample_tiles(root, "train", REFERENCE_TILES, cfg["seed"] + 2))
    meta = {
        "name": s.mlflow.model_name,
        "run_id": tr.run_id,
        "run_name": cfg["run_name"],
        "profile": cfg["profile"],
        "data_version": loaded["lineage"].get("pyrocast.data_version"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    res = export_bundle(
        _load_trained(Path(trained["model"])),
        calib,
        images,
        np.asarray(labels),
        _run_dir(cfg) / "bundle",
        meta,
        reference=reference,
    )
    tr.metrics(res.measurements, prefix="export_")
    if reference:
        tr.artifact(reference_png(reference, _run_dir(cfg) / "reference_stats.png"), "plots")
    tr.params({"serve_precision": res.serve_precision})
    tr.tags({"pyrocast.serve_precision_reason": res.reason})
    return json.loads(
        json.dumps(
            {
                "bundle": str(res.root),
                "serve_precision": res.serve_precision,
                "reason": res.reason,
                "measurements": res.measurements,
                "seconds": _timed(t0),
            },
            default=str,
        )
    )


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("explain")
def explain_step(cfg: dict, loaded: dict, trained: dict, evaluated: dict) -> dict:
    """Integrated-gradients heatmaps for a handful of test tiles (the most telling right and wrong ones)."""
    import numpy as np

    from pyrocast.data.access import evaluation_view
    from pyrocast.model.explain import choose_examples, explain_tiles

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    rows = _predictions(evaluated)
    if not rows:
        return {"images": [], "seconds": _timed(t0)}
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["prob"]) for r in rows])
    picked = choose_examples(labels, probs, k=int(cfg.get("explain_tiles", EXPLAIN_TILES)))
    view = evaluation_view(Path(loaded["root"]))
    images = [view.open_image(rows[i]["path"]) for i in picked]
    paths = explain_tiles(_load_trained(Path(trained["model"])), images, labels[picked], _run_dir(cfg) / "explanations")
    for p in paths:
        tr.artifact(Path(p), "explanations")
    return {"images": [str(p) for p in paths], "seconds": _timed(t0)}


def _card(cfg: dict, s: Settings, version: str | None, ev: dict, tuned: dict, ex: dict, lineage: dict, decision=None):
    from pyrocast.registry.card import render_card

    return render_card(
        name=s.mlflow.model_name,
        version=version,
        metrics=ev["metrics"],
        slices=ev["slices"],
        behaviour=ev["behaviour"],
        params=tuned["best_params"],
        lineage=lineage,
        export={"serve_precision": ex["serve_precision"], "reason": ex["reason"]},
        decision=decision,
    )


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("register")
def register_step(cfg: dict, loaded: dict, tuned: dict, evaluated: dict, exported: dict, explained: dict) -> dict:
    """Log the model card and the bundle; register a new model version (verified complete before any alias)."""
    from pyrocast.registry.models import register_bundle

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    card_path = _run_dir(cfg) / "model_card.md"
    card_path.write_text(_card(cfg, s, None, evaluated, tuned, exported, loaded["lineage"]))
    tr.artifact(card_path)
    tags = {k: v for k, v in loaded["lineage"].items() if k != "pyrocast.data_version_info"}
    m = evaluated["metrics"]
    rv = register_bundle(
        s,
        tr.run_id,
        Path(exported["bundle"]),
        tags={**tags, "test_accuracy": str(m.get("accuracy")), "test_n": str(m.get("n"))},
        description=f"Trained by run {cfg['run_name']} (profile {cfg['profile']}); "
        f"test accuracy {m.get('accuracy', float('nan')):.4f} on {m.get('n')} tiles.",
        client=tr.client,
    )
    card_path.write_text(_card(cfg, s, rv.version, evaluated, tuned, exported, loaded["lineage"]))
    tr.artifact(card_path)
    tr.tags({"pyrocast.model_version": rv.version})
    return {"version": rv.version, "source": rv.source, "card": str(card_path), "seconds": _timed(t0)}


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("decide")
def decide_step(cfg: dict, loaded: dict, tuned: dict, evaluated: dict, exported: dict, registered: dict) -> dict:
    """Paired comparison with the champion on this run's test tiles; move an alias or record the rejection."""
    import numpy as np

    from pyrocast.model.bundle import load_bundle
    from pyrocast.registry.decide import decide

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    root = Path(loaded["root"])
    rows = _predictions(evaluated)
    paths = [root / r["path"] for r in rows]  # the tiles evaluation could decode
    labels = np.array([int(r["label"]) for r in rows])
    d = decide(s, registered["version"], load_bundle(Path(exported["bundle"])), paths, labels, tr.client, cfg["seed"])
    tr.tags({"pyrocast.decision": d.verdict, "pyrocast.decision_reason": d.reason})
    if d.comparison:
        tr.metrics(asdict(d.comparison), prefix="decision_")
    card_path = Path(registered["card"])
    card_path.write_text(
        _card(cfg, s, registered["version"], evaluated, tuned, exported, loaded["lineage"], d.as_dict())
    )
    tr.artifact(card_path)
    return json.loads(json.dumps({**d.as_dict(), "seconds": _timed(t0)}, default=str))


@step(enable_cache=False, experiment_tracker=TRACKER)
@_recording("notify")
def notify_step(cfg: dict, evaluated: dict, registered: dict, decided: dict) -> dict:
    """Announce the result (metrics, decision, version); a failed notification never fails the run."""
    from pyrocast.notify import send, training_message

    t0 = time.perf_counter()
    s = _settings(cfg)
    tr = _Tracker(s)
    title, body = training_message(
        run_name=cfg["run_name"],
        model_name=s.mlflow.model_name,
        version=registered["version"],
        verdict=decided["verdict"],
        reason=decided["reason"],
        metrics=evaluated["metrics"],
        profile=cfg["profile"],
        duration_s=time.time() - cfg["started"],
    )
    res = send(s, title, body)
    tr.tags({"pyrocast.notified": f"{res.sent}/{res.configured}"})
    return {**res.as_dict(), "seconds": _timed(t0)}


@pipeline(enable_cache=False, name=PIPELINE)
def training_pipeline(cfg: dict) -> None:
    loaded = load_step(cfg)
    tuned = tune_step(cfg, loaded)
    trained = train_step(cfg, loaded, tuned)
    evaluated = evaluate_step(cfg, loaded, trained)
    exported = export_step(cfg, loaded, trained)
    explained = explain_step(cfg, loaded, trained, evaluated)
    registered = register_step(cfg, loaded, tuned, evaluated, exported, explained)
    decided = decide_step(cfg, loaded, tuned, evaluated, exported, registered)
    notify_step(cfg, evaluated, registered, decided)


# --- entry point -----------------------------------------------------------------------------------


@dataclass
class TrainingOutcome:
    """What a training run produced, for the CLI and the scheduler."""

    run_name: str
    zenml_run_id: str
    mlflow_run_id: str | None
    version: str | None
    verdict: str
    reason: str
    metrics: dict[str, Any]
    run_dir: Path
    total_s: float
    step_s: dict[str, float] = field(default_factory=dict)  # ZenML step wall time (overhead included)
    work_s: dict[str, float] = field(default_factory=dict)  # time inside our function
    phase_s: dict[str, float] = field(default_factory=dict)  # setup (MLflow, ZenML), pipeline, collect
    notified: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # counts per split/class, quarantined tiles

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def new_run_name() -> str:
    return f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def run_training(
    settings: Settings,
    profile: str = "quick",
    data: Path | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    explain_tiles: int = EXPLAIN_TILES,
) -> TrainingOutcome:
    """Run the training pipeline once; raises PyrocastError with a clear message when it cannot finish.

    `overrides` replace fields of the named profile (e.g. fewer trials); `explain_tiles` is how many test
    tiles get attribution heatmaps.
    """
    from pyrocast.model.profiles import get_profile
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client

    get_profile(profile)  # an unknown profile fails before anything starts
    if data is not None and not Path(data).is_dir():
        raise InvalidInputError(f"{data} is not a folder", "pass a folder in the Kaggle layout {split}/{class}/*.jpg")
    t_start = time.perf_counter()
    settings.ensure_dirs()
    client = get_client(settings)  # a dead tracking server fails here, in seconds
    ensure_experiment(settings, client)  # with our artifact location, before ZenML would create it
    zenml_env.activate(settings)
    phases = {"setup": time.perf_counter() - t_start}
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

    run_name = new_run_name()
    run_dir = settings.root / "runs" / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "settings": settings_payload(settings),
        "profile": profile,
        "overrides": overrides or {},
        "data": str(Path(data).resolve()) if data else None,
        "seed": settings.seed if seed is None else int(seed),
        "run_name": run_name,
        "run_dir": str(run_dir),
        "started": time.time(),
        "explain_tiles": int(explain_tiles),
    }
    tracker = MLFlowExperimentTrackerSettings(experiment_name=settings.mlflow.experiment, nested=False)
    configured = training_pipeline.with_options(run_name=run_name, settings={"experiment_tracker": tracker})
    log.info("training run %s (profile %s); files in %s", run_name, profile, run_dir)
    with _noticing_ctrl_c() as ctrl_c:
        try:
            t_run = time.perf_counter()
            with _quiet_zenml_console():
                run = configured(cfg)
            phases["pipeline"] = time.perf_counter() - t_run
        except BaseException as exc:
            failure = _read_failure(run_dir)
            if ctrl_c and not isinstance(exc, KeyboardInterrupt):
                # ZenML's own Ctrl-C handlers query its database: caught mid-transaction they fail with another
                # error ('database is locked'). The run was interrupted all the same, and must say so.
                log.info("training run %s: Ctrl-C surfaced as %s", run_name, type(exc).__name__)
                exc = KeyboardInterrupt()
                failure = _as_interrupted(run_dir, failure)
            if ctrl_c and (released := release_abandoned_sqlite()):
                log.info(
                    "training run %s: %d database transaction(s) left open by Ctrl-C rolled back", run_name, released
                )
            _after_failure(settings, client, run_name, exc, profile, failure)
            if isinstance(exc, KeyboardInterrupt):
                raise exc from None
            raise _failure_error(run_name, run_dir, exc, failure) from None
    t_collect = time.perf_counter()
    outcome = _outcome(settings, client, run, run_name, run_dir, time.perf_counter() - t_start)
    phases["collect"] = time.perf_counter() - t_collect
    outcome.phase_s = {k: round(v, 2) for k, v in phases.items()}
    outcome.total_s = round(time.perf_counter() - t_start, 2)
    return outcome


def _step_output(run: Any, name: str) -> dict[str, Any]:
    return run.steps[name].output.load()


def _outcome(settings: Settings, client: Any, run: Any, run_name: str, run_dir: Path, total: float) -> TrainingOutcome:
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    status = str(getattr(run.status, "value", run.status))
    if status != "completed":
        raise PyrocastError(f"training run {run_name} ended as {status}", f"see {run_dir}")
    step_s: dict[str, float] = {}
    work_s: dict[str, float] = {}
    outputs: dict[str, dict[str, Any]] = {}
    for name in STEPS:
        sr = run.steps[f"{name}_step"]
        if sr.start_time and sr.end_time:
            step_s[name] = round((sr.end_time - sr.start_time).total_seconds(), 2)
        outputs[name] = _step_output(run, f"{name}_step")
        work_s[name] = float(outputs[name].get("seconds", 0.0))
    decided, registered = outputs["decide"], outputs["register"]
    mlflow_run = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow.experiment).experiment_id],
        filter_string=f"tags.mlflow.runName = '{run_name}'",
        max_results=1,
    )
    mlflow_run_id = mlflow_run[0].info.run_id if mlflow_run else None
    if mlflow_run_id:
        for name, sec in step_s.items():
            client.log_metric(mlflow_run_id, f"time_{name}_s", sec)
        client.log_metric(mlflow_run_id, "time_total_s", total)
    metrics = {k: v for k, v in outputs["evaluate"]["metrics"].items() if k not in ("skipped_files",)}
    return TrainingOutcome(
        run_name=run_name,
        zenml_run_id=str(run.id),
        mlflow_run_id=mlflow_run_id,
        version=registered.get("version"),
        verdict=decided["verdict"],
        reason=decided["reason"],
        metrics=metrics,
        run_dir=run_dir,
        total_s=round(total, 2),
        step_s=step_s,
        work_s=work_s,
        notified={k: v for k, v in outputs["notify"].items() if k != "seconds"},
        data={k: outputs["load"].get(k) for k in ("root", "counts", "quarantined", "quarantined_files")},
    )


@contextmanager
def _quiet_zenml_console() -> Iterator[None]:
    """ZenML prints a step's traceback on stdout; the user gets one clear line instead (the traceback is kept
    in the run folder's failure.json and in ZenML's step logs)."""
    logger = logging.getLogger("zenml")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _as_interrupted(run_dir: Path, failure: dict[str, Any] | None) -> dict[str, Any] | None:
    """The step's failure record, rewritten as the Ctrl-C it was (what it surfaced as is kept)."""
    if not failure or failure.get("type") == "KeyboardInterrupt":
        return failure
    from pyrocast.data.layout import atomic_write

    failure = {**failure, "surfaced_as": failure.get("type"), "type": "KeyboardInterrupt", "user_error": False}
    with contextlib.suppress(OSError):
        atomic_write(run_dir / FAILURE, json.dumps(failure, indent=2).encode())
    return failure


def _read_failure(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / FAILURE).read_text())
    except (OSError, ValueError):
        return None


def _failure_error(run_name: str, run_dir: Path, exc: BaseException, failure: dict[str, Any] | None) -> PyrocastError:
    """One clear error for a failed run: the failing step and its own message."""
    if failure:
        where = f"training run {run_name} failed in step {failure['step']}"
        if failure.get("user_error"):
            return PyrocastError(f"{where}: {failure['message']}", failure.get("hint"))
        return PyrocastError(f"{where}: {failure['type']}: {failure['message']}", f"traceback in {run_dir / FAILURE}")
    if isinstance(exc, PyrocastError):
        return PyrocastError(f"training run {run_name} failed: {exc.message}", exc.hint)
    return PyrocastError(f"training run {run_name} failed: {type(exc).__name__}: {exc}", f"see {run_dir}")


@contextmanager
def _noticing_ctrl_c() -> Iterator[list[bool]]:
    """A list that becomes [True] once SIGINT arrives while the block runs (Ctrl-C behaves as before).

    ZenML chains its step launchers' handlers to the one found when each step starts, so this one, installed
    first, always hears the signal, whatever the others raise.
    """
    seen: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        seen.append(True)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _after_failure(
    settings: Settings,
    client: Any,
    run_name: str,
    exc: BaseException,
    profile: str,
    failure: dict[str, Any] | None = None,
) -> None:
    """Mark the MLflow run failed (ZenML leaves it RUNNING on Ctrl-C) and tell the team; never raises."""
    from pyrocast.notify import send

    interrupted = isinstance(exc, KeyboardInterrupt) or bool(failure and failure["type"] == "KeyboardInterrupt")
    if failure:
        exc = PyrocastError(f"step {failure['step']}: {failure['message']}")
    try:
        import mlflow

        # Ctrl-C can skip ZenML's step clean-up and leave the run active in this process: the next run
        # (the scheduler's, a test's) would then fail to start its own.
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED" if interrupted else "FAILED")
    except Exception as inner:
        log.warning("could not close the active MLflow run: %s", inner)
    try:
        exp = client.get_experiment_by_name(settings.mlflow.experiment)
        for r in client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'"):
            client.set_tag(r.info.run_id, "pyrocast.failure", f"{type(exc).__name__}: {exc}"[:4000])
            # ZenML ends the MLflow run after every step, FINISHED when that step succeeded: the pipeline's
            # outcome is what the run must show.
            client.set_terminated(r.info.run_id, "KILLED" if interrupted else "FAILED")
    except Exception as inner:  # the original failure matters more than this bookkeeping
        log.warning("could not mark the MLflow run of %s as failed: %s", run_name, inner)
    what = "interrupted" if interrupted else f"failed: {exc}"
    send(settings, f"❌ Pyrocast training {run_name} {what.split(':')[0]}", f"Profile {profile}: {what}"[:1500])
