from __future__ import annotations

import json
from collections.abc import Mapping

from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
    Summary,
    SummaryDataPoint,
)

from node.rows.metrics import MetricsConfig, MetricsConverter
from tests.rows.build import T_NS, kvs, metrics_request, parse, sid, text

STAMP = "2026-11-24T04:00:00.123456789Z"
SERVICE = {"service.name": "api", "service.namespace": "shop", "service.instance.id": "api-0"}
RESOURCE_LABELS = {"job": "shop/api", "instance": "api-0"}


def gauge(name: str, *points: NumberDataPoint) -> Metric:
    return Metric(name=name, gauge=Gauge(data_points=points))


def point(
    value: float | int, attrs: Mapping[str, object] | None = None, t: int = T_NS, flags: int = 0
) -> NumberDataPoint:
    dp = NumberDataPoint(time_unix_nano=t, start_time_unix_nano=t - 10**9, attributes=kvs(attrs or {}), flags=flags)
    if isinstance(value, int):
        dp.as_int = value
    else:
        dp.as_double = value
    return dp


def labels_json(labels: dict[str, str]) -> str:
    shown = {k: labels[k] for k in sorted(labels) if k != "__name__" and not k.startswith("adxmon_")}
    return '"' + json.dumps(shown, separators=(",", ":"), ensure_ascii=False).replace('"', '""') + '"'


def row(labels: dict[str, str], value: str, stamp: str = STAMP) -> str:
    return f"{stamp},{sid(labels)},{labels_json(labels)},{value}\n"


def test_gauge_and_sum_exact_text() -> None:
    req = metrics_request(
        gauge("http.server.active_requests", point(3.5, {"http.method": "GET"})),
        Metric(
            name="http.server.requests", sum=Sum(data_points=[point(7, {"http.method": "POST"})], is_monotonic=True)
        ),
        resource=SERVICE,
    )
    result = MetricsConverter().convert_otlp(req)
    active = {"__name__": "http_server_active_requests", "http_method": "GET", **RESOURCE_LABELS}
    requests = {"__name__": "http_server_requests", "http_method": "POST", **RESOURCE_LABELS}
    assert text(result, "Metrics", "HttpServerActiveRequests") == row(active, "3.5")
    assert text(result, "Metrics", "HttpServerRequests") == row(requests, "7")
    assert labels_json(active) == '"{""http_method"":""GET"",""instance"":""api-0"",""job"":""shop/api""}"'
    assert (result.accepted, result.rejected, sorted(result.tables)) == (
        2,
        0,
        [("Metrics", "HttpServerActiveRequests"), ("Metrics", "HttpServerRequests")],
    )


def test_histogram_count_sum_and_cumulative_buckets() -> None:
    dp = HistogramDataPoint(
        time_unix_nano=T_NS,
        count=10,
        sum=12.5,
        explicit_bounds=[0.005, 1.0, 2.5],
        bucket_counts=[1, 2, 3, 4],
        attributes=kvs({"route": "/a"}),
    )
    req = metrics_request(Metric(name="http.server.duration", histogram=Histogram(data_points=[dp])), resource=SERVICE)
    result = MetricsConverter().convert_otlp(req)
    base = {"route": "/a", **RESOURCE_LABELS}
    assert text(result, "Metrics", "HttpServerDurationCount") == row(
        {"__name__": "http_server_duration_count", **base}, "10"
    )
    assert text(result, "Metrics", "HttpServerDurationSum") == row(
        {"__name__": "http_server_duration_sum", **base}, "12.5"
    )
    bucket = {"__name__": "http_server_duration_bucket", **base}
    assert text(result, "Metrics", "HttpServerDurationBucket") == "".join(
        row({**bucket, "le": le}, value) for le, value in [("0.005", "1"), ("1", "3"), ("2.5", "6"), ("+Inf", "10")]
    )
    assert (result.accepted, result.rejected) == (6, 0)


def test_histogram_without_sum_or_buckets() -> None:
    dp = HistogramDataPoint(time_unix_nano=T_NS, count=4)
    result = MetricsConverter().convert_otlp(metrics_request(Metric(name="h", histogram=Histogram(data_points=[dp]))))
    assert sorted(result.tables) == [("Metrics", "HBucket"), ("Metrics", "HCount")]
    assert text(result, "Metrics", "HBucket") == row({"__name__": "h_bucket", "le": "+Inf"}, "4")


def test_histogram_with_mismatched_buckets_is_rejected() -> None:
    dp = HistogramDataPoint(time_unix_nano=T_NS, count=4, explicit_bounds=[1.0], bucket_counts=[1, 2, 1])
    result = MetricsConverter().convert_otlp(metrics_request(Metric(name="h", histogram=Histogram(data_points=[dp]))))
    assert (result.accepted, result.rejected, result.tables) == (0, 1, {})
    assert result.reasons == ["histogram bucket counts do not match its bounds: 3 counts, 1 bounds"]


def test_summary_count_sum_and_quantiles() -> None:
    dp = SummaryDataPoint(
        time_unix_nano=T_NS,
        count=5,
        sum=2.5,
        quantile_values=[
            SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=0.1),
            SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=0.9),
        ],
    )
    result = MetricsConverter().convert_otlp(
        metrics_request(Metric(name="rpc.latency", summary=Summary(data_points=[dp])))
    )
    assert text(result, "Metrics", "RpcLatencyCount") == row({"__name__": "rpc_latency_count"}, "5")
    assert text(result, "Metrics", "RpcLatencySum") == row({"__name__": "rpc_latency_sum"}, "2.5")
    assert text(result, "Metrics", "RpcLatency") == row({"__name__": "rpc_latency", "quantile": "0.5"}, "0.1") + row(
        {"__name__": "rpc_latency", "quantile": "0.99"}, "0.9"
    )


def test_exponential_histogram_becomes_le_buckets() -> None:
    dp = ExponentialHistogramDataPoint(
        time_unix_nano=T_NS,
        count=11,
        sum=3.0,
        scale=0,
        zero_count=1,
        positive=ExponentialHistogramDataPoint.Buckets(offset=0, bucket_counts=[1, 2, 3]),
        negative=ExponentialHistogramDataPoint.Buckets(offset=0, bucket_counts=[4]),
    )
    metric = Metric(name="latency", exponential_histogram=ExponentialHistogram(data_points=[dp]))
    result = MetricsConverter().convert_otlp(metrics_request(metric))
    assert text(result, "Metrics", "LatencyCount") == row({"__name__": "latency_count"}, "11")
    assert text(result, "Metrics", "LatencySum") == row({"__name__": "latency_sum"}, "3.0")
    # negative bucket 0 holds [-2, -1); zero bucket; positive bucket i holds (2^i, 2^(i+1)]
    expected = [("-1", "4"), ("0", "5"), ("2", "6"), ("4", "8"), ("8", "11"), ("+Inf", "11")]
    assert text(result, "Metrics", "LatencyBucket") == "".join(
        row({"__name__": "latency_bucket", "le": le}, value) for le, value in expected
    )


def test_exponential_histogram_positive_scale_and_offset() -> None:
    dp = ExponentialHistogramDataPoint(
        time_unix_nano=T_NS,
        count=3,
        scale=1,
        positive=ExponentialHistogramDataPoint.Buckets(offset=-2, bucket_counts=[1, 2]),
    )
    metric = Metric(name="x", exponential_histogram=ExponentialHistogram(data_points=[dp]))
    rows = parse(text(MetricsConverter().convert_otlp(metrics_request(metric)), "Metrics", "XBucket"))
    # base sqrt(2): bucket -2 is (0.5, 2^-0.5], bucket -1 is (2^-0.5, 1]
    assert [(json.loads(r[2])["le"], r[3]) for r in rows] == [("0.7071067811865476", "1"), ("1", "3"), ("+Inf", "3")]


def test_resource_service_attributes_and_target_info() -> None:
    resource = {**SERVICE, "k8s.pod.name": "api-0-abc", "host.name": "h1"}
    req = metrics_request(
        gauge("g", point(1.0, t=T_NS), point(2.0, {"k": "v"}, t=T_NS + 5)),
        resource=resource,
    )
    result = MetricsConverter().convert_otlp(req)
    assert text(result, "Metrics", "G") == row({"__name__": "g", **RESOURCE_LABELS}, "1.0") + row(
        {"__name__": "g", "k": "v", **RESOURCE_LABELS}, "2.0", "2026-11-24T04:00:00.123456794Z"
    )
    info = {"__name__": "target_info", "host_name": "h1", "k8s_pod_name": "api-0-abc", **RESOURCE_LABELS}
    assert text(result, "Metrics", "TargetInfo") == row(info, "1", "2026-11-24T04:00:00.123456794Z")
    assert result.accepted == 3


def test_no_target_info_without_other_resource_attributes() -> None:
    result = MetricsConverter().convert_otlp(metrics_request(gauge("g", point(1.0)), resource=SERVICE))
    assert list(result.tables) == [("Metrics", "G")]


def test_job_without_namespace_and_resource_overrides_point_labels() -> None:
    req = metrics_request(
        gauge("g", point(1.0, {"job": "from-point", "instance": "p"})),
        resource={"service.name": "api", "service.instance.id": "i-1"},
    )
    rows = parse(text(MetricsConverter().convert_otlp(req), "Metrics", "G"))
    assert json.loads(rows[0][2]) == {"instance": "i-1", "job": "api"}


def test_promoted_resource_attributes_and_adxmon_database() -> None:
    cfg = MetricsConfig(promote_resource_attributes=("k8s.namespace.name",))
    req = metrics_request(
        gauge("g", point(1.0), point(2.0, {"adxmon_database": "point_db"})),
        resource={"k8s.namespace.name": "prod", "adxmon.database": "team_db"},
    )
    result = MetricsConverter(cfg).convert_otlp(req)
    team = {"__name__": "g", "k8s_namespace_name": "prod", "adxmon_database": "team_db"}
    point_db = {**team, "adxmon_database": "point_db"}
    assert text(result, "team_db", "G") == row(team, "1.0")
    assert text(result, "point_db", "G") == row(point_db, "2.0")
    info = {"__name__": "target_info", "k8s_namespace_name": "prod", "adxmon_database": "team_db"}
    assert text(result, "team_db", "TargetInfo") == row(info, "1")


def test_attribute_types_and_colliding_names() -> None:
    attrs: Mapping[str, object] = {"a.b": "1", "a_b": "2", "code": 200, "ratio": 0.25, "ok": True, "raw": b"\x00\xff"}
    result = MetricsConverter().convert_otlp(metrics_request(gauge("g", point(1.0, attrs))))
    rows = parse(text(result, "Metrics", "G"))
    assert json.loads(rows[0][2]) == {"a_b": "1;2", "code": "200", "ok": "true", "ratio": "0.25", "raw": "AP8="}


def test_no_recorded_value_is_skipped_and_missing_value_rejected() -> None:
    empty = NumberDataPoint(time_unix_nano=T_NS)
    req = metrics_request(gauge("g", point(1.0, flags=1), empty, point(3.0)))
    result = MetricsConverter().convert_otlp(req)
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == ["number data point without a value"]
    assert text(result, "Metrics", "G") == row({"__name__": "g"}, "3.0")


def test_disallowed_database_rejects_each_data_point_once() -> None:
    cfg = MetricsConfig(allowed_databases=frozenset({"Metrics"}))
    dp = HistogramDataPoint(time_unix_nano=T_NS, count=1, attributes=kvs({"adxmon_database": "Elsewhere"}))
    req = metrics_request(
        gauge("g", point(1.0, {"adxmon_database": "Elsewhere"}), point(3.0)),
        Metric(name="h", histogram=Histogram(data_points=[dp])),
    )
    result = MetricsConverter(cfg).convert_otlp(req)
    assert (result.accepted, result.rejected) == (1, 2)
    assert result.reasons == ["database has no configured sink: 'Elsewhere'"]
    assert list(result.tables) == [("Metrics", "G")]


def test_latest_otlp_timestamp_is_formatted() -> None:
    # fixed64 nanoseconds end in 2554: OTLP times never leave the datetime range
    result = MetricsConverter().convert_otlp(metrics_request(gauge("g", point(1.0, t=2**64 - 1))))
    assert parse(text(result, "Metrics", "G"))[0][0] == "2554-07-21T23:34:33.709551615Z"


def test_warm_cache_gives_the_same_rows_and_exemplars_do_not_split_series() -> None:
    conv = MetricsConverter()
    req = metrics_request(gauge("g", point(1.0, {"k": "v"}), point(2.0, {"k": "w"})), resource=SERVICE)
    with_exemplar = req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    with_exemplar.exemplars.add(as_double=9.0, time_unix_nano=T_NS, trace_id=b"\x01" * 16)
    first = text(conv.convert_otlp(req), "Metrics", "G")
    with_exemplar.exemplars[0].as_double = 10.0
    second = text(conv.convert_otlp(req), "Metrics", "G")
    assert first == second
    assert first == row({"__name__": "g", "k": "v", **RESOURCE_LABELS}, "1.0") + row(
        {"__name__": "g", "k": "w", **RESOURCE_LABELS}, "2.0"
    )
    assert conv._otlp._size == 2


def test_same_attributes_under_different_resources_are_different_series() -> None:
    conv = MetricsConverter()
    for service in ("a", "b"):
        req = metrics_request(gauge("g", point(1.0, {"k": "v"})), resource={"service.name": service})
        rows = parse(text(conv.convert_otlp(req), "Metrics", "G"))
        assert rows[0][1] == str(sid({"__name__": "g", "k": "v", "job": service}))
