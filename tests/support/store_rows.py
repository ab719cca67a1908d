"""Store test helpers: a served prediction row, a leftover claimed spill file, a store opened again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyrocast.serving.store import PredictionStore


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


def leftover_claim(store_url: str, spill: Path, data: bytes) -> Path:
    """What a process that died after committing a spill file's rows, before removing the file, leaves behind: the
    file under the name it claimed it by (`<spill>.replaying-<id>`, the id in the replay's committed keys)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            key = conn.execute(text("SELECT key FROM spill_replays ORDER BY ts DESC LIMIT 1")).scalar_one()
    finally:
        engine.dispose()
    claimed = spill.with_name(f"{spill.name}.replaying-{key.split(':')[1]}")
    claimed.write_bytes(data)
    return claimed


def reopened(store_url: str, **kw: Any) -> PredictionStore:
    """The store as the next start opens it, once what earlier runs spilled is written back (a gateway's writer
    does that first thing; without a writer thread, `flush` does it)."""
    store = PredictionStore(store_url, **kw)
    store.flush()
    return store
