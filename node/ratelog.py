"""Logging a person can read under abuse: a reason is logged at most once per interval, and the
next line says how many were left out meanwhile.

    said = RateLimitedLog(log, interval=60.0)
    said.log(logging.INFO, "bad-gzip", "remote write refused with 400: %s", err)

Client mistakes go through it (no traceback: they are not the node's faults); the counters still
count every one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_REASONS = 1000
"""Reasons remembered at once (a hostile client can make many): past it, the oldest are forgotten."""


class RateLimitedLog:
    """At most one line per reason per `interval` seconds; thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        """When each reason may be logged again."""
        self._skipped: dict[str, int] = {}

    def log(self, level: int, reason: str, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless `reason` was logged less than `interval` ago; return whether it was."""
        now = self._clock()
        with self._lock:
            if self._next.get(reason, 0.0) > now:
                self._skipped[reason] = self._skipped.get(reason, 0) + 1
                return False
            skipped = self._skipped.pop(reason, 0)
            self._next.pop(reason, None)
            if len(self._next) >= MAX_REASONS:
                oldest = min(self._next, key=self._next.__getitem__)
                del self._next[oldest]
                self._skipped.pop(oldest, None)
            self._next[reason] = now + self._interval
        if skipped:
            msg += f" (and {skipped} more like it in the last {self._interval:.0f}s)"
        self._logger.log(level, msg, *args)
        return True
