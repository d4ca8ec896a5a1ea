"""The ADX sink against real parts: the real azure-kusto clients, real Azurite storage, a fake Kusto endpoint.

No Kusto engine runs here, so `FakeKusto` answers the management commands and then plays the ingestion
service: it reads the queue messages the real QueuedIngestClient posted to Azurite, downloads each blob,
gunzips it and applies the CSV mapping the sink registered, column by column.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from node.errors import PermanentSinkError, SinkError
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConverter
from node.sinks.adx import (
    AdxConfig,
    AdxSink,
    create_mapping_command,
    create_table_command,
    describe,
    ingest_url,
    mapping_name,
    parse_endpoints,
)
from node.sinks.base import Batch
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from tests.rows.build import T_MS, T_NS, kvs, log_record, logs_request, remote_write
from tests.rows.hostile import CASES as HOSTILE_CASES
from tests.rows.hostile import check, strict_csv
from tests.sinks_adx.azurite import Azurite, running_azurite
from tests.sinks_adx.fake_kusto import AUTH_CONTEXT, FakeKusto, Ingestion
from tests.wal.helpers import write_block

DATABASES = ("Metrics", "Logs", "Traces")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with running_azurite(tmp_path_factory.mktemp("azurite")) as storage:
        yield storage


@pytest.fixture
def kusto(azurite: Azurite) -> Iterator[FakeKusto]:
    fake = FakeKusto(azurite, f"t{uuid.uuid4().hex[:16]}")
    fake.start()
    yield fake
    fake.stop()
    assert fake.unexpected == [], "the clients sent requests the fake does not know"


@pytest.fixture
def wal(tmp_path: Path) -> Repository:
    repo = Repository(WalConfig(tmp_path / "wal", max_segment_size=2 << 10))
    repo.start()
    return repo


def make_sink(kusto: FakeKusto, tmp_path: Path, **kw: Any) -> AdxSink:
    kw.setdefault("auth", "none")
    config = AdxConfig(endpoints=dict.fromkeys(DATABASES, kusto.url), temp_dir=tmp_path / "adx-tmp",
                       storage_retries=0, **kw)
    sink = AdxSink(config)
    sink.start()
    return sink


@pytest.fixture
def sink(kusto: FakeKusto, tmp_path: Path) -> Iterator[AdxSink]:
    s = make_sink(kusto, tmp_path)
    yield s
    s.stop()


# -- rows -----------------------------------------------------------------------------------------

def metrics(n: int = 40, name: str = "container_cpu_usage_seconds_total", lift: tuple[str, ...] = ()) -> ConvertResult:
    values = [0.5, math.nan, math.inf, -math.inf, -0.0, 1e300, 12345.678]
    series = []
    for i in range(n):
        labels = {"__name__": name, "pod": f"api-{i}", "namespace": "default", "container": "app",
                  "note": 'has "quotes", commas\nand a newline' if i % 7 == 0 else "plain"}
        series.append((labels, [(values[(i + k) % len(values)], T_MS + k * 15_000) for k in range(5)]))
    return MetricsConverter(MetricsConfig(lift_labels=lift)).convert_remote_write(remote_write(*series))


def logs(n: int = 30) -> ConvertResult:
    records = [log_record({"http.status": 200 + i % 3, "kusto.table": "AppLogs"},
                          body=f'line {i}: "quoted", comma\nsecond line ✓', time_unix_nano=T_NS + i,
                          severity_text="INFO", severity_number=9, trace_id=bytes(range(16)), span_id=bytes(8))
               for i in range(n)]
    return LogsConverter(LogsConfig(default_database="Logs")).convert(
        logs_request(*records, resource={"service.name": "api", "kusto.database": "Logs"}))


def traces(n: int = 20) -> ConvertResult:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs({"service.name": "api"}))
    ss = rs.scope_spans.add()
    for i in range(n):
        ss.spans.append(Span(trace_id=bytes([i + 1] * 16), span_id=bytes([i + 1] * 8), name=f"GET /items/{i}",
                             kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + 5000,
                             attributes=kvs({"http.route": "/items/{id}", "n": i}),
                             status=Status(code=Status.STATUS_CODE_OK)))
    return TracesConverter().convert(req)


def write(wal: Repository, *results: ConvertResult) -> dict[tuple[str, str], bytes]:
    """Append every table of `results` to the WAL; return the rows written per (database, table)."""
    sent: dict[tuple[str, str], bytearray] = defaultdict(bytearray)
    for result in results:
        assert result.rejected == 0, result.reasons
        for (db, table), tb in result.tables.items():
            write_block(wal, db, table, tb.kind, tb.data, tb.count, tb.schema)
            sent[(db, table)] += tb.data
    return {k: bytes(v) for k, v in sent.items()}


def batches(wal: Repository) -> list[Batch]:
    """Close the active segments; one batch per prefix, oldest segment first."""
    wal.rotate_all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for info in sorted(wal.closed_segments(), key=lambda i: i.name.segment_id):
        groups[info.name.prefix].append(info)
    return [Batch(infos[0].name.database, infos[0].name.table, tuple(infos)) for infos in groups.values()]


def upload_all(sink: AdxSink, wal: Repository) -> list[Batch]:
    done = batches(wal)
    for batch in done:
        sink.upload(batch)
        wal.remove(batch.segments)
    return done


# -- the ingestion service's view -----------------------------------------------------------------

def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline=""), strict=True))


def check_value(value: str, adx_type: str) -> None:
    """What ADX would do with `value` in a column of `adx_type`: it must parse."""
    if adx_type == "datetime":
        assert _DATETIME.fullmatch(value), value
    elif adx_type in ("long", "int"):
        assert -(1 << 63) <= int(value) < (1 << 63)
    elif adx_type == "real":
        assert value in ("NaN", "Infinity", "-Infinity") or math.isfinite(float(value)), value
    elif adx_type == "dynamic":
        json.loads(value)
    else:
        assert adx_type == "string", adx_type


def applied(kusto: FakeKusto, ing: Ingestion) -> list[dict[str, str]]:
    """Check one queued ingestion as ADX would take it; return its rows mapped to columns."""
    msg, props = ing.message, ing.additional
    db, table = msg["DatabaseName"], msg["TableName"]
    assert msg["RawDataSize"] == len(ing.data) > 0
    assert (props["format"], props["ingestionMappingType"]) == ("csv", "Csv")
    assert props["authorizationContext"] == AUTH_CONTEXT
    assert "ignoreFirstRecord" not in props
    mapping = kusto.mappings[(db, table, props["ingestionMappingReference"])]
    assert [int(m["Properties"]["Ordinal"]) for m in mapping] == list(range(len(mapping)))
    columns = dict(kusto.tables[(db, table)])
    out = []
    for row in parse_csv(ing.data):
        assert len(row) == len(mapping), row
        for m in mapping:
            assert columns[m["Column"]] == m["DataType"]
            check_value(row[int(m["Properties"]["Ordinal"])], m["DataType"])
        out.append({m["Column"]: row[int(m["Properties"]["Ordinal"])] for m in mapping})
    return out


def received(kusto: FakeKusto) -> dict[tuple[str, str], list[list[str]]]:
    """Every row the ingestion service got, per (database, table), after checking each ingestion."""
    rows: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for ing in kusto.ingest():
        applied(kusto, ing)
        rows[(ing.message["DatabaseName"], ing.message["TableName"])] += parse_csv(ing.data)
    return rows


# -- configuration --------------------------------------------------------------------------------

def test_parse_endpoints() -> None:
    assert parse_endpoints([]) == {}
    assert parse_endpoints(["Metrics=https://C1.westeurope.kusto.windows.net/", "Logs=http://127.0.0.1:8080",
                            "Metrics=https://c1.westeurope.kusto.windows.net", "V6=http://[::1]:9"]) == {
        "Metrics": "https://c1.westeurope.kusto.windows.net",
        "Logs": "http://127.0.0.1:8080",
        "V6": "http://[::1]:9",
    }


@pytest.mark.parametrize("entry", [
    "Metrics",                                    # no URL
    "=https://c.kusto.windows.net",              # no database
    "../etc=https://c.kusto.windows.net",        # path characters
    "Me trics=https://c.kusto.windows.net",
    "Metrics-1=https://c.kusto.windows.net",     # '-' stands for '_' in segment file names
    "Metrics__1=https://c.kusto.windows.net",    # '_' only between runs of letters and digits
    "_Metrics=https://c.kusto.windows.net",
    "Métrics=https://c.kusto.windows.net",
    "Metrics\x00=https://c.kusto.windows.net",
    "M" * 1025 + "=https://c.kusto.windows.net",
    "Metrics=",
    "Metrics=c.kusto.windows.net",                # no scheme
    "Metrics=ftp://c.kusto.windows.net",
    "Metrics=file:///etc/passwd",
    "Metrics=https://",
    "Metrics=https://user:secret@c.kusto.windows.net",
    "Metrics=https://c.kusto.windows.net;Fed=True;AppKey=x",  # connection string injection
    "Metrics=https://c.kusto.windows.net/db",
    "Metrics=https://c.kusto.windows.net?x=1",
    "Metrics=https://c.kusto.windows.net#f",
    "Metrics=https://c.kusto.windows.net:99999",
    "Metrics=https://c.kusto.windows.net x",
    "Metrics=https://c.kusto.windows.net\n",
    "Metrics=https://c.kusto.windows.net', 'x",
])
def test_parse_endpoints_rejects(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoints([entry])


def test_parse_endpoints_rejects_two_urls_for_one_database() -> None:
    with pytest.raises(ValueError, match="two Kusto endpoints"):
        parse_endpoints(["Metrics=https://a.kusto.windows.net", "Metrics=https://b.kusto.windows.net"])


def test_ingest_url() -> None:
    assert ingest_url("https://c1.westeurope.kusto.windows.net") == "https://ingest-c1.westeurope.kusto.windows.net"
    assert ingest_url("https://c1.kusto.windows.net:443") == "https://ingest-c1.kusto.windows.net:443"
    assert ingest_url("https://ingest-c1.kusto.windows.net") == "https://ingest-c1.kusto.windows.net"
    for local in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://10.1.2.3"):
        assert ingest_url(local) == local


def test_accepts_only_configured_databases() -> None:
    sink = AdxSink(AdxConfig(endpoints={"Metrics": "https://c.kusto.windows.net"}))
    assert sink.accepts("Metrics")
    assert not sink.accepts("Logs")
    assert not sink.accepts("metrics")


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="auth"):
        AdxConfig(endpoints={}, auth="password")
    with pytest.raises(ValueError, match="ingest endpoint"):
        AdxConfig(endpoints={}, ingest_endpoints={"Metrics": "https://ingest-c.kusto.windows.net"})
    # A bearer token never goes over plain http, except to this machine.
    with pytest.raises(ValueError, match="plain http"):
        AdxSink(AdxConfig(endpoints={"Metrics": "http://c.kusto.windows.net"}, auth="token"))
    AdxSink(AdxConfig(endpoints={"Metrics": "http://127.0.0.1:1"}, auth="token"))
    AdxSink(AdxConfig(endpoints={"Metrics": "http://kustainer.svc:8080"}, auth="none"))


def test_commands_text() -> None:
    schema = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))
    assert create_table_command("Up", schema) == (
        ".create-merge table ['Up'] (['Timestamp']:datetime, ['SeriesId']:long, ['Labels']:dynamic, ['Value']:real)")
    name = mapping_name("Up", schema)
    assert re.fullmatch(r"Up_[0-9a-z]+", name)
    assert create_mapping_command("Up", name, schema) == (
        f".create-or-alter table ['Up'] ingestion csv mapping \"{name}\" '["
        '{"Column":"Timestamp","DataType":"datetime","Properties":{"Ordinal":"0"}},'
        '{"Column":"SeriesId","DataType":"long","Properties":{"Ordinal":"1"}},'
        '{"Column":"Labels","DataType":"dynamic","Properties":{"Ordinal":"2"}},'
        '{"Column":"Value","DataType":"real","Properties":{"Ordinal":"3"}}]\'')


def test_describe_redacts_sas() -> None:
    try:
        try:
            raise OSError("PUT http://127.0.0.1:1/acc/c/blob?sv=2025&sig=AbC%2B123%3D&se=x failed")
        except OSError as e:
            raise RuntimeError("upload failed") from e
    except RuntimeError as e:
        text = describe(e)
    assert "AbC" not in text and "sig=REDACTED" in text and "upload failed" in text


# -- delivery -------------------------------------------------------------------------------------

def test_metrics_logs_and_traces_are_delivered(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    sent = write(wal, metrics(), logs(), traces(), metrics(name="up"), metrics(n=10))
    done = upload_all(sink, wal)
    assert len(done) == 4 and any(len(b.segments) > 1 for b in done)
    assert all(b.uncompressed_bytes > 0 and b.rows > 0 for b in done)

    rows = received(kusto)
    assert rows.keys() == sent.keys() == {("Metrics", "ContainerCpuUsageSecondsTotal"), ("Metrics", "Up"),
                                          ("Logs", "AppLogs"), ("Traces", "Traces")}
    for key, data in sent.items():
        assert rows[key] == parse_csv(data), key  # every row, in order, nothing else
    assert kusto.ingest() == []  # one message per batch, all taken
    # The table and mapping commands: right columns, types and ordinals, to the right database.
    merges = {(c.database, c.text) for c in kusto.sent(".create-merge")}
    assert (
        "Metrics", ".create-merge table ['Up'] (['Timestamp']:datetime, ['SeriesId']:long, ['Labels']:dynamic, "
        "['Value']:real)") in merges
    assert ("Logs", ".create-merge table ['AppLogs'] (['Timestamp']:datetime, ['ObservedTimestamp']:datetime, "
            "['TraceId']:string, ['SpanId']:string, ['SeverityText']:string, ['SeverityNumber']:int, "
            "['Body']:dynamic, ['Resource']:dynamic, ['Attributes']:dynamic)") in merges
    assert len(merges) == 4
    assert kusto.tables[("Traces", "Traces")][:3] == [("TraceID", "string"), ("SpanID", "string"),
                                                      ("ParentID", "string")]
    for (db, table, _name), mapping in kusto.mappings.items():
        assert [(m["Column"], m["DataType"]) for m in mapping] == kusto.tables[(db, table)]
    assert len(kusto.sent(".create-or-alter")) == 4
    # The resources and the identity token were asked for once and cached.
    assert len(kusto.sent(".get ingestion resources")) == 1
    assert len(kusto.sent(".get kusto identity token")) == 1


def test_rows_land_in_their_columns(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    write(wal, metrics(n=3, name="up"), logs(n=2))
    upload_all(sink, wal)
    by_table = {ing.message["TableName"]: applied(kusto, ing) for ing in kusto.ingest()}
    up = by_table["Up"]
    assert up[0]["Timestamp"] == "2026-11-24T04:00:00.123Z"
    assert json.loads(up[0]["Labels"])["pod"] == "api-0"
    assert [r["Value"] for r in up[:3]] == ["0.5", "NaN", "Infinity"]
    log_row = by_table["AppLogs"][0]
    assert json.loads(log_row["Body"]) == 'line 0: "quoted", comma\nsecond line ✓'
    assert (log_row["SeverityText"], log_row["SeverityNumber"]) == ("INFO", "9")
    assert log_row["TraceId"] == bytes(range(16)).hex()


@pytest.mark.parametrize("name", HOSTILE_CASES)
def test_hostile_values_reach_the_ingestion_as_sent(kusto: FakeKusto, sink: AdxSink, wal: Repository,
                                                    name: str) -> None:
    """Hostile strings in every string column (tests/rows/hostile.py): N rows sent -> N rows in the
    blobs ADX is told to ingest, each value byte for byte.

    Kusto itself cannot run here, so what is checked is the CSV blob that was queued for ingestion,
    as ADX's CSV format reads it (RFC 4180: fields in double quotes with `""` for `"`, no escapes,
    single quotes and backslashes plain text): parsed by a strict RFC 4180 reader that also refuses
    an unquoted `'`, backslash or edge space or tab (`strict_csv`), which must agree with Python's
    strict csv reader, then mapped to columns by the registered mapping (`applied`)."""
    case = HOSTILE_CASES[name]()
    write(wal, *case.results)
    upload_all(sink, wal)
    rows: list[dict[str, str]] = []
    for ing in kusto.ingest():
        assert (ing.message["DatabaseName"], ing.message["TableName"]) == (case.database, case.table)
        assert strict_csv(ing.data.decode()) == parse_csv(ing.data)
        rows += applied(kusto, ing)
    check(case, rows)


def test_table_and_mapping_commands_are_sent_once_per_table_and_schema(
        kusto: FakeKusto, sink: AdxSink, wal: Repository, tmp_path: Path) -> None:
    for _ in range(3):
        write(wal, metrics(name="up"))
        upload_all(sink, wal)
    assert len(kusto.sent(".create-merge")) == len(kusto.sent(".create-or-alter")) == 1
    # A new lifted label changes the schema: the table gains a column, a second mapping is made.
    write(wal, metrics(name="up", lift=("pod",)))
    upload_all(sink, wal)
    merges = kusto.sent(".create-merge")
    assert len(merges) == 2 and merges[1].text.endswith("['Value']:real, ['Pod']:string)")
    names = sorted(name for (_, table, name) in kusto.mappings if table == "Up")
    assert len(names) == 2 and len(kusto.sent(".create-or-alter")) == 2
    assert kusto.tables[("Metrics", "Up")][-1] == ("Pod", "string")
    rows = [r for i in kusto.ingest() for r in applied(kusto, i)]
    assert len(rows) == 4 * 40 * 5
    assert {r.get("Pod") for r in rows} == {None} | {f"api-{i}" for i in range(40)}
    # Another process (a new sink) sends them again, once.
    other = make_sink(kusto, tmp_path)
    write(wal, metrics(name="up"))
    upload_all(other, wal)
    other.stop()
    assert len(kusto.sent(".create-merge")) == 3


def test_ingest_by_tags(kusto: FakeKusto, tmp_path: Path, wal: Repository) -> None:
    tagged = make_sink(kusto, tmp_path, ingest_by_tags=True)
    write(wal, metrics(name="up"))
    (batch,) = upload_all(tagged, wal)
    tagged.stop()
    (ing,) = kusto.ingest()
    assert json.loads(ing.additional["tags"]) == [f"ingest-by:{batch.id}"]
    assert json.loads(ing.additional["ingestIfNotExists"]) == [batch.id]


def test_untagged_by_default(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    write(wal, metrics(name="up"))
    upload_all(sink, wal)
    (ing,) = kusto.ingest()
    assert "tags" not in ing.additional and "ingestIfNotExists" not in ing.additional


@pytest.mark.parametrize("compressible", [True, False])
def test_large_batch_is_streamed(kusto: FakeKusto, sink: AdxSink, wal: Repository, compressible: bool) -> None:
    """64 MiB of rows go up with a few MiB of Python memory, in one blob or (incompressible) in blocks."""
    if compressible:
        chunk = bytes(metrics(n=400).tables[("Metrics", "ContainerCpuUsageSecondsTotal")].data)
        schema = MetricsConverter().schema
    else:
        chunk = base64.encodebytes(os.urandom(3 << 20))  # ~1.3x gzip ratio: ~50 MB of blob, 4 MiB blocks
        schema = (("Blob", "string"),)
    total = 0
    while total < 64 << 20:
        write_block(wal, "Metrics", "Big", fmt.KIND_METRIC, chunk, chunk.count(b"\n"), schema)
        total += len(chunk)
    (batch,) = batches(wal)
    tracemalloc.start()
    try:
        sink.upload(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch.uncompressed_bytes == total
    # One WAL block and the compressor's output; in block mode the storage SDK holds a few copies of a 4 MiB block.
    bound = (8 if compressible else 32) << 20
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB for a {total / 2**20:.0f} MiB batch"
    (ing,) = kusto.ingest()
    assert ing.message["RawDataSize"] == len(ing.data) == total
    assert ing.data == chunk * (total // len(chunk))


# -- failures -------------------------------------------------------------------------------------

def test_storage_down_is_retried_and_delivered_after_restart(
        azurite: Azurite, kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    first = write(wal, metrics(name="up"))
    upload_all(sink, wal)  # resources fetched and cached while storage is up
    second = write(wal, metrics(name="up", n=25), logs())
    (a, b) = batches(wal)
    azurite.stop()
    try:
        for batch in (a, b):
            with pytest.raises(SinkError) as err:
                sink.upload(batch)
            assert not isinstance(err.value, PermanentSinkError)
            assert not re.search(r"sig=(?!REDACTED)", str(err.value)), str(err.value)
    finally:
        azurite.start()
    # The uploader retries the same segments as a new Batch.
    for batch in (a, b):
        sink.upload(Batch(batch.database, batch.table, batch.segments))
    rows = received(kusto)
    expected = parse_csv(first[("Metrics", "Up")] + second[("Metrics", "Up")])
    assert sorted(map(tuple, rows[("Metrics", "Up")])) == sorted(map(tuple, expected))
    assert rows[("Logs", "AppLogs")] == parse_csv(second[("Logs", "AppLogs")])


def test_refused_schema_is_permanent(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    kusto.fail(".create-merge", 400, "BadRequest_InvalidColumnType", permanent=True)
    write(wal, metrics(name="up"))
    (batch,) = batches(wal)
    with pytest.raises(PermanentSinkError, match=r"BadRequest_InvalidColumnType: injected"):
        sink.upload(batch)
    assert kusto.sent(".create-or-alter") == [] and kusto.ingest() == []


def test_column_type_conflict_is_permanent(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    # The table exists with Value:string (made by someone else); the fake refuses the merge as ADX does.
    kusto.tables[("Metrics", "Up")] = [("Value", "string")]
    write(wal, metrics(name="up"))
    (batch,) = batches(wal)
    with pytest.raises(PermanentSinkError):
        sink.upload(batch)


@pytest.mark.parametrize(("prefix", "status", "code"), [
    (".create-merge", 429, "TooManyRequests"),
    (".create-merge", 503, "ServiceUnavailable"),
    (".create-or-alter", 500, "InternalServiceError"),
    (".create-merge", 401, "Unauthorized"),
    (".create-merge", 400, "BadRequest_DatabaseNotExist"),
    (".get ingestion resources", 503, "ServiceUnavailable"),
    (".get kusto identity token", 500, "InternalServiceError"),
])
def test_transient_service_errors_are_retried(kusto: FakeKusto, sink: AdxSink, wal: Repository,
                                              prefix: str, status: int, code: str) -> None:
    sent = write(wal, metrics(name="up"))
    (batch,) = batches(wal)
    kusto.fail(prefix, status, code, permanent=code.startswith("BadRequest"))
    with pytest.raises(SinkError) as err:
        sink.upload(batch)
    assert not isinstance(err.value, PermanentSinkError), err.value
    kusto.clear()
    sink.upload(Batch(batch.database, batch.table, batch.segments))
    assert received(kusto)[("Metrics", "Up")] == parse_csv(sent[("Metrics", "Up")])
    # Nothing was cached before both commands succeeded; once they did, they are not sent again.
    failed_command = prefix.startswith(".create")
    assert len(kusto.sent(".create-or-alter")) == 1 + (prefix == ".create-or-alter")
    assert len(kusto.sent(".create-merge")) == 1 + failed_command
    sink.upload(Batch(batch.database, batch.table, batch.segments))
    assert len(kusto.sent(".create-merge")) == 1 + failed_command


def test_unreachable_kusto_is_retried(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    kusto.stop()
    write(wal, metrics(name="up"))
    (batch,) = batches(wal)
    with pytest.raises(SinkError) as err:
        sink.upload(batch)
    assert not isinstance(err.value, PermanentSinkError)


def test_database_without_endpoint(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    assert not sink.accepts("Other")
    write_block(wal, "Other", "Up", fmt.KIND_METRIC, b"x\n", 1, (("A", "string"),))
    (batch,) = batches(wal)
    with pytest.raises(SinkError) as err:
        sink.upload(batch)
    assert not isinstance(err.value, PermanentSinkError) and kusto.commands == []


@pytest.mark.parametrize("schema", [
    (("Col", "varchar"),),
    (("Col", "string"), ("col", "long")),
    (("Col", "string"), ("Col", "string")),
])
def test_unusable_schema_is_permanent_and_sends_nothing(kusto: FakeKusto, sink: AdxSink, wal: Repository,
                                                        schema: tuple[tuple[str, str], ...]) -> None:
    write_block(wal, "Metrics", "Up", fmt.KIND_METRIC, b"x\n", 1, schema)
    (batch,) = batches(wal)
    with pytest.raises(PermanentSinkError):
        sink.upload(batch)
    assert kusto.commands == []


@pytest.mark.parametrize("column", ["Bad'Col", "Col']:string); .drop table ['Up", 'Col"', "Col\\", "", "Ünï"])
def test_hostile_column_names_never_reach_a_command(kusto: FakeKusto, sink: AdxSink, wal: Repository,
                                                    column: str) -> None:
    # The WAL only recognises plain header lines; a batch can still carry any schema object.
    write_block(wal, "Metrics", "Up", fmt.KIND_METRIC, b"x\n", 1, (("Col", "string"),))
    (batch,) = batches(wal)
    with pytest.raises(PermanentSinkError):
        sink.upload(Batch(batch.database, batch.table, batch.segments, schema=((column, "string"),)))
    assert kusto.commands == []


def test_segment_named_with_a_schema_but_without_header_is_permanent(sink: AdxSink, wal: Repository) -> None:
    write_block(wal, "Metrics", "Up", fmt.KIND_METRIC, b"x\n", 1, (("Col", "string"),))
    (batch,) = batches(wal)
    batch.read_schema = lambda: None  # type: ignore[method-assign]
    with pytest.raises(PermanentSinkError, match="no schema header"):
        sink.upload(batch)


def test_token_auth_reads_the_token_file_at_each_request(kusto: FakeKusto, tmp_path: Path, wal: Repository) -> None:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    authed = make_sink(kusto, tmp_path, auth="token", token_file=token)
    write(wal, metrics(name="up"))
    upload_all(authed, wal)
    assert {c.authorization for c in kusto.commands} == {"Bearer tok-1"}
    token.write_text("tok-2")
    n = len(kusto.commands)
    write(wal, metrics(name="other"))
    upload_all(authed, wal)
    authed.stop()
    assert n < len(kusto.commands)
    assert {c.authorization for c in kusto.commands[n:]} == {"Bearer tok-2"}


def test_token_auth_without_a_token_fails_to_start(kusto: FakeKusto, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGESTOR_ADX_TOKEN", raising=False)
    with pytest.raises(SinkError, match="INGESTOR_ADX_TOKEN"):
        make_sink(kusto, tmp_path, auth="token")
    monkeypatch.setenv("INGESTOR_ADX_TOKEN", "from-env")
    make_sink(kusto, tmp_path, auth="token").stop()


def test_no_auth_sends_no_authorization(kusto: FakeKusto, sink: AdxSink, wal: Repository) -> None:
    write(wal, metrics(name="up"))
    upload_all(sink, wal)
    assert kusto.commands and {c.authorization for c in kusto.commands} == {None}


def test_explicit_ingest_endpoint(azurite: Azurite, kusto: FakeKusto, tmp_path: Path, wal: Repository) -> None:
    dm = FakeKusto(azurite, f"t{uuid.uuid4().hex[:16]}")
    dm.start()
    try:
        s = make_sink(kusto, tmp_path, ingest_endpoints={"Metrics": dm.url})
        write(wal, metrics(name="up"))
        upload_all(s, wal)
        s.stop()
        # Table commands to the engine; resources and the identity token from the ingest endpoint.
        assert [c.text.split(" ")[0] for c in kusto.commands] == [".create-merge", ".create-or-alter"]
        assert [c.text for c in dm.commands] == [".get ingestion resources", ".get kusto identity token"]
        assert len(dm.ingest()) == 1 and kusto.ingest() == []
    finally:
        dm.stop()
    assert dm.unexpected == []


def test_default_auth_builds_clients_without_network() -> None:
    s = AdxSink(AdxConfig(endpoints={"Metrics": "https://c1.westeurope.kusto.windows.net"}))
    s.start()
    s.stop()
