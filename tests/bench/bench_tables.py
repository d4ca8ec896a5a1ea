"""The whole node as the number of distinct tables grows: issue 17's table, measured end to end.

Run: .venv/bin/python -m tests.bench.bench_tables [--seconds S]

A real `ingestor serve` (one receiver, local sink, default limits) takes OTLP metrics Export
requests over gRPC from a load process (`drive`, grpc.aio with the bodies serialized beforehand,
8 requests in flight over 2 connections, after one pass over every body so that the series and
segments exist), for 10 / 1,000 / 10,000 distinct metric names. Every request has the same
shape: 1,000 gauge points, 50 metrics of 20 points, 8 attributes; only the names change, drawn so
that the requests together cover every name. A last row sends 1,000 metrics of one point each
over 10,000 names (1,000 tables in every request: a Prometheus shard when that many names are
spread over its queues).

Printed per row, each with its ratio to the 10-table row of the same run: points/s acknowledged,
CPU seconds of the node (all its processes) per million points, p99 latency, the peak of open
descriptors (all its processes), the active segments at the end of the load, and the seconds from
SIGTERM to the node's exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness import NodeProcess

T0 = 1_795_492_800_000_000_000
POINTS = 1000
IN_FLIGHT = 8
"""Requests in flight over 2 connections (an OTLP exporter sends ~10 at once on one)."""
MAX_BODIES = 200
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def body(names: int, index: int, per_metric: int) -> bytes:
    """Request `index`: 1,000 gauge points, `per_metric` per metric, names `m<k>` continuing where
    request `index - 1` stopped (so `names // metrics` requests cover every name)."""
    metrics = POINTS // per_metric
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="bench"))
    sm = rm.scope_metrics.add()
    for m in range(metrics):
        metric = sm.metrics.add(name=f"bench_metric_{(index * metrics + m) % names}")
        for p in range(per_metric):
            dp = metric.gauge.data_points.add(time_unix_nano=T0 + index * 1_000_000)
            dp.as_double = p * 1.5
            for a in range(8):
                dp.attributes.add(key=f"label_{a}", value=AnyValue(string_value=f"value_{a}_{p}"))
    return req.SerializeToString()


DRIVER = r"""
import asyncio, json, sys, time
import grpc
addr, bodies_path, seconds, in_flight = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
CONNECTIONS = 2
with open(bodies_path, "rb") as f:
    data = f.read()
bodies, i = [], 0
while i < len(data):
    n = int.from_bytes(data[i:i + 4], "big"); bodies.append(data[i + 4:i + 4 + n]); i += 4 + n
async def main():
    channels = [grpc.aio.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20),
                                                          ("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CONNECTIONS)]
    calls = [ch.unary_unary(sys.argv[5], request_serializer=None, response_deserializer=None) for ch in channels]
    for call in calls:
        await call(bodies[0], timeout=30)
    latencies, failed, nxt, codes = [], 0, [0], {}
    if sys.argv[6] == "warm":  # every body once: the series and segments exist before the timed run
        queue = list(bodies)
        async def warm(call):
            while queue:
                await call(queue.pop(), timeout=60)
        await asyncio.gather(*(warm(calls[w % CONNECTIONS]) for w in range(in_flight)))
        return
    start = time.monotonic()
    end = start + seconds
    async def worker(call):
        nonlocal failed
        while time.monotonic() < end:
            b = bodies[nxt[0] % len(bodies)]; nxt[0] += 1
            t = time.monotonic()
            try:
                await call(b, timeout=30)
                latencies.append(time.monotonic() - t)
            except grpc.aio.AioRpcError as e:
                failed += 1
                k = f"{e.code().name}: {(e.details() or '')[:120]}"
                codes[k] = codes.get(k, 0) + 1
    await asyncio.gather(*(worker(calls[w % CONNECTIONS]) for w in range(in_flight)))
    took = time.monotonic() - start
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    print(json.dumps({"acked": len(latencies), "failed": failed, "seconds": took, "p99": p99, "codes": codes}))
    for ch in channels:
        await ch.close()
asyncio.run(main())
"""


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def open_files(pid: int) -> int:
    n = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


def run(names: int, per_metric: int, seconds: float, tmp: Path) -> dict[str, Any]:
    metrics = POINTS // per_metric
    count = min(MAX_BODIES, max(1, names // metrics))
    bodies = [body(names, i, per_metric) for i in range(count)]
    path = tmp / f"bodies-{names}-{per_metric}"
    path.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in bodies))
    node = NodeProcess(tmp / f"node-{names}-{per_metric}", "--storage-backend", "local")
    node.start()
    assert node.proc is not None
    pid = node.proc.pid
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], open_files(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for mode in ("warm", "timed"):
            if mode == "timed":
                cpu0 = cpu_seconds(pid)
                sampler.start()
            out = subprocess.run([sys.executable, "-c", DRIVER, node.grpc_addr, str(path), str(seconds),
                                  str(IN_FLIGHT), EXPORT, mode], capture_output=True, text=True, timeout=seconds + 300)
            if out.returncode:
                raise RuntimeError(f"driver failed: {out.stderr[-2000:]}")
        done.set()
        sampler.join()
        cpu = cpu_seconds(pid) - cpu0
        load = json.loads(out.stdout)
        active = len(os.listdir(node.storage_dir / "wal" / "active"))
        t = time.monotonic()
        node.stop(signal.SIGTERM, timeout=300)
        stop = time.monotonic() - t
    finally:
        done.set()
        if node.proc.poll() is None:
            node.stop(signal.SIGKILL)
    points = load["acked"] * POINTS
    return {"points_s": points / load["seconds"], "cpu_per_m": cpu / points * 1e6 if points else 0.0,
            "p99": load["p99"], "failed": load["failed"], "codes": load["codes"], "fds": peak[0], "active": active,
            "stop": stop}


def main(seconds: float = 10.0) -> None:
    rows = [(10, 20, "10"), (1_000, 20, "1,000"), (10_000, 20, "10,000"), (10_000, 1, "10,000, 1,000 a request")]
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as d:
        print(f"{'distinct tables':>24} {'points/s':>9} {'ratio':>6} {'CPU s/M':>8} {'ratio':>6} {'p99 ms':>7} "
              f"{'open fds':>8} {'active':>7} {'SIGTERM s':>9}")
        ref: dict[str, Any] | None = None
        for names, per, label in rows:
            r = run(names, per, seconds, Path(d))
            ref = ref or r
            failed = f"  ({r['failed']} requests failed: {r['codes']})" if r["failed"] else ""
            print(f"{label:>24} {r['points_s']:9,.0f} {r['points_s'] / ref['points_s']:6.2f} "
                  f"{r['cpu_per_m']:8.1f} {r['cpu_per_m'] / ref['cpu_per_m']:6.2f} {r['p99'] * 1000:7.0f} "
                  f"{r['fds']:8.0f} {r['active']:7.0f} {r['stop']:9.1f}{failed}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    main(parser.parse_args().seconds)
