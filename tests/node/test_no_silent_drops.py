"""Nothing is dropped without a trace (issue 16, "The first hour", item 2).

* OpenTelemetry log records that name no `kusto.database` / `kusto.table` are stored, by default
  in `Logs`.`Logs` (the OpenTelemetry SDK's exporters, gRPC and HTTP, into a real node);
  `--default-logs-database=` / `--default-logs-table=` (empty) still refuses them.
* Rows refused anyway (no default, a database without a sink, a hostile name, a timestamp out of
  range) are answered through OTLP partial success with the reason (`rejected_log_records`,
  `rejected_data_points`, `rejected_spans`, `error_message`) on gRPC and HTTP, and logged: one
  WARNING naming the reason, the database or value, and the count, rate-limited.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from node import config
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.wal.repository import Repository, WalConfig
from tests.harness import NodeProcess, free_port
from tests.rows.build import T_NS, kvs, log_record, logs_request, metrics_request, remote_write

KEEP_ROWS = ("--min-batch-size", "1TB", "--max-segment-age", "1h", "--shutdown-grace", "0s")
"""Nothing is uploaded: the rows stay in the segment files, which these tests read."""


def parse(rows: list[bytes]) -> list[list[str]]:
    return [next(csv.reader(io.StringIO(r.decode()))) for r in rows]


def warnings(node: NodeProcess, pattern: str) -> list[str]:
    """The node's WARNING lines matching `pattern` (a regular expression)."""
    return [line for line in node.log().splitlines() if " WARNING " in line and re.search(pattern, line)]


# -- the default: unrouted logs are stored -------------------------------------------------------

def _emit_unrouted(exporter: object, body: str) -> None:
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))  # type: ignore[arg-type]
    now = time.time_ns()
    provider.get_logger("tests.no_silent_drops").emit(LogRecord(
        timestamp=now, observed_timestamp=now, severity_text="ERROR", severity_number=SeverityNumber.ERROR,
        body=body, attributes={"order": 42}))
    provider.shutdown()


def test_unrouted_otel_logs_land_in_logs_logs_by_default(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    node = NodeProcess(tmp_path / "data", *KEEP_ROWS).start()  # no --default-logs-* flag: the defaults
    try:
        _emit_unrouted(GrpcLogExporter(endpoint=node.grpc_addr, insecure=True), "over gRPC")
        _emit_unrouted(HttpLogExporter(endpoint=node.http_url + "/v1/logs"), "over HTTP")
    finally:
        assert node.stop() == 0
    assert node.tables() == {("Logs", "Logs")}
    rows = parse(node.rows("Logs", "Logs"))
    assert sorted(json.loads(r[6]) for r in rows) == ["over HTTP", "over gRPC"]
    for r in rows:
        assert r[4] == "ERROR" and json.loads(r[7])["service.name"] == "checkout" and json.loads(r[8]) == {"order": 42}
    assert not warnings(node, "refused")


def test_the_flags_default_to_logs_logs_and_take_an_empty_value(tmp_path: Path) -> None:
    base = ["--storage-dir", str(tmp_path)]
    c = config.parse(base, env={})
    assert (c.default_logs_database, c.default_logs_table) == ("Logs", "Logs")
    c = config.parse([*base, "--default-logs-database=", "--default-logs-table", ""], env={})
    assert (c.default_logs_database, c.default_logs_table) == ("", "")
    # an empty variable is no variable: the default stays
    assert config.parse(base, env={"INGESTOR_DEFAULT_LOGS_TABLE": "Events"}).default_logs_table == "Events"
    for bad in ("../x", "a b"):
        with pytest.raises(SystemExit):
            config.parse([*base, "--default-logs-table", bad], env={})
    p = argparse.ArgumentParser(prog="ingestor serve")
    config.add_serve_flags(p)
    text = re.sub(r"-\s+", "-", " ".join(p.format_help().split()))  # argparse wraps after hyphens
    assert "empty (--default-logs-table=): such records are refused (default Logs)" in text


# -- refusals: partial success on gRPC and HTTP, one WARNING ------------------------------------

def _export_grpc(addr: str, req: object) -> Any:
    stubs: dict[type, Any] = {logs_service_pb2.ExportLogsServiceRequest: logs_service_pb2_grpc.LogsServiceStub,
             metrics_service_pb2.ExportMetricsServiceRequest: metrics_service_pb2_grpc.MetricsServiceStub,
             trace_service_pb2.ExportTraceServiceRequest: trace_service_pb2_grpc.TraceServiceStub}
    with grpc.insecure_channel(addr) as ch:
        return stubs[type(req)](ch).Export(req, timeout=10)


def _export_http(url: str, req: Any, as_json: bool = False) -> Any:
    path, resp_cls = {
        logs_service_pb2.ExportLogsServiceRequest: ("/v1/logs", logs_service_pb2.ExportLogsServiceResponse),
        metrics_service_pb2.ExportMetricsServiceRequest: ("/v1/metrics",
                                                          metrics_service_pb2.ExportMetricsServiceResponse),
        trace_service_pb2.ExportTraceServiceRequest: ("/v1/traces", trace_service_pb2.ExportTraceServiceResponse),
    }[type(req)]
    if as_json:
        body, ctype = json_format.MessageToJson(req).encode(), "application/json"
    else:
        body, ctype = req.SerializeToString(), "application/x-protobuf"
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
        data = r.read()
    resp = resp_cls()
    if as_json:
        json_format.Parse(data, resp)
    else:
        resp.ParseFromString(data)
    return resp


def _unrouted_and_hostile() -> logs_service_pb2.ExportLogsServiceRequest:
    return logs_request(log_record({}, body="no route", time_unix_nano=T_NS),
                        log_record({"kusto.table": "../etc"}, body="hostile", time_unix_nano=T_NS),
                        log_record({"kusto.table": "Routed"}, body="routed", time_unix_nano=T_NS))


@pytest.fixture
def refusing_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node told to refuse unrouted logs (an empty default table)."""
    node = NodeProcess(tmp_path / "data", "--default-logs-table=", *KEEP_ROWS).start()
    yield node
    if node.proc is not None and node.proc.poll() is None:
        node.stop()


@pytest.mark.parametrize("transport", ["grpc", "http", "http-json"])
def test_an_empty_default_refuses_unrouted_logs_through_partial_success(refusing_node: NodeProcess,
                                                                       transport: str) -> None:
    node = refusing_node
    for _ in range(3):
        if transport == "grpc":
            resp = _export_grpc(node.grpc_addr, _unrouted_and_hostile())
        else:
            resp = _export_http(node.http_url, _unrouted_and_hostile(), as_json=transport == "http-json")
        ps = resp.partial_success
        assert ps.rejected_log_records == 2
        assert ps.error_message == ("no kusto.table attribute and no default configured; invalid log record attribute "
                                    "kusto.table: '../etc' does not match [A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-150 "
                                    "characters")
    assert node.stop() == 0
    assert len(parse(node.rows("Logs", "Routed"))) == 3 and node.tables() == {("Logs", "Routed")}
    # One line for three requests (rate-limited), with the count, of how many, and every reason.
    [line] = warnings(node, "refused")
    assert line.endswith("WARNING node.ingest: OTLP logs: 2 of 3 log records refused, not stored: no kusto.table "
                         "attribute and no default configured; invalid log record attribute kusto.table: '../etc' "
                         "does not match [A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-150 characters")


def _otlp_metric(database: str | None) -> metrics_service_pb2.ExportMetricsServiceRequest:
    point = NumberDataPoint(time_unix_nano=T_NS, as_double=1.5)
    resource = {"adxmon_database": database} if database else {}
    return metrics_request(Metric(name="queue_depth", gauge=Gauge(data_points=[point])), resource=resource)


def _spans(n: int) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs({"service.name": "api"}))
    rs.scope_spans.add().spans.extend(Span(name=f"s{i}", start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + 1)
                                      for i in range(n))
    return req


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_databases_without_a_sink_are_refused_with_the_reason_on_every_signal(tmp_path: Path, transport: str) -> None:
    """The ClickHouse sink with an endpoint for Metrics alone: log records (default Logs), spans
    (default Traces) and series of another database have nowhere to go."""
    closed = free_port()
    node = NodeProcess(tmp_path / "data", "--storage-backend", "clickhouse", "--metrics-kusto-endpoints",
                       f"Metrics=clickhouse://127.0.0.1:{closed}/m", *KEEP_ROWS).start()
    try:
        def export(req: object) -> Any:
            return _export_grpc(node.grpc_addr, req) if transport == "grpc" else _export_http(node.http_url, req)

        logs = export(logs_request(log_record({}, time_unix_nano=T_NS), log_record({}, time_unix_nano=T_NS)))
        spans = export(_spans(3))
        metrics = export(metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[*_otlp_metric("Other").resource_metrics, *_otlp_metric(None).resource_metrics]))
    finally:
        assert node.stop() == 0
    assert logs.partial_success.rejected_log_records == 2
    assert logs.partial_success.error_message == "database has no configured sink: 'Logs'"
    assert spans.partial_success.rejected_spans == 3
    assert spans.partial_success.error_message == "database has no configured sink: 'Traces'"
    assert metrics.partial_success.rejected_data_points == 1
    assert metrics.partial_success.error_message == "database has no configured sink: 'Other'"
    assert node.tables() == {("Metrics", "QueueDepth")}
    assert len(warnings(node, r"OTLP logs: 2 of 2 log records refused, not stored: database has no configured "
                              r"sink: 'Logs'$")) == 1
    assert len(warnings(node, r"OTLP traces: 3 of 3 spans refused, not stored: database has no configured "
                              r"sink: 'Traces'$")) == 1
    assert len(warnings(node, r"OTLP metrics: 1 of 2 data points refused, not stored: database has no configured "
                              r"sink: 'Other'$")) == 1


# -- every refusal of the converters, in process: one WARNING each, rate-limited -----------------

@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    state = NodeState(over_limits=wal.over_limits)
    state.set_phase(Phase.SERVING)
    allowed = frozenset({"Metrics", "Logs", "Traces"})
    conv = Converters(MetricsConverter(MetricsConfig(allowed_databases=allowed)),
                      LogsConverter(LogsConfig(allowed_databases=allowed)),
                      TracesConverter(TracesConfig(allowed_databases=allowed)))
    return Ingest(wal, conv, state, NodeMetrics(CollectorRegistry()))


async def test_each_refusal_is_one_rate_limited_warning(ingest: Ingest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="node.ingest")
    good = ({"__name__": "up"}, [(1.0, 1_700_000_000_000)])
    cases = [
        (ingest.remote_write, remote_write(good, ({"__name__": "up", "pod": "b"}, [(1.0, 10**15)])),
         "remote write: 1 of 2 samples refused, not stored: timestamp outside years 1..9999: 1000000000000000"),
        (ingest.remote_write, remote_write(good, ({"__name__": "up", "adxmon_database": "Billing"}, [(1.0, 1)])),
         "remote write: 1 of 2 samples refused, not stored: database has no configured sink: 'Billing'"),
        (ingest.otlp_logs, logs_request(log_record({"kusto.database": "Audit"})),
         "OTLP logs: 1 of 1 log records refused, not stored: database has no configured sink: 'Audit'"),
        (ingest.otlp_logs, logs_request(log_record({"kusto.database": 7})),
         "OTLP logs: 1 of 1 log records refused, not stored: invalid log record attribute kusto.database: '7' "
         "is not a string"),
        (ingest.otlp_traces, _with_resource(_spans(2), {"kusto.table": "a b"}),
         "OTLP traces: 2 of 2 spans refused, not stored: invalid resource attribute kusto.table: 'a b' does not "
         "match [A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-150 characters"),
        (ingest.otlp_metrics, _otlp_metric("Nowhere"),
         "OTLP metrics: 1 of 1 data points refused, not stored: database has no configured sink: 'Nowhere'"),
    ]
    for export, req, line in cases:
        caplog.clear()
        result = await export(req.SerializeToString())
        assert result.rejected >= 1
        assert [r.getMessage() for r in caplog.records] == [line]
        assert caplog.records[0].levelno == logging.WARNING
        caplog.clear()
        await export(req.SerializeToString())  # the same kind of refusal again: not said again this minute
        assert caplog.records == []
    # a request with nothing refused says nothing
    await ingest.otlp_logs(logs_request(log_record({})).SerializeToString())
    assert caplog.records == []


def _with_resource(req: trace_service_pb2.ExportTraceServiceRequest,
                   attrs: dict[str, object]) -> trace_service_pb2.ExportTraceServiceRequest:
    req.resource_spans[0].resource.attributes.extend(kvs(attrs))
    return req
