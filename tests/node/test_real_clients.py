"""A real `ingestor serve` process fed by real clients: the OpenTelemetry SDK's OTLP exporters
(gRPC and HTTP), a real Prometheus server remote-writing, and grpcurl. Rows are read back from
the node's segment files and checked against shared/design/rows.md."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import NodeProcess, Prometheus

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    # Nothing is uploaded (no batch is full or old enough, no grace at shutdown): the rows stay in the
    # segment files, which is what these tests read.
    n = NodeProcess(tmp_path / "data", "--default-logs-database", "Logs", "--default-logs-table", "App",
                    "--lift-labels", "host", "--min-batch-size", "1TB", "--max-segment-age", "1h",
                    "--shutdown-grace", "0s")
    n.start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.stop()


def parse(rows: list[bytes]) -> list[list[str]]:
    return [next(csv.reader(io.StringIO(r.decode()))) for r in rows]


def _metrics_sdk(exporter: object) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)  # type: ignore[arg-type]
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "checkout", "service.instance.id": "pod-1", "region": "west"}),
        views=[View(instrument_name="exp_latency", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = provider.get_meter("test")
    meter.create_counter("http_requests").add(5, {"code": "200", "host": "h1"})
    meter.create_up_down_counter("queue_depth").add(-3, {"q": "a"})
    h = meter.create_histogram("latency_seconds")
    for v in (0.1, 0.2, 3.0):
        h.record(v, {"route": "/x"})
    e = meter.create_histogram("exp_latency")
    for v in (1.0, 2.0, 4.0):
        e.record(v)
    meter.create_observable_gauge("temperature", callbacks=[lambda _o: [__import__(
        "opentelemetry.metrics", fromlist=["Observation"]).Observation(21.5, {"room": "b"})]])
    provider.force_flush()
    provider.shutdown()


def _check_metric_rows(node: NodeProcess) -> None:
    tables = {t for _, t in node.tables()}
    for t in ("HttpRequests", "QueueDepth", "LatencySecondsBucket", "LatencySecondsCount", "LatencySecondsSum",
              "ExpLatencyBucket", "ExpLatencyCount", "Temperature"):
        assert t in tables, (t, tables)
    # The SDK exports at force_flush and again at shutdown (cumulative): every export is a row.
    reqs = parse(node.rows("Metrics", "HttpRequests"))
    assert 1 <= len(reqs) <= 2 and len({r[1] for r in reqs}) == 1
    req = reqs[0]
    assert req[0].endswith("Z") and "T" in req[0]
    int(req[1])  # signed 64-bit series id
    labels = json.loads(req[2])
    assert labels["code"] == "200" and labels["job"] == "checkout" and labels["instance"] == "pod-1"
    assert "host" not in labels and req[4] == "h1"  # lifted into its own column
    assert float(req[3]) == 5.0
    q = parse(node.rows("Metrics", "QueueDepth"))[0]
    assert float(q[3]) == -3.0
    buckets = parse(node.rows("Metrics", "LatencySecondsBucket"))
    les = {json.loads(b[2])["le"]: float(b[3]) for b in buckets}  # the last export wins
    assert les["+Inf"] == 3.0
    count = parse(node.rows("Metrics", "LatencySecondsCount"))[-1]
    assert float(count[3]) == 3.0
    exp = parse(node.rows("Metrics", "ExpLatencyBucket"))
    assert max(float(b[3]) for b in exp) == 3.0 and any(json.loads(b[2])["le"] == "+Inf" for b in exp)
    t = parse(node.rows("Metrics", "Temperature"))[0]
    assert float(t[3]) == 21.5


def test_otel_sdk_grpc_exporters(node: NodeProcess) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    _metrics_sdk(OTLPMetricExporter(endpoint=node.grpc_addr, insecure=True))
    _logs_sdk(OTLPLogExporter(endpoint=node.grpc_addr, insecure=True))
    _traces_sdk(OTLPSpanExporter(endpoint=node.grpc_addr, insecure=True))
    assert node.stop() == 0
    _check_metric_rows(node)
    _check_log_rows(node)
    _check_trace_rows(node)


def test_otel_sdk_http_exporters(node: NodeProcess) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    _metrics_sdk(OTLPMetricExporter(endpoint=node.http_url + "/v1/metrics", compression=Compression.Gzip))
    _logs_sdk(OTLPLogExporter(endpoint=node.http_url + "/v1/logs", compression=Compression.Gzip))
    _traces_sdk(OTLPSpanExporter(endpoint=node.http_url + "/v1/traces"))
    assert node.stop() == 0
    _check_metric_rows(node)
    _check_log_rows(node)
    _check_trace_rows(node)


def _logs_sdk(exporter: object) -> None:
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "api", "kusto.database": "AppLogs"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))  # type: ignore[arg-type]
    logger = provider.get_logger("test.realclients")
    now = time.time_ns()
    logger.emit(LogRecord(timestamp=now, observed_timestamp=now, severity_text="WARN",
                          severity_number=SeverityNumber.WARN, body="disk sda is full",
                          attributes={"kusto.table": "Events", "device": "sda"}))
    logger.emit(LogRecord(timestamp=now, observed_timestamp=now, severity_text="ERROR",
                          severity_number=SeverityNumber.ERROR, body="no table given"))
    provider.shutdown()


def _check_log_rows(node: NodeProcess) -> None:
    [ev] = parse(node.rows("AppLogs", "Events"))
    ts, observed, _trace_id, _span_id, sev_text, sev_num, body, resource, attrs = ev
    assert ts.endswith("Z") and observed.endswith("Z")
    assert sev_text == "WARN" and int(sev_num) == 13
    assert json.loads(body) == "disk sda is full"
    assert json.loads(resource)["service.name"] == "api" and "kusto.database" not in json.loads(resource)
    a = json.loads(attrs)
    assert a["device"] == "sda" and "kusto.table" not in a
    # no kusto.table: the configured default table, in the resource's database
    [plain] = parse(node.rows("AppLogs", "App"))
    assert json.loads(plain[6]) == "no table given" and plain[4] == "ERROR"


def _traces_sdk(exporter: object) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.route", "/cart")
        with tracer.start_as_current_span("child") as child:
            child.add_event("cache miss", {"key": "k1"})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()


def _check_trace_rows(node: NodeProcess) -> None:
    spans = {r[3]: r for r in parse(node.rows("Traces", "Traces"))}
    assert set(spans) == {"parent", "child"}
    p, c = spans["parent"], spans["child"]
    assert len(p[0]) == 32 and len(p[1]) == 16 and p[2] == ""
    assert c[0] == p[0] and c[2] == p[1]  # same trace; child's parent is the parent span
    assert p[5] == "SPAN_KIND_SERVER" and c[4] == "STATUS_CODE_ERROR"
    assert json.loads(p[8])["service.name"] == "shop"
    assert json.loads(p[9])["http.route"] == "/cart"
    [event] = json.loads(c[10])
    assert event["EventName"] == "cache miss" and event["EventAttributes"]["key"] == "k1"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus not installed")
def test_real_prometheus_remote_writes_to_the_node(node: NodeProcess, tmp_path: Path) -> None:
    with Prometheus(tmp_path / "prom", node.http_url + "/api/v1/write", {"host": "prom-host"}) as prom:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ("Metrics", "Up") in node.tables() and len(node.rows("Metrics", "Up")) >= 2:
                break
            time.sleep(0.5)
    port = prom.port
    assert node.stop() == 0
    ups = parse(node.rows("Metrics", "Up"))
    assert len(ups) >= 2
    labels = json.loads(ups[0][2])
    assert labels["job"] == "prom" and labels["instance"] == f"127.0.0.1:{port}"
    assert ups[0][3] == "1" or float(ups[0][3]) == 1.0
    assert ups[0][4] == "prom-host"
    assert ("Metrics", "PrometheusBuildInfo") in node.tables()
    # scraped samples carry millisecond timestamps
    assert len(ups[0][0]) == len("2026-11-24T04:00:00.123Z")


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_describes_and_calls(node: NodeProcess) -> None:
    r = _grpcurl("-plaintext", node.grpc_addr, "list")
    assert r.returncode == 0, r.stderr
    services = set(r.stdout.split())
    assert {"opentelemetry.proto.collector.metrics.v1.MetricsService",
            "opentelemetry.proto.collector.logs.v1.LogsService",
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "grpc.health.v1.Health", "ingestor.v1.Admin", "grpc.reflection.v1alpha.ServerReflection"} <= services
    r = _grpcurl("-plaintext", node.grpc_addr, "describe", "opentelemetry.proto.collector.metrics.v1.MetricsService")
    assert r.returncode == 0 and "rpc Export" in r.stdout
    r = _grpcurl("-plaintext", node.grpc_addr, "describe", "opentelemetry.proto.metrics.v1.Gauge")
    assert r.returncode == 0 and "data_points" in r.stdout
    r = _grpcurl("-plaintext", node.grpc_addr, "grpc.health.v1.Health/Check")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "SERVING"
    body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "grpcurl_metric", "gauge": {
        "dataPoints": [{"asDouble": 42.5, "timeUnixNano": "1795000000000000000",
                        "attributes": [{"key": "via", "value": {"stringValue": "grpcurl"}}]}]}}]}]}]}
    r = _grpcurl("-plaintext", "-d", json.dumps(body), node.grpc_addr,
                 "opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
    assert r.returncode == 0, r.stderr
    r = _grpcurl("-plaintext", node.grpc_addr, "ingestor.v1.Admin/GetStatus")
    assert r.returncode == 0 and json.loads(r.stdout)["node_name"] == node.name
    assert node.stop() == 0
    [row] = parse(node.rows("Metrics", "GrpcurlMetric"))
    assert float(row[3]) == 42.5 and json.loads(row[2]) == {"via": "grpcurl"}


def test_status_command_and_http_endpoints(node: NodeProcess) -> None:
    r = subprocess.run([sys.executable, "-m", "node.cli", "status", "--addr", node.grpc_addr],
                       capture_output=True, text=True, timeout=30, env=node.env)
    assert r.returncode == 0, r.stderr
    assert f"node       {node.name}" in r.stdout and "ready      yes" in r.stdout
    with urllib.request.urlopen(node.http_url + "/healthz") as resp:
        assert resp.status == 200
    with urllib.request.urlopen(node.http_url + "/metrics") as resp:
        text = resp.read().decode()
    assert "ingestor_ready 1.0" in text
