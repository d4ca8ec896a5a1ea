"""End to end: OpenTelemetry SDK exporters and a real Prometheus -> a real node -> each sink.

Rows are counted in the sink and compared with what the node acknowledged (its own
`ingestor_rows_total` counters) and, for the SDK's logs and spans, with exactly what was sent.
Sinks: the local embedded store (queried with `ingestor query`), the ClickHouse server from
Debian's packages (18.16, native protocol), and ADX played by Azurite plus a local endpoint that
answers the Kusto management commands (no Kusto engine can run here; see tests/sinks_adx).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from tests.harness import NodeProcess, Prometheus, free_port, scrape
from tests.node.test_grpc import gauge_request
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary
from tests.sinks.test_clickhouse import admin
from tests.sinks_adx.azurite import Azurite, find_azurite
from tests.sinks_adx.fake_kusto import FakeKusto

LOG_RECORDS, SPANS = 40, 12
FAST_UPLOAD = ["--max-segment-age", "1s", "--upload-interval", "0.5s", "--shutdown-grace", "60s"]


def send(node: NodeProcess, tmp: Path) -> dict[str, float]:
    """Send SDK metrics, logs and spans and a few seconds of Prometheus remote write; return the
    rows the node acknowledged per database."""
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = OTLPMetricExporter(endpoint=node.grpc_addr, insecure=True,
                                  preferred_temporality={Counter: AggregationTemporality.DELTA})
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)],
                       resource=Resource.create({"service.name": "e2e"}))
    counter = mp.get_meter("e2e").create_counter("e2e_requests")
    for code in ("200", "404", "500"):
        counter.add(7, {"code": code})
    mp.force_flush()
    mp.shutdown()

    lp = LoggerProvider(resource=Resource.create({"service.name": "e2e", "kusto.database": "AppLogs"}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=node.grpc_addr, insecure=True)))
    logger = lp.get_logger("e2e")
    for i in range(LOG_RECORDS):
        logger.emit(LogRecord(timestamp=time.time_ns(), severity_text="INFO", severity_number=SeverityNumber.INFO,
                              body=f"event {i}", attributes={"kusto.table": "Events", "i": i}))
    lp.shutdown()

    tp = TracerProvider(resource=Resource.create({"service.name": "e2e"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=node.grpc_addr, insecure=True)))
    tracer = tp.get_tracer("e2e")
    for i in range(SPANS):
        with tracer.start_as_current_span(f"op-{i}"):
            pass
    tp.shutdown()

    if shutil.which("prometheus") is not None:
        with Prometheus(tmp / "prom", node.http_url + "/api/v1/write"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                m = scrape(node.http_url + "/metrics")
                if m.get('ingestor_requests_total{code="204",signal="metrics",transport="http"}', 0) >= 3:
                    break
                time.sleep(0.5)
    time.sleep(0.5)
    m = scrape(node.http_url + "/metrics")
    acked: dict[str, float] = {}
    for key, value in m.items():
        if key.startswith("ingestor_rows_total{"):
            db = key.split('database="')[1].split('"')[0]
            acked[db] = acked.get(db, 0) + value
    return acked


def wait_for(cond: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not delivered in time"
        time.sleep(0.5)


PARTS_SQL = "SELECT table, sum(rows) AS n FROM system.parts WHERE database = '{db}' AND active GROUP BY table"


def check(counts: Callable[[str], dict[str, int]], acked: dict[str, float]) -> None:
    """`counts(db)`: rows per table of a database in the sink."""
    # the sink's own tables: names starting with "_" (the batch ledger of old ClickHouse servers) and
    # adx-mon's schema versions, which the ClickHouse sink fills as adx-mon does
    by_db = {db: {t: n for t, n in counts(db).items() if not t.startswith("_") and t != "adxmon_schema_versions"}
             for db in acked}
    assert by_db["AppLogs"]["Events"] == LOG_RECORDS
    assert by_db["Traces"]["Traces"] == SPANS
    assert by_db["Metrics"]["E2eRequests"] == 3
    for db, n in acked.items():
        assert sum(by_db[db].values()) == n, (db, by_db[db])
    if shutil.which("prometheus") is not None:
        assert by_db["Metrics"]["Up"] >= 1


# -- local ---------------------------------------------------------------------------------

def query(storage: Path, sql: str) -> list[dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(storage), "--format", "json",
                        sql], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_local_sink_end_to_end(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *FAST_UPLOAD).start()
    try:
        acked = send(node, tmp_path)
        assert acked["Metrics"] > 3 and acked["AppLogs"] == LOG_RECORDS and acked["Traces"] == SPANS

        def counts(db: str) -> dict[str, int]:
            return {str(r["table"]): int(str(r["n"])) for r in query(node.storage_dir, PARTS_SQL.format(db=db))}

        # delivered while the node runs (queried while it holds its store), not only at shutdown
        wait_for(lambda: counts("AppLogs").get("Events") == LOG_RECORDS)
    finally:
        assert node.stop() == 0
    assert "everything uploaded" in node.log()
    check(counts, acked)
    assert list((node.storage_dir / "wal").rglob("*.wal")) == []


# -- ClickHouse ----------------------------------------------------------------------------

def ch_counts(server: ClickHouseServer, db: str) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in admin(server).query(PARTS_SQL.format(db=db))}


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    if find_binary() is None:
        pytest.skip("clickhouse-server (Debian package) not installed")
    s = ClickHouseServer(tmp_path / "ch")
    s.start()
    yield s
    s.stop()


def test_clickhouse_sink_end_to_end(tmp_path: Path, clickhouse: ClickHouseServer) -> None:
    node = NodeProcess(tmp_path / "data", *FAST_UPLOAD, "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", clickhouse.dsn("Metrics"),
                       "--logs-kusto-endpoints", clickhouse.dsn("AppLogs"),
                       "--traces-kusto-endpoints", clickhouse.dsn("Traces")).start()
    try:
        acked = send(node, tmp_path)
    finally:
        assert node.stop() == 0
    assert "everything uploaded" in node.log()

    check(lambda db: ch_counts(clickhouse, db), acked)


def test_clickhouse_down_then_back_delivers_exactly_once(tmp_path: Path, clickhouse: ClickHouseServer) -> None:
    node = NodeProcess(tmp_path / "data", *FAST_UPLOAD, "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", clickhouse.dsn("Metrics"),
                       "--logs-kusto-endpoints", clickhouse.dsn("AppLogs"),
                       "--traces-kusto-endpoints", clickhouse.dsn("Traces")).start()
    try:
        clickhouse.stop()
        acked = send(node, tmp_path)  # acknowledged while the sink is down
        wait_for(lambda: "failed (attempt" in node.log(), timeout=60)  # an upload tried and failed
        assert list((node.storage_dir / "wal").glob("*.wal"))  # kept on disk meanwhile
        clickhouse.start()
        wait_for(lambda: not list((node.storage_dir / "wal").glob("*.wal")))
    finally:
        assert node.stop() == 0

    check(lambda db: ch_counts(clickhouse, db), acked)


def test_one_database_sink_down_does_not_stop_another(tmp_path: Path, clickhouse: ClickHouseServer) -> None:
    dead = f"Dead=clickhouse://default@127.0.0.1:{free_port()}/Dead"
    node = NodeProcess(tmp_path / "data", *FAST_UPLOAD, "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", clickhouse.dsn("Metrics"), "--metrics-kusto-endpoints", dead,
                       "--max-disk-usage-per-database", "20KB",
                       "--shutdown-grace", "5s").start()  # the last one counts: Dead's rows cannot drain
    try:
        with grpc.insecure_channel(node.grpc_addr) as ch:
            stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
            refused = 0
            for i in range(300):
                req = gauge_request("dead_metric", points=20, attrs=4, start=i * 20)
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            for dp in metric.gauge.data_points:
                                dp.attributes.add(key="adxmon_database").value.string_value = "Dead"
                try:
                    stub.Export(req, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "database Dead" in (e.details() or "")
                    refused += 1
                    break
            assert refused == 1, "the dead database never filled its share"
            for i in range(5):  # the other database still takes data, and it is delivered
                stub.Export(gauge_request("alive_metric", points=10, start=i * 10), timeout=10)
        wait_for(lambda: ch_counts(clickhouse, "Metrics").get("AliveMetric") == 50)
        assert list((node.storage_dir / "wal").glob("Dead_*.wal"))  # the dead one's data is kept
        t0 = time.monotonic()
        assert node.stop(timeout=60) == 0
        assert time.monotonic() - t0 < 20, "SIGTERM waited past the grace for a sink that is down"
        assert list((node.storage_dir / "wal").glob("Dead_*.wal")), "the dead one's rows left the disk undelivered"
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(timeout=90)


# -- ADX (Azurite + a local Kusto management endpoint) ----------------------------------------

@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    binary = find_azurite()
    if binary is None:
        if os.environ.get("AZURITE_REQUIRED", "") not in ("", "0"):
            pytest.fail("Azurite not found and AZURITE_REQUIRED is set")
        pytest.skip("Azurite not found (npm install -g azurite)")
    a = Azurite(binary, tmp_path / "azurite")
    a.start()
    yield a
    a.stop()


def test_adx_sink_end_to_end(tmp_path: Path, azurite: Azurite) -> None:
    kusto = FakeKusto(azurite, f"t{uuid.uuid4().hex[:16]}")
    kusto.start()
    try:
        node = NodeProcess(tmp_path / "data", *FAST_UPLOAD, "--storage-backend", "adx", "--adx-auth", "none",
                           "--metrics-kusto-endpoints", f"Metrics={kusto.url}",
                           "--logs-kusto-endpoints", f"AppLogs={kusto.url}",
                           "--traces-kusto-endpoints", f"Traces={kusto.url}").start()
        try:
            acked = send(node, tmp_path)
        finally:
            assert node.stop() == 0
        assert "everything uploaded" in node.log()
        rows: dict[tuple[str, str], int] = {}
        for ing in kusto.ingest():
            key = (ing.message["DatabaseName"], ing.message["TableName"])
            rows[key] = rows.get(key, 0) + len(ing.data.splitlines())
            assert ing.message["RawDataSize"] == len(ing.data)
    finally:
        kusto.stop()
    check(lambda db: {t: n for (d, t), n in rows.items() if d == db}, acked)
    creates = [c.text for c in kusto.sent(".create-merge table")]
    assert any("['Events']" in c for c in creates)
