"""A large request does not take the node from its other clients: while a real node parses,
converts and writes a request of a million series (sent by a process of its own), `/healthz`,
`/readyz` and gRPC health answer within a second (they took 22 s before: the work ran on the event
loop), the request is acknowledged and every row is in the WAL. Memory per request is budgeted:
with `--max-memory 512MiB`, three concurrent 50 MiB requests are taken one at a time, refused
ones get RESOURCE_EXHAUSTED with a retry hint and leave nothing, and the peak RSS stays bounded.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cramjam
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from node import ingest
from node.rows import wire
from node.rows.metrics import MetricsConverter
from node.wal.segment import iter_rows
from tests.harness import ROOT, NodeProcess
from tests.node.conftest import GrpcNode
from tests.node.test_grpc import gauge_request, rows

T_NS = 1_795_492_800_123_456_789
MiB = 1 << 20
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _field(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + wire.uvarint(len(value)) + value


def otlp_gauge(series: int, prefix: str = "s") -> bytes:
    """An ExportMetricsServiceRequest of one gauge with `series` points of distinct series
    (attribute `series` = prefix + number), written byte by byte: protobuf would take a minute."""
    head = b"\x19" + struct.pack("<Q", T_NS) + b"\x21" + struct.pack("<d", 0.5)  # time, as_double
    key = _field(0x0A, b"series")
    points = b"".join([_field(0x0A, head + _field(0x3A, key + _field(0x12, _field(0x0A, f"{prefix}{i:09d}".encode()))))
                       for i in range(series)])
    metric = _field(0x0A, b"big_gauge") + _field(0x2A, points)  # name, gauge{data_points}
    resource = _field(0x0A, _field(0x0A, b"service.name") + _field(0x12, _field(0x0A, b"big")))
    rm = _field(0x0A, resource) + _field(0x12, _field(0x12, metric))  # resource, scope_metrics{metrics}
    return _field(0x0A, rm)


def remote_write(series: int) -> bytes:
    """A prometheus.WriteRequest of `series` series with one sample each, snappy-compressed."""
    sample = _field(0x12, b"\x09" + struct.pack("<d", 0.5) + b"\x10" + wire.uvarint(T_NS // 1_000_000))
    name = _field(0x0A, _field(0x0A, b"__name__") + _field(0x12, b"big_counter"))
    body = b"".join([_field(0x0A, name + _field(0x0A, _field(0x0A, b"series") + _field(0x12, f"s{i:09d}".encode()))
                                     + sample) for i in range(series)])
    return bytes(cramjam.snappy.compress_raw(body))


# -- the sender, a process of its own -----------------------------------------------------------------


def send(kind: str, target: str, series: int, prefix: str = "s") -> None:
    """Build one request, say so, send it when a line comes on stdin; print as JSON its status,
    details and how long it took."""
    out: dict[str, object]
    if kind == "otlp":
        data = otlp_gauge(series, prefix)
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 256 * MiB)]) as ch:
            call = ch.unary_unary(EXPORT)
            print(json.dumps({"ready": len(data)}), flush=True)
            sys.stdin.readline()
            t0 = time.monotonic()
            try:
                call(data, timeout=600)
                out = {"code": "OK", "details": ""}
            except grpc.RpcError as e:
                retry = dict(e.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
                out = {"code": e.code().name, "details": e.details(), "retry_info": retry is not None}
    else:
        data = remote_write(series)
        req = urllib.request.Request(f"http://{target}/api/v1/write", data=data, method="POST",
                                     headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"})
        print(json.dumps({"ready": len(data)}), flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=600) as r:
            out = {"code": str(r.status), "details": ""}
    print(json.dumps({**out, "seconds": time.monotonic() - t0}), flush=True)


@contextmanager
def senders(kind: str, target: str, *requests: tuple[int, str]) -> Iterator[list[subprocess.Popen[str]]]:
    """A sender process per (series, prefix), each with its request built; `go` sends them."""
    procs = [subprocess.Popen([sys.executable, "-c", f"from tests.node.test_event_loop import send; "
                               f"send({kind!r}, {target!r}, {series}, {prefix!r})"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for series, prefix in requests]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert "ready" in json.loads(proc.stdout.readline() or "{}"), "a sender died building its request"
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def go(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def outcome(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    assert proc.stdout is not None
    out, _ = proc.communicate(timeout=timeout)
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


# -- probes ---------------------------------------------------------------------------------------


class Probes:
    """/healthz, /readyz and gRPC health, each every 100 ms from a thread: the longest answer of each."""

    def __init__(self, node: NodeProcess) -> None:
        self._node = node
        self._stop = threading.Event()
        self.worst = {"healthz": 0.0, "readyz": 0.0, "grpc health": 0.0}
        self.count = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self._node.grpc_addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            probes = (("healthz", lambda: self._get("/healthz")), ("readyz", lambda: self._get("/readyz")),
                      ("grpc health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)))
            while not self._stop.is_set():
                for name, probe in probes:
                    t0 = time.monotonic()
                    try:
                        probe()
                    except Exception as e:  # a failed probe is a finding, reported by the test
                        self.failures.append(f"{name}: {e}")
                    self.worst[name] = max(self.worst[name], time.monotonic() - t0)
                self.count += 1
                self._stop.wait(0.1)

    def _get(self, path: str) -> None:
        with urllib.request.urlopen(self._node.http_url + path, timeout=10) as r:
            assert r.status == 200

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wal_rows(node: NodeProcess, table: str) -> int:
    wal = node.storage_dir / "wal"
    return sum(value.count(b"\n") for path in [*wal.glob(f"*_{table}_*.wal"), *wal.glob(f"active/*_{table}_*.wal")]
               for value in iter_rows(path))


def vm_hwm(pid: int) -> int:
    """Peak resident set of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["otlp", "remote-write"])
def test_probes_answer_within_a_second_while_a_million_series_are_taken(tmp_path: Path, kind: str) -> None:
    series = 1_000_000
    node = NodeProcess(tmp_path / "data").start()
    try:
        target = node.grpc_addr if kind == "otlp" else f"{node.host}:{node.http_port}"
        with senders(kind, target, (series, "s")) as procs, Probes(node) as probes:
            go(procs)
            result = outcome(procs[0], timeout=280)
        print(f"{kind}: {series} series taken in {result['seconds']:.1f}s; slowest probe answers (s): "
              f"{ {k: round(v, 3) for k, v in probes.worst.items()} } over {probes.count} rounds; "
              f"node peak RSS {vm_hwm(node.proc.pid) / MiB:.0f} MiB")  # type: ignore[union-attr]
        assert result["code"] in ("OK", "204"), result
        assert not probes.failures, probes.failures[:3]
        assert probes.count >= 5
        assert max(probes.worst.values()) < 1.0, probes.worst
        assert wal_rows(node, "BigGauge" if kind == "otlp" else "BigCounter") == series
    finally:
        node.stop()


@pytest.mark.slow
def test_three_concurrent_50_mib_requests_stay_within_the_memory_budget(tmp_path: Path) -> None:
    """--max-memory 512MiB: each 50 MiB request reserves what its decoding may take (50 MiB x
    EXPANSION, cut to the budget: it runs alone); the others wait, then are refused with
    RESOURCE_EXHAUSTED and a retry hint, and nothing of them is written. The node stays ready."""
    series = 1_200_000  # 43 bytes a point: ~50 MiB a request
    node = NodeProcess(tmp_path / "data", "--max-memory", "512MiB").start()
    try:
        start_rss = vm_hwm(node.proc.pid)  # type: ignore[union-attr]
        with senders("otlp", node.grpc_addr, *[(series, p) for p in "abc"]) as procs:
            go(procs)
            results = dict(zip("abc", [outcome(proc, timeout=280) for proc in procs], strict=True))
        peak = vm_hwm(node.proc.pid)  # type: ignore[union-attr]
        print(f"peak RSS {peak / MiB:.0f} MiB (at start {start_rss / MiB:.0f}); "
              f"{ {p: (r['code'], round(float(r['seconds']), 1)) for p, r in results.items()} }")  # type: ignore[arg-type]
        accepted = [p for p, r in results.items() if r["code"] == "OK"]
        assert accepted, results
        for p, r in results.items():
            if p not in accepted:
                assert r["code"] == "RESOURCE_EXHAUSTED" and r["retry_info"], r
                assert "--max-memory" in str(r["details"]), r
        counts = series_by_prefix(node, "BigGauge")
        assert counts == {p: series for p in accepted}, counts
        # What the node holds at most: what it held at start, the budget (what requests may make of
        # their bytes), and what grpc holds of the three requests as it reads them, before any
        # handler runs, which is not reserved: about three times their bytes (measured: +124 MiB
        # for a 41 MiB request refused at once).
        bound = start_rss + 512 * MiB + 3 * 3 * 50 * MiB
        assert peak < bound, f"peak RSS {peak / MiB:.0f} MiB over {bound / MiB:.0f} MiB"
        assert node.ready(), node.not_ready  # refusals for memory say nothing about readiness
    finally:
        node.stop()


def series_by_prefix(node: NodeProcess, table: str) -> dict[str, int]:
    """Rows of `table` in the WAL per first letter of their `series` label."""
    counts: dict[str, int] = {}
    for row in node.rows("Metrics", table):
        prefix = row.split(b'""series"":""', 1)[1][:1].decode()
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


# -- the pieces' edge cases, in process ---------------------------------------------------------------


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "pieces", lambda data, levels: wire.pieces(data, levels, 300))


async def export(node: GrpcNode, raw: bytes) -> None:
    async with grpc.aio.insecure_channel(node.addr) as ch:
        await ch.unary_unary(EXPORT)(raw)


async def test_a_request_in_pieces_is_written_as_the_whole_would_be(grpc_node: GrpcNode, small_pieces: None) -> None:
    req = gauge_request("split_me", points=200, attrs=3)
    await export(grpc_node, req.SerializeToString())
    expected = MetricsConverter().convert_otlp(req).tables[("Metrics", "SplitMe")].data
    assert rows(grpc_node, "SplitMe") == sorted(bytes(expected).splitlines())


async def test_a_request_whose_nested_fields_do_not_split_is_converted_whole(grpc_node: GrpcNode,
                                                                            small_pieces: None) -> None:
    """A metric with a gauge and then a sum on the wire is its sum once parsed: its gauge's points,
    which a converter of pieces would have seen, make no rows."""
    both = gauge_request("both", points=50).resource_metrics[0].scope_metrics[0].metrics[0].SerializeToString()
    summed = Metric()
    summed.sum.data_points.add(time_unix_nano=T_NS, as_int=7)
    raw = gauge_request("first", points=20).SerializeToString() + _field(
        0x0A, _field(0x12, _field(0x12, both + summed.SerializeToString())))
    await export(grpc_node, raw)
    assert len(rows(grpc_node, "First")) == 20
    (row,) = rows(grpc_node, "Both")
    assert row.endswith(b",7")
    assert len(ExportMetricsServiceRequest.FromString(raw).resource_metrics) == 2


async def test_a_request_malformed_past_its_first_pieces_is_refused_whole(grpc_node: GrpcNode,
                                                                         small_pieces: None) -> None:
    bad = gauge_request("bad", points=50).resource_metrics[0].scope_metrics[0].metrics[0].SerializeToString()
    raw = gauge_request("first", points=20).SerializeToString() + _field(
        0x0A, _field(0x12, _field(0x12, bad + b"\x0a\x05ab")))  # a name 5 bytes long, 2 bytes there
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await export(grpc_node, raw)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rows(grpc_node, "First") == []  # the pieces converted before the bad one are not written
