"""Group commit: requests converted close together are appended to the WAL in one write.

A request is answered only once its rows are in the WAL, and the WAL's cost is per block: one per
table a write holds (its header, Snappy, a CRC, a `writev`: ~8-10 µs whatever the rows). Senders
send the same tables at once: Prometheus's shards each send every metric name of a scrape, the
pods of a deployment send the same metrics. Written together, requests that hold the same tables
cost one block per table for the group instead of one per request and table.

The process's one converter thread groups: when it turns to the next request, it takes every
request queued for it by then (and those that come while it converts them), converts them one
after the other and writes their rows at once (at most `MAX_GROUP_REQUESTS` requests,
`MAX_GROUP_BYTES` of rows, which are held until the write, and `MAX_GROUP_SECONDS` of converting,
which the first request's answer waits for). It never waits for more requests to come. Requests come
to it when they are large, when they come over HTTP (decompressed there: Prometheus's remote
write) and when it is busy (node/ingest.py); a request converted on the event loop is written
alone, at once: grpc.aio starts one call per turn of the loop, so there is nothing to group it
with there without waiting.

`write` (the WAL's) takes a group and says what came of each request: the WAL appends all of a
write's rows or none, so a group whose write fails is written again request by request, and each
request's outcome is the one it would have had alone (a name the WAL refuses, a full disk that one
small request still fits in).

A caller cancelled before its request runs, it never runs; one cancelled later waits for the end
of its group's write (its rows are written), as a request written alone did.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_GROUP_REQUESTS = 64
"""Requests the converter thread converts before it writes, at most."""
MAX_GROUP_BYTES = 32 << 20
"""Bytes of rows the converter thread holds before it writes, at most."""
MAX_GROUP_SECONDS = 0.1
"""Seconds of converting after which the converter thread writes what it has."""

Write = Callable[[Sequence[T]], list[BaseException | None]]
"""Appends the rows of several converted requests; returns what came of each (None: written)."""


class _Job(Generic[T]):
    """A request waiting for the converter thread."""

    __slots__ = ("convert", "future", "state")

    def __init__(self, convert: Callable[[], T], future: asyncio.Future[T]) -> None:
        self.convert = convert
        self.future = future
        self.state = "queued"
        """queued → taken (by the thread) | cancelled (by its caller, before it was taken)."""


class GroupCommit(Generic[T]):
    """Converts and writes requests in groups; see the module's docstring.

    `size(item)`: the bytes of rows a converted request holds (bounds a group)."""

    def __init__(self, write: Write[T], size: Callable[[T], int]) -> None:
        self._write = write
        self._size = size
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="convert")
        self._lock = threading.Lock()
        self._jobs: deque[_Job[T]] = deque()
        self.busy = 0
        """Requests handed to the converter thread and not answered: while any is, the converters'
        caches are the thread's (no request is converted on the loop)."""
        self.groups = 0
        self.grouped = 0
        """Writes made, and the requests they held (for tests and the bench: grouped / groups)."""

    # -- the converter thread -------------------------------------------------------------------

    async def in_thread(self, convert: Callable[[], T]) -> T:
        """`convert()` in the converter thread, its outcome written with the group it falls in."""
        loop = asyncio.get_running_loop()
        job = _Job(convert, loop.create_future())
        with self._lock:
            self._jobs.append(job)
        self.busy += 1
        self._thread.submit(self._run_group, loop)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            with self._lock:
                if job.state == "queued":
                    job.state = "cancelled"
                    self.busy -= 1
                    raise
            with contextlib.suppress(BaseException):
                await job.future
            raise

    def _take(self) -> _Job[T] | None:
        """The next request queued and not cancelled, now the thread's."""
        with self._lock:
            while self._jobs:
                job = self._jobs.popleft()
                if job.state == "queued":
                    job.state = "taken"
                    return job
            return None

    def _run_group(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the thread: take what is queued, convert it, write it; once per request submitted,
        so a run finds nothing left when an earlier one took its request. A group ends when nothing
        is queued, or at MAX_GROUP_REQUESTS, MAX_GROUP_BYTES or MAX_GROUP_SECONDS of converting (so
        that a steady stream of requests does not hold the first one's answer)."""
        done: list[tuple[_Job[T], T]] = []
        held = 0
        start = time.monotonic()
        while not done or (held < MAX_GROUP_BYTES and len(done) < MAX_GROUP_REQUESTS
                           and time.monotonic() - start < MAX_GROUP_SECONDS):
            job = self._take()
            if job is None:
                break
            try:
                item = job.convert()
            except BaseException as e:  # the caller's to raise
                self._answer(loop, job, None, e)
                continue
            done.append((job, item))
            held += self._size(item)
        if not done:
            return
        try:
            outcomes = self._written([item for _, item in done])
        except BaseException as e:  # `write` answers per request; this is a fault of its own
            outcomes = [e] * len(done)
        for (job, item), error in zip(done, outcomes, strict=True):
            self._answer(loop, job, item, error)

    def _answer(self, loop: asyncio.AbstractEventLoop, job: _Job[T], item: T | None,
                error: BaseException | None) -> None:
        def answer() -> None:
            self.busy -= 1
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(item)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to answer
            loop.call_soon_threadsafe(answer)

    def _written(self, items: list[T]) -> list[BaseException | None]:
        self.groups += 1
        self.grouped += len(items)
        return self._write(items)

