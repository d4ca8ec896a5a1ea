"""The transfer service and client over a real gRPC socket: every status, and nothing lost or doubled.

The receiver is the node's real gRPC server (OTLP, admin, health and the transfer service) over a
real WAL; the sender is the real `TransferClient` sending segments from a real WAL of its own.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from cluster.health import PeerHealth
from cluster.membership import Peer, StaticMembership
from cluster.view import ClusterView
from node.gen.ingestor.v1 import admin_pb2, transfer_pb2, transfer_pb2_grpc
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.grpc import GrpcServer
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.transfer.client import TlsFiles, TransferClient
from node.transfer.intake import Intake
from node.transfer.ledger import DEFAULT_RETENTION, Claim, TransferLedger, transfer_key
from node.transfer.plan import PlannedTransfer
from node.transfer.protocol import READY_HEADER, Outcome
from node.transfer.router import Router, TransferConfig
from node.transfer.service import TRANSFER_SERVICE, PeerAuth, TransferService, add_to_server
from node.wal import format as fmt
from node.wal import segment as wal_segment
from node.wal.names import make_prefix
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from node.wal.table import SegmentInfo
from tests.cluster.tls import make_certs
from tests.wal.helpers import wal_stats, write_block

TOKEN = "s3cret-token"


@dataclass
class Receiver:
    root: Path
    addr: str
    wal: Repository
    state: NodeState
    ledger: TransferLedger
    server: GrpcServer

    @property
    def peer(self) -> Peer:
        return Peer("receiver", self.addr)

    def files(self) -> list[str]:
        """Every file under the WAL directory (segments, temporaries), active/ included."""
        return sorted(str(p.relative_to(self.wal.directory)) for p in self.wal.directory.rglob("*") if p.is_file())

    def rows(self) -> list[bytes]:
        return [line for s in self.wal.closed_segments() for v in iter_rows(s.path) for line in v.splitlines()]


async def start_receiver(root: Path, credentials: grpc.ServerCredentials | None = None, mtls: bool = False,
                         service_options: dict[str, Any] | None = None, **wal_config: Any) -> Receiver:
    """`service_options`: keyword arguments of the `TransferService` (its pace)."""
    wal = Repository(WalConfig(root / "wal", **wal_config))
    wal.start()
    state = NodeState(over_limits=wal.over_limits)
    metrics = NodeMetrics(CollectorRegistry())
    ledger = TransferLedger(root / "transfers.ledger")
    ledger.open()
    service = TransferService(Intake(wal, state, ledger, metrics), PeerAuth(token=TOKEN, mtls=mtls),
                              **(service_options or {}))
    conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig()), TracesConverter(TracesConfig()))
    server = GrpcServer("127.0.0.1:0", Ingest(wal, conv, state, metrics), state, metrics,
                        lambda: admin_pb2.NodeStatus(node_name="receiver"), max_request_bytes=64 << 20,
                        extra=[(add_to_server, service, TRANSFER_SERVICE)],
                        credentials=credentials)
    await server.start()
    state.set_phase(Phase.SERVING)
    host = "localhost" if credentials is not None else "127.0.0.1"
    return Receiver(root, f"{host}:{server.port}", wal, state, ledger, server)


@pytest_asyncio.fixture
async def receiver(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    marker = request.node.get_closest_marker("wal")
    r = await start_receiver(tmp_path / "receiver", **(marker.kwargs if marker else {}))
    try:
        yield r
    finally:
        await r.server.stop(0)
        r.ledger.close()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Repository]:
    wal = Repository(WalConfig(tmp_path / "sender" / "wal"))
    wal.start()
    yield wal


def rows(i: int, n: int = 50) -> bytes:
    return b"".join(f"2026-11-24T04:00:00.000Z,{i * 1000 + j},\"{{}}\",{j}.5\n".encode() for j in range(n))


@pytest.fixture(autouse=True)
def _blocks_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed segments keep the blocks they were written in (no compaction: segment.compact), so
    that a test can send, cut or corrupt the third of five."""
    monkeypatch.setattr(wal_segment, "COMPACT_BELOW", 0)


def segments(wal: Repository, count: int = 2, blocks: int = 3, table: str = "Cpu") -> list[SegmentInfo]:
    """`count` closed segments of Metrics/<table>, each of `blocks` blocks, oldest first."""
    out = []
    for s in range(count):
        for b in range(blocks):
            write_block(wal, "Metrics", table, fmt.KIND_METRIC, rows(s * 100 + b), 50)
        out.extend(wal.rotate_all())
    return out


def all_rows(segs: list[SegmentInfo]) -> list[bytes]:
    return [line for s in segs for v in iter_rows(s.path) for line in v.splitlines()]


async def raw_call(addr: str, messages: list[transfer_pb2.TransferSegmentRequest],
                   token: str | None = TOKEN) -> tuple[grpc.StatusCode, str]:
    """Send `messages` as the node's client does: the first, then the rest after the go-ahead."""
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = transfer_pb2_grpc.TransferStub(ch)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        call: Any = stub.TransferSegment(metadata=metadata, timeout=10)
        try:
            await call.write(messages[0])
            ready = await call.initial_metadata()
            if any(key == READY_HEADER for key, _ in ready or ()):
                for m in messages[1:]:
                    await call.write(m)
                await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        try:
            await call
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        return grpc.StatusCode.OK, ""


def metadata(name: str, data: bytes, size: int | None = None, crc: int | None = None
             ) -> transfer_pb2.TransferSegmentRequest:
    return transfer_pb2.TransferSegmentRequest(metadata=transfer_pb2.SegmentMetadata(
        name=name, size=len(data) if size is None else size, crc32=zlib.crc32(data) if crc is None else crc,
        sender="test"))


def chunks(data: bytes, size: int = 1000) -> list[transfer_pb2.TransferSegmentRequest]:
    return [transfer_pb2.TransferSegmentRequest(chunk=data[i:i + size]) for i in range(0, len(data), size)]


async def test_several_segments_arrive_as_one_with_every_row_in_order(receiver: Receiver, sender: Repository) -> None:
    segs = segments(sender, count=3)
    client = TransferClient("sender", token=TOKEN, chunk_size=4096)
    try:
        result = await client.send(receiver.peer, [s.path for s in segs])
    finally:
        await client.close()
    assert (result.outcome, result.code) == (Outcome.ACCEPTED, "OK")
    [got] = receiver.wal.closed_segments()
    assert got.prefix == segs[0].prefix and got.blocks == 9
    assert got.rows == 0  # not decoded on receipt: a peer's blocks are checked by their CRCs (intake.py)
    assert result.bytes == got.size == sum(s.size for s in segs) - 2 * len(fmt.MAGIC)
    assert receiver.rows() == all_rows(segs)
    assert receiver.files() == [got.path.name]


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_a_caller_without_the_peer_token_is_unauthenticated(receiver: Receiver, sender: Repository,
                                                                  token: str | None) -> None:
    segs = segments(sender, count=1)
    client = TransferClient("sender", token=token)
    try:
        result = await client.send(receiver.peer, [s.path for s in segs])
    finally:
        await client.close()
    assert (result.outcome, result.code) == (Outcome.PEER_FAILED, "UNAUTHENTICATED"), result
    assert receiver.files() == []
    assert all(s.path.exists() for s in segs)  # the sender keeps its copy


@pytest.mark.parametrize("name", ["../Metrics_Cpu_0123456789abcdef.wal", "Metrics_Cpu/x_0123456789abcdef.wal",
                                  "Metrics_Cpu_0123456789abcdef.wal.tmp", "", "Me\x00trics_Cpu_0123456789abcdef.wal",
                                  "x" * 5000])
async def test_a_bad_name_is_invalid_argument(receiver: Receiver, sender: Repository, name: str) -> None:
    data = segments(sender, count=1)[0].path.read_bytes()
    code, details = await raw_call(receiver.addr, [metadata(name, data), *chunks(data)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert receiver.files() == []
    assert not list(receiver.root.rglob("*.wal*"))


async def test_a_bad_crc_in_the_third_block_is_refused_and_leaves_nothing(receiver: Receiver,
                                                                          sender: Repository) -> None:
    seg = segments(sender, count=1, blocks=5)[0]
    data = bytearray(seg.path.read_bytes())
    third = list(fmt.iter_raw_blocks(bytes(data)))[2]
    data[third.end - 3] ^= 0xFF  # one payload byte of the third block
    # Sent up to the end of the third block: a write after the node's answer could make grpc's
    # client replace it (test_transfer_abuse.OVERWRITTEN); the node refuses before it misses the rest.
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, bytes(data)),
                                                   *chunks(bytes(data[:third.end]), 700)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"offset {third.offset}" in details and "CRC" in details
    assert receiver.files() == []


async def test_a_checksum_or_size_that_does_not_match_is_refused(receiver: Receiver, sender: Repository) -> None:
    seg = segments(sender, count=1)[0]
    data = seg.path.read_bytes()
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data, crc=zlib.crc32(data) ^ 1),
                                                   *chunks(data)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "CRC-32" in details
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data, size=len(data) + 10), *chunks(data)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "stream ended" in details
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data, size=len(data) - 10), *chunks(data)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "more than the declared" in details
    code, details = await raw_call(receiver.addr, chunks(data))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "first message" in details
    assert receiver.files() == []


async def test_a_stream_cut_half_way_leaves_nothing_then_the_resend_is_accepted(receiver: Receiver,
                                                                                sender: Repository) -> None:
    seg = segments(sender, count=1, blocks=6)[0]
    data = seg.path.read_bytes()
    parts = chunks(data, 500)
    half_sent = asyncio.Event()

    async def gen() -> AsyncIterator[transfer_pb2.TransferSegmentRequest]:
        yield metadata(seg.path.name, data)
        for m in parts[: len(parts) // 2]:
            yield m
        half_sent.set()
        await asyncio.sleep(30)  # the sender hangs; it is cancelled below

    async with grpc.aio.insecure_channel(receiver.addr) as ch:
        call = transfer_pb2_grpc.TransferStub(ch).TransferSegment(gen(), metadata=(("authorization",
                                                                                       f"Bearer {TOKEN}"),))
        await half_sent.wait()
        for _ in range(200):  # the part file is created with the first chunk written
            if any(f.endswith(".part") for f in receiver.files()):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert any(f.endswith(".part") for f in receiver.files())  # received so far, not visible
        call.cancel()
    for _ in range(100):
        if receiver.files() == []:
            break
        await asyncio.sleep(0.05)
    assert receiver.files() == []
    assert receiver.wal.disk_usage() == 0 and wal_stats(receiver.wal).segment_count == 0  # the reservation is back
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data), *parts])
    assert code is grpc.StatusCode.OK, details
    assert receiver.rows() == all_rows([seg])


async def test_the_same_segment_twice_is_already_exists_even_after_a_restart(receiver: Receiver,
                                                                             sender: Repository) -> None:
    segs = segments(sender, count=2)
    client = TransferClient("sender", token=TOKEN)
    try:
        first = await client.send(receiver.peer, [s.path for s in segs])
        second = await client.send(receiver.peer, [s.path for s in segs])
        assert (first.outcome, second.outcome) == (Outcome.ACCEPTED, Outcome.ALREADY_HAD)
        assert second.code == "ALREADY_EXISTS"
        # the receiver restarts: its ledger is read back from disk
        receiver.ledger.close()
        receiver.ledger = TransferLedger(receiver.ledger.path)
        receiver.ledger.open()
        again = TransferLedger(receiver.ledger.path)
        assert again.compact() == 1
        third = await client.send(receiver.peer, [s.path for s in segs])
        assert third.outcome is Outcome.ALREADY_HAD
        # the first segment alone is a different transfer (fewer rows): it is taken
        other = await client.send(receiver.peer, [segs[0].path])
        assert other.outcome is Outcome.ACCEPTED
    finally:
        await client.close()
    assert sorted(receiver.rows()) == sorted(all_rows(segs) + all_rows(segs[:1]))


@pytest.mark.wal(max_disk_usage=2000)
async def test_a_receiver_over_its_limits_is_resource_exhausted_and_the_sender_keeps_its_copy(
        receiver: Receiver, sender: Repository) -> None:
    segs = segments(sender, count=2, blocks=4)
    assert sum(s.size for s in segs) > 2000
    metrics = NodeMetrics(CollectorRegistry())
    view = ClusterView("sender", "127.0.0.1:1", StaticMembership([receiver.peer, Peer("sender", "127.0.0.1:1")]),
                       PeerHealth(60))
    router = Router(view, TransferClient("sender", token=TOKEN), TransferConfig(), metrics)
    try:
        result = await router.deliver(PlannedTransfer(segs[0].prefix, "receiver", tuple(segs)))
    finally:
        await router.client.close()
    assert (result.outcome, result.code) == (Outcome.PEER_FAILED, "RESOURCE_EXHAUSTED")
    assert "max-disk-usage" in result.detail
    assert receiver.files() == []
    assert all(s.path.exists() for s in segs)
    assert not view.health.is_healthy("receiver")  # it owns nothing for a while: the next owner is us
    assert view.owner(segs[0].prefix) == "sender"


async def test_a_draining_receiver_is_unavailable(receiver: Receiver, sender: Repository) -> None:
    receiver.state.set_phase(Phase.DRAINING)
    seg = segments(sender, count=1)[0]
    client = TransferClient("sender", token=TOKEN)
    try:
        result = await client.send(receiver.peer, [seg.path])
    finally:
        await client.close()
    assert (result.outcome, result.code) == (Outcome.PEER_FAILED, "UNAVAILABLE")
    assert "draining" in result.detail
    assert receiver.files() == []


async def test_an_unreachable_peer_fails_fast(sender: Repository) -> None:
    seg = segments(sender, count=1)[0]
    client = TransferClient("sender", token=TOKEN, timeout=5)
    try:
        result = await client.send(Peer("gone", "127.0.0.1:1"), [seg.path])
    finally:
        await client.close()
    assert (result.outcome, result.code) == (Outcome.PEER_FAILED, "UNAVAILABLE")
    assert seg.path.exists()


async def test_mutual_tls_authenticates_peers_and_refuses_a_client_without_a_certificate(
        tmp_path: Path, sender: Repository) -> None:
    certs = make_certs(tmp_path / "tls")
    creds = grpc.ssl_server_credentials([(certs.key.read_bytes(), certs.cert.read_bytes())],
                                        root_certificates=certs.ca.read_bytes(), require_client_auth=True)
    receiver = await start_receiver(tmp_path / "receiver", credentials=creds, mtls=True)
    segs = segments(sender, count=1)
    good = TransferClient("sender", tls=TlsFiles(certs.ca, certs.cert, certs.key))  # no token: the certificate
    no_cert = TransferClient("sender", token=TOKEN, tls=TlsFiles(certs.ca), timeout=5)
    try:
        refused = await no_cert.send(receiver.peer, [s.path for s in segs])
        assert refused.outcome is Outcome.PEER_FAILED  # the TLS handshake fails: no call is made
        assert receiver.files() == []
        ok = await good.send(receiver.peer, [s.path for s in segs])
        assert ok.outcome is Outcome.ACCEPTED, ok
    finally:
        await good.close()
        await no_cert.close()
        await receiver.server.stop(0)
        receiver.ledger.close()
    assert receiver.rows() == all_rows(segs)


async def test_a_torn_ledger_line_is_ignored_and_not_glued_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "transfers.ledger"
    path.write_bytes(b"1800000000 a.wal:1:00000001\n1800000000 b.wa")  # a writer died mid-line
    ledger = TransferLedger(path, clock=lambda: 1800000100.0)
    ledger.open()
    assert ledger.seen("a.wal:1:00000001") and not ledger.seen("b.wa")
    ledger.record("c.wal:2:00000002")
    ledger.close()
    again = TransferLedger(path, clock=lambda: 1800000100.0)
    assert again.seen("c.wal:2:00000002") and again.seen("a.wal:1:00000001")
    old = TransferLedger(path, retention=60, clock=lambda: 1800000100.0 + 3600)
    assert not old.seen("c.wal:2:00000002")  # past the retention
    assert old.compact() == 0
    assert os.path.getsize(path) == 0


def slow_ledger(receiver: Receiver, seconds: float) -> None:
    """The receiver commits slowly: the sender's deadline passes after it sent every byte."""
    publish = receiver.ledger.publish

    def slow(claim: Claim, rename: Callable[[], SegmentInfo]) -> SegmentInfo:
        import time

        time.sleep(seconds)
        return publish(claim, rename)

    receiver.ledger.publish = slow  # type: ignore[method-assign, assignment]


async def test_an_answer_lost_after_every_byte_is_in_doubt_and_the_resend_is_already_exists(
        receiver: Receiver, sender: Repository) -> None:
    segs = segments(sender, count=2)
    slow_ledger(receiver, 1.0)
    client = TransferClient("sender", token=TOKEN, timeout=0.3, min_rate=1e12)
    try:
        lost = await client.send(receiver.peer, [s.path for s in segs])
        assert (lost.outcome, lost.code, lost.in_doubt) == (Outcome.PEER_FAILED, "DEADLINE_EXCEEDED", True)
        await asyncio.sleep(1.5)  # the receiver finished its commit meanwhile
        again = await TransferClient("sender", token=TOKEN).send(receiver.peer, [s.path for s in segs])
        assert again.outcome is Outcome.ALREADY_HAD
    finally:
        await client.close()
    assert sorted(receiver.rows()) == sorted(all_rows(segs))  # once


async def test_failures_before_the_last_byte_are_not_in_doubt(receiver: Receiver, sender: Repository) -> None:
    seg = segments(sender, count=1)[0]
    client = TransferClient("sender", token=TOKEN, timeout=5)
    try:
        gone = await client.send(Peer("gone", "127.0.0.1:1"), [seg.path])
        receiver.state.set_phase(Phase.DRAINING)
        draining = await client.send(receiver.peer, [seg.path])
    finally:
        await client.close()
    assert (gone.code, gone.in_doubt) == ("UNAVAILABLE", False)
    assert (draining.code, draining.in_doubt) == ("UNAVAILABLE", False)


async def test_a_transfer_in_doubt_is_resent_as_it_was_to_the_same_peer(receiver: Receiver, sender: Repository,
                                                                        tmp_path: Path) -> None:
    """Regression (chaos run): after a lost answer the peer is unhealthy and the ring names this
    node; the segments that may have arrived must still go to that peer, as they were, and only
    the newer ones are uploaded here. Otherwise the peer's copy and ours would both reach the sink."""
    from node.upload.batcher import BatchPolicy
    from node.upload.uploader import UploadConfig, Uploader
    from tests.upload.test_uploader import RecordingSink

    view = ClusterView("sender", "127.0.0.1:1", StaticMembership([receiver.peer, Peer("sender", "127.0.0.1:1")]),
                       PeerHealth(60))
    table = next(t for t in (f"Cpu{i}" for i in range(100)) if view.owner(make_prefix("Metrics", t)) == "receiver")
    first = all_rows(segments(sender, count=2, table=table))
    slow_ledger(receiver, 1.0)
    client = TransferClient("sender", token=TOKEN, timeout=0.3, min_rate=1e12)
    router = Router(view, client, TransferConfig(), NodeMetrics(CollectorRegistry()))
    sink = RecordingSink()
    up = Uploader(sender, sink, UploadConfig(interval=0.05, policy=BatchPolicy(min_batch_bytes=0, max_wait=0),
                                             backoff_initial=0.5, backoff_max=0.5),
                  NodeMetrics(CollectorRegistry()), router=router)
    await up.start()
    try:
        for _ in range(200):
            if not view.health.is_healthy("receiver"):
                break
            await asyncio.sleep(0.02)
        assert not view.health.is_healthy("receiver")  # the first try was in doubt
        later = all_rows(segments(sender, count=1, table=table))
        receiver.ledger.publish = TransferLedger.publish.__get__(receiver.ledger)  # type: ignore[method-assign]
        for _ in range(500):
            if not sender.closed_segments():
                break
            await asyncio.sleep(0.02)
    finally:
        await up.stop()
    assert sender.closed_segments() == []
    assert sorted(receiver.rows()) == sorted(first)  # once: the resend heard ALREADY_EXISTS
    assert sorted(sink.rows) == sorted(later)


def test_the_ledger_compacts_rarely_and_forgets_what_no_sender_can_resend(tmp_path: Path) -> None:
    """Regression (30-minute soak): with every entry recent, a ledger past its size limit was
    rewritten at every append, and its memory grew with a 6-hour retention."""
    now = [1800000000.0]
    ledger = TransferLedger(tmp_path / "l", retention=100, compact_bytes=2000, clock=lambda: now[0])
    ledger.open()
    compactions = 0
    compact = ledger._compact_locked

    def counted() -> int:
        nonlocal compactions
        compactions += 1
        return compact()

    ledger._compact_locked = counted  # type: ignore[method-assign]
    for i in range(2000):  # ~120 KB of recent keys
        ledger.record(transfer_key(f"Metrics_T_{i:08d}.wal", 1000 + i, i))
    assert 3 <= compactions <= 8  # doubling: not one per append
    assert all(ledger.seen(transfer_key(f"Metrics_T_{i:08d}.wal", 1000 + i, i)) for i in (0, 1999))
    now[0] += 101  # past the retention: the next compaction forgets them all
    for i in range(2000, 4000):
        ledger.record(transfer_key(f"Metrics_T_{i:08d}.wal", 1000 + i, i))
    assert len(ledger._entries) <= 2000 and min(e.stamp for e in ledger._entries.values()) > 1800000000.0
    assert not ledger.seen(transfer_key("Metrics_T_00000000.wal", 1000, 0))
    ledger.close()
    # a sender stops resending a transfer in doubt long before the receiver forgets it
    assert 3 * TransferConfig().in_doubt_wait <= DEFAULT_RETENTION
