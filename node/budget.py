"""One memory budget per receiver process for the requests and transfers in flight.

Every request reserves what it will hold before it holds it: its body's bytes, as received and
decompressed, times what decoding and conversion make of them (`EXPANSION`). A reservation that
does not fit waits, first come first served, up to `wait` seconds, then fails with
OverMemoryError (429 / RESOURCE_EXHAUSTED with a retry hint): the node slows its clients down
instead of being killed for memory. A reservation larger than the whole budget is cut to the
budget: it runs alone.

The node's `--max-memory` is shared by its receiver processes: each gets `limit / receivers`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from node.errors import OverMemoryError

EXPANSION = 12
"""Peak bytes held per byte of decompressed protobuf while it is parsed and converted (measured:
three concurrent 51 MiB OTLP requests peaked at 2,263 MiB; a 1M-series request of ~90 MB at
1,460 MB). Adjusted by measurement in tests/node/test_*_abuse.py."""

DEFAULT_WAIT = 5.0


class Reservation:
    """Bytes held from a budget until released (a context manager's exit)."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self.budget = budget
        self.nbytes = nbytes


class MemoryBudget:
    """Bytes in flight in one process, at most `limit`; `on_change(in_use)` hears every change."""

    def __init__(self, limit: int, wait: float = DEFAULT_WAIT,
                 on_change: Callable[[int], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.limit = max(1, limit)
        self.wait = wait
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_change = on_change
        self._on_refused = on_refused

    def _fits(self, nbytes: int) -> bool:
        return self.in_use + nbytes <= self.limit

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, what: str) -> AsyncIterator[Reservation]:
        """Hold `nbytes` (cut to the limit) for the block; wait for room up to `wait` seconds."""
        nbytes = min(max(0, nbytes), self.limit)
        await self._acquire(nbytes, what)
        r = Reservation(self, nbytes)
        try:
            yield r
        finally:
            self._release(r.nbytes)

    async def _acquire(self, nbytes: int, what: str) -> None:
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait):  # not wait_for: it can swallow a cancellation (3.11)
                await asyncio.shield(fut)
        except TimeoutError:
            if fut.done():  # granted as the wait ended: keep it
                return
            self._waiters.remove(entry)
            fut.cancel()
            self._wake()
            if self._on_refused is not None:
                self._on_refused(what)
            raise OverMemoryError(
                f"{what}: the node's memory budget for requests in flight is taken ({self.in_use} of {self.limit} "
                f"bytes in this process, {len(self._waiters)} waiting; this one needs {nbytes}); retry later, "
                f"send smaller requests, or raise --max-memory", retry_after_seconds=2.0) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(nbytes)  # granted, then the caller went away
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        if self._on_change is not None:
            self._on_change(self.in_use)

    def _release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        if self._on_change is not None:
            self._on_change(self.in_use)
        self._wake()

    def _wake(self) -> None:
        """Grant the waiters at the head of the queue that fit now (in order: no overtaking)."""
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes, fut = self._waiters.popleft()
            if fut.done():
                continue
            self._take(nbytes)
            fut.set_result(None)


def per_process(max_memory: int, receivers: int) -> int:
    """Each receiver process's share of `--max-memory`."""
    return max(1, max_memory // max(1, receivers))
