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
written to a part file and each block is checked as it completes (`SegmentImport`: framing, CRC
and header, not decoded: a peer's segment was decoded where it entered the cluster, and its upload
decodes it again, see `intake.py`), each chunk in a thread while the next one is received (at most
one in flight, in order); a bad block, a short or long stream, or a CRC mismatch is
INVALID_ARGUMENT and leaves nothing behind. Before each chunk is fed, what it will hold (the block
it completes) is reserved from the budget, from the block headers alone. The segment is then
published through the ledger (`TransferLedger.publish`: a `publish` line, the rename, a DONE line),
and OK returned: also when only the DONE line failed, since the rows are published and a resend
is ALREADY_EXISTS from the `publish` line.

A sender that sends nothing for `stall_timeout`, or averages under `min_request_rate` once it has
been waited on that long (`Pace`), is cut with DEADLINE_EXCEEDED: its part file removed, its
reservations (memory and disk) given back, counted in `slow_clients{transport="transfer"}`.

Steps 3 to 6 and everything after the go-ahead are the node's one path for segments from outside
(`node/transfer/intake.py`), shared with adx-mon's HTTP front door (`node/transfer/http.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node.config import NodeConfig
from node.errors import InvalidInputError, StalledError, UnauthenticatedError, status_of
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.ratelog import RateLimitedLog
from node.receivers.grpc import abort
from node.rows.wire import read_uvarint
from node.transfer.intake import Incoming, Intake
from node.transfer.protocol import MAX_CHUNK, READY_HEADER, TOKEN_HEADER, TOKEN_SCHEME
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)
_said = RateLimitedLog(log)

TRANSFER_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"].full_name
_SCHEME = TOKEN_SCHEME.encode()
MAX_METADATA_BYTES = 64 << 10
MESSAGE_OVERHEAD = 64 << 10
MESSAGE_FACTOR = 5
"""Copies of a chunk a call holds at once: the one being fed (written, verified) in a thread, the
next one as received, parsed, and as bytes (parsed by protobuf; `read_request` makes no copy of
it), and the one after it, received by grpc meanwhile. (4 before a chunk was fed while the next
was read.) Measured with 4: six concurrent transfers of
20 MiB segments (4 MiB chunks, 64 KiB blocks) raised the node's peak RSS by 148 MiB, ~25 MiB each,
allocator slack included; under a budget of 40 MiB (two at a time) by 74 MiB."""
BUDGET_WHAT = "transfer"
"""How transfers are named to the memory budget (and in `memory_refused{what}`)."""


def message_memory(size: int) -> int:
    """Memory the messages of a call for a segment of `size` bytes hold while they are handled (a
    chunk is at most MAX_CHUNK, and at most the segment)."""
    return MESSAGE_FACTOR * (min(MAX_CHUNK, size) + MESSAGE_OVERHEAD)


_CHUNK_TAG = b"\x12"
"""`TransferSegmentRequest.chunk`'s tag: field 2, length-delimited."""


def read_request(data: bytes) -> transfer_pb2.TransferSegmentRequest | memoryview:
    """A request as the transfer service reads it off the wire (its `request_deserializer`, see
    `add_to_server`): a message that is a chunk alone (the tag of `chunk`, the length, then exactly
    that many bytes: what a sender's every message after the first is) comes as a view of the bytes
    received; any other message is parsed by protobuf. Protobuf would parse the first into the same
    chunk, at the cost of two copies of it (the parse, then `msg.chunk`): ~0.5 CPU s a GB."""
    if data[:1] == _CHUNK_TAG:
        with contextlib.suppress(ValueError):  # the length: a varint of at most 5 bytes, as protobuf takes it
            n, pos = read_uvarint(data, 1, min(len(data), 6))
            if n == len(data) - pos:
                return memoryview(data)[pos:]
    return transfer_pb2.TransferSegmentRequest.FromString(data)


def add_to_server(servicer: transfer_pb2_grpc.TransferServicer, server: grpc.aio.Server) -> None:
    """`transfer_pb2_grpc.add_TransferServicer_to_server`, with the requests read by `read_request`."""
    handlers = {"TransferSegment": grpc.stream_unary_rpc_method_handler(
        servicer.TransferSegment, request_deserializer=read_request,
        response_serializer=transfer_pb2.TransferSegmentResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRANSFER_SERVICE, handlers),))
    server.add_registered_method_handlers(TRANSFER_SERVICE, handlers)


def _chunk_message_size(n: int) -> int:
    """`ByteSize()` of a message that holds a chunk of `n` bytes: its tag, its length (a varint), its bytes."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


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

    async def next(self, context: grpc.aio.ServicerContext[Any, Any]
                   ) -> transfer_pb2.TransferSegmentRequest | bytes | memoryview | None:
        """The call's next message, None at the end of the stream; StalledError when it is too late.
        A chunk comes as its bytes: the view `read_request` made of it, or `msg.chunk` (taken once:
        each access copies it) when the service was added by the generated code; any other message
        as it is.

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
        if isinstance(msg, memoryview):
            self.received += _chunk_message_size(len(msg))
            return msg
        assert isinstance(msg, transfer_pb2.TransferSegmentRequest)
        if msg.WhichOneof("msg") == "chunk":
            chunk: bytes = msg.chunk
            self.received += _chunk_message_size(len(chunk))  # ByteSize() would serialize it (~0.8 ms a 4 MiB chunk)
            return chunk
        self.received += msg.ByteSize()
        return msg

    def _stalled(self, last_wait: float) -> StalledError:
        if last_wait >= self.stall:
            return StalledError(f"nothing received for --stall-timeout {self.stall:g}s ({self.received} bytes in "
                                f"{self.waited:.1f}s)")
        return StalledError(f"{self.received} bytes in {self.waited:.1f}s, under --min-request-rate "
                            f"{self.min_rate:g} bytes/s")


async def _next_while_feeding(pace: Pace, context: grpc.aio.ServicerContext[Any, Any], incoming: Incoming
                              ) -> transfer_pb2.TransferSegmentRequest | bytes | memoryview | None:
    """`pace.next()` while the chunk before is fed (`Incoming.submit`). A chunk that fails ends the
    call at once with its own error, the read given up; a read that fails (a stall) waits for the
    chunk in flight, whose error, if any, comes first: the statuses are those of one chunk at a time."""
    feeding = incoming.feeding
    if feeding is None or feeding.done():
        if feeding is not None and feeding.exception() is not None:
            await incoming.drain()  # raises it
        return await pace.next(context)
    read = asyncio.ensure_future(pace.next(context))
    try:
        await asyncio.wait((read, feeding), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        read.cancel()
        raise
    if not read.done():
        if feeding.exception() is None:
            return await read
        read.cancel()
        with contextlib.suppress(BaseException):
            await read
        await incoming.drain()  # raises the chunk's error
    if read.exception() is not None:
        await incoming.drain()
    return read.result()


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
    def __init__(self, intake: Intake, auth: PeerAuth, *, stall_timeout: float = NodeConfig.stall_timeout,
                 min_request_rate: float = NodeConfig.min_request_rate) -> None:
        """`intake`: the WAL, ledger and memory budget segments enter by; `stall_timeout`,
        `min_request_rate`: the pace a sender must keep (`Pace`)."""
        self._intake = intake
        self._state = intake.state
        self._auth = auth
        self._metrics = intake.metrics
        self._stall = stall_timeout
        self._min_rate = min_request_rate

    async def TransferSegment(self, request_iterator: AsyncIterator[transfer_pb2.TransferSegmentRequest],
                              context: grpc.aio.ServicerContext[Any, Any]) -> transfer_pb2.TransferSegmentResponse:
        """One segment from a peer. Its messages are read with `context.read()` (see `Pace.next`)."""
        async with contextlib.AsyncExitStack() as stack:  # the call's memory, given back however it ends
            return await self._transfer(context, stack)

    async def _transfer(self, context: grpc.aio.ServicerContext[Any, Any],
                        stack: contextlib.AsyncExitStack) -> transfer_pb2.TransferSegmentResponse:
        t0 = time.perf_counter()
        what = "transfer"
        pace = Pace(self._stall, self._min_rate)
        incoming: Incoming | None = None
        try:
            # From the call's headers, before the stream is read: a stranger's first message, however
            # large, is never parsed. The sender writes the metadata, then waits for the go-ahead
            # (initial metadata), so a refusal reaches it as a status, never as a broken write.
            self._auth.check(context)
            self._state.check_accepting()
            first = await pace.next(context)
            if not isinstance(first, transfer_pb2.TransferSegmentRequest) or first.WhichOneof("msg") != "metadata":
                raise InvalidInputError("the first message of a transfer must be its metadata")
            if first.ByteSize() > MAX_METADATA_BYTES:
                raise InvalidInputError(f"metadata of {first.ByteSize()} bytes, over {MAX_METADATA_BYTES}")
            meta = first.metadata
            what = f"transfer of {meta.name[:300]!r} from {(meta.sender or '?')[:100]!r}"
            incoming = await self._intake.admit(meta.name, meta.size, meta.crc32,
                                                self._intake.held(stack, BUDGET_WHAT),
                                                reserve=message_memory(meta.size), what=what,
                                                decode=False)  # a peer's: CRCs and headers (intake.py)
            await context.send_initial_metadata(((READY_HEADER, "1"),))  # the sender may stream the bytes
            # Each chunk is fed (written, verified) in a thread while the next one is received.
            while (chunk := await _next_while_feeding(pace, context, incoming)) is not None:
                if not isinstance(chunk, bytes | memoryview):
                    raise InvalidInputError("a transfer carries its metadata once, first")
                # gRPC's Python server has one receive limit for every method of the port
                # (--max-request-bytes, which OTLP needs): this method's is checked here.
                if len(chunk) > MAX_CHUNK:
                    raise InvalidInputError(f"a chunk of {len(chunk)} bytes, over the transfer's {MAX_CHUNK}")
                await incoming.submit(chunk)
                del chunk
            info = await incoming.commit()
        except Exception as e:
            if incoming is not None:
                await incoming.abort()
            if isinstance(e, StalledError):
                self._metrics.slow_clients.labels("transfer").inc()
            self._metrics.transfers_received.labels(status_of(e).grpc_code.name).inc()
            await abort(context, e, what, reason="transfer")
        except asyncio.CancelledError:  # the sender went away (or its deadline passed)
            self._metrics.transfers_received.labels("CANCELLED").inc()
            if incoming is not None and incoming.committing:
                log.warning("%s: the sender went away as the stream ended; the commit finishes on its own (a whole "
                            "segment is kept, and a resend hears ALREADY_EXISTS)", what)
            else:  # mid-stream: nothing stays
                if incoming is not None:
                    incoming.abort_now()
                _said.log(logging.INFO, "cut", "%s: cut by the sender; discarded", what)
            raise
        return self._accepted(info, what, t0)

    def _accepted(self, info: SegmentInfo, what: str, t0: float) -> transfer_pb2.TransferSegmentResponse:
        self._metrics.transfers_received.labels("OK").inc()
        self._metrics.transfer_received_bytes.inc(info.size)
        log.debug("accepted %s as %s: %d blocks, %.1f MB in %.2fs", what, info.name.filename, info.blocks,
                  info.size / 1e6, time.perf_counter() - t0)
        return transfer_pb2.TransferSegmentResponse(blocks=info.blocks, bytes=info.size)
