"""Logging a person can read under abuse: a reason is logged at most once per interval, and the
next line says how many were left out meanwhile.

    said = RateLimitedLog(log, interval=60.0)
    said.log(logging.INFO, "bad-gzip", "remote write refused with 400: %s", err)

Client mistakes go through it (no traceback: they are not the node's faults); the counters still
count every one.

`ErrorLog` is for failures that retry (an upload, a transfer, a round): an expected error (an
`IngestorError`: a sink down, a peer refusing) is one line every time; an unexpected one (a bug, a
foreign exception nobody translated) is logged with its traceback the first time it is seen, and
in one line when it happens again within the interval, so that a loop retrying every few seconds
does not bury the log in copies of one traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from node.errors import IngestorError

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

    def log(self, level: int, reason: str, msg: str, *args: Any, exc_info: BaseException | None = None) -> bool:
        """Log `msg % args` (with `exc_info`'s traceback) unless `reason` was logged less than
        `interval` ago; return whether it was."""
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
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True


TRACEBACK_INTERVAL = 3600.0
"""Seconds before the traceback of one unexpected error (its type and the line that raised it) is logged again."""


def error_key(error: BaseException) -> str:
    """What makes two errors the same one: their type and the line that raised them."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return f"{type(error).__module__}.{type(error).__qualname__}@{where}"


def describe(error: BaseException) -> str:
    """An error as one line: its message; an unexpected one's type too (`KeyError: 'x'`)."""
    return str(error) if isinstance(error, IngestorError) else f"{type(error).__name__}: {error}"


class ErrorLog:
    """Failures of a loop that retries: expected ones (`IngestorError`) in one line each time;
    unexpected ones with their traceback once per `error_key` and `interval`, in one line otherwise."""

    def __init__(self, logger: logging.Logger, interval: float = TRACEBACK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._tracebacks = RateLimitedLog(logger, interval, clock)

    def log(self, level: int, error: BaseException, msg: str, *args: Any) -> None:
        """Log `msg % args` for `error` (`describe(error)` is handy among `args`)."""
        if isinstance(error, IngestorError) or not self._tracebacks.log(level, error_key(error), msg, *args,
                                                                         exc_info=error):
            self._logger.log(level, msg, *args)
