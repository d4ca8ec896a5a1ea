"""The whole node as the number of distinct tables grows: issue 17's table, measured end to end.

Run: .venv/bin/python -m tests.bench.bench_tables [--seconds S]

A real `ingestor serve` (one receiver, local sink, default limits) takes OTLP metrics Export
requests over gRPC from a load process (`drive`, grpc.aio with the bodies serialized beforehand,
8 requests in flight over 2 connections, after one pass over every body so that the series and
segments exist), for 10 / 1,000 / 10,000 distinct metric names. Every request has the same
shape: 1,000 gauge points, 50 metrics of 20 points, 8 attributes; only the names change, drawn so
that the requests together cover every name. A last row sends 1,000 metrics of one point each
over 10,000 names (1,000 tables in every request: a Prometheus shard when that many names are
spread over its queues), each request with names of its own, so that no two requests in flight
share a table; and the last, "8 shards", sends the same with every 8 requests in a row holding the
same 1,000 names, each with its own series, as the shards of one Prometheus do (each takes a slice
of every scrape's series), so that requests in flight share their tables and group commit
(node/groupcommit.py) can write one block a table for several of them.

The nodes run at once, idle but for the one driven, and are driven in turn, round after
round (3 rounds of 5 s each by default), so that a slower minute of a shared machine hits every
row alike: the 10-table figure alone moved by 15-25% between runs minutes apart.

Printed per row: points/s acknowledged and CPU seconds of the node (all its processes) per million
points over all rounds, each with its ratio to the 10-table row (the median of the rounds' ratios),
p99 latency, the peak of open descriptors (all its processes), the active segments at the end of
the load, and the seconds from SIGTERM to the node's exit. Then the "1,000 a request" row once
more, 60 s without a break (`--sustained`): the requests acknowledged and refused, and points/s.
In 5 s windows the WAL journal's rounds catch up in the other rows' turns; sustained, a round that
falls behind has requests refused at its 256 MiB limit (as it did before its calls kept the GIL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.bench.bench_kinds import tree_cpu_seconds
from tests.harness import NodeProcess

T0 = 1_795_492_800_000_000_000
POINTS = 1000
IN_FLIGHT = 8
"""Requests in flight over 2 connections (an OTLP exporter sends ~10 at once on one)."""
MAX_BODIES = 200
ROUNDS = 3
SUSTAINED_SECONDS = 60.0
"""The "1,000 a request" row driven once more without a break: the timed windows are 5 s, and
what piles up in the WAL's journal between two of its rounds drains in the other rows' turns."""
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def body(names: int, index: int, per_metric: int, shared: int = 1) -> bytes:
    """Request `index`: 1,000 gauge points, `per_metric` per metric, names `m<k>` continuing where
    request `index - 1` stopped (so `names // metrics` requests cover every name). Every point of
    a request is a series of its own (`label_0` names its metric's place too): with 10 names, a
    name's 5 metrics in a request are 100 series, not 5 copies of 20 identical rows. With `shared`
    > 1, `shared` requests in a row hold the same names, each with series of its own (a `shard`
    attribute): the shards of one Prometheus, which slice every scrape's series by hash."""
    metrics = POINTS // per_metric
    group = index // shared
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="bench"))
    if shared > 1:
        rm.resource.attributes.add(key="shard", value=AnyValue(string_value=str(index % shared)))
    sm = rm.scope_metrics.add()
    for m in range(metrics):
        metric = sm.metrics.add(name=f"bench_metric_{(group * metrics + m) % names}")
        for p in range(per_metric):
            dp = metric.gauge.data_points.add(time_unix_nano=T0 + index * 1_000_000)
            dp.as_double = p * 1.5
            for a in range(8):
                dp.attributes.add(key=f"label_{a}", value=AnyValue(string_value=f"value_{a}_{p}_{m}" if a == 0 else
                                                                   f"value_{a}_{p}"))
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
    print(json.dumps({"acked": len(latencies), "failed": failed, "seconds": took,
                      "latencies": [round(x, 4) for x in latencies], "codes": codes}))
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


def open_files(pid: int) -> int:
    n = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


@dataclass
class Row:
    """One row of the table: its node, its bodies, and what its timed windows measured."""

    label: str
    names: int
    per_metric: int
    node: NodeProcess
    bodies: Path
    acked: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    fds: int = 0
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    """Points/s of each round, for the ratio to the 10-table row of the same round."""
    cpus: list[float] = field(default_factory=list)
    """CPU seconds per million points of each round."""
    failed: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def drive(self, mode: str, seconds: float) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", DRIVER, self.node.grpc_addr, str(self.bodies), str(seconds),
                              str(IN_FLIGHT), EXPORT, mode], capture_output=True, text=True, timeout=seconds + 300)
        if out.returncode:
            raise RuntimeError(f"driver failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout) if mode == "timed" else {}

    def window(self, seconds: float) -> None:
        """One timed window: the driver's load, the node's CPU over it, its descriptors sampled."""
        assert self.node.proc is not None
        pid = self.node.proc.pid
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                self.fds = max(self.fds, open_files(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        cpu0 = tree_cpu_seconds(pid)
        sampler.start()
        try:
            load = self.drive("timed", seconds)
        finally:
            done.set()
            sampler.join()
        cpu = tree_cpu_seconds(pid) - cpu0
        points = load["acked"] * POINTS
        self.acked += load["acked"]
        self.seconds += load["seconds"]
        self.cpu += cpu
        self.latencies += load["latencies"]
        self.rates.append(points / load["seconds"])
        self.cpus.append(cpu / points * 1e6 if points else 0.0)
        self.failed += load["failed"]
        for code, n in load["codes"].items():
            self.codes[code] = self.codes.get(code, 0) + n


def start(names: int, per_metric: int, shared: int, label: str, tmp: Path) -> Row:
    metrics = POINTS // per_metric
    count = min(MAX_BODIES, max(1, names // metrics) * shared)
    path = tmp / f"bodies-{names}-{per_metric}-{shared}"
    path.write_bytes(b"".join(len(b).to_bytes(4, "big") + b
                              for b in (body(names, i, per_metric, shared) for i in range(count))))
    node = NodeProcess(tmp / f"node-{names}-{per_metric}-{shared}", "--storage-backend", "local")
    node.start()
    return Row(label, names, per_metric, node, path)


def main(seconds: float = 15.0, rounds: int = ROUNDS, sustained_seconds: float = SUSTAINED_SECONDS) -> None:
    """Every row's node runs at once (idle but for the one driven); the rows are driven in turn,
    `rounds` times `seconds / rounds` each, so that a slower minute of a shared machine hits them
    alike. Ratios are the medians of each round's ratio to the 10-table row of that round."""
    spec = [(10, 20, 1, "10"), (1_000, 20, 1, "1,000"), (10_000, 20, 1, "10,000"),
            (10_000, 1, 1, "10,000, 1,000 a request"), (10_000, 1, IN_FLIGHT, "the same, 8 shards")]
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as d:
        rows: list[Row] = []
        try:
            for names, per, shared, label in spec:
                rows.append(start(names, per, shared, label, Path(d)))
            for row in rows:  # every body once: the series and segments exist before the timed run
                row.drive("warm", 0)
            for _ in range(rounds):
                for row in rows:
                    row.window(seconds / rounds)
            wide = rows[3]
            sustained = wide.drive("timed", sustained_seconds) if sustained_seconds else None
            print(f"{'distinct tables':>24} {'points/s':>9} {'ratio':>6} {'CPU s/M':>8} {'ratio':>6} {'p99 ms':>7} "
                  f"{'open fds':>8} {'active':>7} {'SIGTERM s':>9}")
            ref = rows[0]
            for row in rows:
                assert row.node.proc is not None
                active = len(os.listdir(row.node.storage_dir / "wal" / "active"))
                t = time.monotonic()
                row.node.stop(signal.SIGTERM, timeout=300)
                stop = time.monotonic() - t
                rate = row.acked * POINTS / row.seconds
                ratio = statistics.median(r / q for r, q in zip(row.rates, ref.rates, strict=True))
                cpu_ratio = statistics.median(c / q for c, q in zip(row.cpus, ref.cpus, strict=True))
                lat = sorted(row.latencies)
                p99 = lat[int(len(lat) * 0.99)] if lat else 0.0
                failed = f"  ({row.failed} requests failed: {row.codes})" if row.failed else ""
                print(f"{row.label:>24} {rate:9,.0f} {ratio:6.2f} {row.cpu / (row.acked * POINTS) * 1e6:8.1f} "
                      f"{cpu_ratio:6.2f} {p99 * 1000:7.0f} {row.fds:8.0f} {active:7.0f} {stop:9.1f}{failed}",
                      flush=True)
            print(f"{rounds} rounds of {seconds / rounds:.0f} s a row, the rows in turn; ratios: median of the "
                  f"rounds' ratios to the 10-table row (points/s and CPU: totals over the rounds)")
            if sustained is not None:
                print(f"sustained: '{wide.label}' for {sustained['seconds']:.0f} s without a break: "
                      f"{sustained['acked']:,} requests acknowledged, {sustained['failed']:,} refused"
                      f"{' ' + str(sustained['codes']) if sustained['codes'] else ''}, "
                      f"{sustained['acked'] * POINTS / sustained['seconds']:,.0f} points/s",
                      flush=True)
        finally:
            for row in rows:
                if row.node.proc is not None and row.node.proc.poll() is None:
                    row.node.stop(signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds a row, over all rounds")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--sustained", type=float, default=SUSTAINED_SECONDS,
                        help="seconds of the '1,000 a request' row without a break (0: none)")
    args = parser.parse_args()
    main(args.seconds, args.rounds, args.sustained)
