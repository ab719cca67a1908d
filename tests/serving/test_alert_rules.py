"""The Prometheus alerting rules in deploy/prometheus/alerts.yml: valid PromQL, about metrics and label values a
running gateway really exposes, each with a severity, a summary and a runbook section that exists; each one
fires on its condition and not on a healthy gateway (promtool's rule tests, deploy/prometheus/alerts.test.yml);
and a real Prometheus, run with the shipped configuration, raises them from a real gateway's /metrics.

promtool and prometheus come from Debian's `prometheus` package, which `make test` installs where it can."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pyrocast.ports import free_port
from pyrocast.serving import procs
from tests.serving.test_gateway import predict_many
from tests.support.serving import ServingStack, stack_settings
from tests.support.tiles import jpeg_tile

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
CONFIG = DEPLOY / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
SELECTOR = re.compile(r"\b(pyrocast_\w+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_rule_is_valid_promql_with_a_severity_summary_and_runbook() -> None:
    found = anchors(RUNBOOK.read_text())
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)) >= 10
    for r in rules():
        promql_parser.parse(r["expr"])  # raises on a syntax error
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        doc, _, anchor = r["annotations"]["runbook"].partition("#")
        assert (ROOT / doc) == RUNBOOK and anchor in found, f"{r['alert']}: no section #{anchor} in {doc}"


def test_rules_name_metrics_and_label_values_the_gateway_exposes(gw: ServingStack, jpeg: bytes) -> None:
    predict_many(gw, ["alert-rules"], jpeg)  # so that the per-request series have samples
    exposed: dict[str, dict[str, set[str]]] = {}  # metric family -> label -> values seen
    for family in text_string_to_metric_families(httpx.get(f"{gw.url}/metrics", timeout=10).text):
        labels = exposed.setdefault(family.name, {})
        for sample in family.samples:
            for k, v in sample.labels.items():
                labels.setdefault(k, set()).add(v)
    checked = 0
    for r in rules():
        for name, matchers in SELECTOR.findall(r["expr"]):
            family = next((name.removesuffix(s) for s in SUFFIXES if name.removesuffix(s) in exposed), name)
            assert family in exposed, f"{r['alert']}: the gateway exposes no metric {name}"
            for label, op, value in MATCHER.findall(matchers):
                assert label in exposed[family], f"{r['alert']}: {name} has no label {label}"
                if op == "=":
                    assert value in exposed[family][label], f"{r['alert']}: {name}{{{label}={value!r}}} never seen"
            checked += 1
    assert checked >= 12


# --- promtool and a real Prometheus ------------------------------------------------------------------------------
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: `make test` installs Debian's prometheus as root"
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_shipped_configuration_and_rules() -> None:
    out = promtool("check", "config", CONFIG.name)  # also checks the rule files it names
    assert "SUCCESS: 1 rule files found" in out and "is valid prometheus config file syntax" in out


@needs_promtool
def test_every_rule_fires_on_its_condition_and_not_on_a_healthy_gateway() -> None:
    tested = {
        t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert tested == {r["alert"] for r in rules()}, "every alert has a rule test"
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def alerts(prometheus_url: str) -> dict[tuple[str, str], str]:
    """(alert name, instance) -> state ("pending" or "firing") of the alerts a Prometheus holds now."""
    data = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["state"] for a in data}


@pytest.mark.integration
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed: `make test` installs Debian's as root")
def test_a_real_prometheus_alerts_on_a_gateway_whose_champion_is_dead(tmp_path: Path) -> None:
    """The shipped configuration, scraping every second: a gateway whose classifiers and explainer never started
    (its predictions end in 503) and a gateway address nobody answers raise exactly the alerts the runbook expects
    (the explainer's pending: it waits 5 minutes)."""
    assert PROMETHEUS is not None
    settings = stack_settings(tmp_path)  # ports for classifiers that are never started
    gateway = procs.start_gateway(settings)
    dead = f"127.0.0.1:{free_port()}"
    live = gateway.url.removeprefix("http://")
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [live, dead]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = procs.start_process(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        url=f"http://127.0.0.1:{port}",
        log_path=tmp_path / "prometheus.log",
        health_path="/-/ready",
        timeout=60,
    )
    expected = {
        ("PyrocastChampionDown", live),
        ("PyrocastPredictionErrors", live),
        ("PyrocastExplainerDown", live),
        ("PyrocastGatewayDown", dead),
    }
    tile = jpeg_tile(7, size=64)
    seen: dict[tuple[str, str], str] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not expected <= seen.keys():
            r = httpx.post(f"{gateway.url}/v1/predict", files={"image": ("t.jpg", tile, "image/jpeg")}, timeout=10)
            assert r.status_code == 503, r.text  # no champion: a clear 503, counted as a 5xx
            seen = alerts(prometheus.url)
            time.sleep(0.5)
    finally:
        prometheus.stop()
        gateway.stop()
    assert expected <= seen.keys(), f"alerts after 60 s: {seen}"
    assert set(seen) == expected, f"only those: {seen}"  # nothing about the store, the rollout or latency
