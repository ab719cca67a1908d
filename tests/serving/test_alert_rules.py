"""The Prometheus alerting rules in deploy/prometheus/alerts.yml: valid PromQL, about metrics and label values a
running gateway really exposes, each with a severity, a summary and a runbook section that exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.test_gateway import predict_many
from tests.support.serving import ServingStack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
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
