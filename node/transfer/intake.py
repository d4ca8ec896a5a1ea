"""The one way a segment from outside enters this node's WAL, whichever door it came by: the
peers' gRPC transfer service (`service.py`) or adx-mon's HTTP front door (`http.py`).

A door reads its caller and its bytes; everything from the segment's name on happens here, in
this order, before anything is written:

    admit(name, size, crc32)  the name must be a segment's (InvalidInputError); a segment accepted
                              before, same name, size and CRC-32, is AlreadyExistsError (the
                              ledger's key: a resend is stored once); memory for the door's own
                              buffers is reserved from the process's budget, then the size against
                              the WAL's limits (OverLimitsError, nothing written); the key is
                              claimed in the ledger for every receiver process of the node
                              (AlreadyExistsError if published meanwhile, SegmentBusyError while
                              another call holds it)
    feed(chunk) ...           written to the part file, each block verified (framing, CRC,
                              header; decompression with `decode`) as soon as it is complete; what
                              a chunk will hold decoded is reserved from the budget first, from its
                              block headers
                              (`submit(chunk)`: the same, in a thread the caller does not wait
                              for, while it reads the next chunk; one chunk in flight at a time)
    commit()                  size and CRC-32 checked, fsync, published through the ledger (a
                              `publish` line, the rename, a DONE line); it runs to its end even if
                              the door's caller goes away meanwhile
    abort()                   before the `publish` line: the part file goes, then the claim

The published segment gets a new id of this node; it is indexed as a closed segment and batched,
transferred to its owner or uploaded like any other (node/wal/importer.py, node/transfer/ledger.py).

Which door decides how far blocks are checked (`admit(..., decode=)`): adx-mon's door decodes
every block, since its bytes were written outside the cluster; the peers' service checks CRCs and
headers only, since a peer's segment was checked where it entered the cluster (its WAL wrote it, or
a door decoded it), and its upload decodes every block anyway. Decoding it on receipt as well cost
the receiver ~2.5 of its ~5.5 CPU s a GB (docs/performance.md, transfer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from node.budget import MemoryBudget
from node.errors import AlreadyExistsError, InvalidInputError, UnavailableError
from node.metrics import NodeMetrics
from node.state import NodeState
from node.transfer.ledger import Claim, ClaimLostError, TransferLedger, transfer_key
from node.wal.importer import SegmentImport
from node.wal.names import parse_filename
from node.wal.repository import Repository
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TRANSFER_BYTES = 4 << 30
"""Largest segment accepted in one call (a peer transfers at most --max-transfer-size)."""


class SegmentBusyError(UnavailableError):
    """The same segment (name, size, CRC-32) is being received by another call, in this process
    or another of the node: retry. (gRPC: UNAVAILABLE; adx-mon's door: 423 Locked.)"""


class Held:
    """Memory held from the budget by one call: grown to what each step needs, never shrunk,
    given back when the call's `stack` closes. More than the whole budget is cut to it: the call
    then runs alone, as one request would."""

    def __init__(self, budget: MemoryBudget, stack: contextlib.AsyncExitStack, what: str) -> None:
        self._budget = budget
        self._stack = stack
        self._what = what
        self.nbytes = 0

    async def grow_to(self, nbytes: int) -> None:
        nbytes = min(nbytes, self._budget.limit)
        if nbytes > self.nbytes:
            await self._stack.enter_async_context(self._budget.reserve(nbytes - self.nbytes, self._what))
            self.nbytes = nbytes


def _log_orphan(what: str, step: str, work: asyncio.Future[Any]) -> None:
    """The outcome of a commit or an abort whose call was cancelled meanwhile: nobody else reads it."""
    if not work.cancelled() and work.exception() is not None:
        log.info("%s: %s failed: %s", what, step, work.exception())


class Incoming:
    """One admitted segment: `feed()` (or `submit()`) its bytes, then `commit()`; `abort()` on any
    failure (a no-op once the commit started: the commit settles the import and the claim itself)."""

    def __init__(self, intake: Intake, imp: SegmentImport, claim: Claim, crc32: int, memory: Held, base: int,
                 what: str) -> None:
        self._intake = intake
        self._imp = imp
        self._claim = claim
        self._crc32 = crc32
        self._memory = memory
        self._base = base
        self.what = what
        self.committing = False
        self._settled = False
        self.feeding: asyncio.Future[None] | None = None
        """The chunk being fed now, in a thread (`submit`)."""

    async def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write and verify `chunk` (in a thread), and wait for it."""
        await self.submit(chunk)
        await self.drain()

    async def submit(self, chunk: bytes | bytearray | memoryview) -> None:
        """Start feeding `chunk` in a thread and return without waiting for it: the door reads its
        next chunk meanwhile. At most one chunk is in flight, and they are fed in order: the one
        before is waited for first (its error raised here), then the memory this one holds is
        reserved (`memory_for` reads the import's state, so never while a feed runs). The chunk in
        flight is `feeding`; `drain()` waits for it, `commit()` and `abort()` do."""
        await self.drain()
        await self._memory.grow_to(self._base + self._imp.memory_for(chunk))
        self.feeding = asyncio.get_running_loop().run_in_executor(None, self._imp.feed, chunk)

    async def drain(self) -> None:
        """Wait for the chunk in flight, if any; its error is raised here (and then the caller
        aborts). Shielded: a cancelled caller leaves the thread's future to `abort`."""
        feeding = self.feeding
        if feeding is not None:
            try:
                await asyncio.shield(feeding)
            finally:
                if feeding.done():
                    self.feeding = None

    async def commit(self) -> SegmentInfo:
        """Verify and publish, once the last chunk is fed. Shielded: a cancelled caller does not
        stop it half-way; its outcome then goes to the log."""
        await self.drain()
        self.committing = True
        commit = self._track(asyncio.to_thread(self._intake.commit, self._imp, self._crc32, self._claim))
        try:
            return await asyncio.shield(commit)
        except asyncio.CancelledError:
            commit.add_done_callback(functools.partial(_log_orphan, self.what, "commit"))
            raise

    async def abort(self) -> None:
        """Once no chunk is in flight (its thread may still be writing the part file), the part
        file goes, then the claim. Shielded: a cancelled caller does not stop it half-way."""
        if not self.committing and not self._settled:
            self._settled = True
            await asyncio.shield(self._track(self._end()))

    def abort_now(self) -> None:
        """`abort()` without waiting (the caller is being cancelled): at once when no chunk is in
        flight, else as soon as its thread is done (`Intake.settle` waits for it)."""
        if not self.committing and not self._settled:
            self._settled = True
            if self.feeding is None or self.feeding.done():
                self._intake.abort(self._imp, self._claim)
            else:
                self._track(self._end()).add_done_callback(functools.partial(_log_orphan, self.what, "abort"))

    async def _end(self) -> None:
        feeding = self.feeding
        if feeding is not None:
            await asyncio.wait((feeding,))
            if not feeding.cancelled():
                feeding.exception()  # raised to the caller already, or moot now that the call ends
            self.feeding = None
        await asyncio.to_thread(self._intake.abort, self._imp, self._claim)

    def _track(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """`work` as a task that `Intake.settle` waits for, whatever becomes of its call."""
        task = asyncio.ensure_future(work)
        self._intake.commits.add(task)
        task.add_done_callback(self._intake.commits.discard)
        return task


class Intake:
    """Admits segments into one process's WAL, under its ledger and memory budget."""

    def __init__(self, wal: Repository, state: NodeState, ledger: TransferLedger, metrics: NodeMetrics,
                 budget: MemoryBudget | None = None) -> None:
        """`budget`: the process's memory budget, shared with the receivers (None: no limit)."""
        self.wal = wal
        self.state = state
        self.ledger = ledger
        self.metrics = metrics
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.commits: set[asyncio.Future[Any]] = set()
        """Commits and aborts running now (each in a thread, whatever became of its call)."""

    async def settle(self) -> None:
        """Wait for the commits and aborts running now: once the doors stopped, before the WAL and the ledger
        close under them."""
        if self.commits:
            await asyncio.gather(*self.commits, return_exceptions=True)

    def held(self, stack: contextlib.AsyncExitStack, what: str) -> Held:
        """The memory a call holds, given back when `stack` closes; `what` names it to the budget."""
        return Held(self.budget, stack, what)

    async def admit(self, filename: str, size: int, crc32: int, memory: Held, *, reserve: int = 0,
                    what: str = "transfer", decode: bool = True) -> Incoming:
        """Admit the segment `filename` of `size` bytes and CRC-32 `crc32` (see the module's
        docstring); `reserve`: memory the door holds for itself while the segment is fed; `decode`:
        decode every block as it is fed, or check CRCs and headers only (the module's docstring)."""
        name = parse_filename(filename)
        if not 0 < size <= MAX_TRANSFER_BYTES:
            raise InvalidInputError(f"declared size {size} is not 1..{MAX_TRANSFER_BYTES}")
        key = transfer_key(filename, size, crc32)
        if await asyncio.to_thread(self.ledger.seen, key):  # before the reservation: a full node says so too
            raise AlreadyExistsError(f"segment {filename} was accepted before")
        await memory.grow_to(reserve)  # before the space: a node out of memory refuses the bytes
        imp = await asyncio.to_thread(self.wal.begin_import, name.prefix, size, decode)
        try:
            claim = await self._claim(key, imp)
        except BaseException:
            imp.abort()  # nothing written yet (the part file comes with the first chunk): the space goes back
            raise
        return Incoming(self, imp, claim, crc32, memory, reserve, what)

    async def _claim(self, key: str, imp: SegmentImport) -> Claim:
        """Claim `key` in the ledger; a claim that a cancelled call took is given back."""
        task = asyncio.ensure_future(asyncio.to_thread(self.ledger.claim, key, imp.part))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            def settle(t: asyncio.Future[Claim]) -> None:
                if not t.cancelled() and t.exception() is None:
                    asyncio.get_running_loop().run_in_executor(None, self.ledger.release, t.result())

            task.add_done_callback(settle)
            raise
        except UnavailableError as e:  # the one refusal of a claim that says "retry": another call has it
            raise SegmentBusyError(str(e), e.retry_after_seconds) from e

    def abort(self, imp: SegmentImport, claim: Claim | None) -> None:
        """Before the `publish` line: the part file goes, then the claim (in that order, so that
        no part file is left that no ledger line names)."""
        imp.abort()
        if claim is not None:
            self.ledger.release(claim)

    def commit(self, imp: SegmentImport, crc32: int, claim: Claim) -> SegmentInfo:
        """Verify the segment, then publish it through the ledger (one thread: a cancelled call
        cannot stop it half-way)."""
        try:
            imp.verify(crc32)
        except BaseException:
            self.abort(imp, claim)
            raise
        try:
            return self.ledger.publish(claim, imp.publish)
        except ClaimLostError:  # settled by another process: our part is nobody's now
            imp.abort()
            raise
        except BaseException:  # the ledger's `publish` line may be on disk: the part file must stay
            imp.abandon()
            raise
