"""The receiving side of `ingestor.v1.Transfer`: segments streamed from peers into this node's WAL.

One call carries one segment: the metadata first (name, size, CRC-32, sender), then chunks. In
order, and before anything is written:

1. the caller must be a peer (`PeerAuth`, from the call's headers, before a byte of the stream is
   read: a stranger costs nothing): UNAUTHENTICATED otherwise;
2. the node must be serving: UNAVAILABLE while it drains (the sender uploads itself);
3. the first message is read: it must be the metadata and name a valid segment: INVALID_ARGUMENT
   otherwise;
4. a segment accepted before (same name, size and CRC) is ALREADY_EXISTS (`TransferLedger`);
5. memory for one message is reserved from the node's budget, then the space against the WAL's
   limits: RESOURCE_EXHAUSTED (with a retry hint) when either does not fit;
6. the key is claimed in the ledger, for every receiver process of the node: ALREADY_EXISTS if it
   was published meanwhile, UNAVAILABLE (retry) while another call holds it.

Only then does the receiver send its initial metadata, the go-ahead the sender waits for before
it streams the segment: a refused segment costs one message, not its bytes. The chunks are then
written to a part file and each block is verified as it completes (`SegmentImport`); a bad block,
a short or long stream, or a CRC mismatch is INVALID_ARGUMENT and leaves nothing behind. Before
each chunk is fed, what it will hold (the block it completes, decoded) is reserved from the
budget, from the block headers alone. The segment is then published through the ledger
(`TransferLedger.publish`: a `publish` line, the rename, a DONE line), and OK returned: also when
only the DONE line failed, since the rows are published and a resend is ALREADY_EXISTS from the
`publish` line.

A sender that sends nothing for `stall_timeout`, or averages under `min_request_rate` once it has
been waited on that long (`Pace`), is cut with DEADLINE_EXCEEDED: its part file removed, its
reservations (memory and disk) given back, counted in `slow_clients{transport="transfer"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node.budget import MemoryBudget
from node.config import NodeConfig
from node.errors import AlreadyExistsError, InvalidInputError, StalledError, UnauthenticatedError, status_of
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.metrics import NodeMetrics
from node.ratelog import RateLimitedLog
from node.receivers.grpc import abort
from node.state import NodeState
from node.transfer.ledger import Claim, ClaimLostError, TransferLedger, transfer_key
from node.transfer.protocol import MAX_CHUNK, READY_HEADER, TOKEN_HEADER, TOKEN_SCHEME
from node.wal.importer import SegmentImport
from node.wal.names import parse_filename
from node.wal.repository import Repository
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)
_said = RateLimitedLog(log)

TRANSFER_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"].full_name
_SCHEME = TOKEN_SCHEME.encode()
MAX_TRANSFER_BYTES = 4 << 30
"""Largest segment accepted in one call (a sender transfers at most --max-transfer-size)."""
MAX_METADATA_BYTES = 64 << 10
MESSAGE_OVERHEAD = 64 << 10
MESSAGE_FACTOR = 4
"""Copies of a chunk a call holds at once: the next message, received by grpc while this one is
handled, and this one as received, parsed, and as bytes. Measured: six concurrent transfers of
20 MiB segments (4 MiB chunks, 64 KiB blocks) raised the node's peak RSS by 148 MiB, ~25 MiB each,
allocator slack included; under a budget of 40 MiB (two at a time) by 74 MiB."""
BUDGET_WHAT = "transfer"
"""How transfers are named to the memory budget (and in `memory_refused{what}`)."""


def message_memory(size: int) -> int:
    """Memory the messages of a call for a segment of `size` bytes hold while they are handled (a
    chunk is at most MAX_CHUNK, and at most the segment)."""
    return MESSAGE_FACTOR * (min(MAX_CHUNK, size) + MESSAGE_OVERHEAD)


def _log_orphan(what: str, commit: asyncio.Future[SegmentInfo]) -> None:
    """The outcome of a commit whose call was cancelled meanwhile: nobody else reads it."""
    if not commit.cancelled() and commit.exception() is not None:
        log.info("%s: commit failed: %s", what, commit.exception())


class Pace:
    """The pace of one sender: a stream that sends nothing for `stall` seconds, or averages under
    `min_rate` bytes/s once it has been waited on for `stall` seconds, is cut (StalledError).

    Only the time spent waiting for the sender counts: the receiver's own work (writing,
    verifying, waiting for memory) is not the sender's slowness. `stall` <= 0: no deadline;
    `min_rate` <= 0: no rate.
    """

    def __init__(self, stall: float, min_rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall = stall
        self.min_rate = min_rate
        self.waited = 0.0
        self.received = 0
        self._clock = clock

    def timeout(self) -> float | None:
        """How long the next message may take (None: for ever)."""
        if self.stall <= 0:
            return None
        if self.min_rate <= 0:
            return self.stall
        return min(self.stall, max(self.stall, self.received / self.min_rate) - self.waited)

    async def next(self, context: grpc.aio.ServicerContext[Any, Any]) -> transfer_pb2.TransferSegmentRequest | None:
        """The call's next message, None at the end of the stream; StalledError when it is too late.

        Read with `context.read()`, not the request iterator: an async generator left suspended
        by a refused call would be finalised later, on whatever loop is then running."""
        timeout = self.timeout()
        if timeout is not None and timeout <= 0:
            raise self._stalled(0.0)
        t0 = self._clock()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation (3.11)
                msg = await context.read()
        except TimeoutError:
            self.waited += self._clock() - t0
            raise self._stalled(self._clock() - t0) from None
        self.waited += self._clock() - t0
        if msg is grpc.aio.EOF:
            return None
        assert isinstance(msg, transfer_pb2.TransferSegmentRequest)
        self.received += msg.ByteSize()
        return msg

    def _stalled(self, last_wait: float) -> StalledError:
        if last_wait >= self.stall:
            return StalledError(f"nothing received for --stall-timeout {self.stall:g}s ({self.received} bytes in "
                                f"{self.waited:.1f}s)")
        return StalledError(f"{self.received} bytes in {self.waited:.1f}s, under --min-request-rate "
                            f"{self.min_rate:g} bytes/s")


class _Held:
    """Memory held from the budget by one call: grown to what each step needs, never shrunk,
    given back when the call's stack closes."""

    def __init__(self, budget: MemoryBudget, stack: contextlib.AsyncExitStack) -> None:
        self._budget = budget
        self._stack = stack
        self.nbytes = 0

    async def grow_to(self, nbytes: int) -> None:
        nbytes = min(nbytes, self._budget.limit)  # more than the budget runs alone, as one request would
        if nbytes > self.nbytes:
            await self._stack.enter_async_context(self._budget.reserve(nbytes - self.nbytes, BUDGET_WHAT))
            self.nbytes = nbytes


class PeerAuth:
    """Who may call the transfer service: a caller with a verified client certificate (mutual
    TLS), or one that presents the shared token as `authorization: Bearer <token>` (`TOKEN_HEADER`,
    `TOKEN_SCHEME`)."""

    def __init__(self, token: str | None = None, mtls: bool = False) -> None:
        self._token = token.encode() if token else None
        self._mtls = mtls

    @property
    def configured(self) -> bool:
        return self._token is not None or self._mtls

    def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Raise UnauthenticatedError unless the caller is a peer."""
        if self._mtls:
            auth = context.auth_context()
            if auth.get("transport_security_type") == [b"ssl"] and auth.get("x509_pem_cert"):
                return
        if self._token is not None:
            for key, value in context.invocation_metadata() or ():
                if key == TOKEN_HEADER:
                    given = value.encode() if isinstance(value, str) else bytes(value)
                    if given.startswith(_SCHEME) and hmac.compare_digest(given[len(_SCHEME):], self._token):
                        return
                    raise UnauthenticatedError("the peer token does not match")
            raise UnauthenticatedError("transfer needs the peer token (authorization: Bearer ...) or a client "
                                       "certificate")
        if not self.configured:
            raise UnauthenticatedError("this node has no peer credentials configured (--peer-token or mutual TLS)")
        raise UnauthenticatedError("transfer needs a client certificate signed by the cluster CA")


class TransferService(transfer_pb2_grpc.TransferServicer):
    def __init__(self, wal: Repository, state: NodeState, ledger: TransferLedger, auth: PeerAuth,
                 metrics: NodeMetrics, *, budget: MemoryBudget | None = None,
                 stall_timeout: float = NodeConfig.stall_timeout,
                 min_request_rate: float = NodeConfig.min_request_rate) -> None:
        """`budget`: the process's memory budget, shared with the receivers (None: no limit);
        `stall_timeout`, `min_request_rate`: the pace a sender must keep (`Pace`)."""
        self._wal = wal
        self._state = state
        self._ledger = ledger
        self._auth = auth
        self._metrics = metrics
        self._budget = budget if budget is not None else MemoryBudget(1 << 62)
        self._stall = stall_timeout
        self._min_rate = min_request_rate

    async def TransferSegment(self, request_iterator: AsyncIterator[transfer_pb2.TransferSegmentRequest],
                              context: grpc.aio.ServicerContext[Any, Any]) -> transfer_pb2.TransferSegmentResponse:
        """One segment from a peer. Its messages are read with `context.read()` (see `Pace.next`)."""
        async with contextlib.AsyncExitStack() as stack:  # the call's memory, given back however it ends
            return await self._transfer(context, _Held(self._budget, stack))

    async def _transfer(self, context: grpc.aio.ServicerContext[Any, Any],
                        memory: _Held) -> transfer_pb2.TransferSegmentResponse:
        t0 = time.perf_counter()
        what = "transfer"
        sender = "?"
        pace = Pace(self._stall, self._min_rate)
        imp: SegmentImport | None = None
        claim: Claim | None = None
        committing: SegmentImport | None = None
        commit: asyncio.Future[SegmentInfo] | None = None
        try:
            # From the call's headers, before the stream is read: a stranger's first message, however
            # large, is never parsed. The sender writes the metadata, then waits for the go-ahead
            # (initial metadata), so a refusal reaches it as a status, never as a broken write.
            self._auth.check(context)
            self._state.check_accepting()
            first = await pace.next(context)
            if first is None or first.WhichOneof("msg") != "metadata":
                raise InvalidInputError("the first message of a transfer must be its metadata")
            if first.ByteSize() > MAX_METADATA_BYTES:
                raise InvalidInputError(f"metadata of {first.ByteSize()} bytes, over {MAX_METADATA_BYTES}")
            meta = first.metadata
            sender = meta.sender or "?"
            what = f"transfer of {meta.name[:300]!r} from {sender[:100]!r}"
            name = parse_filename(meta.name)
            if not 0 < meta.size <= MAX_TRANSFER_BYTES:
                raise InvalidInputError(f"declared size {meta.size} is not 1..{MAX_TRANSFER_BYTES}")
            key = transfer_key(meta.name, meta.size, meta.crc32)
            if await asyncio.to_thread(self._ledger.seen, key):  # before the reservation: a full node says so too
                raise AlreadyExistsError(f"segment {meta.name} was accepted before")
            per_message = message_memory(meta.size)
            await memory.grow_to(per_message)  # before the go-ahead: a node out of memory refuses the bytes
            imp = await asyncio.to_thread(self._wal.begin_import, name.prefix, meta.size)
            claim = await self._claim(key, imp)
            await context.send_initial_metadata(((READY_HEADER, "1"),))  # the sender may stream the bytes
            while (msg := await pace.next(context)) is not None:
                if msg.WhichOneof("msg") != "chunk":
                    raise InvalidInputError("a transfer carries its metadata once, first")
                chunk = msg.chunk
                del msg
                # gRPC's Python server has one receive limit for every method of the port
                # (--max-request-bytes, which OTLP needs): this method's is checked here.
                if len(chunk) > MAX_CHUNK:
                    raise InvalidInputError(f"a chunk of {len(chunk)} bytes, over the transfer's {MAX_CHUNK}")
                await memory.grow_to(per_message + imp.memory_for(chunk))
                await asyncio.to_thread(imp.feed, chunk)
                del chunk
            # The commit runs to its end even if the sender goes away (it settles the import and the
            # claim itself, whatever happens).
            committing, imp, held, claim = imp, None, claim, None
            # shielded: a cancelled call must not cancel the commit before its thread started
            commit = asyncio.ensure_future(asyncio.to_thread(self._commit, committing, meta.crc32, held))
            info = await asyncio.shield(commit)
            committing = None
        except Exception as e:
            if imp is not None:
                await asyncio.to_thread(self._abort, imp, claim)
            if isinstance(e, StalledError):
                self._metrics.slow_clients.labels("transfer").inc()
            self._metrics.transfers_received.labels(status_of(e).grpc_code.name).inc()
            await abort(context, e, what, reason="transfer")
        except asyncio.CancelledError:  # the sender went away (or its deadline passed)
            self._metrics.transfers_received.labels("CANCELLED").inc()
            if committing is not None:
                if commit is not None:  # its outcome, which nobody else reads, goes to the log
                    commit.add_done_callback(functools.partial(_log_orphan, what))
                log.warning("%s: the sender went away as the stream ended; the commit finishes on its own (a whole "
                            "segment is kept, and a resend hears ALREADY_EXISTS)", what)
            else:  # mid-stream: nothing stays
                if imp is not None:
                    self._abort(imp, claim)
                _said.log(logging.INFO, "cut", "%s: cut by the sender; discarded", what)
            raise
        self._metrics.transfers_received.labels("OK").inc()
        self._metrics.transfer_received_bytes.inc(info.size)
        log.debug("accepted %s as %s: %d blocks, %d rows, %.1f MB in %.2fs", what, info.name.filename, info.blocks,
                  info.rows, info.size / 1e6, time.perf_counter() - t0)
        return transfer_pb2.TransferSegmentResponse(blocks=info.blocks, bytes=info.size)

    async def _claim(self, key: str, imp: SegmentImport) -> Claim:
        """Claim `key` in the ledger; a claim that a cancelled call took is given back."""
        task = asyncio.ensure_future(asyncio.to_thread(self._ledger.claim, key, imp.part))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            def settle(t: asyncio.Future[Claim]) -> None:
                if not t.cancelled() and t.exception() is None:
                    asyncio.get_running_loop().run_in_executor(None, self._ledger.release, t.result())

            task.add_done_callback(settle)
            raise

    def _abort(self, imp: SegmentImport, claim: Claim | None) -> None:
        """Before the `publish` line: the part file goes, then the claim (in that order, so that
        no part file is left that no ledger line names)."""
        imp.abort()
        if claim is not None:
            self._ledger.release(claim)

    def _commit(self, imp: SegmentImport, crc32: int, claim: Claim) -> SegmentInfo:
        """Verify the segment, then publish it through the ledger (one thread: a cancelled call
        cannot stop half-way)."""
        try:
            imp.verify(crc32)
        except BaseException:
            self._abort(imp, claim)
            raise
        try:
            return self._ledger.publish(claim, imp.publish)
        except ClaimLostError:  # settled by another process: our part is nobody's now
            imp.abort()
            raise
        except BaseException:  # the ledger's `publish` line may be on disk: the part file must stay
            imp.abandon()
            raise
