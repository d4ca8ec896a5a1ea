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

`DeliverySummary` is what the uploads and transfers did, said at INFO in one line a minute, only
when something happened; each delivery's own line is DEBUG (`--log-level debug`), each failure its
own WARNING line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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


SUMMARY_INTERVAL = 60.0
"""Seconds between two summaries of the deliveries (`DeliverySummary`)."""


@dataclass
class _Tally:
    batches: int = 0
    tables: set[str] = field(default_factory=set)
    rows: int = 0
    bytes: int = 0

    def add(self, table: str, rows: int, nbytes: int) -> None:
        self.batches += 1
        if len(self.tables) < MAX_REASONS:  # a count past it is "1000+": bounded, whatever the tables
            self.tables.add(table)
        self.rows += rows
        self.bytes += nbytes

    def text(self, rows: bool) -> str:
        tables = f"{len(self.tables)}{'+' if len(self.tables) >= MAX_REASONS else ''}"
        amount = f"{_plural(self.rows, 'row')}, {_mb(self.bytes)}" if rows else _mb(self.bytes)
        return (f"{self.batches:,} batch{'es' if self.batches != 1 else ''} of {tables} "
                f"table{'s' if len(self.tables) != 1 else ''} ({amount})")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 or n == 0 else f"{n / 1e3:.1f} kB"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


class DeliverySummary:
    """What a node's deliveries did, one INFO line per `interval` (only when something happened):

        last 60s: uploaded 756 batches of 378 tables (1,512 rows, 0.4 MB) to local; transferred
        12 batches of 6 tables (0.1 MB) to n1; 2 upload failures (retried; the warnings say why)

    The first upload to each sink is said at once ("uploaded Metrics.Up to local, the first
    batch: ..."), so that a person starting a node sees rows reach the sink. Not thread-safe: fed
    from the uploader's event loop.
    """

    def __init__(self, logger: logging.Logger, interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._since = clock()
        self._uploads: dict[str, _Tally] = {}
        self._transfers: dict[str, _Tally] = {}
        self._failed: Counter[str] = Counter()
        self._first: set[str] = set()

    def uploaded(self, sink: str, table: str, rows: int, nbytes: int, seconds: float) -> None:
        """A batch of `table` (`Database.Table`) confirmed by `sink`."""
        self._uploads.setdefault(sink, _Tally()).add(table, rows, nbytes)
        if sink not in self._first:
            self._first.add(sink)
            self._logger.info("uploaded %s to %s, the first batch: %s, %s in %.2fs; from now on the uploads are "
                              "summed up once a minute (each one at --log-level debug)", table, sink,
                              _plural(rows, "row"), _mb(nbytes), seconds)

    def transferred(self, peer: str, table: str, nbytes: int) -> None:
        """A transfer of `table`'s segments confirmed by `peer`."""
        self._transfers.setdefault(peer, _Tally()).add(table, 0, nbytes)

    def failed(self, what: str) -> None:
        """A failure of `what` ("upload", "transfer", "quarantine"), already logged on its own line."""
        self._failed[what] += 1

    def tick(self) -> bool:
        """Say the summary when `interval` has passed since the last one; return whether it was said."""
        if self._clock() - self._since < self._interval:
            return False
        return self.flush()

    def flush(self) -> bool:
        """Say what happened since the last summary, if anything (at a stop, whatever the time);
        return whether something was said."""
        now = self._clock()
        parts = []
        if self._uploads:
            parts.append("uploaded " + ", ".join(f"{t.text(rows=True)} to {sink}"
                                                 for sink, t in sorted(self._uploads.items())))
        if self._transfers:
            parts.append("transferred " + ", ".join(f"{t.text(rows=False)} to {peer}"
                                                    for peer, t in sorted(self._transfers.items())))
        failed = self._failed
        kinds = [_plural(failed[k], f"{k} failure") for k in ("upload", "transfer") if failed[k]]
        if kinds:
            parts.append(", ".join(kinds) + " (retried; the warnings say why)")
        if failed["quarantine"]:
            n = failed["quarantine"]
            parts.append(f"{n:,} batch{'es' if n != 1 else ''} quarantined (the errors say why)")
        elapsed = now - self._since
        self._since = now
        self._uploads, self._transfers, self._failed = {}, {}, Counter()
        if not parts:
            return False
        self._logger.info("last %.0fs: %s", elapsed, "; ".join(parts))
        return True
