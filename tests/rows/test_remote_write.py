from __future__ import annotations

import math

import pytest

from node.rows.batch import KIND_METRIC
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.series import series_id
from tests.rows.build import T_MS, parse, remote_write, sid, text

BASE = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))


def test_exact_row_text() -> None:
    labels = {"__name__": "container_cpu_usage_seconds_total", "pod": "api-0", "namespace": "default"}
    result = MetricsConverter().convert_remote_write(remote_write((labels, [(0.5, T_MS), (2.0, T_MS + 1000)])))
    batch = result.tables[("Metrics", "ContainerCpuUsageSecondsTotal")]
    assert (batch.database, batch.table, batch.kind, batch.schema, batch.count) == (
        "Metrics",
        "ContainerCpuUsageSecondsTotal",
        KIND_METRIC,
        BASE,
        2,
    )
    s = sid(labels)
    assert batch.data.decode() == (
        f'2026-11-24T04:00:00.123Z,{s},"{{""namespace"":""default"",""pod"":""api-0""}}",0.5\n'
        f'2026-11-24T04:00:01.123Z,{s},"{{""namespace"":""default"",""pod"":""api-0""}}",2.0\n'
    )
    assert (result.accepted, result.rejected, result.reasons) == (2, 0, [])


def test_series_id_is_signed_int64() -> None:
    # xxhash64("__name__upjobnode") = 0xa59e6233f3c9c801: the top bit is set, so it is negative.
    node = {"__name__": "up", "job": "node"}
    api = {"__name__": "up", "job": "api"}  # 0x6b6601ac99b2b0be: positive
    assert series_id(sorted(node.items())) == -6512660035858216959 == sid(node)
    assert series_id(sorted(api.items())) == 7738874850507403454 == sid(api)
    result = MetricsConverter().convert_remote_write(remote_write((node, [(1.0, T_MS)]), (api, [(1.0, T_MS)])))
    rows = parse(text(result, "Metrics", "Up"))
    assert [row[1] for row in rows] == ["-6512660035858216959", "7738874850507403454"]


def test_series_id_ignores_label_order_and_covers_every_label() -> None:
    a = remote_write(({"job": "node", "__name__": "up", "adxmon_database": "Other"}, [(1.0, T_MS)]))
    b = remote_write(({"__name__": "up", "adxmon_database": "Other", "job": "node"}, [(1.0, T_MS)]))
    ra = MetricsConverter().convert_remote_write(a)
    rb = MetricsConverter().convert_remote_write(b)
    assert text(ra, "Other", "Up") == text(rb, "Other", "Up")
    expected = sid({"__name__": "up", "adxmon_database": "Other", "job": "node"})
    assert parse(text(ra, "Other", "Up"))[0][1] == str(expected)


def test_nan_and_infinities() -> None:
    labels = {"__name__": "x"}
    req = remote_write((labels, [(math.nan, T_MS), (math.inf, T_MS), (-math.inf, T_MS), (-0.0, T_MS)]))
    rows = parse(text(MetricsConverter().convert_remote_write(req), "Metrics", "X"))
    assert [row[3] for row in rows] == ["NaN", "Infinity", "-Infinity", "-0.0"]


def test_lifted_labels_order_quoting_and_absence() -> None:
    cfg = MetricsConfig(lift_labels=("pod", "nameSpace", "container_name"))
    conv = MetricsConverter(cfg)
    assert conv.schema == (*BASE, ("ContainerName", "string"), ("NameSpace", "string"), ("Pod", "string"))
    labels = {"__name__": "up", "namespace": 'a,"b"', "pod": "p\nq", "zone": "z1"}
    result = conv.convert_remote_write(remote_write((labels, [(1.0, T_MS)])))
    s = sid(labels)
    assert text(result, "Metrics", "Up") == (
        f'2026-11-24T04:00:00.123Z,{s},"{{""zone"":""z1""}}",1.0,,"a,""b""","p\nq"\n'
    )
    assert parse(text(result, "Metrics", "Up")) == [
        ["2026-11-24T04:00:00.123Z", str(s), '{"zone":"z1"}', "1.0", "", 'a,"b"', "p\nq"]
    ]


def test_adxmon_labels_are_left_out_of_labels_json_and_route() -> None:
    labels = {"__name__": "up", "adxmon_database": "team-a_metrics", "adxmon_other": "x", "job": "api"}
    result = MetricsConverter().convert_remote_write(remote_write((labels, [(1.0, T_MS)])))
    assert list(result.tables) == [("teamametrics", "Up")]
    assert text(result, "teamametrics", "Up") == (f'2026-11-24T04:00:00.123Z,{sid(labels)},"{{""job"":""api""}}",1.0\n')


def test_disallowed_database_is_rejected_with_reason() -> None:
    conv = MetricsConverter(MetricsConfig(allowed_databases=frozenset({"Metrics"})))
    req = remote_write(
        ({"__name__": "up", "adxmon_database": "Nope"}, [(1.0, T_MS), (2.0, T_MS + 1)]),
        ({"__name__": "up"}, [(3.0, T_MS)]),
    )
    result = conv.convert_remote_write(req)
    assert (result.accepted, result.rejected) == (1, 2)
    assert result.reasons == ["database has no configured sink: 'Nope'"]
    assert list(result.tables) == [("Metrics", "Up")]
    # the refusal is cached per series and still counted on the next request
    again = conv.convert_remote_write(req)
    assert (again.accepted, again.rejected, again.reasons) == (1, 2, result.reasons)


def test_default_database_outside_allowed_set_is_rejected() -> None:
    conv = MetricsConverter(MetricsConfig(default_database="Metrics", allowed_databases=frozenset({"Other"})))
    result = conv.convert_remote_write(remote_write(({"__name__": "up"}, [(1.0, T_MS)])))
    assert (result.accepted, result.rejected, result.tables) == (0, 1, {})
    assert result.reasons == ["database has no configured sink: 'Metrics'"]


def test_bad_names_are_rejected() -> None:
    req = remote_write(
        ({"job": "x"}, [(1.0, T_MS)]),
        ({"__name__": "___"}, [(1.0, T_MS)]),
        ({"__name__": "up", "adxmon_database": "..."}, [(1.0, T_MS)]),
    )
    result = MetricsConverter().convert_remote_write(req)
    assert (result.accepted, result.rejected) == (0, 3)
    assert result.reasons == [
        "series without a __name__ label",
        "metric name without [A-Za-z0-9] characters: '___'",
        "adxmon_database without [A-Za-z0-9] characters: '...'",
    ]


def test_out_of_range_timestamp_rejects_the_sample_only() -> None:
    req = remote_write(({"__name__": "up"}, [(1.0, 10**17), (2.0, T_MS)]))
    result = MetricsConverter().convert_remote_write(req)
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == [f"timestamp outside years 1..9999: {10**17}"]


def test_reasons_are_distinct_and_capped() -> None:
    series = [({"__name__": "up", "adxmon_database": f"Db{i}"}, [(1.0, T_MS)]) for i in range(30)]
    series += series
    conv = MetricsConverter(MetricsConfig(allowed_databases=frozenset()))
    result = conv.convert_remote_write(remote_write(*series))
    assert result.rejected == 60
    assert result.reasons == [f"database has no configured sink: 'Db{i}'" for i in range(10)]


def test_cache_is_keyed_by_the_whole_label_set() -> None:
    """Label sets that share prefixes, exemplars and long labels must never share a cache entry."""
    conv = MetricsConverter()
    long_value = "v" * 300  # a label longer than 127 bytes: two-byte length on the wire
    sets = [
        {"__name__": "up", "a": "1"},
        {"__name__": "up", "a": "1", "b": "2"},
        {"__name__": "up", "a": "12"},
        {"__name__": "up", "a": long_value},
        {"__name__": "up", "a": long_value, "b": "2"},
    ]
    for _ in range(2):  # cold, then warm cache
        req = remote_write(*[(labels, [(float(i), T_MS)]) for i, labels in enumerate(sets)])
        req.timeseries[1].exemplars.add(value=9.0, timestamp=T_MS).labels.add(name="trace_id", value="abc")
        rows = parse(text(conv.convert_remote_write(req), "Metrics", "Up"))
        assert [(row[1], row[3]) for row in rows] == [(str(sid(labels)), f"{i}.0") for i, labels in enumerate(sets)]


def test_cache_is_bounded() -> None:
    conv = MetricsConverter(MetricsConfig(max_cached_series=10))
    for i in range(5):
        req = remote_write(*[({"__name__": "up", "i": f"{i}-{j}"}, [(1.0, T_MS)]) for j in range(8)])
        assert conv.convert_remote_write(req).accepted == 8
        assert len(conv._remote) <= 16  # cleared before a request once over the bound


@pytest.mark.parametrize(
    "cfg",
    [
        MetricsConfig(default_database="my-db"),
        MetricsConfig(default_database=""),
        MetricsConfig(lift_labels=("_",)),
        MetricsConfig(lift_labels=("a_b", "aB")),
        MetricsConfig(lift_labels=("value",)),
    ],
)
def test_unusable_configuration_is_refused(cfg: MetricsConfig) -> None:
    with pytest.raises(ValueError):
        MetricsConverter(cfg)


def test_the_series_caches_are_sized_from_the_memory_share() -> None:
    from node.rows.metrics import CACHED_SERIES_BYTES, cached_series

    assert cached_series(1 << 30) == (1 << 30) // 4 // CACHED_SERIES_BYTES == 524_288  # the default share
    assert cached_series(4 << 30) == 2_000_000  # a million series in use stay cached
    assert cached_series(64 << 30) == 2_000_000 and cached_series(64 << 20) == 200_000  # the bounds
