"""adx-mon's --drop-metrics, --drop-labels and --add-labels (node/rows/filters.py), alone and in
the metrics converter: what adx-mon's ingestor stored with them (transform/transformer.go and
cmd/ingestor/main.go before January 2025), checked against series built independently."""

from __future__ import annotations

import logging
import re

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Histogram, HistogramDataPoint, Metric

from node.rows.filters import MetricFilters, add_label_rule, drop_label_rule, drop_metric_rule
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.series import SKIP, SeriesEncoder
from tests.rows.build import T_MS, T_NS, metrics_request, parse, remote_write, sid, text
from tests.rows.test_otlp_metrics import gauge, point

BASE = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))
STAMP = "2026-11-24T04:00:00.123Z"


# -- the rules alone --------------------------------------------------------------------------------

@pytest.mark.parametrize(("regex", "name", "matches"), [
    ("up", "up", True),
    ("up", "node_uptime_seconds", True),  # Go's regexp.Match: anywhere in the name
    ("up", "backup_total", True),
    ("^up$", "up", True),
    ("^up$", "node_uptime_seconds", False),
    ("go_.*", "cgo_calls_total", True),  # unanchored at the start too
    ("^go_.*", "cgo_calls_total", False),
    ("(?i)^GO_", "go_goroutines", True),
    ("kube_pod_(info|labels)$", "kube_pod_labels", True),
    ("kube_pod_(info|labels)$", "kube_pod_labels_total", False),
    ("a{2}", "caab", True),
])
def test_drop_metrics_matches_as_gos_regexp_match(regex: str, name: str, matches: bool) -> None:
    f = MetricFilters(drop_metrics=[regex])
    assert (f.dropped_by(name) == regex) is matches
    assert (f.keep([("__name__", name), ("job", "x")]) == regex) is matches


def test_the_first_matching_expression_is_named() -> None:
    f = MetricFilters(drop_metrics=["^node_", "_seconds$"])
    assert f.dropped_by("node_cpu_seconds") == "^node_"
    assert f.dropped_by("process_cpu_seconds") == "_seconds$"
    assert f.dropped_by("up") is None


def test_drop_labels_removes_label_names_of_matching_metrics_only() -> None:
    f = MetricFilters(drop_labels=["^container_=^(id|image)$", "kube_=uid"])
    labels = [("__name__", "container_cpu"), ("id", "/a"), ("image", "nginx"), ("image_id", "sha"), ("pod", "p")]
    assert f.keep(labels) == [("__name__", "container_cpu"), ("image_id", "sha"), ("pod", "p")]
    # the label regex is unanchored: "uid" takes pod_uid and uid alike; values are never looked at
    kube = [("__name__", "kube_pod_info"), ("pod_uid", "1"), ("uid", "2"), ("node", "uid")]
    assert f.keep(kube) == [("__name__", "kube_pod_info"), ("node", "uid")]
    other = [("__name__", "up"), ("id", "/a"), ("uid", "3")]
    assert f.keep(other) == other
    assert f.label_rules("container_cpu") == (re.compile("^(id|image)$"),)


def test_drop_labels_never_drops_the_name_or_the_routing_labels() -> None:
    f = MetricFilters(drop_labels=[".*=.*"])
    labels = [("__name__", "up"), ("adxmon_database", "Other"), ("job", "a"), ("zone", "z")]
    assert f.keep(labels) == [("__name__", "up"), ("adxmon_database", "Other")]


def test_a_series_without_a_name_is_left_to_the_encoder() -> None:
    f = MetricFilters(drop_metrics=[".*"], drop_labels=[".*=job"])
    assert f.keep([("job", "a")]) == [("job", "a")]


@pytest.mark.parametrize(("text", "error"), [
    ("up", "expected METRIC_REGEX=LABEL_REGEX"),  # adx-mon: index out of range, a panic at start
    ("a=b=c", "expected METRIC_REGEX=LABEL_REGEX"),  # adx-mon: "invalid dimension"
    ("(=x", "not a regular expression"),
    ("x=[", "not a regular expression"),
])
def test_a_bad_drop_labels_item_is_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        drop_label_rule(text)


def test_drop_label_rule_compiles_both_sides() -> None:
    metric, label = drop_label_rule("^up$=^instance$")
    assert (metric.pattern, label.pattern) == ("^up$", "^instance$")
    assert drop_metric_rule("^go_").search("go_gc") is not None
    with pytest.raises(ValueError, match="not a regular expression: '\\(go'"):
        drop_metric_rule("(go")


@pytest.mark.parametrize(("text", "error"), [
    ("cluster", "expected NAME=VALUE"),
    ("a=b=c", "expected NAME=VALUE"),  # adx-mon: "invalid dimension"
    ("=prod", "is not 1-1024 characters of [A-Za-z0-9_]"),
    ("cluster-name=prod", "is not 1-1024 characters of [A-Za-z0-9_]"),
])
def test_a_bad_add_labels_item_is_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        add_label_rule(text)


def test_add_labels_items() -> None:
    assert add_label_rule("cluster=prod") == ("cluster", "prod")
    assert add_label_rule("empty=") == ("empty", "")
    assert MetricFilters(add_labels=["b=2", "a=1"]).columns == (("b", "2"), ("a", "1"))
    with pytest.raises(ValueError, match="names one column more than once: 'region', 'Region'"):
        MetricFilters(add_labels=["region=a", "Region=b"])


# -- remote write through the converter ---------------------------------------------------------------

def test_dropped_metrics_are_neither_stored_nor_refused(caplog: pytest.LogCaptureFixture) -> None:
    """adx-mon answered success (no 400, no refusal) and only counted them; here one INFO line a
    minute per expression says it."""
    conv = MetricsConverter(MetricsConfig(drop_metrics=("^go_",)))
    req = remote_write(({"__name__": "go_goroutines", "job": "a"}, [(1.0, T_MS), (2.0, T_MS)]),
                       ({"__name__": "go_gc_duration_seconds", "job": "a"}, [(3.0, T_MS)]),
                       ({"__name__": "cgo_calls", "job": "a"}, [(4.0, T_MS)]),
                       ({"__name__": "up", "job": "a"}, [(5.0, T_MS)]))
    with caplog.at_level(logging.INFO, logger="node.rows.series"):
        result = conv.convert_remote_write(req)
        again = conv.convert_remote_write(req)  # from the cache: no new line
    assert sorted(result.tables) == [("Metrics", "CgoCalls"), ("Metrics", "Up")]
    assert (result.accepted, result.rejected, result.reasons) == (2, 0, [])
    assert (again.accepted, again.rejected, sorted(again.tables)) == (2, 0, sorted(result.tables))
    lines = [r.getMessage() for r in caplog.records if r.name == "node.rows.series"]
    assert lines == ["--drop-metrics '^go_' matches metric 'go_goroutines': its points are not stored"]
    assert conv._series.dropped_series == 2


def test_a_request_of_dropped_metrics_only_is_no_refusal() -> None:
    """adx-mon answered such a request 202; a refusal of every sample would be a 400 here."""
    conv = MetricsConverter(MetricsConfig(drop_metrics=("up",)))
    result = conv.convert_remote_write(remote_write(({"__name__": "up"}, [(1.0, T_MS)])))
    assert (result.tables, result.accepted, result.rejected, result.reasons) == ({}, 0, 0, [])


def test_refusals_are_still_refusals_beside_drops() -> None:
    conv = MetricsConverter(MetricsConfig(drop_metrics=("^x$",), allowed_databases=frozenset({"Metrics"})))
    req = remote_write(({"__name__": "x"}, [(1.0, T_MS)]), ({"job": "no-name"}, [(1.0, T_MS), (2.0, T_MS)]),
                       ({"__name__": "y", "adxmon_database": "Other"}, [(1.0, T_MS)]))
    result = conv.convert_remote_write(req)
    assert (result.accepted, result.rejected) == (0, 3)
    assert result.reasons == ["series without a __name__ label", "database has no configured sink: 'Other'"]


def test_dropped_labels_are_out_of_labels_series_id_and_lifted_columns() -> None:
    conv = MetricsConverter(MetricsConfig(drop_labels=("^container_=^(id|pod)$",), lift_labels=("pod",)))
    full = {"__name__": "container_cpu", "id": "/kubepods/1", "pod": "api-0", "namespace": "shop"}
    result = conv.convert_remote_write(remote_write((full, [(0.5, T_MS)]), ({**full, "__name__": "up"}, [(1.0, T_MS)])))
    stored = {"__name__": "container_cpu", "namespace": "shop"}
    assert text(result, "Metrics", "ContainerCpu") == f'{STAMP},{sid(stored)},"{{""namespace"":""shop""}}",0.5,\n'
    # another metric keeps them: id in Labels, pod in its column
    up = {**full, "__name__": "up"}
    assert text(result, "Metrics", "Up") == (
        f'{STAMP},{sid(up)},"{{""id"":""/kubepods/1"",""namespace"":""shop""}}",1.0,api-0\n')


def test_series_that_differ_only_in_dropped_labels_become_one() -> None:
    conv = MetricsConverter(MetricsConfig(drop_labels=(".*=^instance$",)))
    req = remote_write(({"__name__": "up", "job": "a", "instance": "10.0.0.1:9100"}, [(1.0, T_MS)]),
                       ({"__name__": "up", "job": "a", "instance": "10.0.0.2:9100"}, [(0.0, T_MS)]))
    rows = parse(text(conv.convert_remote_write(req), "Metrics", "Up"))
    assert [r[1] for r in rows] == [str(sid({"__name__": "up", "job": "a"}))] * 2
    assert [r[2] for r in rows] == ['{"job":"a"}'] * 2


def test_added_columns_come_after_value_and_before_lifted_ones() -> None:
    """adx-mon's AddConstMapping: a string column per item, in the order given, then the lifted
    columns; Labels and SeriesId as without it."""
    cfg = MetricsConfig(add_labels=("region=eastus", "cluster=prod,a"), lift_labels=("pod",))
    conv = MetricsConverter(cfg)
    assert conv.schema == (*BASE, ("region", "string"), ("cluster", "string"), ("Pod", "string"))
    labels = {"__name__": "up", "pod": "api-0", "region": "label-value"}
    result = conv.convert_remote_write(remote_write((labels, [(1.0, T_MS)])))
    batch = result.tables[("Metrics", "Up")]
    assert batch.schema == conv.schema
    assert batch.data.decode() == (
        f'{STAMP},{sid(labels)},"{{""region"":""label-value""}}",1.0,eastus,"prod,a",api-0\n')
    plain = MetricsConverter(MetricsConfig(lift_labels=("pod",))).convert_remote_write(
        remote_write((labels, [(1.0, T_MS)])))
    assert parse(text(plain, "Metrics", "Up"))[0][:4] == parse(batch.data.decode())[0][:4]


@pytest.mark.parametrize("cfg", [
    MetricsConfig(add_labels=("value=1",)),
    MetricsConfig(add_labels=("SERIESID=1",)),
    MetricsConfig(add_labels=("pod=1",), lift_labels=("pod",)),
    MetricsConfig(add_labels=("a=1", "A=2")),
    MetricsConfig(add_labels=("a-b=1",)),
    MetricsConfig(drop_metrics=("(",)),
    MetricsConfig(drop_labels=("up",)),
])
def test_a_configuration_that_cannot_make_tables_is_refused(cfg: MetricsConfig) -> None:
    with pytest.raises(ValueError):
        MetricsConverter(cfg)


def test_without_the_flags_the_encoder_is_as_before() -> None:
    enc = SeriesEncoder("Metrics", (), None)
    assert enc.schema == BASE
    dest, mid, tail = enc.encode([("__name__", "up"), ("job", "a")])
    assert (dest, mid, tail) == (("Metrics", "Up"), f',{sid({"__name__": "up", "job": "a"})},"{{""job"":""a""}}",',
                                 "\n")


def test_the_encoder_gives_skip_for_a_dropped_series() -> None:
    enc = SeriesEncoder("Metrics", (), None, MetricFilters(drop_metrics=["^up$"]))
    assert enc.encode([("job", "a"), ("__name__", "up")]) is SKIP
    assert enc.encode([("__name__", "upx")])[0] == ("Metrics", "Upx")


# -- OTLP -------------------------------------------------------------------------------------------

def test_otlp_gauges_are_dropped_and_their_attributes_too() -> None:
    conv = MetricsConverter(MetricsConfig(drop_metrics=("^process_",), drop_labels=("^http_=^http_route$",),
                                          add_labels=("cluster=prod",)))
    req = metrics_request(gauge("process.cpu", point(1.5, {"cpu": "0"})),
                          gauge("http.active", point(2.0, {"http.route": "/a", "http.method": "GET"})))
    result = conv.convert_otlp(req)
    assert (result.accepted, result.rejected) == (1, 0)
    assert sorted(result.tables) == [("Metrics", "HttpActive")]
    stored = {"__name__": "http_active", "http_method": "GET"}
    assert text(result, "Metrics", "HttpActive") == (
        f'2026-11-24T04:00:00.123456789Z,{sid(stored)},"{{""http_method"":""GET""}}",2.0,prod\n')


def test_otlp_target_info_gets_the_added_columns_and_the_drops() -> None:
    conv = MetricsConverter(MetricsConfig(drop_labels=("^target_info$=^host_",), add_labels=("cluster=prod",)))
    req = metrics_request(gauge("up", point(1.0)), resource={"service.name": "api", "host.name": "h1", "os": "linux"})
    info = parse(text(conv.convert_otlp(req), "Metrics", "TargetInfo"))
    assert [(r[2], r[4]) for r in info] == [('{"job":"api","os":"linux"}', "prod")]


def _histogram(name: str) -> Metric:
    dp = HistogramDataPoint(time_unix_nano=T_NS, count=3, sum=1.5, bucket_counts=[1, 2], explicit_bounds=[0.5])
    return Metric(name=name, histogram=Histogram(data_points=[dp]))


def test_otlp_histograms_are_dropped_series_by_series() -> None:
    whole = MetricsConverter(MetricsConfig(drop_metrics=("^latency",))).convert_otlp(
        metrics_request(_histogram("latency"), gauge("up", point(1.0))))
    assert (whole.accepted, whole.rejected, whole.reasons) == (1, 0, [])
    count_only = MetricsConverter(MetricsConfig(drop_metrics=("_count$",))).convert_otlp(
        metrics_request(_histogram("latency")))
    assert (count_only.rejected, sorted(count_only.tables)) == (
        0, [("Metrics", "LatencyBucket"), ("Metrics", "LatencySum")])


def test_otlp_histograms_keep_their_series_when_a_later_one_is_dropped() -> None:
    result = MetricsConverter(MetricsConfig(drop_metrics=("_bucket$",))).convert_otlp(
        metrics_request(_histogram("latency")))
    assert (result.accepted, result.rejected) == (2, 0)
    assert sorted(result.tables) == [("Metrics", "LatencyCount"), ("Metrics", "LatencySum")]
