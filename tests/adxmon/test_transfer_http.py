"""adx-mon's transfer front door, against real `ingestor serve` processes, with a client that sends
what adx-mon's collector sends byte for byte (tests/adxmon/collector.py) and segments built apart
from the node (tests/adxmon/segments.py): every answer (202, 400, 423, 429 with Connection: close),
rows reaching the local sink, a resend stored once, nothing written for a bad body, --drop-prefix,
TLS, the default port taken, the lifecycle, and the door of a node with two receiver processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import cramjam
import grpc
import pytest

from node.errors import (
    AlreadyExistsError,
    DecodeError,
    InvalidNameError,
    OverLimitsError,
    OverMemoryError,
    RequestTooLargeError,
    StalledError,
    UnavailableError,
    UnsupportedMediaError,
)
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc
from node.gen.prometheus import remote_pb2
from node.transfer.http import answer_of
from node.transfer.intake import SegmentBusyError
from node.transfer.ledger import ClaimLostError
from node.transfer.protocol import READY_HEADER
from tests.adxmon import segments as seg
from tests.adxmon.collector import Collector, insecure_context, pinned_context
from tests.harness import ROOT, NodeProcess, free_port, scrape

KEEP = ["--min-batch-size", "1TB", "--max-segment-age", "1h", "--upload-interval", "1h", "--shutdown-grace", "0s"]
"""Nothing is uploaded: what the door published stays in the WAL to be looked at."""
FLOW = ["--max-segment-age", "1s", "--upload-interval", "0.5s", "--shutdown-grace", "20s"]
"""Uploaded to the local sink within a second or two."""
TOKEN = "adxmon-door-test-token"
T0 = int(time.time() * 1000) - 60_000


def samples(n: int, metric: str = "cpu_usage", first: int = 0) -> list[seg.Sample]:
    return [seg.Sample({"__name__": metric, "adxmon_database": "Metrics", "host": f"h{i % 4}", "i": str(i)},
                       T0 + i * 10, float(i)) for i in range(first, first + n)]


def body_of(n: int, blocks: int = 2, compression: str = "s2", metric: str = "cpu_usage") -> bytes:
    per = -(-n // blocks)
    return seg.metrics_segment([samples(min(per, n - i), metric, i) for i in range(0, n, per)], compression)


# -- what the node holds -------------------------------------------------------------------------

def wal_files(node: NodeProcess) -> list[str]:
    """Every file in the WAL directory but the active segments (those belong to the receivers)."""
    wal = node.storage_dir / "wal"
    return sorted(p.name for p in wal.iterdir() if p.is_file())


def closed(node: NodeProcess, prefix: str) -> list[Path]:
    return sorted((node.storage_dir / "wal").glob(f"{prefix}_*.wal"))


def ledger_done(node: NodeProcess, key_start: str) -> int:
    """DONE lines (`<stamp> <key>`) of keys starting with `key_start` (a file name)."""
    path = node.storage_dir / "transfers.ledger"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if len(line.split(" ")) == 2 and line.split(" ")[1].startswith(key_start))


def query(node: NodeProcess, sql: str) -> list[dict[str, object]]:
    """`ingestor query` on the node's local store; [] before the first upload made the store."""
    r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(node.storage_dir),
                        "--format", "json", sql], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if r.returncode != 0 and "nothing was uploaded to it yet" in r.stderr:
        return []
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def sink_rows(node: NodeProcess, database: str, table: str) -> int:
    rows = query(node, f"SELECT sum(rows) AS n FROM system.parts WHERE database = '{database}' "
                       f"AND table = '{table}' AND active")
    return int(str(rows[0]["n"])) if rows and rows[0]["n"] is not None else 0


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.3)


def metric(node: NodeProcess, key: str) -> float:
    return scrape(node.http_url + "/metrics").get(key, 0.0)


def answered(node: NodeProcess, code: int) -> float:
    return metric(node, f'ingestor_requests_total{{code="{code}",signal="segments",transport="adxmon"}}')


@contextlib.contextmanager
def running(node: NodeProcess, timeout: float = 60.0) -> Iterator[NodeProcess]:
    node.start(timeout)
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("keep")
    with running(NodeProcess(root / "data", *KEEP, "--drop-prefix", "Metrics_Dropped", "--drop-prefix",
                             "Junk_")) as node:
        yield node


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("flow")
    with running(NodeProcess(root / "data", *FLOW)) as node:
        yield node


# -- accepted: rows flow like any other segment ---------------------------------------------------

@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_a_collectors_segment_reaches_the_local_sink(flow: NodeProcess, gzip: bool) -> None:
    table = "CpuUsageGzip" if gzip else "CpuUsagePlain"
    data = body_of(40, blocks=3)
    with Collector(flow.transfer_url, pinned_context("127.0.0.1", flow.transfer_port or 0), gzip=gzip) as c:
        r = c.write(seg.metrics_filename("Metrics", table), data)
        assert (r.status, r.closes) == (202, False), r
        r2 = c.write(seg.metrics_filename("Metrics", table), body_of(5, metric="x", blocks=1))  # kept alive
        assert r2.status == 202
    wait_for(lambda: sink_rows(flow, "Metrics", table) == 45, what=f"45 rows in Metrics.{table}")
    rows = query(flow, f"SELECT Value, SeriesId, toString(Labels) AS L FROM Metrics.{table} ORDER BY Value, L")
    values = sorted(float(str(r["Value"])) for r in rows)
    assert values == sorted([float(i) for i in range(40)] + [float(i) for i in range(5)])
    first = [r for r in rows if float(str(r["Value"])) == 3.0 and "h3" in str(r["L"])]
    assert first and int(str(first[0]["SeriesId"])) == seg.series_id(samples(40)[3].labels)


def test_merged_segments_snappy_and_s2_are_one_segment_in_order(keep: NodeProcess) -> None:
    parts = [body_of(7, blocks=1, compression="snappy"), body_of(9, blocks=2, compression="s2"),
             body_of(4, blocks=1, compression="snappy")]
    merged = seg.merge(*parts)
    name = seg.metrics_filename("Metrics", "Merged")
    with Collector(keep.transfer_url) as c:
        assert c.write(name, merged).status == 202
    from node.wal.segment import iter_rows

    published = closed(keep, "Metrics_Merged")
    assert len(published) == 1 and published[0].name != name  # under an id of the node's own
    rows = b"".join(iter_rows(published[0]))
    expected = b"".join(seg.metrics_csv(s, header=False)
                        for s in (samples(7), samples(5), samples(4, first=5), samples(4)))
    assert rows == expected
    assert published[0].read_bytes() == merged  # stored as it came: the blocks verified, not rewritten
    assert ledger_done(keep, name) == 1


def test_a_resend_is_stored_once(flow: NodeProcess) -> None:
    data = body_of(30)
    name = seg.metrics_filename("Metrics", "Resent")
    with Collector(flow.transfer_url) as c:
        assert c.write(name, data, gzip=True).status == 202
        assert c.write(name, data, gzip=False).status == 202  # other bytes on the wire, the same segment
    wait_for(lambda: sink_rows(flow, "Metrics", "Resent") == 30, what="30 rows")
    with Collector(flow.transfer_url) as c:  # after the upload: the ledger still knows it
        assert c.write(name, data).status == 202
        other = seg.metrics_filename("Metrics", "Resent")  # the same rows under another name: new
        assert c.write(other, body_of(2)).status == 202
    wait_for(lambda: sink_rows(flow, "Metrics", "Resent") == 32, what="32 rows")
    time.sleep(3)  # a few more upload rounds: nothing else arrives
    assert sink_rows(flow, "Metrics", "Resent") == 32
    assert ledger_done(flow, name) == 1


def test_just_the_magic_is_accepted_and_stores_nothing(keep: NodeProcess) -> None:
    before = wal_files(keep)
    with Collector(keep.transfer_url) as c:
        assert c.write(seg.metrics_filename("Metrics", "Empty"), seg.MAGIC).status == 202
    assert wal_files(keep) == before


# -- refused with 400: nothing written -------------------------------------------------------------

HOSTILE = {
    "missing": "",
    "traversal": "../../../../tmp/Metrics_Cpu_0123456789abcdef.wal",
    "traversal-inside": "Metrics_Cpu_x/../../0123456789abcdef.wal",
    "absolute": "/tmp/Metrics_Cpu_0123456789abcdef.wal",
    "not-wal": "Metrics_Cpu_0123456789abcdef.txt",
    "too-few-fields": "Metrics_0123456789abcdef.wal",
    "too-many-fields": "Metrics_Cpu_abc_def_0123456789abcdef.wal",
    "leading-dash": "Metrics_-Cpu_0123456789abcdef.wal",  # `-` is `_` in a file name, between letters only
    "double-dash": "Metrics_Cpu--Usage_0123456789abcdef.wal",
    "dot-in-database": "Me.trics_Cpu_0123456789abcdef.wal",
    "nul": "Metrics_Cpu\x00_0123456789abcdef.wal",
    "unicode": "Métrics_Cpu_0123456789abcdef.wal",
    "upper-hex-id": "Metrics_Cpu_0123456789ABCDEF.wal",
    "long-table": f"Metrics_{'T' * 300}_0123456789abcdef.wal",
    "backslash": "Metrics_..\\..\\Cpu_0123456789abcdef.wal",
}


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_bad_file_name_is_400_and_nothing_is_written(keep: NodeProcess, name: str) -> None:
    before = wal_files(keep)
    outside = set(keep.storage_dir.parent.iterdir())
    with Collector(keep.transfer_url) as c:
        r = c.write(name, body_of(3))
        assert r.status == 400, r
        assert c.write(seg.metrics_filename("Metrics", "AfterBadName"), body_of(1)).status == 202  # still alive
    new = set(wal_files(keep)) - set(before)
    assert len(new) == 1 and new.pop().startswith("Metrics_AfterBadName_")  # the good one alone
    assert set(keep.storage_dir.parent.iterdir()) == outside
    assert not Path("/tmp/Metrics_Cpu_0123456789abcdef.wal").exists()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _second_block(data: bytes) -> int:
    return 8 + 8 + int.from_bytes(data[8:12], "big")


def _bad_bodies() -> dict[str, tuple[bytes, dict[str, object]]]:
    good = body_of(20, blocks=2)
    second = _second_block(good)
    garbage = b"\xff" * 40  # not S2: a valid CRC, a payload that does not decompress
    undecodable = struct_block(garbage)
    gz: dict[str, object] = {"gzip": False, "headers": {"Content-Encoding": "gzip"}}  # the bytes as they are
    return {
        "crc-of-second-block": (_flip(good, second + 8 + 5), {}),
        "crc-field": (_flip(good, 12), {}),
        "bad-magic": (b"NOTAWAL\x00" + good[8:], {}),
        "torn-last-block": (good[:-3], {}),
        "length-past-the-end": (good[:8] + (1 << 30).to_bytes(4, "big") + good[12:], {}),
        "does-not-decompress": (seg.MAGIC + undecodable, {}),
        "gzip-garbage": (b"\x1f\x8b\x08\x00garbage-not-deflate" * 3, gz),
        "gzip-truncated": (_gz(good)[:-20], gz),
        "gzip-empty": (b"", gz),
        "unknown-encoding": (good, {"gzip": False, "headers": {"Content-Encoding": "br"}}),
        "empty": (b"", {"gzip": False}),
    }


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def struct_block(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload


BAD = _bad_bodies()


@pytest.mark.parametrize("case", list(BAD))
def test_a_body_that_does_not_decode_is_400_and_nothing_is_written(keep: NodeProcess, case: str) -> None:
    data, opts = BAD[case]
    name = seg.metrics_filename("Metrics", "BadBody")
    before = wal_files(keep)
    with Collector(keep.transfer_url) as c:
        r = c.write(name, data, **opts)  # type: ignore[arg-type]
        assert r.status == 400, r
        assert not r.closes
    assert wal_files(keep) == before  # no segment, no part file left
    assert not list((keep.storage_dir / "wal").glob("*.part"))
    assert ledger_done(keep, name) == 0
    if case.startswith("crc"):
        assert b"CRC" in r.body


def test_a_database_without_a_sink_is_400(tmp_path: Path) -> None:
    dsn = f"Metrics=clickhouse://127.0.0.1:{free_port()}/Metrics"  # nothing listens: uploads fail, receiving works
    node = NodeProcess(tmp_path / "data", *KEEP, "--storage-backend", "clickhouse", "--metrics-kusto-endpoints", dsn)
    with running(node), Collector(node.transfer_url) as c:
        r = c.write(seg.metrics_filename("Other", "Cpu"), body_of(3))
        assert r.status == 400 and b"Other has no sink" in r.body, r
        assert c.write(seg.metrics_filename("Metrics", "Cpu"), body_of(3)).status == 202
        assert not closed(node, "Other_Cpu") and len(closed(node, "Metrics_Cpu")) == 1


def test_drop_prefix_answers_202_and_stores_nothing(keep: NodeProcess) -> None:
    before = wal_files(keep)
    dropped_before = answered(keep, 202)
    with Collector(keep.transfer_url) as c:
        assert c.write(seg.metrics_filename("Metrics", "DroppedCpu"), body_of(5)).status == 202
        assert c.write("Junk_anything at all", b"not even a segment").status == 202  # dropped before any check
        assert wal_files(keep) == before
        assert c.write(seg.metrics_filename("Metrics", "KeptCpu"), body_of(5)).status == 202
    assert len(closed(keep, "Metrics_KeptCpu")) == 1 and not closed(keep, "Metrics_DroppedCpu")
    assert answered(keep, 202) == dropped_before + 3


# -- 429, 423: not now ---------------------------------------------------------------------------

def test_over_the_disk_limit_is_429_and_the_connection_closes(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--max-disk-usage", "16KiB")
    with running(node), Collector(node.transfer_url) as c:
        big = body_of(2000, blocks=4, compression="snappy")
        assert len(big) > 16 << 10
        r = c.write(seg.metrics_filename("Metrics", "Big"), big)
        assert r.status == 429, r
        assert r.headers.get("connection") == "close" and "retry-after" in r.headers
        assert c._sock is None  # the collector saw the server close it (Collector.close_after_answer)
        assert not closed(node, "Metrics_Big") and not list((node.storage_dir / "wal").glob("*.part"))
        assert c.write(seg.metrics_filename("Metrics", "Small"), body_of(2)).status in (202, 429)  # a new connection


def test_over_the_memory_budget_is_429_and_the_connection_closes(tmp_path: Path) -> None:
    """One collector holds the process's budget (4 MiB) with a body it is still sending; a second
    one waits for room, then hears 429 with Connection: close; the first one completes."""
    node = NodeProcess(tmp_path / "data", *KEEP, "--max-memory", "4MiB")
    big = seg.metrics_segment([[seg.Sample({"__name__": "holder", "blob": os.urandom(60).hex()}, T0 + i, float(i))
                                for i in range(k * 2000, k * 2000 + 2000)] for k in range(12)], compression="snappy")
    assert 3 << 20 < len(big) < 4 << 20, len(big)
    with running(node), Collector(node.transfer_url, gzip=False) as first, \
            Collector(node.transfer_url, gzip=False) as second:
        payload = first.begin(seg.metrics_filename("Metrics", "Holder"), body=big)
        cut = len(payload) - 1000
        for i in range(0, cut, 4096):
            first.send(payload[i:min(i + 4096, cut)])
        wait_for(lambda: metric(node, "ingestor_memory_in_flight_bytes") >= 3 << 20, 20, "the budget held")
        t0 = time.monotonic()
        r = second.write(seg.metrics_filename("Metrics", "Waiter"), body_of(3000, blocks=3, compression="snappy"))
        assert r.status == 429 and r.closes, r
        assert time.monotonic() - t0 >= 4  # it waited for room (5 s) before it was refused
        first.send(payload[cut:])
        first.end()
        assert first.response().status == 202
        assert metric(node, 'ingestor_memory_refused_total{what="adx-mon transfer"}') == 1
        assert len(closed(node, "Metrics_Holder")) == 1 and not closed(node, "Metrics_Waiter")


def test_a_body_that_stalls_is_408_and_the_connection_closes(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--stall-timeout", "1s")
    with running(node), Collector(node.transfer_url, gzip=False) as c:
        payload = c.begin(seg.metrics_filename("Metrics", "Stalled"), body=body_of(50))
        c.send(payload[:100])
        time.sleep(2.5)  # nothing more: cut after --stall-timeout
        r = c.response()
        assert r.status == 408 and r.closes, r
        assert metric(node, 'ingestor_slow_clients_total{transport="adxmon"}') == 1
        assert not closed(node, "Metrics_Stalled") and not list((node.storage_dir / "wal").glob("*.part"))


def test_the_same_segment_being_received_is_423_then_stored_once(tmp_path: Path) -> None:
    """A peer's gRPC transfer of the same bytes holds the ledger's claim: the collector hears 423
    (adx-mon retries later), then 202 once the first one published it; one segment is kept."""
    node = NodeProcess(tmp_path / "data", *KEEP, "--peer-token", TOKEN)
    data = body_of(25)
    name = seg.metrics_filename("Metrics", "Contended")

    async def scenario() -> None:
        go = asyncio.Event()

        async def stream() -> AsyncIterator[transfer_pb2.TransferSegmentRequest]:
            yield transfer_pb2.TransferSegmentRequest(metadata=transfer_pb2.SegmentMetadata(
                name=name, size=len(data), crc32=zlib.crc32(data), sender="peer"))
            await go.wait()
            yield transfer_pb2.TransferSegmentRequest(chunk=data)

        async with grpc.aio.insecure_channel(node.grpc_addr) as channel:
            call = transfer_pb2_grpc.TransferStub(channel).TransferSegment(
                stream(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=60)
            assert any(k == READY_HEADER for k, _ in await call.initial_metadata() or ())  # claimed
            with Collector(node.transfer_url) as c:
                r = await asyncio.to_thread(c.write, name, data)
                assert (r.status, r.closes) == (423, False), r
                go.set()
                await call
                assert (await asyncio.to_thread(c.write, name, data)).status == 202  # had it: stored once

    with running(node):
        asyncio.run(scenario())
        assert len(closed(node, "Metrics_Contended")) == 1
        assert ledger_done(node, name) == 1


# -- TLS -----------------------------------------------------------------------------------------

def test_tls_self_signed_certificate_is_verifiable_by_pinning(keep: NodeProcess) -> None:
    port = keep.transfer_port or 0
    for host in ("127.0.0.1", "localhost"):
        ctx = pinned_context("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
            assert s.selected_alpn_protocol() == "http/1.1"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # plain HTTP gets no HTTP answer
        s.sendall(b"POST /transfer?filename=x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")


def test_adxmons_probes_are_answered_on_the_transfer_port(keep: NodeProcess) -> None:
    """adx-mon's StatefulSet probes readiness with GET /readyz over HTTPS on 9090, the transfer port:
    with its manifests kept and the image swapped, the pods must still turn ready."""
    ctx = insecure_context()
    for path, body in (("/readyz", b"ready\n"), ("/healthz", b"ok\n")):
        url = f"https://127.0.0.1:{keep.transfer_port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            assert (r.status, r.read()) == (200, body)


def test_tls_with_the_nodes_certificate(tmp_path: Path) -> None:
    from tests.cluster.tls import make_certs

    certs = make_certs(tmp_path / "certs")
    node = NodeProcess(tmp_path / "data", *KEEP, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    with running(node):
        served = ssl.get_server_certificate(("127.0.0.1", node.transfer_port or 0))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(certs.cert.read_text())
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with Collector(node.transfer_url, ctx) as c:
            assert c.write(seg.metrics_filename("Metrics", "Tls"), body_of(3)).status == 202
        assert "self-signed" not in node.log()


# -- the port: default taken, given and taken ------------------------------------------------------

@contextlib.contextmanager
def holding(host: str, port: int) -> Iterator[socket.socket | None]:
    """Listen on host:port as a server does (SO_REUSEADDR: connections that ended in TIME_WAIT do
    not count); None when something else already listens: taken either way."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen()
    except OSError as e:
        s.close()
        assert e.errno == errno.EADDRINUSE, e
        yield None
        return
    try:
        yield s
    finally:
        s.close()


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


def test_the_default_port_taken_is_one_warning_and_the_node_runs_without_the_door(tmp_path: Path) -> None:
    with holding("0.0.0.0", 9090):
        node = NodeProcess(tmp_path / "data", *KEEP, default_transfer_addr=True)
        with running(node):
            warnings = _warnings(node.log())
            assert len(warnings) == 1, warnings
            assert "--transfer-addr" in warnings[0] and "0.0.0.0:9090" in warnings[0]
            assert "adx-mon transfer front door:" not in node.log()  # not served
            assert node.ready()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_the_default_port_taken_after_the_check_is_the_same_warning(tmp_path: Path) -> None:
    """The port is taken between serve's check and the bind: the node still runs, without the door."""
    code = ("import sys; from node import serve_cli; serve_cli.check_transfer_port = lambda config, explicit: config; "
            "from node.cli import main; sys.exit(main(sys.argv[1:]))")
    http = free_port()
    cmd = [sys.executable, "-c", code, "serve", "--storage-dir", str(tmp_path / "data"), "--grpc-addr",
           f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{http}", *KEEP]
    with holding("0.0.0.0", 9090):
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: _ready(f"http://127.0.0.1:{http}"), 60, "the node ready")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    warnings = _warnings(out)
    assert len(warnings) == 1 and "adx-mon transfer front door off" in warnings[0], out


def test_a_given_port_taken_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with holding("127.0.0.1", 0) as s:
        assert s is not None
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--storage-dir", str(tmp_path / "d"),
                            "--grpc-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{free_port()}",
                            "--transfer-addr", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"ingestor serve: cannot listen on 127.0.0.1:{port} (adx-mon transfer): "
                                     "address already in use; free the port or pass --transfer-addr"], r.stderr
    assert not (tmp_path / "d" / "wal").exists()  # said before the WAL is recovered


def test_the_transfer_port_given_as_the_http_port_is_a_usage_error(tmp_path: Path) -> None:
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--storage-dir", str(tmp_path / "d"),
                        "--grpc-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{port}",
                        "--transfer-addr", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert "--http-addr" in r.stderr and "--transfer-addr" in r.stderr and "same port" in r.stderr


def test_an_empty_transfer_addr_turns_the_door_off(tmp_path: Path) -> None:
    with running(NodeProcess(tmp_path / "data", *KEEP, "--transfer-addr=")) as node:
        assert "adx-mon transfer front door" not in node.log() and not _warnings(node.log())


# -- lifecycle, and the shape of a multi-process node ----------------------------------------------

def test_stop_closes_the_door_within_the_grace(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", "--min-batch-size", "1TB", "--max-segment-age", "1h", "--shutdown-grace",
                       "2s")
    with running(node), Collector(node.transfer_url, gzip=False) as c:
        payload = c.begin(seg.metrics_filename("Metrics", "Cut"), body=body_of(200))
        c.send(payload[: len(payload) // 2])  # a collector half-way through its body
        time.sleep(0.5)
        t0 = time.monotonic()
        assert node.stop() == 0
        took = time.monotonic() - t0
        assert took < 2 + 6, took  # the grace, then the in-flight body cut
        assert c.server_closed()
    assert not closed(node, "Metrics_Cut") and not list((node.storage_dir / "wal").glob("*.part"))
    with holding("127.0.0.1", node.transfer_port or 0) as s:
        assert s is not None  # the port was let go


def test_a_node_with_two_receivers_serves_the_door_in_its_supervisor(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *FLOW, "--receivers", "2")
    with running(node, timeout=90):
        with Collector(node.transfer_url) as c:
            for i in range(4):  # keep-alive: every request to the one process that serves it
                data = seg.metrics_segment([samples(10, first=10 * i)])
                assert c.write(seg.metrics_filename("Metrics", "TwoReceivers"), data).status == 202
        wait_for(lambda: sink_rows(node, "Metrics", "TwoReceivers") == 40, what="40 rows")
        assert node.log().count("adx-mon transfer front door: POST") == 1


# -- the answers, as adx-mon's sender reads them ---------------------------------------------------

@pytest.mark.parametrize(("err", "status", "close"), [
    (AlreadyExistsError("had it"), 202, False),
    (SegmentBusyError("busy"), 423, False),
    (ClaimLostError("lost"), 423, False),
    (OverLimitsError("disk"), 429, True),
    (OverMemoryError("memory"), 429, True),
    (UnavailableError("draining"), 429, True),
    (InvalidNameError("name"), 400, False),
    (DecodeError("gzip"), 400, False),
    (UnsupportedMediaError("br"), 400, False),
    (RequestTooLargeError("big"), 413, False),
    (StalledError("slow"), 408, True),
    (RuntimeError("bug"), 500, True),
])
def test_answers(err: Exception, status: int, close: bool) -> None:
    answer = answer_of(err)
    assert (answer.status, answer.close) == (status, close)


@pytest.mark.parametrize("port", ["door", "http"])
def test_a_body_still_arriving_at_sigterm_is_answered_and_the_node_stops_early(tmp_path: Path, port: str) -> None:
    """aiohttp's shutdown closes every connection, then drops what arrives: a body still arriving
    was never answered and the node spent its whole grace (found by the chaos suite). Requests in
    progress now finish first, on the door and on the HTTP port alike."""
    node = NodeProcess(tmp_path / "data", "--shutdown-grace", "20s").start()
    try:
        if port == "door":
            samples = [seg.Sample({"__name__": "cpu", "i": str(i)}, 1_795_492_800_000 + i, float(i))
                       for i in range(200)]
            c = Collector(node.transfer_url, insecure_context(), gzip=False)
            body = seg.segment(seg.block(seg.metrics_csv(samples)))
            payload = c.begin(seg.metrics_filename("Metrics", "Cpu"), body=body)
            half = len(payload) // 2
            c.send(payload[:half])
        else:
            rw = remote_pb2.WriteRequest()
            for i in range(200):
                ts = rw.timeseries.add()
                ts.labels.add(name="__name__", value="held")
                ts.labels.add(name="i", value=str(i))
                ts.samples.add(value=float(i), timestamp=1_795_492_800_000)
            body = bytes(cramjam.snappy.compress_raw(rw.SerializeToString()))
            s = socket.create_connection(("127.0.0.1", node.http_port), timeout=30)
            s.sendall(f"POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Encoding: snappy\r\nContent-Type: "
                      f"application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        time.sleep(0.3)
        assert node.proc is not None
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        if port == "door":
            c.send(payload[half:])
            c.end()
            status = c.response().status
            c.close()
            assert status == 202  # taken: the node holds it
        else:
            s.sendall(body[len(body) // 2:])
            answer = s.recv(100)
            s.close()
            assert answer.split(b" ")[1] in (b"204", b"503"), answer  # taken, or refused with a retry hint
        assert node.proc.wait(30) == 0
        assert time.monotonic() - t0 < 10, "the node spent its grace waiting for a body it dropped"
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
