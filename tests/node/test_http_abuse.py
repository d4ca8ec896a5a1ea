"""The HTTP port under hostile clients, against a real `ingestor serve` process.

The hostile side runs in this process over real sockets; the node is measured from the outside:
the statuses and times its clients see, its descriptors and peak RSS (/proc), its log and its
metrics, and that honest clients were served meanwhile:

1. bodies trickled or stalled: cut with 408 at --stall-timeout, counted in slow_clients;
2. the memory budget (--max-memory) taken by large bodies: 429 with Retry-After and nothing
   written, peak RSS bounded, small clients served, every acknowledged row in the WAL;
3. compression bombs (a snappy preamble, gzip members) and many tiny gzip members: refused or
   inflated without the memory or the time they ask for;
4. thousands of idle connections: descriptors bounded by --max-connections, closed after
   --idle-timeout, a normal client served meanwhile;
5. abandoned and junk requests: no 500, a handful of log lines, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import cramjam
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from node.gen.prometheus import remote_pb2
from tests.harness import NodeProcess, scrape

MiB = 1 << 20
RW = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}
PB = {"Content-Type": "application/x-protobuf"}


@contextlib.contextmanager
def running(tmp_path: Path, *flags: str) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "data", "--min-batch-size", "1TB", "--max-segment-age", "1h",
                       "--shutdown-grace", "0s", *flags)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_of(node: NodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def write_request(name: str, series: int = 2, samples: int = 1) -> bytes:
    req = remote_pb2.WriteRequest()
    for s in range(series):
        ts = req.timeseries.add()
        for k, v in sorted({"__name__": name, "job": "api", "instance": f"pod-{s}", "path": f"/v1/items/{s % 97}",
                            "code": "200"}.items()):
            ts.labels.add(name=k, value=v)
        for i in range(samples):
            ts.samples.add(value=float(s), timestamp=1_795_000_000_000 + i)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def table(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def head(path: str, length: int | None, encoding: str | None = "snappy", chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: node", "Content-Type: application/x-protobuf"]
    if encoding:
        lines.append(f"Content-Encoding: {encoding}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """Status and body of one HTTP response; None if the connection closed without one."""
    try:
        line = await reader.readline()
        if not line:
            return None
        status = int(line.split()[1])
        length = 0
        while (h := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await reader.readexactly(length)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None


async def closed(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the node closes the connection within `timeout` (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def normal_client(node: NodeProcess, stop: asyncio.Event, name: str) -> list[int]:
    """Small remote writes on a fresh connection each, until `stop`: the statuses."""
    codes = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while not stop.is_set():
            async with session.post(node.http_url + "/api/v1/write", data=write_request(name), headers=RW,
                                    timeout=aiohttp.ClientTimeout(total=20)) as r:
                codes.append(r.status)
            await asyncio.sleep(0.1)
    return codes


# -- 1. bodies that trickle or stall ---------------------------------------------------------------


async def slow_body(node: NodeProcess, path: str, every: float | None) -> tuple[int | None, float, bool]:
    """Headers, then a byte every `every` seconds (None: nothing): status, seconds to it, closed after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    writer.write(head(path, 100_000, "snappy" if path == "/api/v1/write" else None))
    await writer.drain()
    t0 = time.monotonic()
    answer = asyncio.create_task(read_response(reader))
    while not answer.done():
        if every is not None:
            with contextlib.suppress(ConnectionError):
                writer.write(b"\x00")
                await writer.drain()
        await asyncio.wait({answer}, timeout=every or 30)
    got = answer.result()
    elapsed = time.monotonic() - t0
    was_closed = await closed(reader, 2.0)
    writer.close()
    return (got[0] if got else None), elapsed, was_closed


async def test_trickled_and_stalled_bodies_are_cut_and_a_normal_client_is_served(tmp_path: Path) -> None:
    with running(tmp_path, "--stall-timeout", "2s", "--min-request-rate", "1KiB") as node:
        stop = asyncio.Event()
        normal = asyncio.create_task(normal_client(node, stop, "normal_during_trickle"))
        paths = ["/api/v1/write", "/v1/metrics", "/v1/logs", "/v1/traces"]
        trickled = [slow_body(node, paths[i % 4], 1.0) for i in range(20)]
        silent = [slow_body(node, paths[i % 4], None) for i in range(5)]
        results = await asyncio.gather(*trickled, *silent)
        stop.set()
        codes = await normal
        for status, elapsed, was_closed in results:
            assert status == 408 and was_closed
            assert 1.8 <= elapsed <= 4.0, results
        print(f"cut after {min(r[1] for r in results):.2f}-{max(r[1] for r in results):.2f} s; "
              f"normal client: {len(codes)} requests meanwhile")
        assert codes and set(codes) == {204}
        m = scrape(node.http_url + "/metrics")
        assert m['ingestor_slow_clients_total{transport="http"}'] == 25
        assert sum(v for k, v in m.items() if k.startswith("ingestor_requests_total") and 'code="408"' in k) == 25
        assert len(node.rows(table=table("normal_during_trickle"))) == 2 * len(codes)
        log = node.log()
        assert log.count("refused with 408") == 1 and "Traceback" not in log  # once a minute per reason


async def test_the_408_says_why(tmp_path: Path) -> None:
    with running(tmp_path, "--stall-timeout", "1s", "--min-request-rate", "1KiB") as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        writer.write(head("/api/v1/write", 1000) + b"\x00" * 10)
        got = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert got is not None and got[0] == 408
        assert b"no byte for 1s after 10 of 1000 bytes of its body (--stall-timeout)" in got[1]


# -- 2. the memory budget ---------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with session.post(url, data=io.BytesIO(body), headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, r.headers.get("Retry-After", "")


def otlp_gauge(name: str, points: int, sender: str = "sXX") -> bytes:
    """An OTLP/HTTP metrics body: `points` points of one gauge, each with a `sender` attribute."""
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = name
    for p in range(points):
        dp = m.gauge.data_points.add()
        dp.time_unix_nano = 1_795_000_000_000_000_000 + p * 1_000_000_000
        dp.as_double = p
        dp.attributes.add(key="sender", value=common_pb2.AnyValue(string_value=sender))
        dp.attributes.add(key="pod", value=common_pb2.AnyValue(string_value=f"pod-{p % 100}"))
    return req.SerializeToString()


async def paced(node: NodeProcess, path: str, body: bytes, seconds: float) -> tuple[int | None, bytes]:
    """`body` sent over `seconds` (well above --min-request-rate): status and answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    writer.write(head(path, len(body), None))
    pieces = 30
    step = -(-len(body) // pieces)
    try:
        for i in range(0, len(body), step):
            writer.write(body[i:i + step])
            await writer.drain()
            await asyncio.sleep(seconds / pieces)
    except ConnectionError:
        pass
    got = await asyncio.wait_for(read_response(reader), 30)
    writer.close()
    return (got[0], got[1]) if got else (None, b"")


async def test_large_bodies_over_the_memory_budget_get_429_and_rss_stays_bounded(tmp_path: Path) -> None:
    """16 OTLP/HTTP bodies of 2 MiB (46,000 points each), each uploaded over 6 s, at once against
    a 64 MiB budget: each reserves 2 MiB * 13 = 26 MiB before its first byte is read, so two are
    read at a time; the others wait 5 s for room, then get 429 with nothing read or written."""
    template = otlp_gauge("big_gauge", 46_000)
    with running(tmp_path, "--max-memory", "64MiB") as node:
        pid = pid_of(node)
        async with aiohttp.ClientSession() as session:
            metrics_url = node.http_url + "/v1/metrics"
            assert (await post(session, metrics_url, template, PB))[0] == 200  # the table and the heap exist
            base = status_kib(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from here
            senders = [f"s{i:02d}" for i in range(16)]
            big = asyncio.gather(*(paced(node, "/v1/metrics", template.replace(b"sXX", s.encode()), 6.0)
                                   for s in senders))
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            small_acked = retries = 0
            for _ in range(10):
                while (await post(session, node.http_url + "/api/v1/write", write_request("small_one"), RW))[0] == 429:
                    retries += 1
                    await asyncio.sleep(0.2)
                small_acked += 1
            small_seconds = time.monotonic() - t0
            results = dict(zip(senders, await big, strict=True))
        growth = (status_kib(pid, "VmHWM") - base) / 1024
        refused = [s for s, (code, _) in results.items() if code == 429]
        acked = [s for s, (code, _) in results.items() if code == 200]
        print(f"peak RSS growth {growth:.0f} MiB over {base / 1024:.0f} MiB; {len(acked)} acked, {len(refused)} "
              f"refused with 429; 10 small requests served in {small_seconds:.1f} s ({retries} retries after 429)")
        assert refused and acked and len(refused) + len(acked) == len(senders)
        assert all(b"memory budget" in results[s][1] for s in refused)
        # In flight: at most the budget, 64 MiB (two bodies and what decoding them makes); what a
        # decoded byte really costs was measured at up to 15 bytes where 13 are reserved; the
        # connections waiting hold aiohttp's read buffer each (<= 256 KiB): 64 * 15/13 + 16 * 0.25 + 8.
        assert growth < 64 * 15 / 13 + 4 + 8
        rows = node.rows(table="BigGauge")
        for s in senders:
            assert sum(f'""sender"":""{s}""'.encode() in r for r in rows) == (46_000 if s in acked else 0)
        assert small_acked == 10 and len(node.rows(table="SmallOne")) == 20
        m = scrape(node.http_url + "/metrics")
        assert m['ingestor_memory_refused_total{what="metrics export"}'] == len(refused)
        assert m["ingestor_memory_in_flight_bytes"] == 0


async def test_a_body_over_the_whole_budget_runs_alone(tmp_path: Path) -> None:
    with running(tmp_path, "--max-memory", "16MiB") as node:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, node.http_url + "/api/v1/write", write_request("alone", series=20_000),
                               RW))[0] == 204
        assert len(node.rows(table="Alone")) == 20_000


# -- 3. bombs ------------------------------------------------------------------------------------------


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def gzip_of_zeros(mib: int) -> bytes:
    """One gzip member of `mib` MiB of zeros, built without compressing them all: after a full
    flush deflate starts afresh, so every MiB compresses to the same bytes."""
    zeros = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + piece * mib + end
            + crc.to_bytes(4, "little") + (mib * MiB % (1 << 32)).to_bytes(4, "little"))


async def test_compression_bombs_are_refused_without_their_memory(tmp_path: Path) -> None:
    with running(tmp_path) as node:
        pid = pid_of(node)
        members = gzip.compress(bytes(MiB)) * 1024  # 1 GiB in 1,024 members, 1 MiB of body
        single = gzip_of_zeros(1024)  # 1 GiB in one member, 1 MiB of body
        assert gzip.decompress(gzip_of_zeros(3)) == bytes(3 * MiB)
        base = status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            async with session.post(node.http_url + "/api/v1/write", data=uvarint(1 << 30) + bytes(16),
                                    headers=RW) as r:
                assert r.status == 413 and "declares 1073741824 bytes" in await r.text()
            for body in (members, single):
                async with session.post(node.http_url + "/v1/metrics", data=io.BytesIO(body),
                                        headers={**PB, "Content-Encoding": "gzip"}) as r:
                    assert r.status == 413
            seconds = time.monotonic() - t0
        # The preamble alone: 413 before the other 8 MiB it announces are sent.
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        writer.write(head("/api/v1/write", 8 * MiB) + uvarint(1 << 30) + bytes(16))
        got = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert got is not None and got[0] == 413
        growth = (status_kib(pid, "VmHWM") - base) / 1024
        print(f"three 1 GiB bombs refused in {seconds:.2f} s; peak RSS growth {growth:.1f} MiB")
        assert growth < 16
        assert node.tables() == set()


async def test_many_tiny_gzip_members_cost_little(tmp_path: Path) -> None:
    """Each member's leftover input was a copy of the rest of the body (quadratic: 11 s for 2 MB of
    empty members), and each member costs a fresh inflater: 4,096 members are served, more refused."""
    member = gzip.compress(metrics_service_pb2.ExportMetricsServiceRequest().SerializeToString())
    with running(tmp_path) as node:
        async with aiohttp.ClientSession() as session:
            took = []
            for count, status in ((4096, 200), (100_000, 400), (3_000_000, 400)):
                t0 = time.monotonic()
                async with session.post(node.http_url + "/v1/metrics", data=io.BytesIO(member * count),
                                        headers={**PB, "Content-Encoding": "gzip"}) as r:
                    assert r.status == status
                    assert status == 200 or "more than 4096 members" in status_message(await r.read())
                took.append(time.monotonic() - t0)
        print("gzip bodies of 4,096 / 100,000 / 3,000,000 (60 MB) empty members answered in "
              + " / ".join(f"{t:.2f}" for t in took) + " s")
        assert max(took) < 3


def status_message(body: bytes) -> str:
    return str(status_pb2.Status.FromString(body).message)


# -- 4. connections ------------------------------------------------------------------------------------


async def test_idle_connections_are_bounded_and_closed_and_a_normal_client_is_served(tmp_path: Path) -> None:
    with running(tmp_path, "--max-connections", "100", "--idle-timeout", "2s") as node:
        pid = pid_of(node)
        base = fds(pid)
        peak = base
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, fds(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", node.http_port)

        t0 = time.monotonic()
        conns = []
        for _ in range(10):
            conns += await asyncio.gather(*(connect() for _ in range(200)))
        opened = time.monotonic() - t0
        # A normal client, on a connection of its own, while the 2,000 are open.
        t1 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            status, _ = await post(session, node.http_url + "/api/v1/write", write_request("normal_one"), RW)
        served = time.monotonic() - t1
        assert status == 204
        during = fds(pid)
        # Every one is closed by the node: the first 1,900 to make room, the rest after 2 s idle.
        results = await asyncio.gather(*(closed(r, 10) for r, _ in conns))
        all_closed = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while fds(pid) > base + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = fds(pid)
        sampling = False
        await sampler
        for _, w in conns:
            w.close()
        print(f"descriptors: {base} before, peak {peak} with 2,000 connections opened in {opened:.1f} s "
              f"(--max-connections 100), {during} while a normal client was served in {served * 1000:.0f} ms, "
              f"{after} after; every connection closed by the node within {all_closed:.1f} s")
        assert all(results)
        assert peak <= base + 100 + 5
        assert after <= base + 2
        assert served < 2
        assert len(node.rows(table="NormalOne")) == 2


async def test_a_keep_alive_connection_is_closed_after_the_idle_timeout_even_mid_headers(tmp_path: Path) -> None:
    with running(tmp_path, "--idle-timeout", "1s") as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        got = await read_response(reader)
        assert got is not None and got[0] == 200
        t0 = time.monotonic()
        assert await closed(reader, 5)
        idle = time.monotonic() - t0
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        t0 = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(50):  # headers a byte at a time, never finished
            if reader.at_eof():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(b"X")
                await writer.drain()
            await asyncio.sleep(0.1)
        assert await closed(reader, 5)
        trickle = time.monotonic() - t0
        writer.close()
        print(f"idle keep-alive closed after {idle:.2f} s, trickled headers after {trickle:.2f} s")
        assert 0.9 <= idle <= 2.5 and 0.9 <= trickle <= 2.5


# -- 5. abandoned and junk requests --------------------------------------------------------------------


async def junk(node: NodeProcess, kind: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    try:
        if kind == 0:  # abandoned mid-body
            writer.write(head("/api/v1/write", 100_000) + write_request("abandoned")[:50])
        elif kind == 1:  # a body that is not snappy
            writer.write(head("/api/v1/write", 40) + b"\xff" * 40)
        elif kind == 2:  # chunked framing that is not
            writer.write(head("/v1/logs", None, None, chunked=True) + b"zz\r\nabc\r\n")
        elif kind == 3:  # over --max-request-bytes
            writer.write(head("/v1/traces", 1 << 30, None))
        else:  # not HTTP
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
        await writer.drain()
        if kind != 0:
            await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()


async def test_abandoned_and_junk_requests_are_no_500_and_a_handful_of_log_lines(tmp_path: Path) -> None:
    with running(tmp_path) as node:
        before = node.log().count("\n")
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with sem:
                await junk(node, i % 5)

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(2000)))
        seconds = time.monotonic() - t0
        await asyncio.sleep(0.5)  # the last abandoned bodies noticed
        async with aiohttp.ClientSession() as session:
            assert (await post(session, node.http_url + "/api/v1/write", write_request("after_junk"), RW))[0] == 204
        m = scrape(node.http_url + "/metrics")
        lines = node.log().splitlines()[before:]
        codes = {re.search(r'code="(\d+)"', k).group(1): v  # type: ignore[union-attr]
                 for k, v in m.items() if k.startswith("ingestor_requests_total{") and 'transport="http"' in k}
        print(f"2,000 junk requests in {seconds:.1f} s: {len(lines)} log lines, statuses {codes}")
        print("\n".join(lines))
        assert "500" not in codes
        assert codes.get("499", 0) > 0 and codes.get("400", 0) >= 400 and codes.get("413", 0) >= 400
        assert len(lines) <= 6
        assert not any("Traceback" in line or "ERROR" in line for line in lines)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_with_and_without_content_length_land(tmp_path: Path, chunked: bool) -> None:
    """A body without Content-Length is reserved as it grows; the rest of the port is unchanged."""
    body = write_request("chunked_one", series=5_000)

    async def gen() -> object:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    with running(tmp_path, "--max-memory", "64MiB") as node:
        async with aiohttp.ClientSession() as session, session.post(
                node.http_url + "/api/v1/write", data=gen() if chunked else io.BytesIO(body), headers=RW) as r:
            assert r.status == 204
        assert len(node.rows(table="ChunkedOne")) == 5_000
