"""The model registry: one MLflow registered model, a version per training run, aliases, bundle fetches.

Rules this module enforces:
- a version's artifacts are the complete bundle folder (`pyrocast.model.bundle`), logged under `bundle/`
  of its run;
- an alias (`champion`, `challenger`) is only ever set after a fresh download of the version's artifacts
  passed `missing_files` (so no alias points at a model whose artifacts are incomplete);
- `fetch_bundle` downloads a version once into `Settings.root/cache/models/<name>/<version>/` (atomically:
  a temporary folder renamed into place) and stamps the registry name and version into its `meta.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrocast.data.layout import atomic_write
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.model.bundle import META, Bundle, load_bundle, missing_files
from pyrocast.registry.mlflow_store import get_client
from pyrocast.registry.refs import check_model_ref
from pyrocast.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")
BUNDLE_ARTIFACT_PATH = "bundle"
# Tags on a model version.
TAG_ARTIFACTS = "pyrocast.artifacts"  # "complete" | "incomplete: <files>"
TAG_DECISION = "pyrocast.decision"  # champion | challenger | rejected
TAG_REASON = "pyrocast.decision_reason"
# Run metrics shown by `pyrocast models`.
KEY_METRICS = ("accuracy", "f1", "roc_auc", "ece")


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by `register_bundle`."""

    name: str
    version: str
    run_id: str
    source: str


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        client.create_registered_model(
            name, description="Pyrocast wildfire-risk classifier (P(wildfire) from a satellite tile)."
        )


def register_bundle(
    settings: Settings,
    run_id: str,
    bundle_dir: Path,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    client: MlflowClient | None = None,
) -> RegisteredVersion:
    """Log a bundle folder as artifacts of `run_id` and register it as a new version of the model.

    The version is tagged `pyrocast.artifacts=complete` only after a fresh download proved the artifacts
    complete; an incomplete upload leaves the version tagged incomplete and raises.
    """
    bundle_dir = Path(bundle_dir)
    miss = missing_files(bundle_dir)
    if miss:
        raise PyrocastError(
            f"bundle {bundle_dir} is incomplete (missing {', '.join(miss)}); nothing was registered",
            "re-run the export step",
        )
    client = client or get_client(settings)
    name = settings.mlflow.model_name
    client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT_PATH)
    ensure_registered_model(client, name)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT_PATH}"
    mv = client.create_model_version(
        name, source, run_id=run_id, tags=dict(tags or {}), description=description or None
    )
    version = str(mv.version)
    verify_version(settings, version, client=client)
    return RegisteredVersion(name, version, run_id, source)


def _download(client: MlflowClient, tracking_uri: str, name: str, version: str, into: Path) -> tuple[Path, Path]:
    """Download a version's artifacts into a new temporary folder under `into`: (temp folder, bundle folder).

    The tracking URI is passed explicitly: a server's `mlflow-artifacts:` URIs are resolved against it, and
    the process-global one may point elsewhere (ZenML's tracker sets and resets it).
    """
    import mlflow

    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=into))
    uri = client.get_model_version_download_uri(name, version)
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking_uri))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PyrocastError(
            f"could not download the artifacts of {name} version {version} ({type(exc).__name__}: {exc})",
            "check the artifact store",
        ) from None
    # download_artifacts puts the folder's contents under tmp/<last path element>
    return tmp, (got if got.is_dir() else tmp)


def verify_version(settings: Settings, version: str, client: MlflowClient | None = None) -> list[str]:
    """Download a version's artifacts afresh and tag the version complete or incomplete.

    Returns the missing bundle files (empty when complete). The verified download seeds the bundle cache.
    """
    client = client or get_client(settings)
    name = settings.mlflow.model_name
    cache = cache_dir(settings, version)
    try:
        tmp, got = _download(client, settings.mlflow_tracking_uri, name, version, cache.parent)
    except PyrocastError as exc:
        client.set_model_version_tag(name, version, TAG_ARTIFACTS, "incomplete: download failed")
        raise PyrocastError(f"{exc.message}; version {version} gets no alias", exc.hint) from None
    try:
        miss = missing_files(got)
        if miss:
            client.set_model_version_tag(name, version, TAG_ARTIFACTS, f"incomplete: {', '.join(miss)}")
            return miss
        client.set_model_version_tag(name, version, TAG_ARTIFACTS, "complete")
        _stamp_meta(got, client, name, version)
        _move_into_cache(got, cache)
        return []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stamp_meta(folder: Path, client: MlflowClient, name: str, version: str) -> None:
    """Put the registry identity into the bundle's meta.json: servers report it with every prediction."""
    meta_path = folder / META
    meta = json.loads(meta_path.read_text())
    mv = client.get_model_version(name, version)
    meta.update({"name": name, "version": str(version), "run_id": mv.run_id})
    atomic_write(meta_path, json.dumps(meta, indent=2, default=str).encode())


CACHE_MANIFEST = ".sha256.json"  # each file of a cached bundle and its digest, written as it enters the cache


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != CACHE_MANIFEST
    }


# Caches whose digests matched, with the sizes and times of their files then: the explainer asks for a bundle at
# every heatmap, and hashing 31 MB each time (about 40 ms, under its lock) is not needed for files unchanged since.
_checked: dict[Path, tuple[tuple[str, int, int], ...]] = {}


def _files_now(cache: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in sorted(cache.rglob("*")) if f.is_file())


def _intact(cache: Path) -> bool:
    """Whether a cached bundle is complete and each of its files is what was downloaded (a file cut short or
    overwritten made every classifier start fail with ONNX Runtime's INVALID_PROTOBUF, and `up` with it). A cache
    from before the manifest is taken as complete (its next verified download replaces it: `_move_into_cache`)."""
    try:
        if not cache.is_dir() or missing_files(cache):
            return False
        manifest_path = cache / CACHE_MANIFEST
        if not manifest_path.exists():
            return True
        files = _files_now(cache)
        if _checked.get(cache) == files:
            return True
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict) or manifest != _digests(cache):
            return False
    except (OSError, ValueError):  # a file that cannot be read is as damaged as one that differs
        return False
    _checked[cache] = files
    return True


def _cached(cache: Path) -> bool:
    """A cached bundle fit to load; a damaged one is removed (and said), so that it is downloaded again."""
    if _intact(cache):
        return True
    if cache.exists():
        log.warning("model cache %s is damaged (a file differs from the download); it is downloaded again", cache)
        shutil.rmtree(cache, ignore_errors=True)
    return False


def _move_into_cache(folder: Path, cache: Path) -> None:
    if (cache / CACHE_MANIFEST).exists() and _intact(cache):
        return  # another process (or an earlier fetch) already put a checked copy there
    # (A cache from before the manifest is replaced: this verified download is the only way to check it.)
    atomic_write(folder / CACHE_MANIFEST, json.dumps(_digests(folder), indent=1).encode())
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)
    try:
        folder.rename(cache)
    except OSError:
        # a concurrent fetch won the race; its copy is as good as ours
        if missing_files(cache):
            raise


def cache_dir(settings: Settings, version: str) -> Path:
    return settings.root / "cache" / "models" / settings.mlflow.model_name / str(version)


def resolve_version(settings: Settings, ref: str, client: MlflowClient | None = None) -> ModelVersion:
    """A model version from a reference: an alias (`champion`, `challenger`), `latest`, or a number."""
    from mlflow.exceptions import MlflowException

    ref = check_model_ref(ref)
    client = client or get_client(settings)
    name = settings.mlflow.model_name
    try:
        if ref.isdigit() or (ref[:1] in "vV" and ref[1:].isdigit()):
            return client.get_model_version(name, ref.lstrip("vV"))
        if ref == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise PyrocastError(f"model {name!r} has no versions yet", "train one with `pyrocast train`")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        if _is_not_found(exc):
            what = f"version {ref}" if ref.lstrip("vV").isdigit() else f"alias {ref!r}"
            raise PyrocastError(
                f"model {name!r} has no {what}", "see `pyrocast models` for what is registered"
            ) from None
        raise


def fetch_bundle(settings: Settings, ref: str) -> Bundle:
    """The bundle of a registered version (`champion`, `challenger`, `latest` or a number), cached locally.

    The first call downloads it to `Settings.root/cache/models/<name>/<version>/`; later calls reuse it.
    """
    cache_root = settings.root / "cache" / "models" / settings.mlflow.model_name
    if str(ref).isdigit():  # a version number needs no registry round trip once cached
        cached = cache_root / str(ref)
        if _cached(cached):
            return load_bundle(cached)
    client = get_client(settings)
    mv = resolve_version(settings, ref, client)
    version = str(mv.version)
    cached = cache_dir(settings, version)
    if _cached(cached):
        return load_bundle(cached)
    miss = verify_version(settings, version, client)
    if miss:
        raise PyrocastError(
            f"{settings.mlflow.model_name} version {version} has incomplete artifacts (missing {', '.join(miss)})",
            "register a new version with `pyrocast train`",
        )
    return load_bundle(cached)


def set_alias(settings: Settings, alias: str, version: str, client: MlflowClient | None = None) -> None:
    """Point `alias` at `version`, after checking a fresh download of its artifacts is complete."""
    if alias not in ALIASES:
        raise InvalidInputError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    client = client or get_client(settings)
    name = settings.mlflow.model_name
    version = str(version)
    resolve_version(settings, version, client)  # a clear error for an unknown version
    miss = verify_version(settings, version, client)
    if miss:
        raise PyrocastError(
            f"{name} version {version} has incomplete artifacts (missing {', '.join(miss)}); alias {alias!r} not moved"
        )
    client.set_registered_model_alias(name, alias, version)
    log.info("alias %s -> %s version %s", alias, name, version)


def move_aliases(settings: Settings, targets: dict[str, str], client: MlflowClient | None = None) -> None:
    """Point several aliases at their versions, all or none: every version is checked first (as `set_alias` does),
    and when the registry fails part-way the aliases already moved are put back where they were."""
    client = client or get_client(settings)
    name = settings.mlflow.model_name
    for alias, version in targets.items():
        if alias not in ALIASES:
            raise InvalidInputError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
        resolve_version(settings, str(version), client)
        miss = verify_version(settings, str(version), client)
        if miss:
            raise PyrocastError(
                f"{name} version {version} has incomplete artifacts (missing {', '.join(miss)}); no alias moved"
            )
    was = aliases(settings, client)
    try:
        for alias, version in targets.items():
            client.set_registered_model_alias(name, alias, str(version))
    except Exception:
        # Every target, not only those known moved: a call that failed (a timeout) may have been applied.
        put_back_aliases(settings, was, list(targets), client)
        raise
    for alias, version in targets.items():
        log.info("alias %s -> %s version %s", alias, name, version)


def put_back_aliases(
    settings: Settings, was: dict[str, str], names: list[str], client: MlflowClient | None = None
) -> None:
    """The aliases `names` back where they were (`was`: absent ones removed), after a move that failed part-way; one
    the registry refuses is logged with where it may be left."""
    client = client or get_client(settings)
    for alias in names:
        try:
            if alias in was:
                client.set_registered_model_alias(settings.mlflow.model_name, alias, was[alias])
            else:
                delete_alias(settings, alias, client)
        except Exception:  # the registry is gone altogether: say what is left where
            log.exception(
                "alias %s may point at the new version: it could not be put back to %s", alias, was.get(alias)
            )


def delete_alias(settings: Settings, alias: str, client: MlflowClient | None = None) -> None:
    """Remove an alias (no error when it is not set)."""
    from mlflow.exceptions import MlflowException

    client = client or get_client(settings)
    try:
        client.delete_registered_model_alias(settings.mlflow.model_name, alias)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise


def aliases(settings: Settings, client: MlflowClient | None = None) -> dict[str, str]:
    """alias -> version of the registered model ({} when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    client = client or get_client(settings)
    try:
        rm = client.get_registered_model(settings.mlflow.model_name)
    except MlflowException as exc:
        if _is_not_found(exc):
            return {}
        raise
    return {str(k): str(v) for k, v in (rm.aliases or {}).items()}


def decision_of(settings: Settings, version: str) -> tuple[str | None, str | None]:
    """The training decision recorded on a version (champion | challenger | rejected) and its reason."""
    tags = dict(get_client(settings).get_model_version(settings.mlflow.model_name, str(version)).tags or {})
    return tags.get(TAG_DECISION), tags.get(TAG_REASON)


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, key test metrics, decision, artifact state, lineage."""
    client = get_client(settings)
    name = settings.mlflow.model_name
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases(settings, client).items():
        by_version.setdefault(version, []).append(alias)
    rows: list[dict[str, Any]] = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        metrics: dict[str, float] = {}
        run_tags: dict[str, str] = {}
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
                metrics, run_tags = dict(run.data.metrics), dict(run.data.tags)
            except Exception:  # a deleted run must not hide the version
                pass
        tags = dict(mv.tags or {})
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
                **{k: metrics.get(f"test_{k}", metrics.get(k)) for k in KEY_METRICS},
                "n_test": metrics.get("test_n"),
                # The exported model as served (its precision, INT8 or FP32), on the test tiles, where the decision
                # compared it with a champion; `accuracy` is the trained (torch) model's.
                "served_accuracy": metrics.get("decision_new_accuracy"),
                "decision": tags.get(TAG_DECISION),
                "reason": tags.get(TAG_REASON),
                "artifacts": tags.get(TAG_ARTIFACTS, "unverified"),
                "profile": run_tags.get("pyrocast.profile"),
                "data_version": run_tags.get("pyrocast.data_version"),
                "git_commit": run_tags.get("pyrocast.git_commit"),
            }
        )
    return rows
