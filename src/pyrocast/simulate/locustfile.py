"""Locust users and load shapes for `pyrocast load` (run by `python -m locust -f` in a subprocess).

Everything a run needs comes from a plan file named by `$PYROCAST_LOAD_PLAN` (written by
`pyrocast.simulate.load`): the stages of the shape, the tiles to post (held-back test tiles), the share of
coordinate requests, think times and where to write the samples. Each simulated user has its own client id
(sticky A/B assignment) and sends `source=load`.

One shape class per shape (constant, ramp, spike, diurnal); all but the plan's shape are abstract, because
Locust runs the first concrete LoadTestShape it finds. Requests are timed here rather than read from Locust's
aggregated statistics, so that the report can split them by stage and by the variant that answered.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, events
from urllib3.filepost import encode_multipart_formdata

from pyrocast.simulate.shapes import stage_index, stages_from_dicts, target_at

PLAN_ENV = "PYROCAST_LOAD_PLAN"


def _read_plan() -> dict[str, Any]:
    path = os.environ.get(PLAN_ENV)
    if not path:
        raise SystemExit(f"{PLAN_ENV} is not set: run load tests with `pyrocast load`, which writes the plan")
    return json.loads(Path(path).read_text())


PLAN = _read_plan()
STAGES = stages_from_dicts(PLAN["stages"])


def _mime(path: str) -> str:
    return "image/png" if path.lower().endswith(".png") else "image/jpeg"


def _bodies() -> list[tuple[bytes, str, dict[str, float]]]:
    """Multipart bodies (built once: users only pick one) and the coordinates of each tile."""
    out = []
    for t in PLAN["tiles"]:
        fields = {
            "image": (Path(t["path"]).name, Path(t["path"]).read_bytes(), _mime(t["path"])),
            "source": "load",
            "lat": repr(t["lat"]),
            "lon": repr(t["lon"]),
        }
        body, ctype = encode_multipart_formdata(fields)
        out.append((body, ctype, {"lat": t["lat"], "lon": t["lon"]}))
    return out


TILES = _bodies()
SAMPLES: list[list[Any]] = []  # [start s into the test, ms, ok, kind, variant or error, model version, users]
_state: dict[str, Any] = {"env": None, "end_s": None}


def _now_s() -> float:
    env = _state["env"]
    shape = env.shape_class if env is not None else None
    return shape.get_run_time() if shape is not None else 0.0


def _users() -> int | None:
    """Users running now: an interrupted run reports what it reached, not what the shape planned."""
    runner = getattr(_state["env"], "runner", None)
    return getattr(runner, "user_count", None)


def _send(user: GatewayUser, kind: str) -> None:
    body, ctype, coords = random.choice(TILES)
    headers = {"X-Client-Id": user.client_id}
    t_start = _now_s()
    users = _users()
    t0 = time.perf_counter()
    if kind == "image":
        r = user.client.post("/v1/predict", data=body, headers={**headers, "Content-Type": ctype}, name="image")
    else:
        payload = {**coords, "source": "load", "client_id": user.client_id}
        r = user.client.post("/v1/predict", json=payload, headers=headers, name="coordinates")
    ms = (time.perf_counter() - t0) * 1000
    ok, variant, version = False, None, None
    if r.status_code == 200:
        try:
            answer = json.loads(r.content)
            ok = 0.0 <= float(answer["probability"]) <= 1.0
            variant, version = answer.get("variant"), (answer.get("model") or {}).get("version")
        except (ValueError, KeyError, TypeError):
            variant = f"HTTP 200 with an unexpected body: {r.content[:120]!r}"
    else:
        err = getattr(r, "error", None)
        text = (r.content or b"")[:160].decode("utf-8", "replace") if r.status_code else ""
        variant = f"HTTP {r.status_code}: {text}" if r.status_code else f"{type(err).__name__}: {err}"
    SAMPLES.append([round(t_start, 4), round(ms, 3), ok, kind, variant, version, users])


def _image(user: GatewayUser) -> None:
    _send(user, "image")


def _coordinates(user: GatewayUser) -> None:
    _send(user, "coordinates")


def _tasks() -> dict[Any, int]:
    share = float(PLAN.get("coordinates_share", 0.25))
    # Integer weights in per cent; a zero weight drops the task (Locust refuses an empty choice).
    weights = {_image: round(100 * (1 - share)), _coordinates: round(100 * share)}
    return {task: w for task, w in weights.items() if w > 0}


class GatewayUser(FastHttpUser):
    """A client of the gateway posting tiles and coordinates, with its own client id."""

    wait_time = between(*PLAN.get("wait", (0.1, 0.5)))
    network_timeout = float(PLAN.get("timeout_s", 30.0))
    connection_timeout = 5.0
    tasks = _tasks()

    def on_start(self) -> None:
        self.client_id = f"{PLAN.get('client_prefix', 'load')}-{uuid.uuid4().hex[:10]}"


class _StagedShape(LoadTestShape):
    abstract = True

    def tick(self) -> tuple[int, float] | None:
        return target_at(STAGES, self.get_run_time())


class ConstantShape(_StagedShape):
    abstract = PLAN["shape"] != "constant"


class RampShape(_StagedShape):
    abstract = PLAN["shape"] != "ramp"


class SpikeShape(_StagedShape):
    abstract = PLAN["shape"] != "spike"


class DiurnalShape(_StagedShape):
    abstract = PLAN["shape"] != "diurnal"


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    _state["env"] = environment


@events.test_stop.add_listener
def _on_stop(environment: Any, **_: Any) -> None:
    if _state["end_s"] is None:
        _state["end_s"] = _now_s()
    _write()


@events.quitting.add_listener
def _on_quit(environment: Any, **_: Any) -> None:
    _write()


def _write() -> None:
    """Write the samples atomically (the parent reads them after the process ends)."""
    out = Path(PLAN["out"])
    tmp = out.with_suffix(".tmp")
    last = stage_index(STAGES, _state["end_s"] or 0.0)
    tmp.write_text(json.dumps({"end_s": _state["end_s"], "last_stage": last, "samples": SAMPLES}))
    os.replace(tmp, out)
