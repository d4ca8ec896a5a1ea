"""Throughput of the row conversion core: parse + convert, warm caches, one core.

Run: .venv/bin/python -m tests.bench.bench_rows [--seconds S]

* OTLP metrics: 1000 gauge/sum points across 50 metrics, 8 attributes per point (one resource).
* Remote write: 1000 series of 9 labels, one sample each.
* OTLP logs: 1000 records, string bodies, 4 attributes, kusto.* routing on the resource.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from node.gen.prometheus.remote_pb2 import WriteRequest
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConverter

T0 = 1_795_492_800_000_000_000  # 2026-11-24T04:00:00Z in nanoseconds


def otlp_metrics_request(metrics: int = 50, points: int = 20, attributes: int = 8) -> bytes:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for key, value in (("service.name", "api"), ("service.instance.id", "api-0"), ("k8s.namespace.name", "prod")):
        rm.resource.attributes.add(key=key, value=AnyValue(string_value=value))
    sm = rm.scope_metrics.add()
    for m in range(metrics):
        metric = sm.metrics.add(name=f"http.server.requests_{m}")
        dps = metric.gauge.data_points if m % 2 == 0 else metric.sum.data_points
        for p in range(points):
            dp = dps.add(start_time_unix_nano=T0 - 60_000_000_000, time_unix_nano=T0 + 123_456_789)
            if m % 2:
                dp.as_int = p * 10
            else:
                dp.as_double = p * 1.5
            for a in range(attributes):
                dp.attributes.add(key=f"attribute.{a}", value=AnyValue(string_value=f"value-{a}-{p if a == 0 else a}"))
    return req.SerializeToString()


def remote_write_request(series: int = 1000, labels: int = 8) -> bytes:
    req = WriteRequest()
    for s in range(series):
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value=f"http_requests_total_{s % 50}")
        for a in range(labels):
            ts.labels.add(name=f"label_{a}", value=f"value-{a}-{s if a == 0 else a}")
        ts.samples.add(value=s * 1.5, timestamp=T0 // 1_000_000 + 123)
    return req.SerializeToString()


def logs_request(records: int = 1000) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for key, value in (("service.name", "api"), ("kusto.database", "Logs"), ("kusto.table", "Api")):
        rl.resource.attributes.add(key=key, value=AnyValue(string_value=value))
    sl = rl.scope_logs.add()
    for r in range(records):
        rec = sl.log_records.add(
            time_unix_nano=T0 + r,
            observed_time_unix_nano=T0 + r + 1000,
            severity_text="INFO",
            severity_number=9,
            trace_id=bytes(range(16)),
            span_id=bytes(range(8)),
        )
        rec.body.string_value = f"GET /api/v1/items/{r} served in {r % 97} ms"
        rec.attributes.add(key="http.method", value=AnyValue(string_value="GET"))
        rec.attributes.add(key="http.status_code", value=AnyValue(int_value=200))
        rec.attributes.add(key="http.route", value=AnyValue(string_value="/api/v1/items/{id}"))
        rec.attributes.add(key="duration", value=AnyValue(double_value=r * 0.25))
    return req.SerializeToString()


def rate(run: Callable[[], ConvertResult], items: int, seconds: float) -> float:
    """Items per second of `run` (parse + convert), after a warm-up that fills the caches."""
    for _ in range(20):
        run()
    n = 0
    start = time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    args = parser.parse_args()

    metrics = MetricsConverter()
    otlp = otlp_metrics_request()
    check = metrics.convert_otlp(ExportMetricsServiceRequest.FromString(otlp))
    assert check.rejected == 0 and check.accepted == 1001, check  # 1000 points + one target_info
    points = rate(lambda: metrics.convert_otlp(ExportMetricsServiceRequest.FromString(otlp)), 1000, args.seconds)
    print(f"otlp metrics:  {points:>10,.0f} points/s  (parse + convert)")

    remote = remote_write_request()
    samples = rate(lambda: metrics.convert_remote_write(WriteRequest.FromString(remote)), 1000, args.seconds)
    print(f"remote write:  {samples:>10,.0f} samples/s (parse + convert)")

    logs = LogsConverter(LogsConfig())
    body = logs_request()
    assert logs.convert(ExportLogsServiceRequest.FromString(body)).accepted == 1000
    records = rate(lambda: logs.convert(ExportLogsServiceRequest.FromString(body)), 1000, args.seconds)
    print(f"otlp logs:     {records:>10,.0f} records/s (parse + convert)")


if __name__ == "__main__":
    main()
