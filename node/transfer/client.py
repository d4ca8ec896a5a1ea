"""The sending side of `ingestor.v1.Transfer`: closed segments of one table prefix, streamed to a peer.

Several small segments of a prefix go in one call: the first file whole (magic and blocks), the
others without their 8-byte magic, so the peer receives one well-formed segment. The call is
named after the first segment and declares the total size and CRC-32 (computed by a first read
of the files; they are closed and immutable, so the second read sends the same bytes).

The outcome tells the caller what to do with its copy (`protocol.Outcome`): delete it, upload it
here, or keep it for the next round.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from isal import isal_zlib

try:  # grpc raises its core's batch error, not AioRpcError, from a write the deadline ended
    from grpc._cython.cygrpc import ExecuteBatchError as _BatchError
except ImportError:  # pragma: no cover - another grpc build
    class _BatchError(Exception):  # type: ignore[no-redef]
        pass

from cluster.membership import Peer
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.transfer.protocol import IN_DOUBT, MAX_CHUNK, READY_HEADER, TOKEN_HEADER, TOKEN_SCHEME, Outcome, outcome_of
from node.wal import format as fmt


@dataclass(frozen=True)
class TransferResult:
    outcome: Outcome
    code: str
    """The gRPC status code's name ("OK", "UNAVAILABLE", ...)."""
    detail: str = ""
    bytes: int = 0
    seconds: float = 0.0
    in_doubt: bool = False
    """The peer may have committed the segment: every byte was sent, then the answer was lost."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None


def _plan(paths: Sequence[Path]) -> tuple[list[tuple[Path, int, int]], int, int]:
    """(path, offset, length) to send of each file, the total size and the CRC-32 of it all."""
    parts = []
    crc = total = 0
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            head = f.read(len(fmt.MAGIC))
            fmt.check_magic(head)
            start = 0 if i == 0 else len(fmt.MAGIC)
            if i == 0:
                crc = isal_zlib.crc32(head, crc)
            while chunk := f.read(MAX_CHUNK):
                crc = isal_zlib.crc32(chunk, crc)  # zlib's CRC-32, ~6x faster
            size = f.tell()
        parts.append((path, start, size - start))
        total += size - start
    return parts, total, crc


class TransferClient:
    """Sends segments to peers; one channel per peer address, kept open between calls."""

    def __init__(self, sender: str, token: str | None = None, tls: TlsFiles | None = None,
                 chunk_size: int = MAX_CHUNK, timeout: float = 60.0, min_rate: float = 20e6) -> None:
        """`timeout` + size / `min_rate` bounds one call."""
        self.sender = sender
        self._token = token
        self._tls = tls
        self._chunk = chunk_size
        self._timeout = timeout
        self._min_rate = min_rate
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            options = [("grpc.max_send_message_length", self._chunk + (1 << 20)),
                       ("grpc.enable_retries", 0)]
            if self._tls is not None:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=self._tls.ca.read_bytes(),
                    private_key=self._tls.key.read_bytes() if self._tls.key else None,
                    certificate_chain=self._tls.cert.read_bytes() if self._tls.cert else None)
                ch = grpc.aio.secure_channel(address, creds, options=options)
            else:
                ch = grpc.aio.insecure_channel(address, options=options)
            self._channels[address] = ch
        return ch

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    async def _requests(self, name: str, total: int, crc: int,
                        parts: list[tuple[Path, int, int]]) -> AsyncIterator[transfer_pb2.TransferSegmentRequest]:
        yield transfer_pb2.TransferSegmentRequest(
            metadata=transfer_pb2.SegmentMetadata(name=name, size=total, crc32=crc, sender=self.sender))
        for path, offset, length in parts:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
            try:
                pos, end = offset, offset + length
                while pos < end:
                    chunk = await asyncio.to_thread(os.pread, fd, min(self._chunk, end - pos), pos)
                    if not chunk:
                        raise OSError(f"{path} shrank while being sent")
                    pos += len(chunk)
                    yield transfer_pb2.TransferSegmentRequest(chunk=chunk)
            finally:
                os.close(fd)

    async def send(self, peer: Peer, paths: Sequence[Path]) -> TransferResult:
        """Stream the segments `paths` (one prefix, oldest first) to `peer` as one segment."""
        t0 = time.perf_counter()
        try:
            parts, total, crc = await asyncio.to_thread(_plan, paths)
        except (OSError, fmt.FormatError) as e:
            return TransferResult(Outcome.REFUSED, "LOCAL", f"cannot read the segments: {e}")
        metadata = ((TOKEN_HEADER, f"{TOKEN_SCHEME}{self._token}"),) if self._token else None
        stub = transfer_pb2_grpc.TransferStub(self._channel(peer.address))
        # Written message by message rather than from an iterator: a peer that answers before the
        # end (UNAUTHENTICATED, ALREADY_EXISTS, ...) ends the call, the next write fails, and the
        # call's own status says why (grpc reports "Internal error from Core" for an iterator).
        # Not always: a write that fails just as the peer's status arrives can still replace that
        # status with INTERNAL "Internal error from Core" (grpc/grpc#36066, open in grpcio 1.85; 19
        # of 300 calls that write in a loop while the server aborts). Such a call ended before its
        # last byte was sent, so the peer committed nothing: PEER_FAILED keeps the copy here.
        call: Any = stub.TransferSegment(timeout=self._timeout + total / self._min_rate, metadata=metadata)
        sent_all = False
        try:
            requests = self._requests(paths[0].name, total, crc, parts)
            await call.write(await anext(requests))  # the metadata
            # The peer says go (initial metadata) only once it accepts the segment: no bytes are
            # streamed to a peer that refuses them, and its refusal arrives as a status, not as a
            # broken write.
            ready = await call.initial_metadata()
            if any(key == READY_HEADER for key, _ in ready or ()):
                async for request in requests:
                    await call.write(request)
                sent_all = True  # from here on, the peer may commit whatever we hear
                await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, _BatchError):
            pass  # the call is over (a write or done_writing as the deadline passed): its status comes below
        except OSError as e:  # a local file went away mid-send
            call.cancel()
            return TransferResult(Outcome.REFUSED, "LOCAL", str(e))
        try:
            await call
            code, detail = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, detail = e.code(), e.details() or ""
        except asyncio.CancelledError:
            call.cancel()
            raise
        outcome = outcome_of(code)
        return TransferResult(outcome, code.name, detail, total if outcome.delivered else 0,
                              time.perf_counter() - t0, sent_all and code in IN_DOUBT)
