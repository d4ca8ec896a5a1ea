"""Send a few OTLP metrics, logs and spans to a node: `python -m tests.demo_send HOST:PORT`."""

from __future__ import annotations

import sys
import time

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


def kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def main(addr: str) -> None:
    now = time.time_ns()
    metrics = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "demo"))
    m = rm.scope_metrics.add().metrics.add()
    m.name = "demo_requests"
    m.sum.is_monotonic = True
    m.sum.aggregation_temporality = 2
    for i, code in enumerate(("200", "404", "500")):
        dp = m.sum.data_points.add(time_unix_nano=now, as_double=10.0 * (i + 1))
        dp.attributes.append(kv("code", code))
    logs = logs_service_pb2.ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.extend([kv("service.name", "demo"), kv("kusto.database", "Logs")])
    rec = rl.scope_logs.add().log_records.add(time_unix_nano=now, severity_number=9, severity_text="INFO")
    rec.body.string_value = "hello from the demo"
    rec.attributes.append(kv("kusto.table", "Demo"))
    spans = trace_service_pb2.ExportTraceServiceRequest()
    rs = spans.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "demo"))
    rs.scope_spans.add().spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="GET /demo",
                                   kind=2, start_time_unix_nano=now - 5_000_000, end_time_unix_nano=now)
    with grpc.insecure_channel(addr) as ch:
        r1 = metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(metrics, timeout=10)
        r2 = logs_service_pb2_grpc.LogsServiceStub(ch).Export(logs, timeout=10)
        r3 = trace_service_pb2_grpc.TraceServiceStub(ch).Export(spans, timeout=10)
    for what, r in (("metrics", r1), ("logs", r2), ("traces", r3)):
        ps = r.partial_success
        print(f"{what}: ok" + (f" (partial success: {ps.error_message})" if ps.error_message else ""))
    print("rows reach the local sink with the next upload: within about twice --max-segment-age "
          "(make run sets 10s: about 25s); "
          "ingestor status shows them waiting in the WAL until then")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4317")
