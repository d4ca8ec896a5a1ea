from __future__ import annotations

import pytest

from node.errors import InvalidNameError
from node.names import is_valid_name, validate_name
from node.rows.names import normalize_name, prometheus_label_name, prometheus_metric_name


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("container_cpu_usage_seconds_total", "ContainerCpuUsageSecondsTotal"),
        ("http.server.duration", "HttpServerDuration"),
        ("up", "Up"),
        ("__name__", "Name"),
        ("a__b", "AB"),
        ("_abc", "Abc"),
        ("node_cpu_2_seconds", "NodeCpu2Seconds"),
        ("9lives_x", "9livesX"),
        ("already_Camel_Case", "AlreadyCamelCase"),
        ("my-db", "MyDb"),
        ("dép_ôt", "DPT"),  # é and ô are dropped: the letter after each is upper-cased
        ("___", ""),
        ("日本", ""),
        ("", ""),
    ],
)
def test_normalize_name(name: str, table: str) -> None:
    assert normalize_name(name) == table


def test_normalize_name_caps_at_1024() -> None:
    assert normalize_name("a" * 2000) == "A" + "a" * 1023
    assert len(normalize_name("x_" * 1000)) == 1000


@pytest.mark.parametrize("name", ["A", "abc123", "Z" * 1024, "0", "observability_logs", "a_1_B"])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert validate_name(name, "table") == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "a\0b", "tablé", "a b", "a\n", "a-b", "a.b", "Z" * 1025, "x" * 10240, "\uff41", "_a",
             "a_", "a__b", "a_.b"]
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidNameError, match=r"^invalid kusto\.table: .* does not match \[A-Za-z0-9\]\+"
                                               r"\(_\[A-Za-z0-9\]\+\)\* of 1-1024 characters$"):
        validate_name(name, "kusto.table")


def test_table_and_database_limits_keep_a_segment_file_name_under_255_bytes() -> None:
    from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN
    from node.wal.names import SegmentName

    longest = SegmentName("D" * MAX_DATABASE_LEN, "T" * MAX_TABLE_LEN, "z" * 13, "f" * 16).filename
    assert len(longest.encode()) <= 255
    assert normalize_name("a" * 2000, MAX_TABLE_LEN) == "A" + "a" * (MAX_TABLE_LEN - 1)
    assert validate_name("T" * MAX_TABLE_LEN, "kusto.table", MAX_TABLE_LEN)
    with pytest.raises(InvalidNameError, match=r"of 1-150 characters$"):
        validate_name("T" * (MAX_TABLE_LEN + 1), "kusto.table", MAX_TABLE_LEN)


def test_invalid_name_message_is_short_for_huge_values() -> None:
    with pytest.raises(InvalidNameError) as err:
        validate_name("x" * 10240, "kusto.table")
    assert len(str(err.value)) < 200
    assert "(10240 characters)" in str(err.value)


@pytest.mark.parametrize(
    ("otlp", "prom"),
    [("http.server.duration", "http_server_duration"), ("a:b-c", "a:b_c"), ("1up", "_1up"), ("é", "_")],
)
def test_prometheus_metric_name(otlp: str, prom: str) -> None:
    assert prometheus_metric_name(otlp) == prom


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("k8s.pod.name", "k8s_pod_name"),
        ("http.status_code", "http_status_code"),
        ("2xx", "key_2xx"),
        ("_private", "key_private"),
        ("__meta", "__meta"),
        ("a:b", "a_b"),
    ],
)
def test_prometheus_label_name(key: str, label: str) -> None:
    assert prometheus_label_name(key) == label
