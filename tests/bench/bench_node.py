"""The node under gRPC load: OTLP metrics and logs, against the parse-only ceiling of grpc.aio.

Load comes from h2load (C, from Debian's nghttp2-client) sending pre-serialized OTLP Export
requests (1000 points across 50 metrics, 8 attributes each), so that the client takes little of
the 2 cores. Prints, in one run: the parse-only ceiling of a bare grpc.aio server, the node's
acknowledged points/s with 1 and with 2 receiver processes, the ratio to the ceiling, logs
records/s, and the node's peak RSS (all its processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from tests.harness import NodeProcess, free_port

POINTS, METRICS, ATTRS = 1000, 50, 8
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CLIENTS, STREAMS = 16, 8
METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
LOGS_PATH = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def metrics_request(seed: int = 0) -> bytes:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="bench"))
    sm = rm.scope_metrics.add()
    per = POINTS // METRICS
    t0 = 1_795_000_000_000_000_000
    for m in range(METRICS):
        metric = sm.metrics.add()
        metric.name = f"bench_metric_{m}"
        for p in range(per):
            dp = metric.gauge.data_points.add()
            dp.time_unix_nano = t0 + seed * 1_000_000_000
            dp.as_double = p * 1.5
            for a in range(ATTRS):
                dp.attributes.add(key=f"label_{a}", value=common_pb2.AnyValue(string_value=f"value_{a}_{p}"))
    return req.SerializeToString()


def logs_request(records: int = 1000) -> bytes:
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="bench"))
    sl = rl.scope_logs.add()
    for i in range(records):
        r = sl.log_records.add()
        r.time_unix_nano = 1_795_000_000_000_000_000 + i
        r.severity_number = 9
        r.severity_text = "INFO"
        r.body.string_value = f"request {i} served in {i % 97} ms from pod app-{i % 13}"
        r.attributes.add(key="kusto.table", value=common_pb2.AnyValue(string_value="BenchLogs"))
        r.attributes.add(key="pod", value=common_pb2.AnyValue(string_value=f"app-{i % 13}"))
    return req.SerializeToString()


def h2load(port: int, path: str, body: bytes | Sequence[bytes], seconds: float) -> tuple[float, int]:
    """Drive `path` for `seconds`; return (requests/s of 2xx, failed requests). Several bodies (h2load
    sends one body only): one h2load each, at once, the CLIENTS connections shared among them, and
    their rates summed: requests that differ as a real client's do (a log record's time is new in
    every request), not one request again and again."""
    bodies = [body] if isinstance(body, bytes) else list(body)
    clients = max(1, CLIENTS // len(bodies))
    data: list[str] = []
    try:
        for b in bodies:
            with tempfile.NamedTemporaryFile(suffix=".grpc", delete=False) as f:
                f.write(b"\x00" + struct.pack(">I", len(b)) + b)
                data.append(f.name)
        procs = [subprocess.Popen(
            ["h2load", f"http://127.0.0.1:{port}{path}", "-d", d, "-c", str(clients), "-m", str(STREAMS),
             "-D", str(int(seconds)), "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--warm-up-time=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for d in data]
        outs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        for d in data:
            os.unlink(d)
    rps, failed = 0.0, 0
    for out in outs:
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
        n = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", out)
        if m is None or n is None:
            raise RuntimeError(f"h2load output not understood:\n{out}")
        rps += float(m[1])
        failed += int(n[1])
    return rps, failed


def parse_only_server(port: int) -> subprocess.Popen[bytes]:
    code = f"""
import asyncio, grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as pb, metrics_service_pb2_grpc as pbg
class S(pbg.MetricsServiceServicer):
    async def Export(self, request, context):
        return pb.ExportMetricsServiceResponse()
async def main():
    s = grpc.aio.server()
    pbg.add_MetricsServiceServicer_to_server(S(), s)
    s.add_insecure_port("127.0.0.1:{port}")
    await s.start()
    await s.wait_for_termination()
asyncio.run(main())
"""
    return subprocess.Popen([sys.executable, "-c", code])


def wait_port(port: int) -> None:
    import socket
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(port)


def tree_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) summed over a process and its children."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                 text=True).stdout.split()]
    total = 0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        if m:
            total += int(m[1])
    return total / 1024


def bench_node(receivers: int, body: bytes, logs: bytes, tmp: Path) -> tuple[float, float, float]:
    node = NodeProcess(tmp / f"node{receivers}", "--receivers", str(receivers), "--max-segment-size", "64MB",
                       "--storage-backend", "local", "--min-batch-size", "1TB", "--max-segment-age", "1h",
                       "--default-logs-database", "Logs", "--default-logs-table", "App")
    node.start()
    assert node.proc is not None
    try:
        rps, failed = h2load(node.grpc_port, METRICS_PATH, body, SECONDS)
        lrps, lfailed = h2load(node.grpc_port, LOGS_PATH, logs, SECONDS / 2)
        rss = tree_rss_mb(node.proc.pid)
    finally:
        try:
            node.stop(signal.SIGTERM, timeout=120)
        except subprocess.TimeoutExpired:
            print("node did not stop in time; its log ends with:\n" + node.log()[-4000:])
            raise
    if failed or lfailed:
        print(f"  ({failed} metrics and {lfailed} logs requests failed)")
    return rps * POINTS, lrps * 1000, rss


def main() -> None:
    if shutil.which("h2load") is None:
        print("node bench skipped: h2load (Debian package nghttp2-client) is not installed")
        return
    body, logs = metrics_request(), logs_request()
    port = free_port()
    server = parse_only_server(port)
    try:
        wait_port(port)
        ceiling_rps, _ = h2load(port, METRICS_PATH, body, SECONDS)
    finally:
        server.terminate()
        server.wait()
    ceiling = ceiling_rps * POINTS
    print(f"grpc.aio parse-only ceiling (1 process):         {ceiling:10,.0f} points/s")
    with tempfile.TemporaryDirectory(prefix="bench-node-") as d:
        for receivers in (1, 2):
            pts, recs, rss = bench_node(receivers, body, logs, Path(d))
            print(f"node, {receivers} receiver process(es): metrics    {pts:10,.0f} points/s acknowledged "
                  f"(ratio {pts / ceiling:.2f} of the ceiling)")
            print(f"node, {receivers} receiver process(es): logs       {recs:10,.0f} records/s acknowledged; "
                  f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
