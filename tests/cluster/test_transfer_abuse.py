"""The transfer service under hostile callers, against a real `ingestor serve` process.

Each test runs the hostile side over real gRPC channels and measures the node from the outside:
its peak RSS (from /proc), the status codes and times the callers see, what is left in its WAL
directory, its readiness and its metrics, and that honest peers and OTLP clients were served
meanwhile:

1. strangers (no token, or a wrong one) with a 60 MB first message: UNAUTHENTICATED at once, the
   message never parsed;
2. a peer with the token sends a block that declares more than the block limit (a 340-byte S2
   block of repeats that declares 1.06 GB; a Snappy header that declares 4 GiB): INVALID_ARGUMENT
   from the block's header, nothing allocated, nothing left;
3. the memory budget taken: RESOURCE_EXHAUSTED with a retry hint, and the sender keeps its copy;
4. senders that trickle or go silent: cut with DEADLINE_EXCEEDED at --stall-timeout, their part
   files and reservations gone, the node ready again, counted in slow_clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from prometheus_client import CollectorRegistry

from cluster.health import PeerHealth
from cluster.membership import Peer, StaticMembership
from cluster.view import ClusterView
from node.errors import RequestTooLargeError
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.metrics import NodeMetrics
from node.transfer.client import TransferClient, TransferResult
from node.transfer.plan import PlannedTransfer
from node.transfer.protocol import READY_HEADER, Outcome
from node.transfer.router import Router, TransferConfig
from node.transfer.service import message_memory
from node.wal import codec
from node.wal import format as fmt
from node.wal.importer import DECODE_FACTOR
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from node.wal.table import SegmentInfo
from tests.cluster.test_transfer import metadata, segments
from tests.harness import ROOT, NodeProcess, scrape
from tests.node.test_grpc import gauge_request
from tests.wal.helpers import write_block
from tests.wal.s2_writer import MAX_REPEAT, BlockBuilder, uvarint

TOKEN = "abuse-token"
MiB = 1 << 20


# -- the node and how it is measured -------------------------------------------------------------


@contextlib.contextmanager
def node_process(tmp_path: Path, *flags: str) -> Iterator[NodeProcess]:
    """A real node that is its own (only) peer, so that it serves the transfer service."""
    node = NodeProcess(tmp_path / "node", name="node-0")
    node.args = ["--peers", f"node-0={node.grpc_addr}", "--peer-token", TOKEN, "--upload-interval", "1h", *flags]
    node.start()
    try:
        yield node
    finally:
        node.kill()  # not its shutdown: that would upload what it took first


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """How much a process's resident memory grew at its peak over a block: its VmHWM reset
    (clear_refs) at the start and read at the end, and VmRSS sampled every 5 ms meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss(self.pid))

    def __enter__(self) -> PeakRss:
        self.base = self.peak = _rss(self.pid)
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(self.pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.base


def leftovers(node: NodeProcess) -> list[str]:
    """Files in the WAL directory that are neither closed nor active segments (.part, .tmp)."""
    wal = node.storage_dir / "wal"
    return sorted(p.name for p in wal.rglob("*") if p.is_file() and not p.name.endswith(".wal"))


def published(node: NodeProcess) -> list[str]:
    return sorted(p.name for p in (node.storage_dir / "wal").glob("*.wal"))


def metric(node: NodeProcess, name: str) -> float:
    return scrape(node.http_url + "/metrics").get(name, 0.0)


@pytest.fixture
def sender(tmp_path: Path) -> Repository:
    wal = Repository(WalConfig(tmp_path / "sender" / "wal"))
    wal.start()
    return wal


async def send(node: NodeProcess, segs: list[SegmentInfo] | list[Path]) -> TransferResult:
    client = TransferClient("sender", token=TOKEN, timeout=20)
    try:
        return await client.send(Peer("node-0", node.grpc_addr),
                                 [s.path if isinstance(s, SegmentInfo) else s for s in segs])
    finally:
        await client.close()


async def export_metrics(node: NodeProcess) -> None:
    async with grpc.aio.insecure_channel(node.grpc_addr) as ch:
        await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request(), timeout=10)


@contextlib.asynccontextmanager
async def call(node: NodeProcess, token: str | None = TOKEN, **options: Any) -> AsyncIterator[Any]:
    """A raw TransferSegment call on a channel of its own (each its own connection)."""
    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1), *options.items()]
    async with grpc.aio.insecure_channel(node.grpc_addr, options=opts) as ch:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        yield transfer_pb2_grpc.TransferStub(ch).TransferSegment(metadata=metadata, timeout=30)


async def outcome(c: Any) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    """The call's status, details and trailers (OK included)."""
    try:
        await c
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or "", dict(e.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", {}


OVERWRITTEN = None
"""What `outcome_while` says when grpc's client lost the node's status (grpc/grpc#36066, open in
grpcio 1.85): a write that fails as the call ends sets the call's status to INTERNAL "Internal error
from Core", whatever the node answered. Measured here: 19 of 300 calls whose client writes in a loop
while the server aborts. The tests then read what the node answered from its own metrics."""


async def outcome_while(c: Any, writes: Any) -> grpc.StatusCode | None:
    """The call's status as soon as the node gives it, while `writes` (a coroutine) goes on;
    OVERWRITTEN when grpc's client replaced it."""
    async def write() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await writes

    task = asyncio.ensure_future(write())
    try:
        code, details, _ = await outcome(c)
        if code is grpc.StatusCode.INTERNAL and details == "Internal error from Core":
            return OVERWRITTEN
        return code
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def go_ahead(c: Any, first: transfer_pb2.TransferSegmentRequest) -> bool:
    """Write the metadata as the node's client does, and wait for the go-ahead."""
    await c.write(first)
    return any(key == READY_HEADER for key, _ in await c.initial_metadata() or ())


def segment_bytes(*payloads: bytes) -> bytes:
    """A segment of hand-made block payloads (each framed with its length and CRC)."""
    return fmt.MAGIC + b"".join(fmt.BLOCK_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)


# -- 1. strangers ---------------------------------------------------------------------------------


def strangers(addr: str, count: int, size: int) -> None:
    """The hostile side of the next test, run as a process of its own: `count` strangers at once,
    half without a token, half with a wrong one, each writing a first message of `size` bytes;
    prints each one's status and how long it took."""

    message = transfer_pb2.TransferSegmentRequest(chunk=bytes(size))

    async def stranger(i: int) -> tuple[str, float]:
        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)]
        async with grpc.aio.insecure_channel(addr, options=opts) as ch:
            metadata = (("authorization", "Bearer wrong"),) if i % 2 else None
            c = transfer_pb2_grpc.TransferStub(ch).TransferSegment(metadata=metadata, timeout=30)
            t0 = time.monotonic()
            code = await outcome_while(c, c.write(message))
            return code.name if code is not OVERWRITTEN else "OVERWRITTEN", time.monotonic() - t0

    async def run() -> None:
        for code, seconds in await asyncio.gather(*(stranger(i) for i in range(count))):
            print(code, f"{seconds:.3f}", flush=True)

    asyncio.run(run())


async def test_strangers_are_refused_before_their_first_message_is_read(tmp_path: Path, sender: Repository) -> None:
    """Ten strangers each write a 60 MB first message: before, the node parsed each one before it
    checked the token (RSS +1.18 GB); now they are refused from their headers."""
    segs = segments(sender, count=2)
    with node_process(tmp_path) as node:
        assert node.proc is not None
        cpu = cpu_seconds(node.proc.pid)
        with PeakRss(node.proc.pid) as rss:
            t0 = time.monotonic()
            hostile = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import sys; from tests.cluster.test_transfer_abuse import strangers; "
                f"strangers({node.grpc_addr!r}, 10, 60 << 20)", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(0.5)  # they are at it
            t1 = time.monotonic()
            accepted, _ = await asyncio.gather(send(node, segs), export_metrics(node))
            served_in = time.monotonic() - t1
            out, _ = await hostile.communicate()
            elapsed = time.monotonic() - t0
        cpu = cpu_seconds(node.proc.pid) - cpu
        results = [(code, float(t)) for code, t in (line.split() for line in out.decode().splitlines())]
        print(f"10 strangers x 60 MB: node RSS +{rss.growth / MiB:.1f} MiB (base {rss.base / MiB:.0f} MiB), node CPU "
              f"{cpu:.2f}s; each refused {min(t for _, t in results):.2f}-{max(t for _, t in results):.2f}s after its "
              f"call started (the hostile process building and serialising 600 MB: its own CPU); a peer and an OTLP "
              f"client served meanwhile in {served_in:.2f}s; {elapsed:.1f}s in all")
        # What the node answered is counted below, from its metrics: a stranger's client may lose it (OVERWRITTEN)
        assert {code for code, _ in results} <= {"UNAUTHENTICATED", "OVERWRITTEN"}, results
        assert accepted.outcome is Outcome.ACCEPTED and served_in < 2
        assert rss.growth < 64 * MiB  # 600 MB were written at it
        assert cpu < 2.0  # the node's whole work over the attack, the peer's transfer and the export included
        async with call(node, token=None) as c:  # one that has not written its first message yet
            t0 = time.monotonic()
            assert (await outcome(c))[0] == grpc.StatusCode.UNAUTHENTICATED
            refused_in = time.monotonic() - t0
        print(f"a stranger that has written nothing yet: UNAUTHENTICATED in {refused_in * 1000:.0f} ms")
        assert refused_in < 0.5
        assert metric(node, 'ingestor_transfers_received_total{code="UNAUTHENTICATED"}') == 11
        assert leftovers(node) == []


# -- 2. blocks that declare more than the block limit --------------------------------------------


def s2_bomb() -> bytes:
    """340 bytes that decode, validly, to 1.06 GB: a sample header, then 63 of the longest repeats."""
    b = BlockBuilder().literal(b"\xaa\xaa\x01\x01\x00\x00\x00\x01").copy1(1, 4)
    for _ in range(63):
        b.repeat(MAX_REPEAT)
    return b.block()


def declared(block: bytes) -> int:
    """The decoded length a block's header declares (a varint)."""
    n = 0
    for i, byte in enumerate(block[:5]):
        n |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            break
    return n


BOMBS = {
    "s2-repeats-1.06GB": s2_bomb(),
    "snappy-header-4GiB": uvarint((1 << 32) - 1) + b"\x00x",
    "just-over-the-limit": uvarint((256 << 20) + 1) + b"\x00x",
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=list(BOMBS))
async def test_a_block_that_declares_more_than_the_block_limit_is_refused_from_its_header(
        tmp_path: Path, sender: Repository, bomb: bytes) -> None:
    good = segments(sender, count=1)[0]
    payload = fmt.encode_block(fmt.KIND_METRIC, 1, b"2026-11-24T04:00:00Z,1,\"{}\",1\n")[1]
    path = sender.directory / good.path.name.replace(good.name.segment_id, "00000000000000aa")
    path.write_bytes(segment_bytes(payload, bomb))
    assert len(bomb) < 400
    with node_process(tmp_path) as node:
        assert node.proc is not None
        with PeakRss(node.proc.pid) as rss:
            t0 = time.monotonic()
            result = await send(node, [path])
            elapsed = time.monotonic() - t0
        print(f"{len(bomb)}-byte block declaring {declared(bomb)} bytes: {result.code} in "
              f"{elapsed:.2f}s, RSS +{rss.growth / MiB:.1f} MiB")
        assert (result.outcome, result.code) == (Outcome.REFUSED, "INVALID_ARGUMENT")  # the sender uploads it
        assert "block limit" in result.detail
        assert elapsed < 2
        assert rss.growth < 32 * MiB
        assert leftovers(node) == [] and published(node) == []
        assert (await send(node, [good])).outcome is Outcome.ACCEPTED
        assert len(published(node)) == 1


def test_the_writer_never_writes_a_block_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a reader refuses, no writer here writes: at start-up it would be cut off as corrupt."""
    monkeypatch.setattr(codec, "MAX_DECODED_LEN", 1000)
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    write_block(wal, "Metrics", "Cpu", fmt.KIND_METRIC, b"x" * 900, 1)
    with pytest.raises(RequestTooLargeError, match="block limit"):
        write_block(wal, "Metrics", "Cpu", fmt.KIND_METRIC, b"x" * 1000, 1)
    assert [len(v) for s in wal.rotate_all() for v in iter_rows(s.path)] == [900]
    with pytest.raises(codec.CodecError, match="block limit"):
        codec.decompress(uvarint(1001) + b"\x00x")


def test_memory_for_covers_what_feeding_each_chunk_holds(tmp_path: Path) -> None:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    values = [os.urandom(n).hex().encode() for n in (10, 5000, 50_000, 30, 20_000)]
    data = segment_bytes(*(fmt.encode_block(fmt.KIND_METRIC, 1, v)[1] for v in values))
    decoded = [fmt.SAMPLE_HEADER.size + len(v) for v in values]
    for size in (3, 100, 4096, 65536, len(data)):
        imp = wal.begin_import("Metrics_Cpu", len(data))
        try:
            for i in range(0, len(data), size):
                chunk = data[i:i + size]
                done = imp.blocks
                need = imp.memory_for(chunk)
                imp.feed(chunk)
                assert need >= max([DECODE_FACTOR * n for n in decoded[done:imp.blocks]], default=0)
                assert need >= len(imp._pending)  # the block being gathered
                assert need <= DECODE_FACTOR * max(decoded) + len(data)
            imp.verify(zlib.crc32(data))
            assert imp.blocks == len(values)
        finally:
            imp.abort()


async def test_a_chunk_over_the_chunk_size_is_invalid(tmp_path: Path) -> None:
    data = segment_bytes(fmt.encode_block(fmt.KIND_METRIC, 1, b"x\n")[1]) + bytes(5 * MiB)
    with node_process(tmp_path) as node:
        async with call(node) as c:
            assert await go_ahead(c, metadata("Metrics_Cpu_0000000000000001.wal", data))
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await c.write(transfer_pb2.TransferSegmentRequest(chunk=data))
            code, details, _ = await outcome(c)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "chunk" in details
        assert leftovers(node) == [] and published(node) == []


# -- 3. the memory budget -------------------------------------------------------------------------


async def test_transfers_past_the_memory_budget_are_resource_exhausted_and_the_sender_keeps_its_copy(
        tmp_path: Path, sender: Repository) -> None:
    """Two transfers of large segments hold a message of 4 MiB each (twice: as received and as
    bytes) and --max-memory leaves 64 KiB beside them: a third, and a small one from a peer's
    router, wait for the budget, then hear RESOURCE_EXHAUSTED with a retry hint; the router keeps
    its segments and routes around the peer."""
    segs = segments(sender, count=2)
    data = b"".join(s.path.read_bytes() for s in segs)  # any bytes: the holders never send them
    budget = 2 * message_memory(100 * MiB) + (64 << 10)
    with node_process(tmp_path, "--max-memory", str(budget)) as node:
        async with call(node) as h1, call(node) as h2:
            big = 100 * MiB  # what they declare: each will send chunks of 4 MiB
            assert await go_ahead(h1, metadata("Metrics_Cpu_0000000000000001.wal", data, size=big))
            assert await go_ahead(h2, metadata("Metrics_Cpu_0000000000000002.wal", data, size=big))
            assert metric(node, "ingestor_memory_in_flight_bytes") == 2 * message_memory(big)

            metrics = NodeMetrics(CollectorRegistry())
            view = ClusterView("sender", "127.0.0.1:1",
                               StaticMembership([Peer("node-0", node.grpc_addr), Peer("sender", "127.0.0.1:1")]),
                               PeerHealth(60))
            router = Router(view, TransferClient("sender", token=TOKEN), TransferConfig(), metrics)

            async def third() -> tuple[grpc.StatusCode, str, dict[str, Any]]:
                async with call(node) as c:
                    assert not await go_ahead(c, metadata("Metrics_Cpu_0000000000000003.wal", data, size=big))
                    return await outcome(c)

            try:
                t0 = time.monotonic()
                (code, details, trailers), result = await asyncio.gather(
                    third(), router.deliver(PlannedTransfer(segs[0].prefix, "node-0", tuple(segs))))
                elapsed = time.monotonic() - t0
            finally:
                await router.client.close()
            h1.cancel()
            h2.cancel()
        print(f"over the memory budget: {code.name} after {elapsed:.1f}s: {details}")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "memory budget" in details
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds >= 1
        assert (result.outcome, result.code, result.in_doubt) == (Outcome.PEER_FAILED, "RESOURCE_EXHAUSTED", False)
        assert all(s.path.exists() for s in segs)  # the sender keeps its copy
        assert not view.health.is_healthy("node-0") and view.owner(segs[0].prefix) == "sender"
        assert metric(node, 'ingestor_memory_refused_total{what="transfer"}') == 2
        deadline = time.monotonic() + 5
        while metric(node, "ingestor_memory_in_flight_bytes") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the holders' calls end as the node sees their cancellation
        assert metric(node, "ingestor_memory_in_flight_bytes") == 0
        assert leftovers(node) == []
        assert (await send(node, segs)).outcome is Outcome.ACCEPTED  # the budget is free again


# -- 4. senders too slow ---------------------------------------------------------------------------


async def test_senders_that_trickle_or_go_silent_are_cut_at_the_stall_timeout(
        tmp_path: Path, sender: Repository) -> None:
    """Before, a sender trickling a byte every 5 s kept its call and part file for 150 s. Now
    --stall-timeout 2s cuts the silent one after 2 s without a message, and the trickling one once
    it has been waited on 2 s at under --min-request-rate; peers and OTLP clients are served
    meanwhile."""
    segs = segments(sender, count=2)
    data = b"".join(s.path.read_bytes() for s in segs)

    async def slow(name: str, trickle: bool) -> tuple[grpc.StatusCode | None, float]:
        async def writes(c: Any) -> None:
            for i in range(len(data)):
                if not trickle:
                    await asyncio.sleep(60)
                await c.write(transfer_pb2.TransferSegmentRequest(chunk=data[i:i + 1]))
                await asyncio.sleep(0.2)

        async with call(node) as c:
            t0 = time.monotonic()
            assert await go_ahead(c, metadata(name, data))
            code = await outcome_while(c, writes(c))
            return code, time.monotonic() - t0

    with node_process(tmp_path, "--stall-timeout", "2s", "--min-request-rate", "4KiB") as node:
        slowpokes = [asyncio.ensure_future(slow(f"Metrics_Slow_{i:016x}.wal", trickle=i % 2 == 0)) for i in range(6)]
        await asyncio.sleep(0.5)
        assert len([n for n in leftovers(node) if n.endswith(".part")]) == 3  # the tricklers' part files
        t0 = time.monotonic()
        served = await asyncio.gather(send(node, segs), export_metrics(node))
        served_in = time.monotonic() - t0
        cut = await asyncio.gather(*slowpokes)
        print(f"6 slow senders cut after {min(t for _, t in cut):.2f}-{max(t for _, t in cut):.2f}s; a peer and an "
              f"OTLP client served meanwhile in {served_in:.2f}s")
        assert served[0].outcome is Outcome.ACCEPTED and served_in < 1.5
        # What the node answered is counted below, from its metrics: a trickler's client may lose it (OVERWRITTEN)
        assert {code for code, _ in cut} <= {grpc.StatusCode.DEADLINE_EXCEEDED, OVERWRITTEN}, cut
        assert all(1.9 < t < 4 for _, t in cut), cut
        assert leftovers(node) == []
        assert metric(node, 'ingestor_slow_clients_total{transport="transfer"}') == 6
        assert metric(node, 'ingestor_transfers_received_total{code="DEADLINE_EXCEEDED"}') == 6
        assert metric(node, "ingestor_memory_in_flight_bytes") == 0


async def test_a_slow_sender_holds_the_disk_reservation_and_readiness_only_until_it_is_cut(tmp_path: Path) -> None:
    """With --max-disk-usage, a transfer declaring the whole limit makes the node not ready while
    it runs (its bytes are reserved): a trickling sender did so for 150 s after 12 bytes."""
    data = segment_bytes(*(fmt.encode_block(fmt.KIND_METRIC, 1, os.urandom(500).hex().encode())[1]
                           for _ in range(1000)))  # a valid segment of ~1 MB
    with node_process(tmp_path, "--stall-timeout", "2s", "--max-disk-usage", str(len(data))) as node:
        async with call(node) as c:
            t0 = time.monotonic()
            assert await go_ahead(c, metadata("Metrics_Cpu_0000000000000001.wal", data))
            await c.write(transfer_pb2.TransferSegmentRequest(chunk=data[:12]))
            assert not node.ready() and "over limits" in node.not_ready
            for i in range(12, len(data)):  # a byte every 0.2 s
                if node.ready() or time.monotonic() - t0 > 10:
                    break
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await c.write(transfer_pb2.TransferSegmentRequest(chunk=data[i:i + 1]))
                await asyncio.sleep(0.2)
            ready_after = time.monotonic() - t0
            code = (await outcome(c))[0]
        print(f"not ready for {ready_after:.2f}s, then {code.name}")
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 1.9 < ready_after < 3.5
        assert leftovers(node) == []


async def test_the_pace_counts_only_the_time_spent_waiting_for_the_sender() -> None:
    from node.transfer.service import Pace

    class Context:
        def __init__(self, delays: list[float], sizes: list[int]) -> None:
            self.items = list(zip(delays, sizes, strict=True))

        async def read(self) -> Any:
            if not self.items:
                return grpc.aio.EOF
            delay, size = self.items.pop(0)
            await asyncio.sleep(delay)
            return transfer_pb2.TransferSegmentRequest(chunk=bytes(size))

    fast = Pace(stall=0.3, min_rate=10_000)
    ctx = Context([0.05] * 10, [2000] * 10)
    while await fast.next(ctx) is not None:
        await asyncio.sleep(0.1)  # the receiver's own work: not the sender's time
    assert fast.received > 20_000

    slow = Pace(stall=0.3, min_rate=10_000)
    ctx = Context([0.1] * 10, [100] * 10)
    with pytest.raises(Exception, match="min-request-rate"):
        while await slow.next(ctx) is not None:
            pass
    assert 0.29 < slow.waited < 0.45

    silent = Pace(stall=0.2, min_rate=0)
    with pytest.raises(Exception, match="stall-timeout"):
        await silent.next(Context([5.0], [1]))
