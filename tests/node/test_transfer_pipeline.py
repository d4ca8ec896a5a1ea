"""The transfer service feeds each chunk (write, verify, decode) in a thread while it receives the
next one: at most one chunk in flight, in order, and every failure still the status it was when
one chunk was handled at a time, with nothing left behind.

The receiver is the node's real gRPC server over a real WAL (tests/cluster/test_transfer.py); the
import's `feed` is wrapped to hold a chunk in its thread, so that what the service does meanwhile
is seen.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from node.errors import InvalidInputError
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.transfer import service as service_mod
from node.wal import format as fmt
from node.wal.importer import SegmentImport
from node.wal.repository import Repository, WalConfig
from tests.cluster import test_transfer
from tests.cluster.test_transfer import (
    TOKEN,
    Receiver,
    _blocks_as_written,  # noqa: F401 (autouse: blocks as written, so that a chunk boundary falls between them)
    all_rows,
    chunks,
    metadata,
    segments,
    start_receiver,
)

WAIT = 3.0


class Stream:
    """A transfer call whose messages the test sends one by one (and may stop sending)."""

    def __init__(self, receiver: Receiver) -> None:
        self._queue: asyncio.Queue[transfer_pb2.TransferSegmentRequest | None] = asyncio.Queue()
        self._channel = grpc.aio.insecure_channel(receiver.addr)

        async def gen() -> AsyncIterator[transfer_pb2.TransferSegmentRequest]:
            while (m := await self._queue.get()) is not None:
                yield m

        self.call: Any = transfer_pb2_grpc.TransferStub(self._channel).TransferSegment(
            gen(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)

    def send(self, *messages: transfer_pb2.TransferSegmentRequest | None) -> None:
        for m in messages:
            self._queue.put_nowait(m)

    async def outcome(self) -> tuple[grpc.StatusCode, str]:
        try:
            await self.call
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        return grpc.StatusCode.OK, ""

    async def close(self) -> None:
        self.call.cancel()
        await self._channel.close()


@pytest.fixture
def sender(tmp_path: Path) -> Repository:
    wal = Repository(WalConfig(tmp_path / "sender" / "wal"))
    wal.start()
    return wal


async def receiver_with(tmp_path: Path, **service_options: Any) -> Receiver:
    return await start_receiver(tmp_path / "receiver", service_options=service_options)


async def stop(r: Receiver) -> None:
    await r.server.stop(0)
    r.ledger.close()


async def send_whole(tmp_path: Path, name: str, data: bytes,
                     parts: list[transfer_pb2.TransferSegmentRequest]) -> tuple[Receiver, Any, str]:
    """One segment sent whole to a new receiver, which is stopped after: (it, the status, its details)."""
    r = await receiver_with(tmp_path)
    s = Stream(r)
    try:
        s.send(metadata(name, data), *parts, None)
        code, details = await s.outcome()
    finally:
        await s.close()
        await stop(r)
    return r, code, details


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the messages the service has read (metadata included)."""
    reads = 0
    original = service_mod.Pace.next

    async def next_(self: service_mod.Pace, context: Any) -> Any:
        nonlocal reads
        msg = await original(self, context)
        if msg is not None:
            reads += 1
        return msg

    monkeypatch.setattr(service_mod.Pace, "next", next_)
    return lambda: reads


def hold_feed(monkeypatch: pytest.MonkeyPatch, which: int, until: Callable[[], bool], *,
              then: Callable[[], None] | None = None) -> list[bool]:
    """Hold the `which`-th call of `SegmentImport.feed` (1-based) in its thread until `until()` is
    true (at most WAIT seconds), then run `then` (which may raise) or the real feed. The returned
    list says, per held call, whether `until()` became true while it was held."""
    original = SegmentImport.feed
    calls = 0
    seen: list[bool] = []

    def feed(self: SegmentImport, chunk: bytes | bytearray | memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == which:
            deadline = time.monotonic() + WAIT
            while not until() and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append(until())
            if then is not None:
                then()
        original(self, chunk)

    monkeypatch.setattr(SegmentImport, "feed", feed)
    return seen


async def test_the_next_chunk_is_received_while_the_one_before_is_fed(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = segments(sender, count=1, blocks=6)[0]
    data = seg.path.read_bytes()
    parts = chunks(data, len(data) // 4 + 1)
    reads = counting_reads(monkeypatch)
    # The first chunk's feed waits in its thread for the service to read the second chunk.
    seen = hold_feed(monkeypatch, 1, lambda: reads() >= 3)
    r, code, details = await send_whole(tmp_path, seg.path.name, data, parts)
    assert seen == [True]  # read while the chunk before was being fed
    assert code is grpc.StatusCode.OK, details
    assert r.rows() == all_rows([seg])


async def test_at_most_one_chunk_is_in_flight_and_they_are_fed_in_order(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = segments(sender, count=1, blocks=8)[0]
    data = seg.path.read_bytes()
    parts = chunks(data, 900)
    running = 0
    most = 0
    fed: list[int] = []
    lock = threading.Lock()
    original = SegmentImport.feed

    def feed(self: SegmentImport, chunk: bytes | bytearray | memoryview) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        fed.append(self.received)
        time.sleep(0.002)
        try:
            original(self, chunk)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(SegmentImport, "feed", feed)
    r, code, details = await send_whole(tmp_path, seg.path.name, data, parts)
    assert code is grpc.StatusCode.OK, details
    assert most == 1
    assert fed == list(range(0, len(data), 900))
    assert r.rows() == all_rows([seg])


def bad_crc(data: bytes, block: int) -> tuple[bytes, fmt.RawBlock]:
    out = bytearray(data)
    raw = list(fmt.iter_raw_blocks(data))[block]
    out[raw.end - 3] ^= 0xFF
    return bytes(out), raw


async def test_a_bad_chunk_fails_the_call_at_once_while_the_next_is_awaited(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender stops after the bad chunk (the stream stays open): the call ends with the
    chunk's INVALID_ARGUMENT at once, not at the stall timeout, and leaves nothing."""
    seg = segments(sender, count=1, blocks=6)[0]
    data, third = bad_crc(seg.path.read_bytes(), 2)
    parts = chunks(data, 700)
    upto = next(i for i in range(len(parts)) if (i + 1) * 700 >= third.end)
    r = await receiver_with(tmp_path, stall_timeout=20.0)
    s = Stream(r)
    try:
        s.send(metadata(seg.path.name, data), *parts[: upto + 1])
        t0 = time.monotonic()
        code, details = await asyncio.wait_for(s.outcome(), 10)
        elapsed = time.monotonic() - t0
    finally:
        await s.close()
        await stop(r)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"offset {third.offset}" in details and "CRC" in details
    assert elapsed < 5
    assert r.files() == []


async def test_a_chunk_that_fails_while_the_sender_stalls_is_its_own_error_not_the_stall(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read of the next chunk times out (DEADLINE_EXCEEDED) while the chunk before is still
    being fed, and that chunk then fails: the call ends with the chunk's status, as it did when the
    chunk was fed before the next was read."""
    seg = segments(sender, count=1, blocks=4)[0]
    data = seg.path.read_bytes()
    parts = chunks(data, 700)

    def fail() -> None:
        time.sleep(1.0)  # the next read times out meanwhile
        raise InvalidInputError("the test's bad chunk")

    hold_feed(monkeypatch, 2, lambda: True, then=fail)
    r = await receiver_with(tmp_path, stall_timeout=0.3)
    s = Stream(r)
    try:
        s.send(metadata(seg.path.name, data), *parts[:2])  # then nothing: the sender stalls
        code, details = await asyncio.wait_for(s.outcome(), 10)
    finally:
        await s.close()
        await stop(r)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "the test's bad chunk" in details
    assert r.files() == []


async def test_a_sender_that_goes_away_while_a_chunk_is_fed_leaves_nothing_and_may_resend(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The call is cancelled while the first chunk is still in its thread: the part file (which
    that chunk creates) and the claim go once the thread is done, not before it."""
    seg = segments(sender, count=1, blocks=6)[0]
    data = seg.path.read_bytes()
    parts = chunks(data, 500)
    release = threading.Event()
    held = threading.Event()

    def wait() -> None:
        held.set()
        release.wait(WAIT)

    hold_feed(monkeypatch, 1, lambda: True, then=wait)
    r = await receiver_with(tmp_path)
    try:
        s = Stream(r)
        s.send(metadata(seg.path.name, data), *parts[:3])
        while not held.is_set():
            await asyncio.sleep(0.01)
        await s.close()  # the sender goes away
        await asyncio.sleep(0.3)  # the service sees the cancellation meanwhile
        release.set()
        await asyncio.sleep(0.3)  # the held chunk is written meanwhile (the part file, if nothing waited for it)
        for _ in range(200):
            if r.files() == []:
                break
            await asyncio.sleep(0.02)
        assert r.files() == []
        s = Stream(r)
        try:
            s.send(metadata(seg.path.name, data), *parts, None)
            code, details = await s.outcome()
        finally:
            await s.close()
        assert code is grpc.StatusCode.OK, details
        assert r.rows() == all_rows([seg])
    finally:
        release.set()
        await stop(r)


# -- reading the chunks ----------------------------------------------------------------------------


def _varint(n: int, pad: int = 0) -> bytes:
    """`n` as a protobuf varint, with `pad` redundant continuation bytes (which protobuf accepts)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b | 0x80 if pad else b)
            break
    for i in range(pad):
        out.append(0x80 if i < pad - 1 else 0x00)
    return bytes(out)


def _messages() -> list[bytes]:
    rng = random.Random(17)
    chunk = rng.randbytes(3000)
    meta = transfer_pb2.TransferSegmentRequest(metadata=transfer_pb2.SegmentMetadata(
        name="Metrics_Cpu_0000000000000001.wal", size=10, crc32=5, sender="s")).SerializeToString()
    out = [transfer_pb2.TransferSegmentRequest(chunk=chunk[:n]).SerializeToString() for n in (0, 1, 127, 128, 3000)]
    out += [meta, b"", b"\x12", b"\x12\x05abc", b"\x12\x02abc", b"\x12\x03abc" + meta, meta + b"\x12\x03abc",
            b"\x12\x03abc\x12\x02de", b"\x12\xff\xff\xff\xff\xff" + chunk, b"\x1a\x03abc", b"\x0a\x03abc",
            *(b"\x12" + _varint(3, pad) + b"abc" for pad in range(1, 11))]  # protobuf takes 5 bytes at most
    for m in list(out):  # and every message cut short, and with one byte changed
        for _ in range(30):
            i = rng.randrange(len(m)) if m else 0
            out.append(m[:i])
            if m:
                out.append(m[:i] + bytes([m[i] ^ (1 << rng.randrange(8))]) + m[i + 1:])
    return out


def test_a_chunk_read_as_a_view_is_what_protobuf_parses() -> None:
    """`read_request` gives a view exactly when protobuf parses the bytes into a chunk alone, and
    then the same bytes; anything else is protobuf's own parse (or its error)."""
    views = 0
    for data in _messages():
        try:
            want: Any = transfer_pb2.TransferSegmentRequest.FromString(data)
        except DecodeError:
            want = None
        try:
            got = service_mod.read_request(data)
        except DecodeError:
            got = None
        if isinstance(got, memoryview):
            views += 1
            assert want is not None and want.WhichOneof("msg") == "chunk", data[:12].hex()
            assert want.ListFields() == [(want.DESCRIPTOR.fields_by_name["chunk"], bytes(got))]
        else:
            assert got == want, data[:12].hex()
    assert views > 10


async def test_a_receiver_added_by_the_generated_code_reads_chunks_as_protobuf_parses_them(
        tmp_path: Path, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service takes a chunk either way: as a view (`add_to_server`) or parsed."""
    monkeypatch.setattr(test_transfer, "add_to_server", transfer_pb2_grpc.add_TransferServicer_to_server)
    seg = segments(sender, count=1, blocks=4)[0]
    data = seg.path.read_bytes()
    r, code, details = await send_whole(tmp_path, seg.path.name, data, chunks(data, 333))
    assert code is grpc.StatusCode.OK, details
    assert r.rows() == all_rows([seg])
