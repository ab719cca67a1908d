"""A served prediction row for store tests, with any field overridden."""

from __future__ import annotations


def row(i: int, **kw: object) -> dict:
    """Prediction row number `i` as the gateway stores it; keyword arguments replace fields."""
    return {
        "request_id": f"r{i}",
        "served": True,
        "variant": "champion",
        "model_name": "m",
        "model_version": "1",
        "source": "api",
        "probability": 0.9,
        "label": "wildfire",
        "latency_ms": 3.0,
        **kw,
    }
