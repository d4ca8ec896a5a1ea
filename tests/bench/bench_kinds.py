"""The kinds of data under gRPC load: gauge points, histograms, logs, each against the parse-only
ceiling of grpc.aio for its service, measured in one run with one driver (h2load, bench_node).

Run: .venv/bin/python -m tests.bench.bench_kinds   (BENCH_SECONDS, default 8: each figure is the
median of 3 runs of BENCH_SECONDS / 2 seconds, after a second of warm-up)

* gauge: bench_node's request, 1000 gauge points across 50 metrics, 8 attributes each: one row a
  point.
* histogram: 200 explicit-bucket histogram points across 20 metrics (10 series each), 14 bounds
  (OpenTelemetry's HTTP duration buckets, in seconds), 6 attributes (method, route, status code,
  server address, scheme, protocol version) and a resource of 3 attributes: 17 rows a point
  (`_count`, `_sum`, 15 `_bucket`s), plus one TargetInfo row a request.
* logs: 1000 records of short bodies (about 40 characters), 7 attributes each, trace and span ids,
  routed by `kusto.table` on the resource; 16 such requests whose records' times all differ, sent in
  turn (one h2load each), as a real stream of records has new times in every request.

For each: the parse-only server (a bare grpc.aio server of that service that parses each request
and answers), then a node with 1 receiver process and one with 2 (`--receivers 2`), all running at
once (idle but for the one driven) and driven in turn, round after round, so that a slower minute
of a shared machine hits them alike. Printed: items/s and rows/s acknowledged, the node's ratio to
the ceiling, the CPU seconds the server's processes spent per million items (utime + stime of the
process and its receivers, from /proc, over the measured seconds), 2 receivers / 1, histogram
rows/s against gauge rows/s; then where the node's CPU per item goes: parse (as the node parses,
node/ingest.py's raw messages), parse + convert and parse + convert + WAL append, measured in this
process (one core, warm caches) in the same rounds, and the rest of the node's figure (gRPC, the
event loop, counters); last, the logs with a request id, and the floor under the logs' conversion
in Python (`logs_floor`: a record's fields and attributes read, before any text).
About 2.5 minutes with the default BENCH_SECONDS.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from node.ingest import OTLP_LOGS, OTLP_METRICS
from node.rows.batch import ConvertResult
from node.rows.logs import _FIELDS, LogsConfig, LogsConverter, parse_request
from node.rows.metrics import MetricsConverter
from node.wal.repository import Block, Repository, WalConfig
from tests.bench.bench_node import (
    CLIENTS,
    LOGS_PATH,
    METRICS_PATH,
    POINTS,
    SECONDS,
    STREAMS,
    h2load,
    metrics_request,
    parse_only_server,
    tree_rss_mb,
    wait_port,
)
from tests.bench.bench_remote_write import machine_busy
from tests.harness import NodeProcess, free_port

RUN = max(2, round(SECONDS / 2))
"""Seconds measured per run (h2load's -D), after its second of warm-up."""
ROUNDS = 3
WARM_UP = 1.0
T0 = 1_795_000_000_000_000_000
HIST_POINTS, HIST_METRICS = 200, 20
HIST_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
HIST_ROWS = 2 + len(HIST_BOUNDS) + 1
"""Rows of one histogram point: _count, _sum, a _bucket per bound and +Inf."""
LOG_RECORDS = 1000
LOG_BODIES = CLIENTS
"""Logs requests sent in turn, one connection each: 16,000 distinct record times, more than a
converter's cache of timestamps keeps (8,192), as a real stream of records, whose times are all
new, would."""
_ROUTES = ("/api/v1/items/{id}", "/api/v1/users/{id}", "/api/v1/orders", "/healthz", "/api/v1/search")
_METHODS = ("GET", "POST", "PUT", "DELETE")


def _add(attrs: Any, key: str, value: AnyValue) -> None:
    attrs.add(key=key, value=value)


def histogram_request() -> bytes:
    """HIST_POINTS explicit-bucket histogram points across HIST_METRICS metrics (HIST_ROWS rows each)."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for key, value in (("service.name", "api"), ("service.instance.id", "api-0"), ("k8s.namespace.name", "prod")):
        _add(rm.resource.attributes, key, AnyValue(string_value=value))
    sm = rm.scope_metrics.add()
    per = HIST_POINTS // HIST_METRICS
    for m in range(HIST_METRICS):
        metric = sm.metrics.add(name=f"http.server.request.duration_{m}")
        metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        for p in range(per):
            counts = [(p * 7 + k * 3) % 11 for k in range(len(HIST_BOUNDS) + 1)]
            dp = metric.histogram.data_points.add(
                start_time_unix_nano=T0 - 60_000_000_000, time_unix_nano=T0 + 123_456_789, count=sum(counts),
                sum=sum(counts) * 0.173, bucket_counts=counts, explicit_bounds=HIST_BOUNDS)
            _add(dp.attributes, "http.request.method", AnyValue(string_value=_METHODS[p % len(_METHODS)]))
            _add(dp.attributes, "http.route", AnyValue(string_value=_ROUTES[p % len(_ROUTES)]))
            _add(dp.attributes, "http.response.status_code", AnyValue(int_value=(200, 201, 404, 500)[p // 4 % 4]))
            _add(dp.attributes, "server.address", AnyValue(string_value=f"api-{p % 3}.prod.svc"))
            _add(dp.attributes, "url.scheme", AnyValue(string_value="https"))
            _add(dp.attributes, "network.protocol.version", AnyValue(string_value="2" if p % 2 else "1.1"))
    return req.SerializeToString()


def logs_request(k: int = 0) -> bytes:
    """LOG_RECORDS records, short bodies, 7 attributes, kusto.table on the resource; the `k`th of
    LOG_BODIES, whose records' times are 10 ms after those of the one before."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for key, value in (("service.name", "api"), ("k8s.pod.name", "api-7d9f-x2"), ("kusto.table", "BenchLogs")):
        _add(rl.resource.attributes, key, AnyValue(string_value=value))
    sl = rl.scope_logs.add()
    for r in range(LOG_RECORDS):
        rec = sl.log_records.add(
            time_unix_nano=T0 + k * 10**7 + r * 1000, observed_time_unix_nano=T0 + k * 10**7 + r * 1000 + 500,
            severity_text="INFO",
            severity_number=SEVERITY_NUMBER_INFO, trace_id=r.to_bytes(16, "big"), span_id=(r + 1).to_bytes(8, "big"))
        route = _ROUTES[r % len(_ROUTES)]
        rec.body.string_value = f"{_METHODS[r % 4]} {route} {200 + r % 3} in {r % 97} ms"
        _add(rec.attributes, "http.request.method", AnyValue(string_value=_METHODS[r % 4]))
        _add(rec.attributes, "http.route", AnyValue(string_value=route))
        _add(rec.attributes, "http.response.status_code", AnyValue(int_value=200 + r % 3))
        _add(rec.attributes, "duration_ms", AnyValue(double_value=(r % 97) * 0.5))
        _add(rec.attributes, "user.id", AnyValue(string_value=f"u{r * 7919 % 10000}"))
        _add(rec.attributes, "thread.name", AnyValue(string_value=f"worker-{r % 8}"))
        _add(rec.attributes, "retry", AnyValue(bool_value=r % 10 == 0))
    return req.SerializeToString()


def logs_parse_only_server(port: int) -> subprocess.Popen[bytes]:
    """bench_node.parse_only_server for the logs service: a bare grpc.aio server that parses each
    ExportLogsServiceRequest (grpc does, before the handler) and answers."""
    code = f"""
import asyncio, grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as pb, logs_service_pb2_grpc as pbg
class S(pbg.LogsServiceServicer):
    async def Export(self, request, context):
        return pb.ExportLogsServiceResponse()
async def main():
    s = grpc.aio.server()
    pbg.add_LogsServiceServicer_to_server(S(), s)
    s.add_insecure_port("127.0.0.1:{port}")
    await s.start()
    await s.wait_for_termination()
asyncio.run(main())
"""
    return subprocess.Popen([sys.executable, "-c", code])


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (every thread), now."""
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in tree]
    return sum(times.get(p, 0.0) for p in tree)


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    body: bytes
    """One request; the driver sends `bodies`."""
    items: int
    """Items (points, records) in one request."""
    rows: int
    """Rows one request makes."""
    unit: str
    message: Any
    """What parses the request as the node parses it (node/ingest.py's kinds: the raw messages)."""
    convert: Callable[[Any], ConvertResult]
    """A converter of its own (warm caches), as a node's receiver converts it."""
    varied: tuple[bytes, ...] = ()
    """Requests that differ where a real client's do (logs: every record's time is new), sent in
    turn, each by its own h2load (bench_node.h2load); none: `body` alone, again and again."""

    @property
    def bodies(self) -> tuple[bytes, ...]:
        return self.varied or (self.body,)


@dataclass
class Figures:
    """The runs of one kind against one server: requests/s and CPU seconds per million items."""

    rps: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    """Cores the server's processes used, on average over each run."""
    busy: list[float] = field(default_factory=list)
    """Cores the whole machine used over each run (/proc/stat): the server, the driver, the rest."""
    failed: int = 0

    def items(self, kind: Kind) -> float:
        return statistics.median(self.rps) * kind.items

    def cpu_per_million(self) -> float:
        return statistics.median(self.cpu)


def drive(port: int, pid: int, kind: Kind, figures: Figures) -> None:
    """One run of h2load against `port`, with the CPU of `pid`'s process tree, and of the machine,
    over its measured seconds."""
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(h2load, port, kind.path, kind.bodies, RUN)
        time.sleep(WARM_UP + 0.2)
        c0, m0, t0 = tree_cpu_seconds(pid), machine_busy(), time.monotonic()
        time.sleep(RUN - 0.4)
        c1, m1, t1 = tree_cpu_seconds(pid), machine_busy(), time.monotonic()
        rps, failed = run.result()
    figures.rps.append(rps)
    figures.cpu.append((c1 - c0) / (t1 - t0) / max(rps * kind.items, 1e-9) * 1e6)
    figures.cores.append((c1 - c0) / (t1 - t0))
    figures.busy.append((m1 - m0) / (t1 - t0))
    figures.failed += failed


def start_node(tmp: Path, receivers: int) -> NodeProcess:
    return NodeProcess(tmp / f"node{receivers}", "--receivers", str(receivers), "--max-segment-size", "64MB",
                       "--storage-backend", "local", "--min-batch-size", "1TB", "--max-segment-age", "1h",
                       "--shutdown-grace", "10s", name=f"kinds-{receivers}").start()


def stop_node(node: NodeProcess) -> None:
    try:
        node.stop(signal.SIGTERM, timeout=120)
    except subprocess.TimeoutExpired:
        print("node did not stop in time; its log ends with:\n" + node.log()[-4000:])
        raise


def kinds() -> list[Kind]:
    metrics = MetricsConverter(), MetricsConverter()
    logs = LogsConverter(LogsConfig())
    return [
        Kind("gauge", METRICS_PATH, metrics_request(), POINTS, POINTS, "points", OTLP_METRICS.message,
             lambda req: metrics[0].convert_otlp_pieces((req,))),
        Kind("histogram", METRICS_PATH, histogram_request(), HIST_POINTS, HIST_POINTS * HIST_ROWS + 1, "points",
             OTLP_METRICS.message, lambda req: metrics[1].convert_otlp_pieces((req,))),
        Kind("logs", LOGS_PATH, logs_request(), LOG_RECORDS, LOG_RECORDS, "records", OTLP_LOGS.message,
             lambda req: logs.convert_pieces((req,)), tuple(logs_request(k) for k in range(LOG_BODIES))),
    ]


def cpu_per_item(run: Callable[[], object], items: int, seconds: float) -> float:
    """CPU microseconds per item of `run`, in this process, after a warm-up."""
    for _ in range(5):
        run()
    n, start = 0, time.process_time()
    while (spent := time.process_time() - start) < seconds:
        run()
        n += 1
    return spent / n / items * 1e6


def main() -> None:
    if shutil.which("h2load") is None:
        print("kinds bench skipped: h2load (Debian package nghttp2-client) is not installed")
        return
    all_kinds = kinds()
    for kind in all_kinds:
        result = kind.convert(kind.message.FromString(kind.body))
        assert (result.accepted, result.rejected) == (kind.rows, 0), (kind.name, result)
    targets = ("parse-only", "1 receiver", "2 receivers")
    figures = {(t, k.name): Figures() for t in (*targets, "parse", "convert", "wal") for k in all_kinds}
    metrics_port, logs_port = free_port(), free_port()
    servers = {METRICS_PATH: parse_only_server(metrics_port), LOGS_PATH: logs_parse_only_server(logs_port)}
    ports = {METRICS_PATH: metrics_port, LOGS_PATH: logs_port}
    nodes: list[NodeProcess] = []
    wal: Repository | None = None
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as d:
        try:
            wait_port(metrics_port)
            wait_port(logs_port)
            for receivers in (1, 2):
                nodes.append(start_node(Path(d), receivers))
            wal = Repository(WalConfig(directory=Path(d) / "wal", max_segment_age=3600, max_segment_size=64 << 20))
            wal.start()
            for _ in range(ROUNDS):  # round after round, so that a slower minute of the machine hits all alike
                for kind in all_kinds:
                    server = servers[kind.path]
                    drive(ports[kind.path], server.pid, kind, figures[("parse-only", kind.name)])
                    for target, node in zip(targets[1:], nodes, strict=True):
                        assert node.proc is not None
                        drive(node.grpc_port, node.proc.pid, kind, figures[(target, kind.name)])
                    in_process(kind, wal, figures)
            rss = [tree_rss_mb(node.proc.pid) for node in nodes if node.proc is not None]
        finally:
            if wal is not None:
                wal.stop()
            for server in servers.values():
                server.terminate()
                server.wait()
            with ThreadPoolExecutor(2) as pool:  # both at once: each closes its segments
                list(pool.map(stop_node, nodes))
    report(all_kinds, figures, rss)
    breakdown(all_kinds, figures)
    request_ids()
    logs_floor()


def report(all_kinds: list[Kind], figures: dict[tuple[str, str], Figures], rss: list[float]) -> None:
    print(f"h2load {CLIENTS} connections x {STREAMS} streams; median of {ROUNDS} runs of {RUN} s; CPU: seconds "
          "the server's processes spent per million items (all threads, every receiver)")
    print(f"{'kind':<10} {'rows/item':>9} | {'parse-only':>10} {'CPU':>5} | "
          f"{'1 receiver':>10} {'rows/s':>10} {'ratio':>5} {'CPU':>5} | "
          f"{'2 receivers':>11} {'rows/s':>10} {'ratio':>5} {'CPU':>5} | {'2/1':>4}")
    rows_per_s: dict[tuple[str, str], float] = {}
    for kind in all_kinds:
        ceiling = figures[("parse-only", kind.name)]
        one, two = figures[("1 receiver", kind.name)], figures[("2 receivers", kind.name)]
        per = kind.rows / kind.items
        for target in ("1 receiver", "2 receivers"):
            rows_per_s[(target, kind.name)] = figures[(target, kind.name)].items(kind) * per
        print(f"{kind.name:<10} {per:>9.2f} | {ceiling.items(kind):>10,.0f} {ceiling.cpu_per_million():>5.1f} | "
              f"{one.items(kind):>10,.0f} {rows_per_s[('1 receiver', kind.name)]:>10,.0f} "
              f"{one.items(kind) / ceiling.items(kind):>5.2f} {one.cpu_per_million():>5.1f} | "
              f"{two.items(kind):>11,.0f} {rows_per_s[('2 receivers', kind.name)]:>10,.0f} "
              f"{two.items(kind) / ceiling.items(kind):>5.2f} {two.cpu_per_million():>5.1f} | "
              f"{two.items(kind) / one.items(kind):>4.2f}   ({kind.unit}/s)")
    for target in ("1 receiver", "2 receivers"):
        ratio = rows_per_s[(target, "histogram")] / rows_per_s[(target, "gauge")]
        print(f"histogram rows/s against gauge rows/s, {target}: {ratio:.2f}")
    cores = os.cpu_count() or 1
    for kind in all_kinds:
        one, two = figures[("1 receiver", kind.name)], figures[("2 receivers", kind.name)]
        c1, c2 = statistics.median(one.cores), statistics.median(two.cores)
        b1, b2 = statistics.median(one.busy), statistics.median(two.busy)
        print(f"2 receivers against 1, {kind.name}: {two.items(kind) / one.items(kind):.2f}x the {kind.unit} with "
              f"{c2 / c1:.2f}x the node's cores ({c1:.2f} -> {c2:.2f}; the machine busy {b1:.2f} -> {b2:.2f} of "
              f"{cores}, the driver and the rest {b1 - c1:.2f} -> {b2 - c2:.2f}); {kind.unit} per node core "
              f"{(two.items(kind) / c2) / (one.items(kind) / c1):.2f}x")
    failed = {key: f.failed for key, f in figures.items() if f.failed}
    if failed:
        print(f"failed requests: {failed}")
    if rss:
        print("peak RSS: " + ", ".join(f"{n} receiver(s) {mb:.0f} MB" for n, mb in zip((1, 2), rss, strict=False)))


def in_process(kind: Kind, wal: Repository, figures: dict[tuple[str, str], Figures]) -> None:
    """CPU per item of parse, parse + convert, and parse + convert + WAL append (as a node appends a
    request's rows), in this process (one core, warm caches)."""
    figures[("parse", kind.name)].cpu.append(cpu_per_item(partial(kind.message.FromString, kind.body), kind.items, 0.2))
    bodies = itertools.cycle(kind.bodies)

    def parse_and_convert() -> ConvertResult:
        return kind.convert(kind.message.FromString(next(bodies)))

    def and_append() -> None:
        result = parse_and_convert()
        wal.write_many([Block(b.database, b.table, b.kind, b.data, b.count, b.schema) for b in result.tables.values()])

    figures[("convert", kind.name)].cpu.append(cpu_per_item(parse_and_convert, kind.items, 0.4))
    figures[("wal", kind.name)].cpu.append(cpu_per_item(and_append, kind.items, 0.4))


def request_ids() -> None:
    """The logs requests with an eighth attribute, `request.id`: the same in every record (the
    reference), then new in every record, as request ids and other ids are (each a miss of the
    attributes' cache); parse and convert in this process, CPU µs a record, the median of 3."""
    def with_id(k: int, unique: bool) -> bytes:
        req = ExportLogsServiceRequest.FromString(logs_request(k))
        for r, rec in enumerate(req.resource_logs[0].scope_logs[0].log_records):
            _add(rec.attributes, "request.id", AnyValue(string_value=f"{k:04x}{r:04x}-8e1c-4b7a-9f3d-2c6e5a1b0d94"
                                                        if unique else "0000-8e1c-4b7a-9f3d-2c6e5a1b0d94"))
        return req.SerializeToString()

    def convert_of(unique: bool) -> Callable[[], ConvertResult]:
        converter = LogsConverter(LogsConfig())
        bodies = itertools.cycle([with_id(k, unique) for k in range(LOG_BODIES)])
        return lambda: converter.convert_pieces((OTLP_LOGS.message.FromString(next(bodies)),))

    costs = {}
    for unique in (False, True):
        run = convert_of(unique)
        costs[unique] = statistics.median(cpu_per_item(run, LOG_RECORDS, 0.5) for _ in range(3))
    print(f"logs with a request id, parse + convert in one process: the same id in every record {costs[False]:.2f} "
          f"us a record (reference), a new id in every record {costs[True]:.2f} us ({costs[True] / costs[False]:.2f}x)")


def logs_floor() -> None:
    """What the logs conversion costs before it makes any text, in this process, CPU µs a record
    (medians of 3, the requests parsed beforehand, the attributes' cache warm): reading a record's
    fields as the converter does (`_FIELDS`), then also its attributes' list and their lookups in
    the converter's cache into a dict; beside the whole conversion. In Python these two are the
    floor under any converter of these records: the ratio of 0.25 asks the whole node for about
    3 µs a record (docs/performance.md)."""
    converter = LogsConverter(LogsConfig())
    parsed = [parse_request(logs_request(k)) for k in range(LOG_BODIES)]
    for p in parsed:
        converter.convert_pieces((p,))
    known = converter._attributes.__getitem__
    requests = itertools.cycle(parsed)

    def fields() -> None:
        for rl in next(requests).request.resource_logs:
            for sl in rl.scope_logs:
                for _ in map(_FIELDS, sl.log_records):
                    pass

    def and_attributes() -> None:
        for rl in next(requests).request.resource_logs:
            for sl in rl.scope_logs:
                for attrs, *_ in map(_FIELDS, sl.log_records):
                    dict(map(known, attrs[:]))

    def whole() -> None:
        converter.convert_pieces((next(requests),))

    costs = [statistics.median(cpu_per_item(run, LOG_RECORDS, 0.3) for _ in range(3))
             for run in (fields, and_attributes, whole)]
    print(f"logs conversion's floor, in one process: a record's fields read {costs[0]:.2f} us, and its attributes "
          f"looked up {costs[1]:.2f} us ({costs[1] / costs[2]:.0%} of the whole conversion's {costs[2]:.2f} us, "
          "before any text)")


def breakdown(all_kinds: list[Kind], figures: dict[tuple[str, str], Figures]) -> None:
    """Where a node's CPU per item goes: parse, convert and the WAL append measured in this process,
    in the same rounds; the rest (gRPC, the event loop and its converter thread, counters) is the
    node's figure less those."""
    print("CPU microseconds per item, in one process (warm caches, medians of the same rounds): parse, + convert, "
          "+ WAL append; the node (1 receiver, above) less all three: gRPC, the event loop, counters")
    print(f"{'kind':<10} {'parse':>6} {'+convert':>8} {'+WAL':>6} {'node':>6} {'rest':>6}")
    for kind in all_kinds:
        parse = figures[("parse", kind.name)].cpu_per_million()
        convert = figures[("convert", kind.name)].cpu_per_million()
        wal = figures[("wal", kind.name)].cpu_per_million()
        node = figures[("1 receiver", kind.name)].cpu_per_million()
        print(f"{kind.name:<10} {parse:>6.2f} {convert:>8.2f} {wal:>6.2f} {node:>6.2f} {node - wal:>6.2f}")


if __name__ == "__main__":
    main()
