"""The HTTP port over a real socket: remote write and OTLP/HTTP, every bad input and its status,
backpressure and readiness; plus a fuzz test of the body decoders."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import cramjam
import pytest
import pytest_asyncio
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CollectorRegistry

from node.errors import InvalidInputError
from node.gen.prometheus import remote_pb2
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.decode import decode_otlp, decode_remote_write
from node.receivers.http import HttpServer, build_app
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.wal.repository import Repository
from node.wal.segment import iter_rows
from tests.node.test_grpc import gauge_request, log_request

MAX = 1 << 20
PB = {"Content-Type": "application/x-protobuf"}
RW = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


@dataclass
class HttpNode:
    url: str
    wal: Repository
    state: NodeState
    session: aiohttp.ClientSession

    def rows(self, table: str) -> list[bytes]:
        self.wal.rotate_all()
        out: list[bytes] = []
        for info in self.wal.closed_segments():
            if info.name.table == table:
                out.extend(b"".join(iter_rows(info.path)).splitlines())
        return out


@pytest_asyncio.fixture
async def node(wal: Repository) -> AsyncIterator[HttpNode]:
    state = NodeState(over_limits=wal.over_limits)
    state.set_phase(Phase.SERVING)
    conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig(default_database="Logs",
                                                                                  default_table="App")),
                      TracesConverter(TracesConfig()))
    metrics = NodeMetrics(CollectorRegistry())
    server = HttpServer(build_app(Ingest(wal, conv, state, metrics), state, metrics, MAX), "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield HttpNode(f"http://127.0.0.1:{server.port}", wal, state, session)
    await server.stop(0)


def write_request(name: str = "http_requests_total", n: int = 3, value: float = 1.5,
                  extra: dict[str, str] | None = None) -> bytes:
    req = remote_pb2.WriteRequest()
    ts = req.timeseries.add()
    for k, v in sorted({"__name__": name, "job": "api", **(extra or {})}.items()):
        ts.labels.add(name=k, value=v)
    for i in range(n):
        ts.samples.add(value=value, timestamp=1_795_000_000_000 + i)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


async def test_remote_write_lands_in_the_wal(node: HttpNode) -> None:
    for path in ("/api/v1/write", "/receive"):
        async with node.session.post(node.url + path, data=write_request(), headers=RW) as r:
            assert r.status == 204
    rows = node.rows("HttpRequestsTotal")
    assert len(rows) == 6
    ts, series, labels, value = rows[0].split(b",", 3)
    assert ts == b"2026-11-18T11:06:40.000Z" and int(series) != 0
    assert labels == b'"{""job"":""api""}"' and value == b"1.5"


async def test_hostile_adxmon_database_is_normalised_never_a_path(node: HttpNode) -> None:
    body = write_request(extra={"adxmon_database": "../../etc"})
    async with node.session.post(node.url + "/api/v1/write", data=body, headers=RW) as r:
        assert r.status == 204
    names = [p.name for p in node.wal.directory.parent.rglob("*") if p.is_file()]
    assert names and all(n.startswith("etc_HttpRequestsTotal_") for n in names)  # its letters, as adx-mon


@pytest.mark.parametrize(("body", "headers", "status", "text"), [
    (b"not snappy at all", RW, 400, "snappy"),
    (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff garbage")), RW, 400, "malformed prometheus.WriteRequest"),
    (write_request(), {**RW, "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"}, 415,
     "2.0"),
    (write_request(), {**RW, "Content-Encoding": "zstd"}, 415, "snappy"),
    (write_request(), {**RW, "Content-Type": "text/plain"}, 415, "x-protobuf"),
    (b"\x80\x80\x80\x80\x04" + b"\x00" * 10, RW, 413, "limit"),  # declares 1 GiB: a snappy bomb
    (b"\x00" * (MAX + 1), RW, 413, "limit"),
], ids=["not-snappy", "not-protobuf", "rw2", "encoding", "content-type", "snappy-bomb", "too-large"])
async def test_bad_remote_write(node: HttpNode, body: bytes, headers: dict[str, str], status: int, text: str) -> None:
    async with node.session.post(node.url + "/api/v1/write", data=io.BytesIO(body), headers=headers) as r:
        assert r.status == status
        assert text in await r.text()
    assert node.rows("HttpRequestsTotal") == []


@pytest.mark.wal(max_disk_usage=4096)
async def test_over_limits_is_429_with_retry_after_and_nothing_lost(node: HttpNode) -> None:
    acked = 0
    for i in range(200):
        async with node.session.post(node.url + "/api/v1/write", data=write_request(n=20, value=i), headers=RW) as r:
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                break
            assert r.status == 204
            acked += 1
    else:
        pytest.fail("never over limits")
    async with node.session.get(node.url + "/readyz") as r:
        assert r.status == 503 and "over limits" in await r.text()
    assert len(node.rows("HttpRequestsTotal")) == acked * 20


async def test_draining_is_503_but_live(node: HttpNode) -> None:
    node.state.set_phase(Phase.DRAINING)
    async with node.session.post(node.url + "/api/v1/write", data=write_request(), headers=RW) as r:
        assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
    async with node.session.get(node.url + "/readyz") as r:
        assert r.status == 503 and "draining" in await r.text()
    async with node.session.get(node.url + "/healthz") as r:
        assert r.status == 200


async def test_otlp_http_protobuf_json_and_gzip(node: HttpNode) -> None:
    body = gauge_request("otlp_http").SerializeToString()
    async with node.session.post(node.url + "/v1/metrics", data=body, headers=PB) as r:
        assert r.status == 200
        resp = metrics_service_pb2.ExportMetricsServiceResponse.FromString(await r.read())
        assert not resp.HasField("partial_success")
    async with node.session.post(node.url + "/v1/metrics", data=gzip.compress(body),
                                 headers={**PB, "Content-Encoding": "gzip"}) as r:
        assert r.status == 200
    trace = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "GET /x",
        "kind": 2, "startTimeUnixNano": "1795000000000000000", "endTimeUnixNano": "1795000000500000000"}]}]}]}
    async with node.session.post(node.url + "/v1/traces", data=json.dumps(trace),
                                 headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
    assert len(node.rows("OtlpHttp")) == 6
    [span] = node.rows("Traces")
    assert span.startswith(b"5b8efff798038103d269b633813fc60c,eee19b7ec3c1b174,,GET /x,")


async def test_otlp_http_partial_success_and_errors(node: HttpNode) -> None:
    body = log_request("Good", "../x", "a/b", "", "x" * 10240, "nul\x00").SerializeToString()
    async with node.session.post(node.url + "/v1/logs", data=body, headers=PB) as r:
        assert r.status == 200
        resp = logs_service_pb2.ExportLogsServiceResponse.FromString(await r.read())
    assert resp.partial_success.rejected_log_records == 5
    assert "kusto.table" in resp.partial_success.error_message
    assert len(node.rows("Good")) == 1
    cases = [
        (b"\xff\xff\xff\xff", PB, 400, "malformed"),
        (b"{}", {"Content-Type": "text/yaml"}, 415, "Content-Type"),
        (gzip.compress(b"\x00" * (MAX * 50)), {**PB, "Content-Encoding": "gzip"}, 413, "limit"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "JSON"),
    ]
    for data, headers, status, text in cases:
        async with node.session.post(node.url + "/v1/traces", data=io.BytesIO(data), headers=headers) as r:
            assert r.status == status, (headers, await r.text())
            raw = await r.read()
            if r.content_type == "application/x-protobuf":
                assert text in status_pb2.Status.FromString(raw).message
            else:
                assert text in raw.decode()


async def test_metrics_endpoint_counts_requests(node: HttpNode) -> None:
    async with node.session.post(node.url + "/api/v1/write", data=write_request(), headers=RW) as r:
        assert r.status == 204
    async with node.session.post(node.url + "/api/v1/write", data=b"junk", headers=RW) as r:
        assert r.status == 400
    async with node.session.get(node.url + "/metrics") as r:
        text = await r.text()
    assert 'ingestor_requests_total{code="204",signal="metrics",transport="http"} 1.0' in text
    assert 'ingestor_requests_total{code="400",signal="metrics",transport="http"} 1.0' in text


VALID = [write_request(), gauge_request().SerializeToString(), log_request("T").SerializeToString()]


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=2048), st.sampled_from(VALID).flatmap(
    lambda b: st.tuples(st.integers(0, len(b) - 1), st.binary(min_size=1, max_size=4), st.integers(0, 3)).map(
        lambda t: b[: t[0]] + t[1] + b[t[0] + t[2]:]))))
def test_fuzz_decoders_only_raise_clean_errors(data: bytes) -> None:
    conv = MetricsConverter(MetricsConfig())
    with contextlib.suppress(InvalidInputError):  # anything else fails the test
        conv.convert_remote_write(decode_remote_write(data, "snappy", None, MAX))
    for cls, ct, enc, body in [
        (metrics_service_pb2.ExportMetricsServiceRequest, "application/x-protobuf", None, data),
        (trace_service_pb2.ExportTraceServiceRequest, "application/json", None, data),
        (logs_service_pb2.ExportLogsServiceRequest, "application/x-protobuf", "gzip", gzip.compress(data)),
    ]:
        try:
            msg = decode_otlp(body, ct, enc, cls, MAX)
        except InvalidInputError:
            continue
        if cls is metrics_service_pb2.ExportMetricsServiceRequest:
            with contextlib.suppress(InvalidInputError):  # a point's attributes that do not parse: DecodeError
                conv.convert_otlp(msg)
        elif cls is trace_service_pb2.ExportTraceServiceRequest:
            TracesConverter(TracesConfig()).convert(msg)
        else:
            with contextlib.suppress(InvalidInputError):  # an attribute that does not parse: DecodeError
                LogsConverter(LogsConfig(default_database="L", default_table="T")).convert(msg)
