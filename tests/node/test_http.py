"""The HTTP port on a real socket over a real WAL: Prometheus remote write 1.0, OTLP/HTTP (protobuf
and JSON, identity and gzip), every refusal and its status, backpressure, draining, `/metrics`.

Every accepted request is checked by reading its rows back from the WAL segments, field by field.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import math
import struct
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cramjam
import pytest
import pytest_asyncio
import xxhash
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from node.gen.prometheus import remote_pb2
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.http import HttpServer, build_app
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.storage import ACTIVE_DIR
from node.wal.names import parse_filename
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows

MAX = 1 << 20
T_MS = 1_795_492_800_123  # 2026-11-24T04:00:00.123Z
T_NS = 1_795_492_800_123_456_789  # 2026-11-24T04:00:00.123456789Z
STAMP_MS = "2026-11-24T04:00:00.123Z"
STAMP_NS = "2026-11-24T04:00:00.123456789Z"
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("0102030405060708")

PB = "application/x-protobuf"
JSON_CT = "application/json"
RW_HEADERS = {"Content-Type": PB, "Content-Encoding": "snappy", "X-Prometheus-Remote-Write-Version": "0.1.0"}
PB_HEADERS = {"Content-Type": PB}
JSON_HEADERS = {"Content-Type": JSON_CT}
RW2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
Response = AbstractAsyncContextManager[aiohttp.ClientResponse]


# -- the node ------------------------------------------------------------------------------


@dataclass
class HttpNode:
    url: str
    repo: Repository
    state: NodeState
    metrics: NodeMetrics
    session: aiohttp.ClientSession
    root: Path
    """The test's tmp_path: the WAL directory is `root / "wal"`, nothing else may appear here."""

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Response:
        # a BytesIO, not bytes: aiohttp warns (ResourceWarning, an error here) about large raw bytes
        return self.session.post(self.url + path, data=io.BytesIO(body), headers=dict(headers))

    def get(self, path: str) -> Response:
        return self.session.get(self.url + path)

    def segments(self, database: str | None = None, table: str | None = None) -> list[Path]:
        self.repo.rotate_all()
        return [
            info.path
            for info in self.repo.closed_segments()
            if (database is None or info.name.database == database) and (table is None or info.name.table == table)
        ]

    def text(self, database: str, table: str) -> str:
        """Every row of (database, table) as one CSV text."""
        return "".join(b"".join(iter_rows(p)).decode() for p in self.segments(database, table))

    def records(self, database: str, table: str) -> list[list[str]]:
        """Every row of (database, table), parsed as CSV."""
        return list(csv.reader(io.StringIO(self.text(database, table), newline="")))

    def all_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file()]


@pytest_asyncio.fixture
async def http_node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[HttpNode]:
    """A node's HTTP port on 127.0.0.1, ephemeral port; `@pytest.mark.wal(...)` configures the WAL."""
    marker = request.node.get_closest_marker("wal")
    repo = Repository(WalConfig(tmp_path / "wal", **(marker.kwargs if marker else {})))
    repo.start()
    state = NodeState(over_limits=repo.over_limits)
    metrics = NodeMetrics(CollectorRegistry())
    conv = Converters(
        MetricsConverter(MetricsConfig()),
        LogsConverter(LogsConfig(default_database="Logs", default_table="App")),
        TracesConverter(TracesConfig()),
    )
    ingest = Ingest(repo, conv, state, metrics)
    server = HttpServer(build_app(ingest, state, metrics, max_request_bytes=MAX), "127.0.0.1", 0)
    await server.start()
    state.set_phase(Phase.SERVING)
    try:
        async with aiohttp.ClientSession() as session:
            yield HttpNode(f"http://127.0.0.1:{server.port}", repo, state, metrics, session, tmp_path)
    finally:
        await server.stop(0)
        repo.stop()


# -- request builders ----------------------------------------------------------------------


def series_id(labels: Mapping[str, str]) -> int:
    """rows.md: xxhash64 over name+value of every label sorted by name, as a signed int64
    (computed here independently of node.rows: the big-endian digest read as signed)."""
    text = "".join(name + labels[name] for name in sorted(labels))
    return int.from_bytes(xxhash.xxh64(text.encode()).digest(), "big", signed=True)


def _negative_instance() -> str:
    """An `instance` value that makes the test series' id negative, so signedness is checked."""
    for i in range(1000):
        if series_id({"__name__": "http_requests_total", "job": "api", "instance": f"i{i}"}) < 0:
            return f"i{i}"
    raise AssertionError("no negative series id in 1000 tries")


INSTANCE = _negative_instance()


def write_request(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> remote_pb2.WriteRequest:
    req = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=labels[name])
        for value, t in samples:
            ts.samples.add(value=value, timestamp=t)
    return req


def snappy(req: remote_pb2.WriteRequest | bytes) -> bytes:
    raw = req if isinstance(req, bytes) else req.SerializeToString()
    return bytes(cramjam.snappy.compress_raw(raw))


def simple_write(name: str = "http_requests_total", values: list[float] | None = None, t0: int = T_MS,
                 **extra: str) -> bytes:
    labels = {"__name__": name, "job": "api", "instance": INSTANCE, **extra}
    samples = [(v, t0 + 1000 * i) for i, v in enumerate(values if values is not None else [1.5, 2.5])]
    return snappy(write_request([(labels, samples)]))


def kv(key: str, value: object) -> common_pb2.KeyValue:
    if isinstance(value, str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
    assert isinstance(value, int)
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))


def otlp_gauge(name: str = "otlp.http.gauge") -> metrics_service_pb2.ExportMetricsServiceRequest:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = name
    for i, v in enumerate((0.5, 1.25)):
        dp = m.gauge.data_points.add(time_unix_nano=T_NS + i, as_double=v)
        dp.attributes.append(kv("host", "h1"))
    return req


def otlp_logs(*tables: str | None) -> logs_service_pb2.ExportLogsServiceRequest:
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "api"))
    sl = rl.scope_logs.add()
    for table in tables:
        rec = sl.log_records.add(time_unix_nano=T_NS, severity_text="INFO", severity_number=9,
                                 trace_id=TRACE_ID, span_id=SPAN_ID)
        rec.body.string_value = "hello"
        rec.attributes.append(kv("k", 1))
        if table is not None:
            rec.attributes.append(kv("kusto.table", table))
    return req


def otlp_traces() -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID, name="GET /x",
        kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + 500)
    span.attributes.append(kv("http.method", "GET"))
    return req


def otlp_json(msg: Message) -> bytes:
    """OTLP/JSON as the spec writes it: camelCase keys, 64-bit integers as strings, trace and span
    ids in lower-case hex (protobuf's JSON mapping would write them in base64)."""
    doc = json_format.MessageToDict(msg)  # camelCase, int64 as strings, bytes as base64

    def hexify(node: object) -> object:
        if isinstance(node, dict):
            return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId")
                        else hexify(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [hexify(x) for x in node]
        return node

    return json.dumps(hexify(doc)).encode()


LOG_ROW = (f'{STAMP_NS},{STAMP_NS},{TRACE_ID.hex()},{SPAN_ID.hex()},INFO,9,"""hello""",'
           '"{""service.name"":""api""}","{""k"":1}"\n')
SPAN_ROW = (f"{TRACE_ID.hex()},{SPAN_ID.hex()},{PARENT_ID.hex()},GET /x,STATUS_CODE_UNSET,SPAN_KIND_SERVER,"
            f'{STAMP_NS},2026-11-24T04:00:00.123457289Z,"{{}}","{{""http.method"":""GET""}}","[]","[]"\n')


def gauge_rows(table_name: str) -> str:
    sid = series_id({"__name__": table_name, "host": "h1"})
    return (f'{STAMP_NS},{sid},"{{""host"":""h1""}}",0.5\n'
            f'2026-11-24T04:00:00.123456790Z,{sid},"{{""host"":""h1""}}",1.25\n')


def assert_only_segment_files(node: HttpNode) -> None:
    """Every file under the test's directory is a segment with a valid name, inside the WAL dir."""
    wal_dir = (node.root / "wal").resolve()
    for path in node.all_files():
        assert path.resolve().parent in (wal_dir, wal_dir / ACTIVE_DIR), path
        parse_filename(path.name)  # raises for anything that is not <Db>_<Table>[_<hash>]_<id>.wal


async def status_body(r: aiohttp.ClientResponse) -> status_pb2.Status:
    """The google.rpc.Status of an OTLP/HTTP error response, protobuf or JSON."""
    raw = await r.read()
    if r.content_type == JSON_CT:
        return json_format.Parse(raw, status_pb2.Status())
    assert r.content_type == PB, r.content_type
    return status_pb2.Status.FromString(raw)


# -- Prometheus remote write ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/write", "/receive"])
async def test_remote_write_rows_are_exact(http_node: HttpNode, path: str) -> None:
    body = simple_write(values=[1.5, 2.5], code="200", path="/x")
    async with http_node.post(path, body, RW_HEADERS) as r:
        assert r.status == 204, await r.text()
        assert await r.read() == b""
    labels = {"__name__": "http_requests_total", "job": "api", "instance": INSTANCE, "code": "200", "path": "/x"}
    sid = series_id(labels)
    assert sid < 0  # the id is written signed
    labels_json = json.dumps({k: labels[k] for k in sorted(labels) if k != "__name__"}, separators=(",", ":"))
    csv_labels = '"' + labels_json.replace('"', '""') + '"'
    assert http_node.text("Metrics", "HttpRequestsTotal") == (
        f"{STAMP_MS},{sid},{csv_labels},1.5\n"
        f"2026-11-24T04:00:01.123Z,{sid},{csv_labels},2.5\n"
    )
    [first, _] = http_node.records("Metrics", "HttpRequestsTotal")
    assert first[0] == STAMP_MS
    assert int(first[1]) == sid and -(1 << 63) <= sid < 0
    assert json.loads(first[2]) == {"code": "200", "instance": INSTANCE, "job": "api", "path": "/x"}
    assert float(first[3]) == 1.5
    assert {info.name.database for info in http_node.repo.closed_segments()} == {"Metrics"}
    assert_only_segment_files(http_node)


async def test_remote_write_several_series_and_tables(http_node: HttpNode) -> None:
    req = write_request([
        ({"__name__": "up", "job": "a"}, [(1.0, T_MS)]),
        ({"__name__": "up", "job": "b"}, [(0.0, T_MS)]),
        ({"__name__": "node:cpu_seconds:rate5m", "cpu": "0"}, [(0.25, T_MS), (0.5, T_MS + 1)]),
    ])
    async with http_node.post("/api/v1/write", snappy(req), RW_HEADERS) as r:
        assert r.status == 204
    up = http_node.records("Metrics", "Up")
    assert [(row[2], row[3]) for row in up] == [('{"job":"a"}', "1.0"), ('{"job":"b"}', "0.0")]
    assert int(up[0][1]) == series_id({"__name__": "up", "job": "a"})
    rate = http_node.records("Metrics", "NodeCpuSecondsRate5m")
    assert [row[0] for row in rate] == [STAMP_MS, "2026-11-24T04:00:00.124Z"]
    assert [row[3] for row in rate] == ["0.25", "0.5"]


async def test_adxmon_database_routes_and_is_removed_from_labels(http_node: HttpNode) -> None:
    async with http_node.post("/api/v1/write", simple_write(adxmon_database="prod_eu-1"), RW_HEADERS) as r:
        assert r.status == 204
    rows = http_node.records("prodeu1", "HttpRequestsTotal")  # not a name: its letters and digits, as adx-mon
    assert len(rows) == 2
    assert json.loads(rows[0][2]) == {"instance": INSTANCE, "job": "api"}
    # the label still counts for the series id (rows.md: every label including __name__)
    assert int(rows[0][1]) == series_id({"__name__": "http_requests_total", "job": "api", "instance": INSTANCE,
                                         "adxmon_database": "prod_eu-1"})
    assert http_node.segments("Metrics") == []


@pytest.mark.parametrize(("hostile", "database"), [
    ("../x", "x"),
    ("../../../../etc/passwd", "etcpasswd"),
    ("/abs/path\x00nul", "abspathnul"),
    ("..\\..\\win", "win"),
    ("observability_metrics", "observability_metrics"),  # a name is taken as it is
])
async def test_hostile_adxmon_database_is_normalised_never_a_path(http_node: HttpNode, hostile: str,
                                                                  database: str) -> None:
    async with http_node.post("/api/v1/write", simple_write(adxmon_database=hostile), RW_HEADERS) as r:
        assert r.status == 204
    assert len(http_node.records(database, "HttpRequestsTotal")) == 2
    assert {(i.name.database, i.name.table) for i in http_node.repo.closed_segments()} == {
        (database, "HttpRequestsTotal")}
    assert_only_segment_files(http_node)


async def test_adxmon_database_too_long_for_a_file_name_is_refused(http_node: HttpNode) -> None:
    """A database name longer than 64 characters cannot fit a segment file name (NAME_MAX 255):
    refused as input (400), never a 500 from the file system."""
    async with http_node.post("/api/v1/write", simple_write(adxmon_database="a" * 5000), RW_HEADERS) as r:
        assert r.status == 400
        text = await r.text()
    assert "longer than 64" in text
    assert http_node.all_files() == []


async def test_adxmon_database_without_name_characters_is_refused(http_node: HttpNode) -> None:
    async with http_node.post("/api/v1/write", simple_write(adxmon_database="../"), RW_HEADERS) as r:
        assert r.status == 400
        text = await r.text()
    assert "every series was refused" in text and "adxmon_database" in text
    assert http_node.segments() == []
    assert http_node.all_files() == []


async def test_some_series_refused_is_still_204(http_node: HttpNode) -> None:
    req = write_request([({"job": "no-name"}, [(1.0, T_MS)]), ({"__name__": "ok_metric"}, [(2.0, T_MS)])])
    async with http_node.post("/api/v1/write", snappy(req), RW_HEADERS) as r:
        assert r.status == 204
    assert [row[3] for row in http_node.records("Metrics", "OkMetric")] == ["2.0"]


async def test_non_finite_values(http_node: HttpNode) -> None:
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus' stale marker
    assert math.isnan(stale)
    values = [math.nan, math.inf, -math.inf, stale, -0.0, 1e300, 0.1]
    async with http_node.post("/api/v1/write", simple_write("nf", values=values), RW_HEADERS) as r:
        assert r.status == 204
    got = [row[3] for row in http_node.records("Metrics", "Nf")]
    # csvtext.real: the spellings both ADX's real parser and ClickHouse's float parser take
    assert got == ["NaN", "Infinity", "-Infinity", "NaN", "-0.0", "1e+300", "0.1"]


@pytest.mark.parametrize(("body", "headers", "status", "text"), [
    pytest.param(b"not snappy at all", RW_HEADERS, 400, "not a snappy block", id="not-snappy"),
    pytest.param(b"\x80", RW_HEADERS, 400, "snappy: bad length header", id="truncated-varint"),
    pytest.param(b"", RW_HEADERS, 400, "empty body", id="empty"),
    pytest.param(snappy(b"\xff\xff\xff\xff garbage"), RW_HEADERS, 400, "malformed prometheus.WriteRequest",
                 id="snappy-of-garbage"),
    pytest.param(simple_write(), {**RW_HEADERS, "Content-Type": RW2},
                 415, "remote write 2.0 is not supported", id="rw2"),
    pytest.param(simple_write(), {**RW_HEADERS, "Content-Type": "application/x-protobuf;proto=foo.Bar"},
                 415, "unknown remote write message", id="unknown-proto"),
    pytest.param(simple_write(), {**RW_HEADERS, "Content-Type": "text/plain"}, 415, "application/x-protobuf",
                 id="content-type"),
    pytest.param(simple_write(), {**RW_HEADERS, "Content-Encoding": "gzip"}, 415, "Content-Encoding snappy",
                 id="gzip-encoding"),
    pytest.param(simple_write(), {**RW_HEADERS, "Content-Encoding": "zstd"}, 415, "Content-Encoding snappy",
                 id="zstd-encoding"),
    pytest.param(b"\x80\x80\x80\x80\x04" + b"\x00" * 16, RW_HEADERS, 413, "declares 1073741824 bytes",
                 id="snappy-bomb-1GiB"),
    pytest.param(b"\x00" * (MAX + 1), RW_HEADERS, 413, "limit", id="over-max"),
])
async def test_bad_remote_write(http_node: HttpNode, body: bytes, headers: dict[str, str], status: int,
                                text: str) -> None:
    async with http_node.post("/api/v1/write", body, headers) as r:
        assert r.status == status
        got = await r.text()
        assert text in got
        assert got.startswith("remote write: ")
        assert "Retry-After" not in r.headers
    assert http_node.segments() == []
    assert http_node.all_files() == []
    # the node keeps serving
    async with http_node.post("/api/v1/write", simple_write("after"), RW_HEADERS) as r:
        assert r.status == 204
    assert len(http_node.records("Metrics", "After")) == 2


async def test_snappy_bomb_is_refused_before_inflating(http_node: HttpNode) -> None:
    """A real snappy block of 2 MiB of zeros: about 100 KB on the wire, under the limit, but
    its header declares more than the limit."""
    body = bytes(cramjam.snappy.compress_raw(b"\x00" * (2 * MAX)))
    assert len(body) < MAX
    async with http_node.post("/api/v1/write", body, RW_HEADERS) as r:
        assert r.status == 413
        assert "over the 1048576-byte limit" in await r.text()


async def test_chunked_body_over_max_is_413(http_node: HttpNode) -> None:
    """No Content-Length: the limit is enforced while reading."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"\x00" * (MAX // 8)

    async with http_node.session.post(http_node.url + "/api/v1/write", data=chunks(), headers=RW_HEADERS) as r:
        assert r.status == 413
        assert "limit" in await r.text()
    assert http_node.segments() == []


@pytest.mark.wal(max_disk_usage=4096)
async def test_over_limits_is_429_and_every_acknowledged_request_is_in_the_wal_once(http_node: HttpNode) -> None:
    acked: list[int] = []
    refused: int | None = None
    for i in range(500):
        values = [float(i)] * 20
        async with http_node.post("/api/v1/write", simple_write(values=values, t0=T_MS + i * 100_000),
                                  RW_HEADERS) as r:
            if r.status == 429:
                retry_after = r.headers["Retry-After"]
                assert retry_after.isdigit() and int(retry_after) > 0
                assert "over max-disk-usage" in await r.text()
                refused = i
                break
            assert r.status == 204, await r.text()
            acked.append(i)
    assert refused is not None, "never over limits"
    assert acked, "refused before any write"
    async with http_node.get("/readyz") as r:
        assert r.status == 503
        assert "over limits" in await r.text()
    async with http_node.get("/healthz") as r:
        assert r.status == 200
    # OTLP over limits is 429 too, with a google.rpc.Status body
    async with http_node.post("/v1/logs", otlp_logs(None).SerializeToString(), PB_HEADERS) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) > 0
        assert (await status_body(r)).code == code_pb2.RESOURCE_EXHAUSTED
    assert http_node.segments("Logs") == []
    # read last: reading closes the active segments, and compacting them may take the node back under
    counts = Counter(float(row[3]) for row in http_node.records("Metrics", "HttpRequestsTotal"))
    assert counts == Counter({float(i): 20 for i in acked})  # each acknowledged request once, the refused one not


@pytest.mark.wal(max_disk_usage=4096)
async def test_request_refused_over_limits_leaves_nothing_in_the_wal(http_node: HttpNode) -> None:
    big = [(float(i) * 1.000001 + 0.123456789, T_MS + i) for i in range(400)]  # incompressible: over 4096 bytes
    req = write_request([({"__name__": "a_small"}, [(1.0, T_MS)]), ({"__name__": "z_big"}, big)])
    async with http_node.post("/api/v1/write", snappy(req), RW_HEADERS) as r:
        assert r.status == 429
    assert http_node.records("Metrics", "ASmall") == []  # it is refused: the sender will send it again



@pytest.mark.parametrize("signal", ["remote-write", "otlp-logs"])
async def test_long_valid_names_are_stored_or_refused_never_500(http_node: HttpNode, signal: str) -> None:
    """A 300-character name is too long for a segment file name (database 64, table 150); it must be
    stored or refused as input (400 / partial success), never fail as an internal error."""
    name = "a" * 300
    if signal == "remote-write":
        async with http_node.post("/api/v1/write", simple_write(name), RW_HEADERS) as r:
            assert r.status in (204, 400), await r.text()
    else:
        async with http_node.post("/v1/logs", otlp_logs(name).SerializeToString(), PB_HEADERS) as r:
            assert r.status == 200, await r.text()
    assert_only_segment_files(http_node)


async def test_draining_is_503_with_retry_after_but_live(http_node: HttpNode) -> None:
    async with http_node.get("/readyz") as r:
        assert r.status == 200 and await r.text() == "ready\n"
    http_node.state.set_phase(Phase.DRAINING)
    async with http_node.post("/api/v1/write", simple_write(), RW_HEADERS) as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) > 0
        assert "draining" in await r.text()
    async with http_node.post("/v1/traces", otlp_json(otlp_traces()), JSON_HEADERS) as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) > 0
        st = await status_body(r)
        assert st.code == code_pb2.UNAVAILABLE and "draining" in st.message
    async with http_node.get("/readyz") as r:
        assert r.status == 503
        assert "draining" in await r.text()
    async with http_node.get("/healthz") as r:
        assert r.status == 200 and await r.text() == "ok\n"
    assert http_node.segments() == []


# -- OTLP/HTTP -----------------------------------------------------------------------------


async def test_otlp_protobuf_metrics_logs_traces(http_node: HttpNode) -> None:
    async with http_node.post("/v1/metrics", otlp_gauge().SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200 and r.content_type == PB
        resp = metrics_service_pb2.ExportMetricsServiceResponse.FromString(await r.read())
        assert not resp.HasField("partial_success")
    async with http_node.post("/v1/logs", otlp_logs(None).SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200 and r.content_type == PB
        logs_resp = logs_service_pb2.ExportLogsServiceResponse.FromString(await r.read())
        assert not logs_resp.HasField("partial_success")
    async with http_node.post("/v1/traces", otlp_traces().SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200 and r.content_type == PB
        trace_resp = trace_service_pb2.ExportTraceServiceResponse.FromString(await r.read())
        assert not trace_resp.HasField("partial_success")
    assert http_node.text("Metrics", "OtlpHttpGauge") == gauge_rows("otlp_http_gauge")
    assert http_node.text("Logs", "App") == LOG_ROW
    assert http_node.text("Traces", "Traces") == SPAN_ROW


async def test_otlp_json_metrics_logs_traces(http_node: HttpNode) -> None:
    metrics_body = otlp_json(otlp_gauge("json.gauge"))
    assert b'"timeUnixNano": "1795492800123456789"' in metrics_body
    traces_body = otlp_json(otlp_traces())
    assert TRACE_ID.hex().encode() in traces_body and b'"parentSpanId": "0102030405060708"' in traces_body
    for path, body in [("/v1/metrics", metrics_body), ("/v1/logs", otlp_json(otlp_logs(None))),
                       ("/v1/traces", traces_body)]:
        async with http_node.post(path, body, {"Content-Type": "application/json; charset=utf-8"}) as r:
            assert r.status == 200, await r.text()
            assert r.content_type == JSON_CT
            assert json.loads(await r.read()) == {}
    assert http_node.text("Metrics", "JsonGauge") == gauge_rows("json_gauge")
    assert http_node.text("Logs", "App") == LOG_ROW
    [span] = http_node.records("Traces", "Traces")
    assert span[:3] == [TRACE_ID.hex(), SPAN_ID.hex(), PARENT_ID.hex()]
    assert http_node.text("Traces", "Traces") == SPAN_ROW


async def test_otlp_gzip(http_node: HttpNode) -> None:
    headers = {**PB_HEADERS, "Content-Encoding": "gzip"}
    async with http_node.post("/v1/logs", gzip.compress(otlp_logs(None).SerializeToString()), headers) as r:
        assert r.status == 200
    async with http_node.post("/v1/traces", gzip.compress(otlp_json(otlp_traces())),
                              {**JSON_HEADERS, "Content-Encoding": "GZIP"}) as r:
        assert r.status == 200
        assert json.loads(await r.read()) == {}
    assert http_node.text("Logs", "App") == LOG_ROW
    assert http_node.text("Traces", "Traces") == SPAN_ROW


async def test_otlp_gzip_with_several_members_keeps_them_all(http_node: HttpNode) -> None:
    """RFC 1952: a gzip file is a series of members (what `pigz` and Go's gzip reader produce and
    read). Protobuf messages concatenate, so two members are one request with both records."""
    first, second = (gzip.compress(otlp_logs(t).SerializeToString()) for t in ("First", "Second"))
    body = first + second
    async with http_node.post("/v1/logs", body, {**PB_HEADERS, "Content-Encoding": "gzip"}) as r:
        assert r.status == 200
    assert len(http_node.records("Logs", "First")) == 1
    assert len(http_node.records("Logs", "Second")) == 1


@pytest.mark.parametrize(("path", "body", "headers", "status", "grpc_code", "text"), [
    pytest.param("/v1/logs", gzip.compress(b"\x00" * (50 * MAX)), {**PB_HEADERS, "Content-Encoding": "gzip"},
                 413, code_pb2.RESOURCE_EXHAUSTED, "gzip body inflates past the 1048576-byte limit", id="gzip-bomb"),
    pytest.param("/v1/logs", gzip.compress(b"\x00" * (MAX // 2 + 1)) * 2, {**PB_HEADERS, "Content-Encoding": "gzip"},
                 413, code_pb2.RESOURCE_EXHAUSTED, "gzip body inflates past", id="gzip-bomb-in-two-members"),
    pytest.param("/v1/metrics", b"\x00" * (MAX + 1), PB_HEADERS, 413, code_pb2.RESOURCE_EXHAUSTED, "limit",
                 id="over-max"),
    pytest.param("/v1/logs", b"not gzip", {**PB_HEADERS, "Content-Encoding": "gzip"}, 400,
                 code_pb2.INVALID_ARGUMENT, "not valid gzip", id="not-gzip"),
    pytest.param("/v1/logs", gzip.compress(otlp_logs(None).SerializeToString())[:-12],
                 {**PB_HEADERS, "Content-Encoding": "gzip"}, 400, code_pb2.INVALID_ARGUMENT, "truncated",
                 id="truncated-gzip"),
    pytest.param("/v1/logs", gzip.compress(otlp_logs(None).SerializeToString()) + b"trailing junk",
                 {**PB_HEADERS, "Content-Encoding": "gzip"}, 400, code_pb2.INVALID_ARGUMENT, "gzip",
                 id="gzip-trailing-junk"),
    pytest.param("/v1/traces", otlp_traces().SerializeToString(), {**PB_HEADERS, "Content-Encoding": "br"}, 415,
                 code_pb2.INVALID_ARGUMENT, "unsupported Content-Encoding 'br'", id="encoding"),
    pytest.param("/v1/traces", b"{}", {"Content-Type": "text/yaml"}, 415, code_pb2.INVALID_ARGUMENT,
                 "unsupported Content-Type 'text/yaml'", id="content-type"),
    pytest.param("/v1/metrics", b"\x0a\xff\xff\xff\xff\x0f garbage", PB_HEADERS, 400, code_pb2.INVALID_ARGUMENT,
                 "malformed opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest", id="bad-protobuf"),
    pytest.param("/v1/logs", b"\x0a\x05\x0a", PB_HEADERS, 400, code_pb2.INVALID_ARGUMENT,
                 "malformed opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest", id="truncated-protobuf"),
    pytest.param("/v1/traces", b"{not json", JSON_HEADERS, 400, code_pb2.INVALID_ARGUMENT, "body is not JSON",
                 id="bad-json"),
    pytest.param("/v1/traces", b"[]", JSON_HEADERS, 400, code_pb2.INVALID_ARGUMENT, "must be an object",
                 id="json-array"),
    pytest.param("/v1/traces", b'{"resourceSpans": 5}', JSON_HEADERS, 400, code_pb2.INVALID_ARGUMENT,
                 "malformed opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest JSON", id="json-shape"),
    pytest.param("/v1/traces", b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}', JSON_HEADERS,
                 400, code_pb2.INVALID_ARGUMENT, "traceId 'zz' is not hex", id="json-bad-hex"),
    pytest.param("/v1/logs", b"[" * 200_000 + b"]" * 200_000, JSON_HEADERS, 400, code_pb2.INVALID_ARGUMENT,
                 "body is not JSON", id="json-deep-nesting"),
    pytest.param("/v1/logs", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON_HEADERS, 400,
                 code_pb2.INVALID_ARGUMENT, "body is not JSON", id="json-deep-objects"),
])
async def test_bad_otlp(http_node: HttpNode, path: str, body: bytes, headers: dict[str, str], status: int,
                        grpc_code: int, text: str) -> None:
    async with http_node.post(path, body, headers) as r:
        assert r.status == status, await r.text()
        # the error body is a google.rpc.Status, in JSON when the request was JSON
        want = JSON_CT if headers.get("Content-Type", "").startswith(JSON_CT) else PB
        assert r.content_type == want
        st = await status_body(r)
    assert st.code == grpc_code
    assert text in st.message, st.message
    assert http_node.segments() == []
    assert http_node.all_files() == []


async def test_otlp_without_content_type_is_415(http_node: HttpNode) -> None:
    async with http_node.session.post(http_node.url + "/v1/logs", data=otlp_logs(None).SerializeToString(),
                                      skip_auto_headers=["Content-Type"]) as r:
        assert r.status == 415
        assert "'(none)'" in (await status_body(r)).message


async def test_partial_success_for_hostile_log_tables(http_node: HttpNode) -> None:
    # "-" stands for "_" in file names: it is never part of a name
    hostile = ["../x", "a/b", "", "x" * 10240, "nul\x00", "..", "Logs-App_x", "a__b"]
    req = otlp_logs("Good", *hostile)
    async with http_node.post("/v1/logs", req.SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200
        resp = logs_service_pb2.ExportLogsServiceResponse.FromString(await r.read())
    assert resp.partial_success.rejected_log_records == len(hostile)
    message = resp.partial_success.error_message
    assert "kusto.table" in message
    assert "'../x'" in message and "'a/b'" in message
    assert len(message) < 4096  # the 10 KB name is cut in the message
    assert http_node.text("Logs", "Good") == LOG_ROW
    assert {(i.name.database, i.name.table) for i in http_node.repo.closed_segments()} == {("Logs", "Good")}
    assert_only_segment_files(http_node)
    names = [p.name for p in http_node.all_files()]
    assert names and all(n.startswith("Logs_Good_") for n in names)
    # the same through JSON: partialSuccess with rejectedLogRecords as a string (int64)
    async with http_node.post("/v1/logs", otlp_json(req), JSON_HEADERS) as r:
        assert r.status == 200
        doc = json.loads(await r.read())
    assert doc["partialSuccess"]["rejectedLogRecords"] == str(len(hostile))
    assert "kusto.table" in doc["partialSuccess"]["errorMessage"]
    assert len(http_node.records("Logs", "Good")) == 2


async def test_every_record_refused_is_partial_success_not_an_error(http_node: HttpNode) -> None:
    async with http_node.post("/v1/logs", otlp_logs("../a", "../b").SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200
        resp = logs_service_pb2.ExportLogsServiceResponse.FromString(await r.read())
    assert resp.partial_success.rejected_log_records == 2
    assert http_node.all_files() == []


# -- /metrics ------------------------------------------------------------------------------


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_metrics_endpoint_counts_requests(http_node: HttpNode) -> None:
    for _ in range(3):
        async with http_node.post("/api/v1/write", simple_write(), RW_HEADERS) as r:
            assert r.status == 204
    async with http_node.post("/receive", b"junk", RW_HEADERS) as r:
        assert r.status == 400
    async with http_node.post("/api/v1/write", simple_write(), {**RW_HEADERS, "Content-Encoding": "zstd"}) as r:
        assert r.status == 415
    async with http_node.post("/v1/logs", otlp_logs(None).SerializeToString(), PB_HEADERS) as r:
        assert r.status == 200
    async with http_node.post("/v1/traces", b"\xff", PB_HEADERS) as r:
        assert r.status == 400
    async with http_node.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    requests = samples(text, "ingestor_requests_total")
    assert requests == {
        (("code", "204"), ("signal", "metrics"), ("transport", "http")): 3.0,
        (("code", "400"), ("signal", "metrics"), ("transport", "http")): 1.0,
        (("code", "415"), ("signal", "metrics"), ("transport", "http")): 1.0,
        (("code", "200"), ("signal", "logs"), ("transport", "http")): 1.0,
        (("code", "400"), ("signal", "traces"), ("transport", "http")): 1.0,
    }
    rows = samples(text, "ingestor_rows_total")
    assert rows[(("database", "Metrics"), ("signal", "metrics"))] == 6.0
    assert rows[(("database", "Logs"), ("signal", "logs"))] == 1.0
    assert samples(text, "ingestor_table_rows_total")[(("database", "Metrics"), ("table", "HttpRequestsTotal"))] == 6.0
    body_bytes = samples(text, "ingestor_request_bytes_total")
    assert body_bytes[(("signal", "metrics"), ("transport", "http"))] == 4 * len(simple_write()) + len(b"junk")
