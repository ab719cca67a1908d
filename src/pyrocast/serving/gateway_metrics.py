"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Rollout changes the team is told of (PYROCAST_NOTIFY_URLS) and that have a series from the start.
NOTIFIED_ACTIONS = ("guardrail-stop", "canary-complete", "promote", "rollback")


class Metrics:
    """Prometheus metrics in a registry of their own (several gateways may live in one test process)."""

    def __init__(self, explainer: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("pyrocast_gateway_http_requests_total", "HTTP requests", ["endpoint", "status"], registry=r)
        self.request_latency = Histogram(
            "pyrocast_gateway_request_seconds",
            "end-to-end gateway latency of answered predictions",
            ["variant", "model_version"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.predictions = Counter(
            "pyrocast_predictions_total",
            "model calls (served answers, shadow copies and comparisons) by outcome",
            ["variant", "model_version", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "pyrocast_model_call_seconds",
            "latency of a classifier call",
            ["variant", "model_version"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.fallbacks = Counter(
            "pyrocast_fallbacks_total", "challenger failures answered by the champion", ["reason"], registry=r
        )
        self.dropped = Counter(
            "pyrocast_background_dropped_total", "shadow/compare copies dropped under load", registry=r
        )
        self.share = Gauge("pyrocast_challenger_share", "share of clients routed to the challenger", registry=r)
        self.backend_up = Gauge(
            "pyrocast_backend_up", "1 when a backend (champion, challenger, explainer) answers", ["role"], registry=r
        )
        self.backend_restarts = Counter(
            "pyrocast_backend_restarts_total",
            "classifier and explainer workers BentoML restarted after they died (seen by their pid at the probes)",
            ["role"],
            registry=r,
        )
        # The series exist from the start, so that increase() sees the first restart; none for an explainer the
        # gateway is told does not run (it says nothing about one).
        for role in ("champion", "challenger", *(["explainer"] if explainer else [])):
            self.backend_restarts.labels(role)
        self.store_queue = Gauge("pyrocast_store_queue_depth", "rows waiting to be written", registry=r)
        self.store_written = Gauge("pyrocast_store_rows_written", "rows written since start", ["table"], registry=r)
        self.store_errors = Gauge("pyrocast_store_write_errors", "failed write attempts since start", registry=r)
        self.store_held = Gauge(
            "pyrocast_store_rows_held", "rows neither the database nor the spill file took, held in memory", registry=r
        )
        self.store_lost = Gauge("pyrocast_store_rows_lost", "rows given up (beyond the memory held)", registry=r)
        self.store_refused = Gauge(
            "pyrocast_store_rows_refused",
            "rows the database refused for what they hold since start, set aside beside the spill file",
            registry=r,
        )
        self.rollout_store_errors = Counter(
            "pyrocast_rollout_store_errors_total", "rollout reads or records the store refused", registry=r
        )
        self.rollout_events = Counter(
            "pyrocast_rollout_events_total",
            "rollout changes this gateway recorded, by action (a guardrail stop is recorded by one replica)",
            ["action"],
            registry=r,
        )
        for action in NOTIFIED_ACTIONS:  # from the start, so that increase() sees the first one
            self.rollout_events.labels(action)
        self.rollout_aliases_owed = Gauge(
            "pyrocast_rollout_aliases_owed",
            "1 while the registry aliases do not follow the roles in effect here (the registry refused to move them)",
            registry=r,
        )
        self.rollout_promotion_postponed = Gauge(
            "pyrocast_rollout_promotion_postponed",
            "1 while a complete canary's auto-promotion waits (the registry refused the aliases, or the challenger "
            "does not answer): the canary holds at its last step",
            registry=r,
        )
        self.rollout_unrecorded = Gauge(
            "pyrocast_rollout_unrecorded_stop",
            "1 while a guardrail stop is in effect here but not yet recorded",
            registry=r,
        )
