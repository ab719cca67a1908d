"""One definition of a latency percentile for every figure people compare: the models page and the canary's
guardrails, the monitoring page, `pyrocast replay` and `pyrocast load` (the models page said p95 15.8 ms where
monitoring said 16.0 ms for the same calls: nearest rank against linear interpolation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float] | np.ndarray, q: float, digits: int = 3) -> float | None:
    """The `q`th percentile (0-100) of `values`, linearly interpolated between ranks (numpy's default), rounded to
    `digits` decimals; None for no values."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return None
    return round(float(np.percentile(a, q)), digits)
