"""Which process answers for a BentoML service, as its `/model/info` reports it.

BentoML's arbiter replaces a worker that died (SIGKILL, the OOM killer) within a second, with the same worker index
and not a word in any log: the worker's pid and start time are the only trace, and the gateway compares them at
each probe (`backends.Probed`) to log and count such restarts.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import psutil


def worker_identity() -> dict[str, Any]:
    """This worker's index, pid and start time, and its service's (BentoML's arbiter: the parent process)."""
    me, arbiter = psutil.Process(), psutil.Process(os.getppid())
    return {
        "index": bentoml.server_context.worker_index,
        "pid": me.pid,
        "started": me.create_time(),
        "service_pid": arbiter.pid,
        "service_started": arbiter.create_time(),
    }
