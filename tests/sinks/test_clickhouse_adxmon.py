"""ClickHouse as adx-mon's users have it: their DSNs, their tables, their database names.

The DSN forms adx-mon (ingestor/clickhouse/client.go) and clickhouse-go accept; a table adx-mon's
uploader made (SeriesId UInt64, PARTITION BY toYYYYMMDD(Timestamp) ORDER BY (SeriesId, Timestamp))
taking this node's rows; the tables a fresh database ends up with; and the design notes' own
example, `observability_logs=clickhouse://default:devpass@host:9000/observability_logs`, through a
node process. Against Debian's clickhouse-server 18.16 (tests/sinks/clickhouse_server.py) and, for
a current ClickHouse, chdb through the shared SQL (chschema.deliver).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from node.errors import PermanentSinkError
from node.sinks.base import Batch
from node.sinks.chdsn import Endpoint, parse_bool, parse_duration, parse_endpoint
from node.sinks.chschema import (
    ADXMON_DEFAULT_TABLES,
    SCHEMA_VERSIONS_TABLE,
    Layout,
    TableCache,
    compatible,
    deliver,
    schema_signature,
    unsigned_text,
)
from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, HttpConn, csv_rows, parse_dsns
from node.wal.names import parse_filename
from tests.harness import NodeProcess, free_port
from tests.rows.build import T_NS, log_record, logs_request
from tests.sinks import logs, metrics, raw_batch, write_batch
from tests.sinks.clickhouse_server import INSTALL_HINT, ClickHouseServer, find_binary

PASSWORD = "devpass"  # adx-mon's dev stack: user default, password devpass
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


# -- DSNs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    # The design notes' example: an underscore in the node's database and in ClickHouse's.
    ("observability_logs=clickhouse://default:devpass@host:9000/observability_logs",
     Endpoint("observability_logs", "clickhouse", "host", 9000, "observability_logs", "default", "devpass")),
    # adx-mon's dev stack: tcp://, no path (the database is the endpoint's name).
    ("observability=tcp://default:devpass@clickhouse:9000",
     Endpoint("observability", "clickhouse", "clickhouse", 9000, "observability", "default", "devpass")),
    ("Metrics=native://h", Endpoint("Metrics", "clickhouse", "h", 9000, "Metrics")),
    ("Metrics=NATIVE://h?secure=1", Endpoint("Metrics", "clickhouse", "h", 9440, "Metrics", secure=True)),
    ("Logs=http://h", Endpoint("Logs", "http", "h", 8123, "Logs")),
    ("Logs=https://h/db", Endpoint("Logs", "https", "h", 8443, "db", secure=True)),
    ("Logs=http://h?secure=true", Endpoint("Logs", "https", "h", 8443, "Logs", secure=True)),  # adx-mon: TLS
    ("Logs=http://h:8124?secure=true", Endpoint("Logs", "https", "h", 8124, "Logs", secure=True)),
    # Several hosts: the first, then the others (clickhouse-driver's alt_hosts).
    ("M=clickhouse://u:p@h1:9000,h2:9001,[::1]/m",
     Endpoint("M", "clickhouse", "h1", 9000, "m", "u", "p", alt_hosts=(("h2", 9001), ("::1", 9000)))),
    ("M=tcp://h1,h2?secure=true", Endpoint("M", "clickhouse", "h1", 9440, "M", secure=True,
                                           alt_hosts=(("h2", 9440),))),
    ("M=http://h1:8123,h2:8123/m", Endpoint("M", "http", "h1", 8123, "m", alt_hosts=(("h2", 8123),))),
    # Parameters with a meaning.
    ("M=clickhouse://h/m?dial_timeout=500ms&read_timeout=1m30s",
     Endpoint("M", "clickhouse", "h", 9000, "m", connect_timeout=0.5, timeout=90.0)),
    ("M=clickhouse://h/m?secure=true&skip_verify=true&tls_server_name=db.internal",
     Endpoint("M", "clickhouse", "h", 9440, "m", secure=True, skip_verify=True, tls_server_name="db.internal")),
    ("M=clickhouse://u:p@h/m?username=v&password=q&database=other",
     Endpoint("M", "clickhouse", "h", 9000, "other", "v", "q")),
    ("M=clickhouse://h1,h2?connection_open_strategy=round_robin",
     Endpoint("M", "clickhouse", "h1", 9000, "M", alt_hosts=(("h2", 9000),), round_robin=True)),
    ("M=http://h?compress=false&http_path=/proxy/ch/", Endpoint("M", "http", "h", 8123, "M", compress=False,
                                                                 http_path="/proxy/ch")),
    ("M=https://h?compress=lz4", Endpoint("M", "https", "h", 8443, "M", secure=True, compress=True)),
])
def test_adxmon_dsns(text: str, want: Endpoint) -> None:
    assert parse_endpoint(text, env={}) == want


def test_the_password_of_a_dsn_is_never_shown() -> None:
    ep = parse_endpoint("M=clickhouse://u:hunter2@h1,h2/m?password=hunter3", env={})
    assert "hunter" not in str(ep) and "hunter" not in repr(ep)
    assert str(ep) == "clickhouse://u@h1:9000,h2:9000/m"
    with pytest.raises(ValueError) as info:
        parse_endpoint("M=clickhouse://u:hunter2@h/m?password=hunter3&secure=maybe", env={})
    assert "hunter" not in str(info.value)


@pytest.mark.parametrize(("query", "warning"), [
    ("debug=true", "parameter debug ignored: it means nothing to this sink"),
    ("max_open_conns=10", "parameter max_open_conns ignored"),
    ("compress=true", "parameter compress ignored: the native protocol goes uncompressed"),
    ("max_execution_time=60", "parameter max_execution_time ignored: not a parameter this sink knows"),
    ("http_path=/x", "parameter http_path ignored: it is for HTTP"),
    ("connection_open_strategy=random", "parameter connection_open_strategy ignored: hosts are tried in order"),
])
def test_parameters_without_a_meaning_are_taken_and_warned_about_once(caplog: pytest.LogCaptureFixture,
                                                                      query: str, warning: str) -> None:
    text = f"M{next(_names)}=clickhouse://h:9000/m?{query}"
    with caplog.at_level(logging.WARNING, logger="node.sinks.clickhouse"):
        first = parse_endpoint(text, env={})
        assert parse_endpoint(text, env={}) == first  # parsed again (another process, a restart of the sink)
    lines = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert first.host == "h" and first.port == 9000


def test_the_other_protocols_port_is_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="node.sinks.clickhouse"):
        ep = parse_endpoint("Ports=clickhouse://h:8123/m", env={})
        parse_endpoint("Ports=http://h:9000/m", env={})
    assert (ep.scheme, ep.port) == ("clickhouse", 8123)  # taken as written: a server may listen there
    text = caplog.text
    assert "port 8123 of h is usually ClickHouse's HTTP port; clickhouse:// speaks the native protocol" in text
    assert "port 9000 of h is usually ClickHouse's native protocol port; http:// speaks the HTTP" in text


def test_go_durations_and_bools() -> None:
    assert [parse_duration(v) for v in ["5s", "500ms", "1m30s", "1.5h", "10", "250us", "2µs"]] == [
        5.0, 0.5, 90.0, 5400.0, 10.0, 0.00025, 2e-6]
    assert [parse_duration(v) for v in ["", "5", "s5", "5x", "-1s", "1s2"]] == [None, 5.0, None, None, None, None]
    assert [parse_bool(v) for v in ["1", "t", "TRUE", "on", "0", "F", "off", "maybe"]] == [
        True, True, True, True, False, False, False, None]


@pytest.mark.parametrize("text", [
    "observability_logs=clickhouse://h:9000,h2:x/db", "a__b=clickhouse://h/db", "x=clickhouse://h/a__b",
    "x=clickhouse://h/?database=../x", "x=clickhouse://[::1/db", "x=ftp://h/db", "x=http://h/db?http_path=/a/../b",
])
def test_what_cannot_mean_anything_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text, env={})
    assert "\n" not in str(info.value) and str(info.value).startswith("ClickHouse endpoint ")


# -- types adx-mon creates ----------------------------------------------------------------------


def test_adxmon_column_types_take_the_rows() -> None:
    for adx_type, ch_type in [("long", "UInt64"), ("datetime", "DateTime64(3)"), ("int", "Int32"),
                              ("dynamic", "String"), ("bool", "String"), ("decimal", "String"), ("real", "Float64"),
                              ("long", "Nullable(UInt64)"), ("string", "LowCardinality(String)")]:
        assert compatible(adx_type, ch_type), (adx_type, ch_type)
    for adx_type, ch_type in [("long", "Int32"), ("real", "Int64"), ("datetime", "Int64"), ("string", "Int64")]:
        assert not compatible(adx_type, ch_type), (adx_type, ch_type)


def test_signed_values_into_unsigned_columns_are_their_twos_complement() -> None:
    columns = [("Timestamp", "DateTime64(3)"), ("SeriesId", "UInt64"), ("Labels", "String"), ("Value", "Float64")]
    rows = (b'2026-11-24T04:00:00Z,-1,"{""a"":""-5,\n-6""}",-2\n'
            b'2026-11-24T04:00:00Z,5,"",NaN\n'
            b'2026-11-24T04:00:00Z,-9223372036854775808,x,1\n')
    out = b"".join(unsigned_text([rows], columns))
    assert out == (b'2026-11-24T04:00:00Z,18446744073709551615,"{""a"":""-5,\n-6""}",-2\n'
                   b'2026-11-24T04:00:00Z,5,"",NaN\n'
                   b'2026-11-24T04:00:00Z,9223372036854775808,x,1\n')
    # Typed values for the native protocol: the same numbers.
    typed = list(csv_rows([rows], columns))
    assert [r[1] for r in typed] == [2**64 - 1, 5, 2**63]
    # A chunk the row pattern does not tile (a row of the wrong width) goes through csv instead.
    odd = b"2026-11-24T04:00:00Z,-1,x\n"
    assert b"".join(unsigned_text([odd], columns)) == b"2026-11-24T04:00:00Z,18446744073709551615,x\n"
    # No unsigned column: the chunks pass as they are.
    same = [rows]
    assert list(unsigned_text(same, [(c, "String") for c, _ in columns])) == same


# -- a real server ------------------------------------------------------------------------------

needs_server = pytest.mark.skipif(find_binary() is None, reason=INSTALL_HINT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    s = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-adxmon"), default_password=PASSWORD)
    s.start()
    yield s
    s.stop()


def admin(server: ClickHouseServer) -> HttpConn:
    ep = parse_endpoint(f"X=http://default:{PASSWORD}@127.0.0.1:{server.http_port}/x", env={})
    return HttpConn(ep, ClickHouseConfig((ep,)), None)


def upload(dsn: str, batch: Batch) -> None:
    sink = ClickHouseSink(ClickHouseConfig(parse_dsns([dsn], env={}), connect_timeout=5, timeout=30))
    sink.start()
    try:
        sink.upload(batch)
    finally:
        sink.stop()


def count(server: ClickHouseServer, database: str, table: str) -> int:
    return int(admin(server).query(f"SELECT count() FROM `{database}`.`{table}`")[0][0])


def dsn_forms(server: ClickHouseServer, database: str) -> dict[str, str]:
    auth = f"default:{PASSWORD}@"
    dead = free_port()  # nothing listens there: the next host is tried
    return {
        "clickhouse": f"clickhouse://{auth}127.0.0.1:{server.tcp_port}/{database}",
        "tcp-no-path": f"tcp://{auth}127.0.0.1:{server.tcp_port}",
        "native-params": f"native://127.0.0.1:{server.tcp_port}/?username=default&password={PASSWORD}"
                         f"&database={database}&dial_timeout=2s&read_timeout=30s&debug=true&compress=lz4",
        "native-two-hosts": f"clickhouse://{auth}127.0.0.1:{dead},127.0.0.1:{server.tcp_port}/{database}",
        "http": f"http://{auth}127.0.0.1:{server.http_port}/{database}?compress=false",
        "http-two-hosts": f"http://{auth}127.0.0.1:{dead},127.0.0.1:{server.http_port}/{database}?dial_timeout=2s",
    }


@needs_server
@pytest.mark.parametrize("form", ["clickhouse", "tcp-no-path", "native-params", "native-two-hosts", "http",
                                  "http-two-hosts"])
def test_every_dsn_form_delivers(server: ClickHouseServer, tmp_path: Path, form: str) -> None:
    database = unique("dsn_form")
    batch = write_batch(tmp_path / "wal", logs(), database=database)
    upload(f"{database}={dsn_forms(server, database)[form]}", batch)
    assert count(server, database, batch.table) == batch.rows == 3


ADXMON_METRICS_DDL = ("CREATE TABLE {db}.{table} (`Timestamp` {ts}, `SeriesId` UInt64, `Labels` String, "
                      "`Value` Float64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(Timestamp) "
                      "ORDER BY (`SeriesId`, `Timestamp`) SETTINGS index_granularity = 8192")
"""adx-mon's uploader's DDL for a metric table (syncer.go: buildCreateTableStatement), its
`DateTime64` as `DateTime` where the server (18.16) has no DateTime64."""


@needs_server
@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_an_adxmon_table_with_seriesid_uint64_takes_our_rows(server: ClickHouseServer, tmp_path: Path,
                                                            scheme: str) -> None:
    database = unique("adxmon_made")
    batch = write_batch(tmp_path / "wal", metrics(n=8), database=database)
    ours = {int(row.split(b",")[1]) for row in b"".join(batch.iter_csv()).splitlines() if row[:2] == b"20"}
    assert any(s < 0 for s in ours) and any(s >= 0 for s in ours)  # both halves of the hash space
    conn = admin(server)
    conn.command(f"CREATE DATABASE {database}")
    conn.command(ADXMON_METRICS_DDL.format(db=database, table=batch.table, ts="DateTime"))
    port = server.tcp_port if scheme == "clickhouse" else server.http_port
    upload(f"{database}={scheme}://default:{PASSWORD}@127.0.0.1:{port}/{database}", batch)  # no PermanentSinkError
    stored = conn.query(f"SELECT DISTINCT SeriesId FROM {database}.{batch.table}")
    assert {int(r[0]) for r in stored} == {s % 2**64 for s in ours}  # xxhash64 unsigned, as adx-mon reads it
    assert count(server, database, batch.table) == batch.rows == 24  # 8 series, 3 samples each
    types = dict(conn.query(f"SELECT name, type FROM system.columns WHERE database = '{database}' "
                            f"AND table = '{batch.table}'"))
    assert types["SeriesId"] == "UInt64"  # used as it is, not altered


@needs_server
def test_an_adxmon_table_with_string_columns_takes_bools_and_numbers(server: ClickHouseServer,
                                                                     tmp_path: Path) -> None:
    """adx-mon makes `bool`, `decimal` and unknown types String: they take the values as text."""
    database = unique("adxmon_strings")
    conn = admin(server)
    conn.command(f"CREATE DATABASE {database}")
    conn.command(f"CREATE TABLE {database}.T (`Timestamp` DateTime, `Ok` String, `N` String, `V` String) "
                 "ENGINE = MergeTree PARTITION BY toYYYYMMDD(Timestamp) ORDER BY (`Timestamp`)")
    schema = (("Timestamp", "datetime"), ("Ok", "bool"), ("N", "long"), ("V", "real"))
    batch = raw_batch(tmp_path / "wal", database, "T", schema, "2026-11-24T04:00:00Z,true,-7,1.5\n")
    upload(f"{database}=tcp://default:{PASSWORD}@127.0.0.1:{server.tcp_port}", batch)
    assert conn.query(f"SELECT Ok, N, V FROM {database}.T") == [["true", "-7", "1.5"]]


@needs_server
def test_a_column_that_cannot_take_the_rows_is_still_refused(server: ClickHouseServer, tmp_path: Path) -> None:
    database = unique("adxmon_clash")
    conn = admin(server)
    conn.command(f"CREATE DATABASE {database}")
    conn.command(f"CREATE TABLE {database}.T (`Timestamp` DateTime, `SeriesId` Int32) ENGINE = MergeTree "
                 "ORDER BY Timestamp")
    batch = raw_batch(tmp_path / "wal", database, "T", (("Timestamp", "datetime"), ("SeriesId", "long")),
                      "2026-11-24T04:00:00Z,-7\n")
    with pytest.raises(PermanentSinkError, match="SeriesId is Int32, the batch has long"):
        upload(f"{database}=tcp://default:{PASSWORD}@127.0.0.1:{server.tcp_port}", batch)


def table_layout(server: ClickHouseServer, database: str) -> dict[str, tuple[str, str, str]]:
    rows = admin(server).query(f"SELECT name, partition_key, sorting_key, engine_full FROM system.tables "
                               f"WHERE database = '{database}'")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def columns_of(server: ClickHouseServer, database: str, table: str) -> list[tuple[str, str]]:
    rows = admin(server).query(f"DESCRIBE TABLE `{database}`.`{table}`")  # in the table's order
    return [(r[0], r[1]) for r in rows]


@needs_server
@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_a_fresh_database_gets_adxmons_tables(server: ClickHouseServer, tmp_path: Path, scheme: str) -> None:
    database = unique("fresh")
    port = server.tcp_port if scheme == "clickhouse" else server.http_port
    dsn = f"{database}={scheme}://default:{PASSWORD}@127.0.0.1:{port}/{database}"
    metric = write_batch(tmp_path / "m", metrics(), database=database)
    log = write_batch(tmp_path / "l", logs(), database=database)
    upload(dsn, metric)
    upload(dsn, log)
    layout = table_layout(server, database)
    # The tables adx-mon's uploader makes when it opens, and one per metric and per log table.
    assert set(layout) == {metric.table, log.table, SCHEMA_VERSIONS_TABLE, *ADXMON_DEFAULT_TABLES,
                           "_ingestor_batches"}  # the last: 18.16 has no insert deduplication token
    partition, sorting, engine = layout[metric.table]
    assert (partition, sorting) == ("toYYYYMMDD(Timestamp)", "SeriesId, Timestamp")
    assert engine.startswith("MergeTree PARTITION BY toYYYYMMDD(Timestamp) ORDER BY (SeriesId, Timestamp)")
    assert "index_granularity = 8192" in engine
    assert layout[log.table][:2] == ("toYYYYMMDD(Timestamp)", "Timestamp")
    # Columns: adx-mon's names and types, but SeriesId signed as the rows have it (docs/sinks.md) and
    # DateTime('UTC') on a server without DateTime64.
    assert columns_of(server, database, metric.table) == [
        ("Timestamp", "DateTime('UTC')"), ("SeriesId", "Int64"), ("Labels", "String"), ("Value", "Float64")]
    assert columns_of(server, database, log.table) == [
        ("Timestamp", "DateTime('UTC')"), ("ObservedTimestamp", "DateTime('UTC')"), ("TraceId", "String"),
        ("SpanId", "String"), ("SeverityText", "String"), ("SeverityNumber", "Int32"), ("Body", "String"),
        ("Resource", "String"), ("Attributes", "String")]
    # adx-mon's own default tables, exactly its columns (metrics_samples: SeriesId UInt64).
    assert columns_of(server, database, "metrics_samples") == [
        ("Timestamp", "DateTime('UTC')"), ("SeriesId", "UInt64"), ("Labels", "String"), ("Value", "Float64")]
    otel_logs = [c for c, _ in columns_of(server, database, "otel_logs")]
    assert otel_logs == [c for c, _ in ADXMON_DEFAULT_TABLES["otel_logs"]]
    assert layout["metrics_samples"][:2] == ("toYYYYMMDD(Timestamp)", "SeriesId, Timestamp")
    # adx-mon's record of the schemas: one row per table, its header and version as adx-mon computes them.
    versions = {r[0]: r[1:] for r in admin(server).query(
        f"SELECT Table, SchemaID, Version, Header FROM {database}.{SCHEMA_VERSIONS_TABLE} FINAL")}
    schema_id = parse_filename(metric.segments[0].path.name).schema
    header, version = schema_signature(columns_of(server, database, metric.table))
    assert versions[metric.table] == [schema_id, str(version), header]
    assert header == "Timestamp:DateTime('UTC'),SeriesId:Int64,Labels:String,Value:Float64"
    assert versions["metrics_samples"][0] == "default"
    assert set(versions) == {metric.table, log.table, *ADXMON_DEFAULT_TABLES}


@needs_server
def test_a_batch_over_several_days_lands_once_with_day_partitions(server: ClickHouseServer, tmp_path: Path) -> None:
    """18.16 (no deduplication token): a staged batch is attached one day partition at a time, each
    recorded; a retry of the whole adds nothing."""
    database = unique("days")
    schema = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))
    rows = "".join(f"2026-11-{d:02d}T04:00:00Z,{-d},\"{{}}\",{d}\n" for d in range(20, 26))
    batch = raw_batch(tmp_path / "wal", database, "Days", schema, rows)
    dsn = f"{database}=tcp://default:{PASSWORD}@127.0.0.1:{server.tcp_port}"
    upload(dsn, batch)
    upload(dsn, Batch(batch.database, batch.table, batch.segments))  # the ack was lost: the same batch again
    assert count(server, database, "Days") == 6
    parts = admin(server).query(f"SELECT count(DISTINCT partition_id) FROM system.parts WHERE database = '{database}' "
                                "AND table = 'Days' AND active")
    assert parts == [["6"]]
    ledger = admin(server).query(f"SELECT count() FROM {database}._ingestor_batches WHERE BatchId LIKE '%/%'")
    assert ledger == [["6"]]  # one record per attached partition


# -- a current ClickHouse (chdb), through the same SQL ------------------------------------------


def test_a_current_clickhouse_takes_rows_into_adxmons_own_ddl(tmp_path: Path) -> None:
    """adx-mon's DDL as it is (a bare DateTime64, SeriesId UInt64) on a current ClickHouse: rows
    are sent as CSV text (as over HTTP), signed SeriesIds converted; a table the sink creates there
    is partitioned by day and takes a retry once (insert deduplication token)."""
    pytest.importorskip("chdb")
    from node.sinks.local import ChdbConn, open_store

    batch = write_batch(tmp_path / "wal", metrics(n=8), database="adxmon")
    ours = {int(row.split(b",")[1]) for row in b"".join(batch.iter_csv()).splitlines() if row[:2] == b"20"}
    with open_store(tmp_path / "store", 10) as c:
        conn = ChdbConn(c, "test")
        conn.command("CREATE DATABASE adxmon")
        conn.command(ADXMON_METRICS_DDL.format(db="adxmon", table=batch.table, ts="DateTime64"))
        cache = TableCache()
        assert deliver(conn, cache, "adxmon", batch, layout=Layout.ADXMON)
        stored = {int(r[0]) for r in conn.query(f"SELECT DISTINCT SeriesId FROM adxmon.{batch.table}")}
        assert stored == {s % 2**64 for s in ours} and any(s < 0 for s in ours)
        assert conn.query(f"SELECT count() FROM adxmon.{batch.table}") == [[str(batch.rows)]]
        # A table the sink makes there: adx-mon's engine, a retry deduplicated by its token.
        fresh = write_batch(tmp_path / "wal2", metrics(n=2), database="fresh")
        assert deliver(conn, TableCache(), "fresh", fresh, layout=Layout.ADXMON)
        assert deliver(conn, TableCache(), "fresh", Batch("fresh", fresh.table, fresh.segments), layout=Layout.ADXMON)
        assert conn.query(f"SELECT count() FROM fresh.{fresh.table}") == [[str(fresh.rows)]]
        (key,) = conn.query(f"SELECT partition_key, sorting_key FROM system.tables WHERE database = 'fresh' "
                            f"AND name = '{fresh.table}'")
        assert key == ["toYYYYMMDD(Timestamp)", "SeriesId, Timestamp"]
        assert dict(conn.query("SELECT name, type FROM system.columns WHERE database = 'fresh' "
                               "AND table = 'metrics_samples'"))["SeriesId"] == "UInt64"


# -- the design notes' example, through a node ---------------------------------------------------


@needs_server
def test_the_design_example_starts_and_delivers(server: ClickHouseServer, tmp_path: Path) -> None:
    """`--logs-kusto-endpoints "observability_logs=clickhouse://default:devpass@host:9000/observability_logs"`:
    OTLP logs with kusto.database=observability_logs land in ClickHouse's observability_logs."""
    ch = f"default:{PASSWORD}@127.0.0.1:{server.tcp_port}"
    node = NodeProcess(tmp_path / "data", "--transfer-addr=", "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", f"observability=clickhouse://{ch}/observability",
                       "--logs-kusto-endpoints", f"observability_logs=clickhouse://{ch}/observability_logs",
                       "--default-metrics-database", "observability",
                       "--max-segment-age", "1s", "--upload-interval", "0.5s").start()
    try:
        records = [log_record({"kusto.database": "observability_logs", "kusto.table": "docker_journal", "n": i},
                              body=f"line {i}", time_unix_nano=T_NS + i) for i in range(5)]
        with grpc.insecure_channel(node.grpc_addr) as channel:
            resp = logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(*records), timeout=10)
        assert resp.partial_success.rejected_log_records == 0
        wal = tmp_path / "data" / "wal"
        names = {p.name for p in [*wal.glob("*.wal"), *wal.glob("active/*.wal")]}
        assert names and all(n.startswith("observability-logs_docker-journal_") for n in names), names
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline:
            tables = admin(server).query("SELECT name FROM system.tables WHERE database = 'observability_logs'")
            if ["docker_journal"] in tables:
                stored = count(server, "observability_logs", "docker_journal")
                if stored >= 5:
                    break
            time.sleep(0.25)
        assert stored == 5, node.log()
        bodies = admin(server).query("SELECT Body FROM observability_logs.docker_journal ORDER BY Timestamp")
        assert bodies == [[f'"line {i}"'] for i in range(5)]
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log()
    layout = table_layout(server, "observability_logs")
    assert layout["docker_journal"][:2] == ("toYYYYMMDD(Timestamp)", "Timestamp")

