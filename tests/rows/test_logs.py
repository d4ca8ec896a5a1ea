from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValueList

from node.rows.batch import KIND_LOG
from node.rows.logs import LOGS_SCHEMA, LogsConfig, LogsConverter
from tests.rows.build import T_NS, kvs, parse, text
from tests.rows.build import log_record as record
from tests.rows.build import logs_request as request

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")


def test_exact_row_text() -> None:
    rec = record(
        {"k": 1, "kusto.table": "App", "kusto.other": "x"},
        time_unix_nano=T_NS,
        observed_time_unix_nano=T_NS + 1,
        severity_text="INFO",
        severity_number=9,
        trace_id=TRACE,
        span_id=SPAN,
    )
    req = request(rec, resource={"service.name": "api", "kusto.database": "Logs"})
    result = LogsConverter().convert(req)
    batch = result.tables[("Logs", "App")]
    assert (batch.kind, batch.schema, batch.count) == (KIND_LOG, LOGS_SCHEMA, 1)
    assert [c for c, _ in LOGS_SCHEMA] == [
        "Timestamp",
        "ObservedTimestamp",
        "TraceId",
        "SpanId",
        "SeverityText",
        "SeverityNumber",
        "Body",
        "Resource",
        "Attributes",
    ]
    assert batch.data.decode() == (
        "2026-11-24T04:00:00.123456789Z,2026-11-24T04:00:00.123456790Z,"
        "5b8efff798038103d269b633813fc60c,eee19b7ec3c1b174,INFO,9,"
        '"""hello""","{""service.name"":""api""}","{""k"":1}"\n'
    )
    assert (result.accepted, result.rejected) == (1, 0)


def test_missing_ids_timestamps_and_quoted_severity() -> None:
    rec = record(observed_time_unix_nano=T_NS, severity_text="WARN, really", trace_id=bytes(16))
    result = LogsConverter(LogsConfig("Logs", "Default")).convert(request(rec))
    assert parse(text(result, "Logs", "Default")) == [
        [
            "2026-11-24T04:00:00.123456789Z",
            "2026-11-24T04:00:00.123456789Z",
            "",
            "",
            "WARN, really",
            "0",
            '"hello"',
            "{}",
            "{}",
        ]
    ]


def test_routing_precedence_record_over_resource_over_default() -> None:
    conv = LogsConverter(LogsConfig(default_database="DefDb", default_table="DefTable"))
    req = ExportLogsServiceRequest()
    with_resource = req.resource_logs.add()
    with_resource.resource.attributes.extend(kvs({"kusto.database": "ResDb", "kusto.table": "ResTable"}))
    with_resource.scope_logs.add().log_records.extend(
        [
            record({"kusto.database": "RecDb", "kusto.table": "RecTable"}, body="both on record"),
            record({"kusto.table": "RecTable"}, body="table on record"),
            record(body="resource only"),
        ]
    )
    bare = req.resource_logs.add()
    bare.scope_logs.add().log_records.extend(
        [record(body="defaults"), record({"kusto.database": "RecDb"}, body="database on record")]
    )
    result = conv.convert(req)
    bodies = {dest: [json.loads(r[6]) for r in parse(b.data.decode())] for dest, b in result.tables.items()}
    assert bodies == {
        ("RecDb", "RecTable"): ["both on record"],
        ("ResDb", "RecTable"): ["table on record"],
        ("ResDb", "ResTable"): ["resource only"],
        ("DefDb", "DefTable"): ["defaults"],
        ("RecDb", "DefTable"): ["database on record"],
    }
    assert (result.accepted, result.rejected) == (5, 0)


@pytest.mark.parametrize("cfg", [LogsConfig(None, None), LogsConfig("", "")])
def test_no_route_and_no_default_is_rejected(cfg: LogsConfig) -> None:
    result = LogsConverter(cfg).convert(request(record(), record({"kusto.database": "Db"})))
    assert (result.accepted, result.rejected, result.tables) == (0, 2, {})
    assert result.reasons == [
        "no kusto.database and kusto.table attribute and no default configured",
        "no kusto.table attribute and no default configured",
    ]


def test_no_route_goes_to_logs_logs_by_default() -> None:
    result = LogsConverter().convert(request(record(), record({"kusto.database": "Db"})))
    assert (result.accepted, result.rejected, result.reasons) == (2, 0, [])
    assert {k: b.count for k, b in result.tables.items()} == {("Logs", "Logs"): 1, ("Db", "Logs"): 1}


HOSTILE = ["../x", "a/b", "", "a\0b", "tablé", "日本", "x" * 10240, " x", "x.y", "a\nb", "..", "Z" * 1025, "T" * 151]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("key", ["kusto.table", "kusto.database"])
def test_hostile_names_are_rejected_never_cleaned(key: str, name: str) -> None:
    conv = LogsConverter(LogsConfig("Logs", "Default"))
    result = conv.convert(request(record({key: name}), record()))
    assert (result.accepted, result.rejected) == (1, 1)
    assert list(result.tables) == [("Logs", "Default")]
    shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}... ({len(name)} characters)"
    limit = 64 if key == "kusto.database" else 150  # a segment file name must fit in 255 bytes
    assert result.reasons == [f"invalid log record attribute {key}: {shown} does not match "
                              f"[A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-{limit} characters"]
    assert result.reasons[0].split(":")[0] == f"invalid log record attribute {key}"  # no request data


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_resource_names_reject_records_that_use_them(name: str) -> None:
    conv = LogsConverter(LogsConfig("Logs", "Default"))
    req = request(record(), record({"kusto.table": "Good"}), resource={"kusto.table": name})
    result = conv.convert(req)
    assert (result.accepted, result.rejected) == (1, 1)
    assert list(result.tables) == [("Logs", "Good")]
    assert result.reasons[0].startswith("invalid resource attribute kusto.table: ")


def test_non_string_route_is_rejected() -> None:
    result = LogsConverter(LogsConfig("Logs", "T")).convert(request(record({"kusto.table": 5})))
    assert result.reasons == ["invalid log record attribute kusto.table: '5' is not a string"]


def test_disallowed_database() -> None:
    conv = LogsConverter(LogsConfig("Logs", "T", allowed_databases=frozenset({"Logs"})))
    result = conv.convert(request(record({"kusto.database": "Other"}), record()))
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == ["database has no configured sink: 'Other'"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (AnyValue(string_value='say "hi"'), 'say "hi"'),
        (AnyValue(int_value=-(2**63)), -(2**63)),
        (AnyValue(double_value=1.5), 1.5),
        (AnyValue(double_value=float("nan")), "NaN"),
        (AnyValue(double_value=float("-inf")), "-Infinity"),
        (AnyValue(bool_value=False), False),
        (AnyValue(bytes_value=b"\x00\x01\xfe"), "AAH+"),
        (
            AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"), AnyValue(int_value=2), AnyValue()])),
            ["a", 2, None],
        ),
        (
            AnyValue(kvlist_value=KeyValueList(values=kvs({"n": "nested", "b": True}))),
            {"n": "nested", "b": True},
        ),
        (AnyValue(), None),
    ],
)
def test_body_json_types(body: AnyValue, expected: object) -> None:
    result = LogsConverter(LogsConfig("Logs", "T")).convert(request(record(body=body)))
    rows = parse(text(result, "Logs", "T"))
    assert json.loads(rows[0][6]) == expected


def test_unset_body_is_json_null() -> None:
    result = LogsConverter(LogsConfig("Logs", "T")).convert(request(record(body=None)))
    assert text(result, "Logs", "T").split(",")[6] == '"null"'


def test_nested_kvlist_attributes_and_unicode() -> None:
    inner = AnyValue(kvlist_value=KeyValueList(values=kvs({"deep": 'ünï,"x"\n'})))
    rec = record({"outer": inner, "list": AnyValue(array_value=ArrayValue(values=[inner]))})
    result = LogsConverter(LogsConfig("Logs", "T")).convert(request(rec))
    rows = parse(text(result, "Logs", "T"))
    assert json.loads(rows[0][8]) == {"outer": {"deep": 'ünï,"x"\n'}, "list": [{"deep": 'ünï,"x"\n'}]}


@pytest.mark.parametrize("cfg", [LogsConfig(default_database="../x"), LogsConfig(default_table="a b")])
def test_invalid_defaults_are_refused(cfg: LogsConfig) -> None:
    with pytest.raises(ValueError, match=r"^invalid default (database|table): "):
        LogsConverter(cfg)
