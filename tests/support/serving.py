"""A real serving stack on 127.0.0.1 for tests: two classifiers, the explainer and the gateway as processes.

`start_stack(root)` builds two tiny bundles (champion v1 says "wildfire" to everything, challenger v2 says
"nowildfire": they always disagree, which the canary guardrail tests need), starts the BentoML services in
parallel on free ports, then the gateway with an admin token (also in `stack.settings`, as an operator's
environment has it for `pyrocast replay`). `stack.stop()` stops every process group.
With `registry=True` the bundles are registered in a fresh MLflow store (SQLite) as versions 1 and 2 with
the aliases champion -> 1 and challenger -> 2, and the classifiers serve the aliases (as `pyrocast up` does),
so promote/rollback move real aliases. Reused by the gateway tests and by anything built on the gateway.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.settings import ServingSettings, Settings
from tests.support.bundles import make_tiny_bundle, rebias_bundle

TOKEN = "test-admin-token"


def tiny_bundles(root: Path) -> dict[str, Path]:
    """Champion v1 (always wildfire) and challenger v2 (always nowildfire), built once per folder."""
    out = {"1": root / "bundle-v1", "2": root / "bundle-v2"}
    if not (out["1"] / "meta.json").exists():
        make_tiny_bundle(out["1"], version="1", bias=6.0, seed=0)
    if not (out["2"] / "meta.json").exists():
        rebias_bundle(out["1"], out["2"], version="2", bias=-26.0)  # v1's +6 becomes -20
    return out


@dataclass
class ServingStack:
    """The running processes and how to reach them."""

    settings: Settings
    bundles: dict[str, Path]
    token: str = TOKEN
    champion: procs.ServiceProcess | None = None
    challenger: procs.ServiceProcess | None = None
    explainer: procs.ServiceProcess | None = None
    gateway: procs.ServiceProcess | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kw)

    registry: bool = False

    @property
    def model_name(self) -> str:
        return self.settings.mlflow.model_name if self.registry else "pyrocast-test"

    def start_challenger(self, wait: bool = True) -> procs.ServiceProcess:
        """(Re)start the classifier on the challenger port, serving version 2 (by alias in registry mode)."""
        sv = self.settings.serving
        where: dict[str, Any] = {"ref": "2"} if self.registry else {"bundle_dir": self.bundles["2"]}
        self.challenger = procs.start_classifier(
            self.settings, port=sv.challenger_port, name="challenger", wait=wait, **where
        )
        return self.challenger

    def start_gateway(self) -> procs.ServiceProcess:
        env = {"PYROCAST_ADMIN_TOKEN": self.token, **self.extra_env}
        self.gateway = procs.start_gateway(self.settings, env=env)
        return self.gateway

    def set_rollout(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/v1/rollout/{action}", json=body, headers=self.admin, timeout=30.0)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        for p in (self.gateway, self.explainer, self.challenger, self.champion):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.stop()


def stack_settings(root: Path) -> Settings:
    ports = [free_port() for _ in range(5)]
    s = Settings(
        data_dir=root / "data",
        # The gateway's token, as an operator exports it where they run replay or rollout commands too.
        admin_token=SecretStr(TOKEN),
        serving=ServingSettings(
            champion_port=ports[0],
            challenger_port=ports[1],
            explainer_port=ports[2],
            gateway_port=ports[3],
            webapp_port=ports[4],
        ),
    )
    s.ensure_dirs()
    return s


def register_bundles(settings: Settings, bundles: dict[str, Path]) -> None:
    """Register the bundles as versions 1, 2, ... of a fresh MLflow store; champion -> 1, challenger -> 2."""
    from pyrocast.registry.mlflow_store import ensure_experiment, get_client
    from pyrocast.registry.models import register_bundle, set_alias
    from tests.support.mlflow_db import seed_mlflow_db

    seed_mlflow_db(settings)
    client = get_client(settings)
    experiment = ensure_experiment(settings, client)
    for version in sorted(bundles, key=int):
        run = client.create_run(experiment)
        registered = register_bundle(settings, run.info.run_id, bundles[version], client=client)
        assert registered.version == version, "the store was not fresh"
    set_alias(settings, "champion", "1", client)
    set_alias(settings, "challenger", "2", client)


def start_stack(
    root: Path,
    explainer: bool = True,
    gateway: bool = True,
    registry: bool = False,
    bundles: dict[str, Path] | None = None,
) -> ServingStack:
    """Start champion, challenger (and explainer) in parallel, then the gateway; stops all on failure.

    `bundles` reuses tiny bundles built earlier (`tiny_bundles`); by default they are built under `root`.
    """
    settings = stack_settings(root)
    settings.serving.explainer = explainer  # as `pyrocast up --no-explainer` tells its gateway
    stack = ServingStack(settings, bundles or tiny_bundles(root / "bundles"), registry=registry)
    sv = settings.serving
    if registry:
        register_bundles(settings, stack.bundles)
    try:
        where: dict[str, Any] = {"ref": "champion"} if registry else {"bundle_dir": stack.bundles["1"]}
        stack.champion = procs.start_classifier(settings, port=sv.champion_port, name="champion", wait=False, **where)
        stack.start_challenger(wait=False)
        if explainer:
            dirs = None if registry else stack.bundles
            stack.explainer = procs.start_explainer(settings, bundle_dirs=dirs, wait=False)
        for p in (stack.champion, stack.challenger, stack.explainer):
            if p is not None:
                p.wait_healthy(120)
        if gateway:
            stack.start_gateway()
    except BaseException:
        stack.stop()
        raise
    return stack


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of a gateway's /metrics samples called `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
