"""The gRPC port under hostile clients: connections that idle, never finish their handshake,
flood it with pings or exceed --max-connections, against a real `ingestor serve` process, the
hostile side a process of its own; and what the log says about client mistakes (once a minute
per reason, no traceback) and about the node's own failures (every time, with the traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from cluster.membership import Peer
from node.ratelog import RateLimitedLog
from node.receivers import grpc as grpc_receiver
from node.transfer import service as transfer_service
from node.transfer.client import TransferClient
from node.wal.repository import Repository, WalConfig
from tests.cluster.test_transfer import TOKEN, Receiver, metadata, raw_call, segments, start_receiver
from tests.harness import ROOT, NodeProcess
from tests.node.test_grpc import gauge_request

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty SETTINGS frame
GOAWAY, PING = 7, 6
ENHANCE_YOUR_CALM = 0xB


def frame(kind: int, payload: bytes, flags: int = 0, stream: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


# -- the hostile side, run as a process of its own -----------------------------------------------


def connections(host: str, port: int, count: int, handshake: bool, hold: float) -> None:
    """Open `count` connections (with the HTTP/2 preface and SETTINGS when `handshake`, else
    nothing at all), then send nothing more; print as JSON, for each, how long after it opened
    the node closed it (None: still open after `hold` seconds)."""
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    opened_by_fd: dict[int, socket.socket] = {}
    closed: list[float | None] = []
    for _ in range(count):
        s = socket.create_connection((host, port))
        if handshake:
            s.sendall(H2_PREFACE + SETTINGS)
        s.setblocking(False)
        opened[s] = time.monotonic()
        opened_by_fd[s.fileno()] = s
        sel.register(s, selectors.EVENT_READ)
    print(json.dumps({"opened": True}), flush=True)
    deadline = time.monotonic() + hold
    while opened and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = opened_by_fd[key.fd]
            try:
                if s.recv(65536):
                    continue  # SETTINGS, GOAWAY: the close follows
            except ConnectionResetError:
                pass
            except BlockingIOError:
                continue
            closed.append(time.monotonic() - opened.pop(s))
            sel.unregister(s)
            s.close()
    closed.extend([None] * len(opened))
    print(json.dumps({"closed": closed}), flush=True)


async def run_connections(node: NodeProcess, count: int, handshake: bool, hold: float
                          ) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from tests.node.test_grpc_abuse import connections; "
        f"connections({node.host!r}, {node.grpc_port}, {count}, {handshake}, {hold})",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert json.loads(await proc.stdout.readline()) == {"opened": True}
    return proc, proc.stdout


async def closing_times(proc: asyncio.subprocess.Process, out: asyncio.StreamReader) -> list[float | None]:
    result = json.loads(await out.readline())
    await proc.wait()
    closed: list[float | None] = result["closed"]
    return closed


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """`node_factory(*flags)`: a node, started, stopped at the end of the test."""
    started: list[NodeProcess] = []

    def start(*flags: str) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(started)}", *flags, name=f"node-{len(started)}")
        started.append(node)
        return node.start()

    yield start
    for n in started:
        if n.proc is not None:
            n.kill()  # not its shutdown: that would upload what it took first


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def export(node: NodeProcess, wait_for_ready: bool = False) -> None:
    async with grpc.aio.insecure_channel(node.grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request(), timeout=15,
                                                                     wait_for_ready=wait_for_ready)


# -- connections -----------------------------------------------------------------------------------


async def test_idle_connections_are_closed_and_half_open_ones_cut_at_the_handshake_timeout(
        node_factory: NodeFactory) -> None:
    """2,000 HTTP/2 connections that never make a call were never closed; now --idle-timeout
    closes them. 200 that never even send the HTTP/2 preface are cut at --stall-timeout (grpc's
    own default is 120 s). Meanwhile a client is served."""
    node = node_factory("--idle-timeout", "3s", "--stall-timeout", "1s", "--max-connections", "0")
    assert node.proc is not None
    fds = open_fds(node.proc.pid)
    idle = await run_connections(node, 2000, handshake=True, hold=8)
    held = 0
    for _ in range(40):  # until the node has accepted them all
        held = max(held, open_fds(node.proc.pid) - fds)
        if held >= 2000:
            break
        await asyncio.sleep(0.025)
    half = await run_connections(node, 200, handshake=False, hold=8)
    t0 = time.monotonic()
    await export(node)
    served_in = time.monotonic() - t0
    idle_closed, half_closed = await closing_times(*idle), await closing_times(*half)
    await asyncio.sleep(0.2)
    left = open_fds(node.proc.pid) - fds
    done = [t for t in idle_closed if t is not None]
    half_done = [t for t in half_closed if t is not None]
    print(f"2,000 idle connections (+{held} descriptors while open) closed {min(done):.2f}-{max(done):.2f}s after "
          f"they opened; 200 without a handshake cut at {min(half_done):.2f}-{max(half_done):.2f}s; a client served "
          f"meanwhile in {served_in:.2f}s; {left} descriptors more than before at the end")
    assert len(done) == 2000 and all(2.5 < t < 5 for t in done)
    assert len(half_done) == 200 and all(0.8 < t < 2.5 for t in half_done)
    assert held > 1900 and left <= 5
    assert served_in < 1


async def test_past_max_connections_new_ones_are_closed_at_once_and_clients_get_in_once_idle_ones_go(
        node_factory: NodeFactory) -> None:
    node = node_factory("--idle-timeout", "2s", "--max-connections", "50")
    hostile = await run_connections(node, 100, handshake=True, hold=6)
    t0 = time.monotonic()
    await export(node, wait_for_ready=True)  # full: refused at accept, retried with grpc's backoff
    served_in = time.monotonic() - t0
    closed = await closing_times(*hostile)
    at_once = [t for t in closed if t is not None and t < 0.5]
    idle = [t for t in closed if t is not None and t >= 0.5]
    print(f"--max-connections 50, 100 opened: {len(at_once)} closed at once, {len(idle)} after "
          f"{min(idle):.2f}-{max(idle):.2f}s idle; a client with wait_for_ready served after {served_in:.2f}s")
    assert len(at_once) >= 45 and len(at_once) + len(idle) == 100  # a few honest ones may take a place first
    assert all(1.6 < t < 4 for t in idle)
    assert served_in < 8


def ping_flood(host: str, port: int) -> tuple[int | None, bytes, float]:
    """One connection that pings every 10 ms: the GOAWAY's error code and debug data, and when."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(H2_PREFACE + SETTINGS)
        t0 = time.monotonic()
        buf = b""
        s.settimeout(0.01)
        while time.monotonic() - t0 < 5:
            try:
                s.sendall(frame(PING, b"12345678"))
            except OSError:
                break
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                length, kind = int.from_bytes(buf[:3], "big"), buf[3]
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if kind == GOAWAY:
                    return int.from_bytes(payload[4:8], "big"), payload[8:], time.monotonic() - t0
    return None, b"", time.monotonic() - t0


async def test_a_ping_flood_is_sent_away(node_factory: NodeFactory) -> None:
    node = node_factory()
    code, debug, after = await asyncio.to_thread(ping_flood, node.host, node.grpc_port)
    print(f"ping every 10 ms: GOAWAY {code} ({debug!r}) after {after:.2f}s")
    assert code == ENHANCE_YOUR_CALM and b"too_many_pings" in debug
    assert after < 1
    await export(node)


# -- what the log says -----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    monkeypatch.setattr(grpc_receiver, "_said", RateLimitedLog(grpc_receiver.log))  # fresh: once per reason
    monkeypatch.setattr(transfer_service, "_said", RateLimitedLog(transfer_service.log))
    r = await start_receiver(tmp_path / "receiver")
    try:
        yield r
    finally:
        await r.server.stop(0)
        r.ledger.close()


async def test_client_mistakes_are_logged_once_a_minute_per_reason_without_a_traceback(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node")
    data = b"not a segment"
    bad_name = [metadata("../etc/passwd.wal", data)]
    for _ in range(20):
        assert (await raw_call(receiver.addr, bad_name))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert (await raw_call(receiver.addr, bad_name, token=None))[0] == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(receiver.addr) as ch:
        export = ch.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await export(b"\xff\xff\xff")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    print("\n".join(r.getMessage() for r in refused))
    assert len(refused) == 3  # one per reason, not 60
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in refused)


async def test_the_nodes_own_failures_are_logged_every_time_with_their_traceback(
        receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    def broken(key: str) -> bool:
        raise RuntimeError("the ledger is broken")

    monkeypatch.setattr(receiver.ledger, "seen", broken)
    sender = Repository(WalConfig(tmp_path / "sender" / "wal"))
    sender.start()
    segs = segments(sender, count=1)
    client = TransferClient("sender", token=TOKEN)
    try:
        for _ in range(3):
            result = await client.send(Peer("receiver", receiver.addr), [s.path for s in segs])
            assert result.code == "INTERNAL"
    finally:
        await client.close()
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 3
    assert all(r.exc_info is not None and "the ledger is broken" in str(r.exc_info[1]) for r in failed)
