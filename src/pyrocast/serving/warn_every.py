"""Rate-limited logging for trouble that repeats (a store refusing, a model failing): the gateway and its
prediction store share it, so an outage costs a line every 30 s per kind, not one per attempt."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class WarnEvery:
    """Log one kind of trouble at most every `seconds`; the next line says how many were held back.

    Callers on several threads (the store's writer, the event loop, request threads) share one instance.
    """

    def __init__(self, seconds: float, logger: logging.Logger) -> None:
        self.seconds = seconds
        self.log = logger
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(
        self, key: str, message: str, *args: Any, level: int = logging.WARNING, exc_info: BaseException | None = None
    ) -> bool:
        """Log `message % args` under `key` unless one was logged less than `seconds` ago; True when logged."""
        now = time.monotonic()
        with self._lock:
            if key in self._last and now - self._last[key] < self.seconds:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message, args = message + " (%d more like it since the last warning)", (*args, held)
        self.log.log(level, message, *args, exc_info=exc_info)
        return True
