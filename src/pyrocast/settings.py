"""One typed settings object, read from `pyrocast.yaml` and `PYROCAST_*` variables.

Every default is embedded (SQLite, local folders, the synthetic region) so that the system runs with zero
configuration; production backends are swapped in by configuration alone. Secrets are `SecretStr` and are
only ever read from the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pyrocast.database import sqlalchemy_url


class Region(BaseModel):
    """Geographic bounds (degrees) of the synthetic region; southern Quebec by default."""

    name: str = "southern-quebec"
    lon_min: float = -76.0
    lon_max: float = -71.0
    lat_min: float = 45.0
    lat_max: float = 47.5

    def contains(self, lon: float, lat: float) -> bool:
        return self.lon_min <= lon <= self.lon_max and self.lat_min <= lat <= self.lat_max


class SplitSettings(BaseModel):
    cell_km: float = 10.0
    seed: int = 42
    train: float = 0.70
    valid: float = 0.15
    test: float = 0.15


class ImagerySettings(BaseModel):
    """Which imagery provider answers 'what does this coordinate look like?'."""

    provider: Literal["synthetic", "mapbox", "xyz", "folder"] = "synthetic"
    # XYZ template, e.g. http://127.0.0.1:9000/{z}/{x}/{y}.jpg
    xyz_url: str | None = None
    mapbox_url: str = "https://api.mapbox.com"
    mapbox_style: str = "mapbox/satellite-v9"
    folder: Path | None = None
    folder_radius_m: float = 500.0
    zoom: int = 15
    timeout_s: float = 20.0
    # Retries (exponential backoff) of one image or tile request on 5xx, 429 and connection errors.
    retries: int = 3
    backoff_s: float = 0.5


class FeedSettings(BaseModel):
    # None means the synthetic region's own feed: nothing reaches the internet by default.
    url: str | None = None
    days: int = 7
    negatives_per_fire: float = 1.0
    retries: int = 4
    backoff_s: float = 0.5


class DvcSettings(BaseModel):
    # None means a local folder inside the data directory.
    remote_url: str | None = None
    s3_endpoint_url: str | None = None


class MlflowSettings(BaseModel):
    tracking_uri: str | None = None  # None: sqlite under the data dir
    artifact_root: str | None = None  # None: folder under the data dir
    model_name: str = "pyrocast-wildfire"
    experiment: str = "pyrocast"
    port: int = 5000
    # Where people open the MLflow UI from their browsers (a proxy, another host name); None: the tracking
    # server when it is one, else the UI `pyrocast up` starts on serving.host.
    ui_url: str | None = None


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    webapp_port: int = 8080
    champion_port: int = 3000
    challenger_port: int = 3001
    explainer_port: int = 3002
    # False where no explainer runs (`pyrocast up --no-explainer`): the gateway then neither probes nor reports it.
    explainer: bool = True
    precision: Literal["fp32", "int8", "auto"] = "auto"
    # Where the classifiers run their model: cuda needs onnxruntime-gpu and an NVIDIA GPU (serve fp32 there).
    device: Literal["cpu", "cuda"] = "cpu"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_batch_size: int = 32
    # BentoML's max_latency_ms is a deadline, not the batching window (which adapts below it): a request
    # expected to wait longer is refused with 503 (load shedding). 20 ms shed most of a 32-client burst on
    # 2 cores, 2000 ms a third of one on a busy machine; 10 s sheds only under real overload.
    max_latency_ms: int = 10_000
    # Requests a classifier holds at once (BentoML's max_concurrency): past it, it answers 429, which the gateway
    # takes as a busy backend (the champion answers for a challenger), never as the client's fault.
    max_concurrency: int = Field(256, ge=1)
    # How long the gateway waits for one heatmap: a busy explainer (a queue of large uploads) may take a while, and
    # running out of it is a 503 for that caller only, not a sign that the explainer is down.
    explain_timeout_s: float = 120.0


class Settings(BaseSettings):
    """Pyrocast configuration. Precedence: init args > environment > pyrocast.yaml > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="PYROCAST_",
        env_nested_delimiter="__",
        extra="ignore",
        yaml_file=os.environ.get("PYROCAST_CONFIG", "pyrocast.yaml"),
    )

    data_dir: Path = Path(".pyrocast")
    seed: int = 42
    region: Region = Field(default_factory=Region)
    # Where real tiles may lie (the province of Quebec); file names outside it are a validation error.
    dataset_bounds: Region = Field(
        default_factory=lambda: Region(name="quebec", lon_min=-79.8, lon_max=-57.0, lat_min=44.9, lat_max=62.6)
    )
    split: SplitSettings = Field(default_factory=SplitSettings)
    imagery: ImagerySettings = Field(default_factory=ImagerySettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    dvc: DvcSettings = Field(default_factory=DvcSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    optuna_storage: str | None = None  # None: sqlite under the data dir; a PostgreSQL URL shares a study
    store_url: str | None = None  # prediction store; None: sqlite (WAL) under the data dir
    imbalance_threshold: float = 0.25  # minority share below which validation warns

    # Secrets: environment only (PYROCAST_MAPBOX_TOKEN, PYROCAST_NOTIFY_URLS, PYROCAST_ADMIN_TOKEN).
    mapbox_token: SecretStr | None = None
    notify_urls: SecretStr | None = None
    admin_token: SecretStr | None = None

    def model_post_init(self, __context: Any) -> None:
        # Whatever a library echoes of them (a webhook URL, a token in a request) is scrubbed from logs and answers.
        from pyrocast.errors import add_secrets, url_password

        urls = self.notify_urls.get_secret_value() if self.notify_urls else ""
        add_secrets(
            *(s.get_secret_value() for s in (self.mapbox_token, self.admin_token, self.notify_urls) if s),
            *(u.strip() for u in urls.replace("\n", ",").split(",")),
            # A database's or a server's password, whatever a driver's error quotes of its URL.
            *(pw for u in (self.store_url, self.optuna_storage, self.mlflow.tracking_uri) for pw in url_password(u)),
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    # --- places inside the data directory -------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def dvc_remote(self) -> str:
        return self.dvc.remote_url or str(self.root / "dvc-remote")

    @property
    def mlflow_tracking_uri(self) -> str:
        uri = self.mlflow.tracking_uri
        return sqlalchemy_url(uri) if uri else f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return self.mlflow.artifact_root or str(self.root / "mlflow" / "artifacts")

    @property
    def optuna_url(self) -> str:
        return sqlalchemy_url(self.optuna_storage) if self.optuna_storage else f"sqlite:///{self.root / 'optuna.db'}"

    @property
    def store_database_url(self) -> str:
        return sqlalchemy_url(self.store_url) if self.store_url else f"sqlite:///{self.root / 'predictions.db'}"

    def ensure_dirs(self) -> None:
        for d in (self.root, self.dataset_dir, self.quarantine_dir, self.root / "mlflow", self.root / "logs"):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call `get_settings.cache_clear()` after changing the env)."""
    return Settings()
