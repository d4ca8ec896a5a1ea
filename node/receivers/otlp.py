"""The three OTLP signals as both receivers (gRPC and HTTP) serve them: message classes, the
ingest call, and the response with its partial success."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from node.ingest import Ingest
from node.rows.batch import ConvertResult


@dataclass(frozen=True)
class OtlpSignal:
    signal: str
    """"metrics", "logs" or "traces"."""
    service: str
    """The gRPC service's full name."""
    path: str
    """The OTLP/HTTP path."""
    request_cls: Any
    response_cls: Any
    rejected_field: str
    """The partial success field that counts refused items."""
    ingest_method: str

    def export(self, ingest: Ingest) -> Callable[[Any], Awaitable[ConvertResult]]:
        fn: Callable[[Any], Awaitable[ConvertResult]] = getattr(ingest, self.ingest_method)
        return fn

    def response(self, result: ConvertResult) -> Any:
        """The Export response; refused items are reported as partial success."""
        resp = self.response_cls()
        if result.rejected:
            setattr(resp.partial_success, self.rejected_field, result.rejected)
            resp.partial_success.error_message = "; ".join(result.reasons)
        return resp


def _service(module: Any, name: str) -> str:
    full: str = module.DESCRIPTOR.services_by_name[name].full_name
    return full


SIGNALS = (
    OtlpSignal("metrics", _service(metrics_service_pb2, "MetricsService"), "/v1/metrics",
               metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse,
               "rejected_data_points", "otlp_metrics"),
    OtlpSignal("logs", _service(logs_service_pb2, "LogsService"), "/v1/logs",
               logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
               "rejected_log_records", "otlp_logs"),
    OtlpSignal("traces", _service(trace_service_pb2, "TraceService"), "/v1/traces",
               trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse,
               "rejected_spans", "otlp_traces"),
)
