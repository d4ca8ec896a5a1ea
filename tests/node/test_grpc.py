"""The gRPC receivers over a real socket: OTLP export, partial success, errors, health, admin."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from node.state import Phase
from node.wal.segment import iter_rows
from tests.node.conftest import GrpcNode

T0 = 1_795_000_000_000_000_000  # ns


def gauge_request(name: str = "cpu_usage", points: int = 3, attrs: int = 2,
                  start: int = 0) -> metrics_service_pb2.ExportMetricsServiceRequest:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = name
    for i in range(points):
        dp = m.gauge.data_points.add()
        dp.time_unix_nano = T0 + (start + i) * 1_000_000_000
        dp.as_double = i + 0.5
        for a in range(attrs):
            dp.attributes.add(key=f"k{a}", value=common_pb2.AnyValue(string_value=f"v{a}"))
    return req


def log_request(*tables: str) -> logs_service_pb2.ExportLogsServiceRequest:
    req = logs_service_pb2.ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for t in tables:
        r: logs_pb2.LogRecord = sl.log_records.add()
        r.time_unix_nano = T0
        r.body.string_value = f"hello {t}"
        r.attributes.add(key="kusto.table", value=common_pb2.AnyValue(string_value=t))
    return req


def rows(node: GrpcNode, table: str) -> list[bytes]:
    out = []
    node.wal.rotate_all()
    for info in node.wal.closed_segments():
        if info.name.table == table:
            out.extend(b"".join(iter_rows(info.path)).splitlines())
    return sorted(out)


async def test_export_metrics_lands_in_the_wal(grpc_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        resp = await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request())
    assert not resp.HasField("partial_success")
    got = rows(grpc_node, "CpuUsage")
    assert len(got) == 3
    assert got[0].startswith(b"2026-11-18T11:06:40.000000000Z,")
    assert b'"{""k0"":""v0"",""k1"":""v1""}"' in got[0]
    assert got[0].endswith(b",0.5")


async def test_gzip_request_is_accepted(grpc_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(grpc_node.addr, compression=grpc.Compression.Gzip) as ch:
        await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("gz_metric"))
    assert len(rows(grpc_node, "GzMetric")) == 3


async def test_malformed_protobuf_is_invalid_argument(grpc_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        call = ch.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest" in (e.value.details() or "")
    # the node keeps serving
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("after"))
    assert len(rows(grpc_node, "After")) == 3


async def test_oversized_request_is_resource_exhausted(grpc_node: GrpcNode) -> None:
    big = gauge_request(points=20000, attrs=8)
    assert big.ByteSize() > 1 << 20
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(big)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rows(grpc_node, "CpuUsage") == []


async def test_hostile_table_is_partial_success(grpc_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        resp = await logs_service_pb2_grpc.LogsServiceStub(ch).Export(log_request("Good", "../etc", "a/b"))
    assert resp.partial_success.rejected_log_records == 2
    assert "kusto.table" in resp.partial_success.error_message
    assert "'../etc'" in resp.partial_success.error_message
    assert len(rows(grpc_node, "Good")) == 1
    segments = [p.name for p in grpc_node.wal.directory.rglob("*.wal")]
    assert segments and all(n.startswith("Logs_Good_") for n in segments)


@pytest.mark.wal(max_disk_usage=4096)
async def test_over_limits_is_resource_exhausted_with_retry_info(grpc_node: GrpcNode) -> None:
    acked = 0
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            for i in range(100):
                await stub.Export(gauge_request(points=10, attrs=8, start=i * 10))
                acked += 1
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(e.value.trailing_metadata() or ())
        info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
        assert info.retry_delay.seconds >= 1
    assert acked >= 1
    await grpc_node.server.health.update()
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # read last: reading closes the active segments, and compacting them may take the node back under
    got = rows(grpc_node, "CpuUsage")
    assert len(got) == len(set(got)) == acked * 10  # every acknowledged point is there, once


async def test_draining_is_unavailable_and_not_serving(grpc_node: GrpcNode) -> None:
    grpc_node.state.set_phase(Phase.DRAINING)
    await grpc_node.server.health.update()
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request())
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        hs = health_pb2_grpc.HealthStub(ch)
        for service in ("", "opentelemetry.proto.collector.metrics.v1.MetricsService"):
            r = await hs.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_serving_per_service(grpc_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(grpc_node.addr) as ch:
        hs = health_pb2_grpc.HealthStub(ch)
        for service in ("", "opentelemetry.proto.collector.logs.v1.LogsService", "ingestor.v1.Admin"):
            r = await hs.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await hs.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_protos_are_the_real_ones() -> None:
    assert metrics_pb2.Gauge.DESCRIPTOR.full_name == "opentelemetry.proto.metrics.v1.Gauge"
