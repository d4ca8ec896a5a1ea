"""Segments as adx-mon writes them, through every sink: what lands, row by row and column by column.

The segments come from the adx-mon encoder written apart from the node (tests/adxmon/segments.py):

    kind                            file name                     header line   block type, count
    ------------------------------  ----------------------------  ------------  -----------------
    OTLP logs (until Feb 2025)      Logs_App_<id>                 none          log, its records
    native logs (until Oct 2024)    Logs_App_<id>                 none          unknown, 0
    native logs (since)             Logs_App_<logs hash>_<id>     yes           unknown, 0
    metrics (until Sep 2024)        Metrics_CpuUsage_<id>         none          unknown, 0
    metrics (before Jan 2024)       Metrics_CpuUsage_<id>         none          no sample header
    metrics (since)                 Metrics_CpuUsage_<hash>_<id>  yes           unknown, 0

Each goes to the local sink (chdb), to clickhouse-server 18.16 over both protocols, and to ADX
(the real client, Azurite, a fake Kusto endpoint), next to rows the node's own receivers wrote for
the same table: they share the table and its columns. A segment whose columns cannot be told or
whose rows do not fit them is refused (quarantined by the uploader) with the reason; a header-less
logs segment is not. And an adx-mon logs segment POSTed to a node's transfer front door lands.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from node.errors import PermanentSinkError
from node.rows.logs import LOGS_SCHEMA, LogsConfig, LogsConverter
from node.rows.series import BASE_SCHEMA
from node.sinks.base import Batch
from node.sinks.chschema import Conn, table_columns
from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, EpochNanos, parse_dsns
from node.sinks.local import ChdbConn, LocalConfig, LocalSink, open_store, store_dir
from node.wal.format import count_records
from node.wal.names import parse_filename, schema_hash
from node.wal.repository import Repository, WalConfig
from node.wal.segment import scan
from node.wal.table import SegmentInfo
from tests.adxmon import segments as seg
from tests.rows.build import log_record, logs_request
from tests.sinks import read_back, upload_all, write_batch

NS = 1_000_000_000
T = 1_795_492_800_123_456_789  # 2026-11-24T04:00:00.123456789Z, in ns (past 2**53: read as ns)
T_MS = T // 1_000_000
NOW = T + 60 * NS
"""What adx-mon's writer takes for an observed time of 0 (`time.Now()`)."""
RESOURCE = {"service.name": "checkout", "host.name": "node-1"}
ATTRS = {"kusto.database": "Logs", "kusto.table": "App", "http.route": "/cart"}

RECORDS = [
    # Ids whose raw bytes hold CR, LF, `"`, `,`, NUL and a leading space: Go quotes the field.
    seg.LogRecord(T, T + 5, trace_id=b"\x0a\x0d\x22\x2c\x00" + b"A" * 11, span_id=b" \n\x00\x01\x02\x03\x04\x05",
                  severity_text="INFO", severity_number=9, body='GET /cart, "ok"\nsecond line', attributes=ATTRS),
    seg.LogRecord(T + 1, 0, trace_id=bytes(range(16)), span_id=bytes(range(8)), severity_text="ERROR, bad",
                  severity_number=18, body={"msg": "boom", "code": 500, "nested": {"ok": False}, "list": [1, "a"]}),
    seg.LogRecord(T + 2, T + 2, trace_id=bytes(16), span_id=bytes(8), body=None),
    seg.LogRecord(T + 3, T + 3, severity_number=42, body=7),
    seg.LogRecord(T + 4, T + 4, severity_text="Warn'ing", severity_number=13, body='{"already": "json"}'),
    seg.LogRecord(T + 5, T + 6, severity_number=24, body="  padded\ttext <&> ✓ "),
]
RECORD_ROWS: list[tuple[object, ...]] = [
    # What lands: Timestamp, ObservedTimestamp (ns), TraceId, SpanId, SeverityText, SeverityNumber,
    # Body, Resource, Attributes (JSON values). Ids are hex as the node's receivers write them, the
    # severity a number; adx-mon's body text as ADX's `dynamic` reads it (a string that is no JSON
    # is a JSON string); the scalar values adx-mon wrote as JSON strings stay strings.
    (T, T + 5, "0a0d222c004141414141414141414141", "200a000102030405", "INFO", 9, 'GET /cart, "ok"\nsecond line',
     RESOURCE, ATTRS),
    (T + 1, NOW, bytes(range(16)).hex(), bytes(range(8)).hex(), "ERROR, bad", 18,
     {"msg": "boom", "code": "500", "nested": {"ok": "false"}, "list": ["1", "a"]}, RESOURCE, {}),
    (T + 2, T + 2, "", "", "", 0, "", RESOURCE, {}),
    (T + 3, T + 3, "", "", "", 42, "7", RESOURCE, {}),
    (T + 4, T + 4, "", "", "Warn'ing", 13, {"already": "json"}, RESOURCE, {}),
    (T + 5, T + 6, "", "", "", 24, "  padded\ttext <&> ✓ ", RESOURCE, {}),
]

NATIVE = [
    seg.NativeLog(T + 10, T + 11, body={"message": "disk full, retrying\n", "level": "warn"},
                  resource={"pod": "api-0", "adxmon_destination": "x", "label.app": "api"},
                  attributes={"kusto.database": "Logs", "adxmon_x": "y", "n": 3}),
    seg.NativeLog(T + 12, 0, body={"message": "ok <b>"}, resource={}, attributes={}),
]
NATIVE_ROWS: list[tuple[object, ...]] = [
    (T + 10, T + 11, "", "", "", 0, {"message": "disk full, retrying\n", "level": "warn"}, {"pod": "api-0"},
     {"kusto.database": "Logs", "n": 3}),
    (T + 12, NOW, "", "", "", 0, {"message": "ok <b>"}, {}, {}),
]

LIFTED_SCHEMA = (*LOGS_SCHEMA, ("Pod", "string"))
LIFTED_ROWS: list[tuple[object, ...]] = [(*r[:7], {}, r[8], pod) for r, pod in zip(NATIVE_ROWS, ["api-0", ""],
                                                                                    strict=True)]
"""NATIVE written by a collector lifting the resource `pod` (`lift-resources`): a column `Pod` of
its own, named by the header line, no longer in Resource."""

SAMPLES = [seg.Sample({"__name__": "cpu_usage", "adxmon_database": "Metrics", "host": f"h{i % 2}", "cpu": str(i)},
                      T_MS + i * 1000, v) for i, v in enumerate([0.5, float("nan"), float("inf"), -float("inf"), 42.0])]


def metric_rows(samples: list[seg.Sample]) -> list[tuple[object, ...]]:
    """Timestamp (ns), SeriesId, Labels, Value: what a remote-write sample becomes (rows.md)."""
    return [(s.timestamp_ms * 1_000_000, seg.series_id(s.labels),
             {k: v for k, v in s.labels.items() if k != "__name__" and not k.startswith("adxmon_")},
             "nan" if s.value != s.value else repr(s.value)) for s in samples]


# -- segment files ---------------------------------------------------------------------------------

_ids = seg.FlakeIds(host=7)


def put(directory: Path, name: str, data: bytes) -> SegmentInfo:
    """`data` as the segment file `name` in `directory`, as the WAL indexes it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    found = scan(path)
    assert found.error is None, found.error
    return SegmentInfo(path, parse_filename(name), found.size, found.blocks, found.rows)


def batch_of(*infos: SegmentInfo) -> Batch:
    return Batch(infos[0].name.database, infos[0].name.table, infos)


def otlp_logs(directory: Path, db: str = "Logs", table: str = "App") -> SegmentInfo:
    """Two WriteOTLPLogs blocks (S2 with repeats, then Snappy): the records in order."""
    data = seg.segment(seg.otlp_logs_block(RECORDS[:4], RESOURCE, now_ns=NOW),
                       seg.otlp_logs_block(RECORDS[4:], RESOURCE, compression="snappy", now_ns=NOW))
    return put(directory, seg.logs_filename(db, table, _ids.next()), data)


def native_logs(directory: Path, header: bool, db: str = "Logs", table: str = "App",
                lifted: tuple[str, ...] = ()) -> SegmentInfo:
    blocks = [seg.block(seg.native_logs_csv([lg], header=header, now_ns=NOW, lifted=lifted)) for lg in NATIVE]
    name = seg.native_logs_filename(db, table, _ids.next(), lifted) if header \
        else seg.logs_filename(db, table, _ids.next())
    return put(directory, name, seg.segment(*blocks))


def metrics(directory: Path, era: str, db: str = "Metrics", table: str = "CpuUsage") -> SegmentInfo:
    """`era`: "head" (header line, schema hash in the name), "2024" (no header line or schema part,
    type unknown, count 0), "2023" (no sample header either)."""
    blocks = [seg.block(seg.metrics_csv(SAMPLES[:2], header=era == "head"), compression="snappy",
                        sample_header=era != "2023"),
              seg.block(seg.metrics_csv(SAMPLES[2:], header=era == "head"), sample_header=era != "2023")]
    name = seg.metrics_filename(db, table, _ids.next()) if era == "head" else seg.filename(db, table, None, _ids.next())
    return put(directory, name, seg.segment(*blocks))


# -- what landed, canonical ------------------------------------------------------------------------

def canon(value: object) -> str:
    """A JSON value in one spelling (keys sorted), so that rows compare whatever their key order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def log_view(rows: list[tuple[str, ...]], seconds: bool = False) -> list[tuple[object, ...]]:
    """Stored log rows (`read_back`, or CSV fields with RFC 3339 times) as RECORD_ROWS has them."""
    epoch = EpochNanos()
    out = []
    for ts, obs, tid, sid, text, number, body, res, attrs in rows:
        times = [int(t) if t.lstrip("-").isdigit() else epoch(t) // (NS if seconds else 1) for t in (ts, obs)]
        out.append((*times, tid, sid, text, int(number) if number else 0,
                    *(canon(json.loads(v)) for v in (body, res, attrs))))
    return sorted(out, key=repr)


def lifted_view(rows: list[tuple[str, ...]], seconds: bool = False) -> list[tuple[object, ...]]:
    """`log_view` of rows with the lifted column Pod after the 9."""
    return sorted(((*log_view([r[:9]], seconds)[0], r[9]) for r in rows), key=repr)


def expected_lifted(rows: Sequence[tuple[object, ...]], seconds: bool = False) -> list[tuple[object, ...]]:
    return sorted(((*expected_logs([r[:9]], seconds)[0], r[9]) for r in rows), key=repr)


def expected_logs(rows: Sequence[tuple[object, ...]], seconds: bool = False) -> list[tuple[object, ...]]:
    div = NS if seconds else 1
    return sorted(((int(str(r[0])) // div, int(str(r[1])) // div, *r[2:6], *(canon(v) for v in r[6:]))
                   for r in rows), key=repr)


def metric_view(rows: list[tuple[str, ...]], seconds: bool = False) -> list[tuple[object, ...]]:
    epoch = EpochNanos()
    out = []
    for ts, sid, labels, value in rows:
        t = int(ts) if ts.isdigit() else epoch(ts) // (NS if seconds else 1)
        out.append((t, int(sid), canon(json.loads(labels)),
                    repr(float(value)) if float(value) == float(value) else "nan"))
    return sorted(out, key=repr)


def expected_metrics(seconds: bool = False) -> list[tuple[object, ...]]:
    div = NS if seconds else 1
    return sorted(((int(str(r[0])) // div, r[1], canon(r[2]), r[3]) for r in metric_rows(SAMPLES)), key=repr)


def our_logs(wal_dir: Path, database: str = "Logs") -> tuple[Batch, list[tuple[object, ...]]]:
    """Rows the node's own OTLP receiver writes for Logs.App, and what they are."""
    rec = log_record({"k": "v"}, body="from the node", time_unix_nano=T + 100, observed_time_unix_nano=T + 101,
                     severity_text="WARN", severity_number=13, trace_id=bytes([9] * 16), span_id=bytes([8] * 8))
    result = LogsConverter(LogsConfig("Logs", "App")).convert(logs_request(rec, resource={"service.name": "node"}))
    row = (T + 100, T + 101, "09" * 16, "08" * 8, "WARN", 13, "from the node", {"service.name": "node"}, {"k": "v"})
    return write_batch(wal_dir, result, database=database), [row]


# -- reading them: no engine -----------------------------------------------------------------------

@pytest.mark.parametrize(("make", "schema", "rows", "headerless"), [
    (otlp_logs, LOGS_SCHEMA, len(RECORDS), True),
    (lambda d: native_logs(d, header=False), LOGS_SCHEMA, len(NATIVE), True),
    (lambda d: native_logs(d, header=True), LOGS_SCHEMA, len(NATIVE), False),
    (lambda d: metrics(d, "2024"), BASE_SCHEMA, len(SAMPLES), True),
    (lambda d: metrics(d, "2023"), BASE_SCHEMA, len(SAMPLES), True),
    (lambda d: metrics(d, "head"), BASE_SCHEMA, len(SAMPLES), False),
], ids=["otlp-logs", "native-logs-2024", "native-logs", "metrics-2024", "metrics-2023", "metrics"])
def test_each_kind_reads_as_its_columns_with_its_rows_counted(tmp_path: Path, make: object, schema: object,
                                                              rows: int, headerless: bool) -> None:
    info = make(tmp_path)  # type: ignore[operator]
    batch = batch_of(info)
    assert batch.read_schema() == schema
    assert batch.headerless is headerless
    data = b"".join(batch.iter_csv())
    assert batch.rows == rows  # blocks that declare 0 rows are counted from their CSV
    assert not data.startswith(b"Timestamp:")  # header lines never reach a sink


def test_adxmon_logs_rows_become_the_nodes_log_rows(tmp_path: Path) -> None:
    import csv
    import io

    batch = batch_of(otlp_logs(tmp_path))
    text = b"".join(batch.iter_csv()).decode()
    fields = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert log_view([tuple(f) for f in fields]) == expected_logs(RECORD_ROWS)
    assert [f[5] for f in fields] == ["9", "18", "0", "42", "13", "24"]  # was SEVERITY_NUMBER_INFO, ...


def test_lifted_resources_named_by_the_header_line_are_columns(tmp_path: Path) -> None:
    """adx-mon's collector appends its `lift-resources` to its logs mapping: the header line (and the
    schema hash) name them, so they are columns like any other."""
    info = native_logs(tmp_path, header=True, table="Lifted", lifted=("pod", "k8s.node"))
    batch = batch_of(info)
    assert batch.read_schema() == (*LOGS_SCHEMA, ("K8sNode", "string"), ("Pod", "string")) and not batch.headerless
    assert info.name.schema == schema_hash(batch.read_schema() or ())
    assert b"".join(batch.iter_csv()).count(b"\n") == batch.rows == 2


def test_count_records() -> None:
    assert count_records(b"") == 0
    assert count_records(b"a,1\nb,2\n") == 2
    assert count_records(b'a,"x\ny",1\nb,"""q""",2\n') == 2  # a line break inside a quoted field
    assert count_records(b'a,"x\r\n\r\ny"\r\nb,2\r\n') == 2
    assert count_records(b"a,1\nb,2") == 2  # the last row without its line break
    assert count_records(b"a,1\n\nb,2\n") == 2  # an empty line is no record


def test_go_infinities_are_spelt_as_the_nodes_in_the_value_column_only(tmp_path: Path) -> None:
    bucket = seg.Sample({"__name__": "lat_bucket", "le": "+Inf"}, T_MS, float("inf"))
    rows = seg.metrics_csv([bucket, seg.Sample({"__name__": "lat_bucket", "le": "1"}, T_MS, -float("inf"))])
    info = put(tmp_path, seg.metrics_filename("Metrics", "LatBucket", _ids.next()), seg.segment(seg.block(rows)))
    text = b"".join(batch_of(info).iter_csv()).decode()
    assert [line.rsplit(",", 1)[1] for line in text.splitlines()] == ["Infinity", "-Infinity"]
    assert '""le"":""+Inf""' in text  # the label keeps Prometheus's spelling


def test_a_headerless_block_whose_columns_cannot_be_told_is_refused(tmp_path: Path) -> None:
    name = seg.filename("Logs", "Odd", None, _ids.next())
    info = put(tmp_path, name, seg.segment(seg.block(b"2026-11-24T04:00:00Z,a,b,c,d\n")))
    with pytest.raises(PermanentSinkError, match=rf"segment {name}, block at offset 8: no header line, sample type 0 "
                                                 r"\(unknown\), and its first row \(5 fields\) is neither"):
        batch_of(info).read_schema()


def test_a_schema_hash_of_a_default_schema_names_its_columns(tmp_path: Path) -> None:
    rows = seg.metrics_csv(SAMPLES, header=False)
    info = put(tmp_path, seg.metrics_filename("Metrics", "Cpu", _ids.next()), seg.segment(seg.block(rows)))
    batch = batch_of(info)
    assert batch.read_schema() == BASE_SCHEMA and batch.headerless
    # The rows as they are, but for Go's `+Inf` / `-Inf` Value, spelt as the node spells it.
    assert b"".join(batch.iter_csv()) == rows.replace(b",+Inf\n", b",Infinity\n").replace(b",-Inf\n", b",-Infinity\n")
    other = put(tmp_path, seg.filename("Metrics", "Cpu", "abc123", _ids.next()), seg.segment(seg.block(rows)))
    with pytest.raises(PermanentSinkError, match="the schema hash abc123 of its file name is not that of a default"):
        batch_of(other).read_schema()


def test_lifted_labels_without_a_header_are_refused_not_cut(tmp_path: Path) -> None:
    rows = b'2026-11-24T04:00:00Z,1,"{}",1.000000000,api-0\n'
    name = seg.filename("Metrics", "Cpu", None, _ids.next())
    info = put(tmp_path, name, seg.segment(seg.block(rows, kind=seg.METRIC)))
    with pytest.raises(PermanentSinkError, match=r"rows of 5 fields without a header line; the default metrics columns "
                                                 r"are 4 .* lifted labels"):
        batch_of(info).read_schema()


def test_a_logs_row_that_does_not_fit_refuses_the_batch_before_anything_is_sent(tmp_path: Path) -> None:
    good = seg.otlp_logs_block(RECORDS[:2], RESOURCE, now_ns=NOW)
    bad = seg.block(b"2026-11-24T04:00:00Z,2026-11-24T04:00:00Z,,,INFO\n", kind=seg.LOG, count=1)
    name = seg.logs_filename("Logs", "App", _ids.next())
    info = put(tmp_path, name, seg.segment(good, bad))
    batch = batch_of(info)
    with pytest.raises(PermanentSinkError, match=rf"segment {name}, block at offset {8 + len(good)}, row 1: 5 fields, "
                                                 r"adx-mon's logs rows have 9"):
        batch.read_schema()  # the whole batch is read here, before a sink sends a byte of it


def test_a_segment_corrupt_on_disk_is_refused_with_where(tmp_path: Path) -> None:
    info = otlp_logs(tmp_path)
    data = bytearray(info.path.read_bytes())
    data[-3] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(PermanentSinkError, match=rf"segment {info.path.name} is corrupt: .*CRC mismatch"):
        batch_of(info).read_schema()


# -- the local sink (chdb) -------------------------------------------------------------------------

@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalSink]:
    pytest.importorskip("chdb")
    sink = LocalSink(store_dir(tmp_path / "storage"), LocalConfig(lock_wait=5))
    sink.start()
    yield sink
    sink.stop()


def local_rows(sink: LocalSink, database: str, table: str,
               schema: object) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    with open_store(sink.directory, 10) as c:
        conn = ChdbConn(c, "test")
        return read_back(conn, database, table, schema), table_columns(conn, database, table)  # type: ignore[arg-type]


LOG_TYPES = {"Timestamp": "DateTime64(9, 'UTC')", "ObservedTimestamp": "DateTime64(9, 'UTC')", "TraceId": "String",
             "SpanId": "String", "SeverityText": "String", "SeverityNumber": "Int32", "Body": "String",
             "Resource": "String", "Attributes": "String"}


def test_local_sink_takes_adxmon_logs_into_the_nodes_logs_table(local: LocalSink, tmp_path: Path) -> None:
    ours, our_rows = our_logs(tmp_path / "ours")
    local.upload(ours)  # the node's own receiver made Logs.App
    batches = [batch_of(otlp_logs(tmp_path / "a")), batch_of(native_logs(tmp_path / "b", header=False)),
               batch_of(native_logs(tmp_path / "c", header=True))]
    for batch in batches:
        local.upload(batch)  # no PermanentSinkError: nothing quarantined
    assert [b.rows for b in batches] == [6, 2, 2]
    rows, types = local_rows(local, "Logs", "App", LOGS_SCHEMA)
    assert types == LOG_TYPES  # one table, the node's columns, nothing added
    assert log_view(rows) == expected_logs(RECORD_ROWS + NATIVE_ROWS * 2 + our_rows)
    local.upload(batch_of(native_logs(tmp_path / "d", header=True, table="Lifted", lifted=("pod",))))
    rows, types = local_rows(local, "Logs", "Lifted", LIFTED_SCHEMA)
    assert types == {**LOG_TYPES, "Pod": "String"}
    assert lifted_view(rows) == expected_lifted(LIFTED_ROWS)


def test_local_sink_takes_adxmon_metrics_of_every_era(local: LocalSink, tmp_path: Path) -> None:
    for era in ("head", "2024", "2023"):
        batch = batch_of(metrics(tmp_path / era, era, table=f"Cpu{era}"))
        local.upload(batch)
        assert batch.rows == len(SAMPLES)
        rows, types = local_rows(local, "Metrics", f"Cpu{era}", BASE_SCHEMA)
        assert types == {"Timestamp": "DateTime64(9, 'UTC')", "SeriesId": "Int64", "Labels": "String",
                         "Value": "Float64"}
        assert metric_view(rows) == expected_metrics(), era  # +Inf and -Inf as adx-mon spells them, NaN


def test_blocks_without_a_row_are_skipped_and_a_batch_of_them_delivers_nothing(local: LocalSink,
                                                                              tmp_path: Path) -> None:
    empty = seg.block(b"")  # a write of nothing: type unknown, count 0, no header line, no row
    info = put(tmp_path / "a", seg.logs_filename("Logs", "Sparse", _ids.next()),
               seg.segment(empty, seg.otlp_logs_block(RECORDS, RESOURCE, now_ns=NOW), empty))
    batch = batch_of(info)
    assert batch.read_schema() == LOGS_SCHEMA
    local.upload(batch)
    assert batch.rows == len(RECORDS)
    assert log_view(local_rows(local, "Logs", "Sparse", LOGS_SCHEMA)[0]) == expected_logs(RECORD_ROWS)
    nothing = batch_of(put(tmp_path / "b", seg.logs_filename("Logs", "Nothing", _ids.next()), seg.segment(empty)))
    assert nothing.read_schema() is None
    local.upload(nothing)  # delivered: nothing to insert, no table made
    with open_store(local.directory, 10) as c:
        assert ChdbConn(c, "test").query("SELECT count() FROM system.tables WHERE name = 'Nothing'") == [["0"]]


async def test_the_uploader_delivers_a_headerless_logs_segment_and_quarantines_a_corrupt_one(
        local: LocalSink, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal_dir = tmp_path / "wal"
    good = otlp_logs(wal_dir)
    counted = metrics(wal_dir, "head")  # blocks that declare 0 rows
    bad_name = seg.logs_filename("Logs", "Broken", _ids.next())
    put(wal_dir, bad_name, seg.segment(seg.block(b"not,a,log\n", kind=seg.LOG, count=1)))
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    assert {s.path.name for s in wal.closed_segments()} == {good.path.name, counted.path.name, bad_name}
    with caplog.at_level("INFO", logger="node.upload.uploader"):
        registry = await upload_all(wal, local)
    # The rows counted, not the blocks' 0: in the metric and in the summary line.
    assert registry.get_sample_value("ingestor_upload_rows_total", {"sink": "local"}) == len(RECORDS) + len(SAMPLES)
    summary = [r.getMessage() for r in caplog.records if "uploaded 2 batches" in r.getMessage()]
    assert len(summary) == 1 and f"({len(RECORDS) + len(SAMPLES)} rows," in summary[0], caplog.text
    quarantine = tmp_path / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted([bad_name, bad_name[:-4] + ".reason.txt"])
    reason = (quarantine / (bad_name[:-4] + ".reason.txt")).read_text()
    assert f"segment {bad_name}, block at offset 8, row 1: 3 fields, adx-mon's logs rows have 9" in reason
    rows, _ = local_rows(local, "Logs", "App", LOGS_SCHEMA)
    assert log_view(rows) == expected_logs(RECORD_ROWS)


async def test_a_segment_whose_rows_do_not_fit_is_quarantined_alone_and_its_batch_delivered(
        local: LocalSink, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before, a collector's segment whose rows do not fit took the good segments of its table
    (one batch) to the quarantine with it."""
    wal_dir = tmp_path / "wal"
    first = otlp_logs(wal_dir)
    bad_name = seg.logs_filename("Logs", "App", _ids.next())
    put(wal_dir, bad_name, seg.segment(seg.block(b"not,a,log\n", kind=seg.LOG, count=1)))
    last = otlp_logs(wal_dir)
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    assert [s.path.name for s in wal.closed_segments()] == [first.path.name, bad_name, last.path.name]
    with caplog.at_level("ERROR", logger="node.upload.uploader"):
        await upload_all(wal, local)
    quarantine = tmp_path / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted([bad_name, bad_name[:-4] + ".reason.txt"])
    reason = (quarantine / (bad_name[:-4] + ".reason.txt")).read_text()
    assert f"segment {bad_name}, block at offset 8, row 1: 3 fields, adx-mon's logs rows have 9" in reason
    # read through before a byte was sent (a headerless logs batch): nothing handed to the sink
    assert "alone: the other 2 segments of its batch go again as a new batch\n" in caplog.text
    rows, _ = local_rows(local, "Logs", "App", LOGS_SCHEMA)
    assert log_view(rows) == expected_logs(RECORD_ROWS + RECORD_ROWS)  # both good segments, once each
    assert wal.closed_segments() == []


# -- clickhouse-server 18.16 -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.sinks.clickhouse_server import INSTALL_HINT, ClickHouseServer, find_binary

    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    s = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-adxmon-segments"), default_password="pw")
    s.start()
    yield s
    s.stop()


def server_conn(server: object) -> Conn:
    from node.sinks.chdsn import parse_endpoint
    from node.sinks.clickhouse import HttpConn

    ep = parse_endpoint(f"X=http://default:pw@127.0.0.1:{server.http_port}/x", env={})  # type: ignore[attr-defined]
    return HttpConn(ep, ClickHouseConfig((ep,)), None)


@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_clickhouse_takes_adxmon_logs_and_metrics(server: object, tmp_path: Path, scheme: str) -> None:
    db, mdb = f"Logs{scheme}", f"Metrics{scheme}"
    port = server.tcp_port if scheme == "clickhouse" else server.http_port  # type: ignore[attr-defined]
    dsns = [f"{d}={scheme}://default:pw@127.0.0.1:{port}/{d}" for d in (db, mdb)]
    sink = ClickHouseSink(ClickHouseConfig(parse_dsns(dsns, env={}), connect_timeout=5, timeout=60))
    sink.start()
    try:
        ours, our_rows = our_logs(tmp_path / "ours", db)
        sink.upload(ours)
        for batch in (batch_of(otlp_logs(tmp_path / "a", db)), batch_of(native_logs(tmp_path / "b", False, db)),
                      batch_of(native_logs(tmp_path / "c", True, db)), batch_of(metrics(tmp_path / "m", "2024", mdb)),
                      batch_of(native_logs(tmp_path / "d", True, db, "Lifted", lifted=("pod",))),
                      batch_of(metrics(tmp_path / "n", "head", mdb, "CpuHead"))):
            sink.upload(batch)
    finally:
        sink.stop()
    conn = server_conn(server)
    types = table_columns(conn, db, "App")
    seconds = types["Timestamp"].startswith("DateTime(")  # 18.16: no DateTime64, whole seconds
    assert types["SeverityNumber"] == "Int32" and list(types) == [c for c, _ in LOGS_SCHEMA]
    rows = read_back(conn, db, "App", LOGS_SCHEMA)
    assert log_view(rows, seconds) == expected_logs(RECORD_ROWS + NATIVE_ROWS * 2 + our_rows, seconds)
    assert lifted_view(read_back(conn, db, "Lifted", LIFTED_SCHEMA), seconds) == expected_lifted(LIFTED_ROWS, seconds)
    for table in ("CpuUsage", "CpuHead"):
        assert metric_view(read_back(conn, mdb, table, BASE_SCHEMA), seconds) == expected_metrics(seconds), table


# -- ADX (the real client, Azurite, a fake Kusto endpoint) -----------------------------------------

@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.sinks_adx.azurite import running_azurite

    with running_azurite(tmp_path_factory.mktemp("azurite")) as storage:
        yield storage


def test_adx_ingests_adxmon_logs_and_metrics_with_the_default_mappings(azurite: object, tmp_path: Path) -> None:
    import csv
    import io

    from node.sinks.adx import AdxConfig, AdxSink, mapping_json
    from tests.sinks_adx.fake_kusto import FakeKusto

    kusto = FakeKusto(azurite, f"t{uuid.uuid4().hex[:16]}")  # type: ignore[arg-type]
    kusto.start()
    sink = AdxSink(AdxConfig(endpoints={"Logs": kusto.url, "Metrics": kusto.url}, auth="none",
                             temp_dir=tmp_path / "adx-tmp", storage_retries=0))
    sink.start()
    try:
        ours, our_rows = our_logs(tmp_path / "ours")
        for batch in (ours, batch_of(otlp_logs(tmp_path / "a")), batch_of(native_logs(tmp_path / "b", False)),
                      batch_of(native_logs(tmp_path / "c", True, table="Lifted", lifted=("pod",))),
                      batch_of(metrics(tmp_path / "m", "2024")),
                      batch_of(metrics(tmp_path / "n", "2023", table="Old"))):
            sink.upload(batch)
        ingestions = kusto.ingest()
    finally:
        sink.stop()
        kusto.stop()
    assert kusto.unexpected == []
    # One table and one mapping per table: the node's own logs and adx-mon's share them.
    assert kusto.tables == {("Logs", "App"): list(LOGS_SCHEMA), ("Metrics", "CpuUsage"): list(BASE_SCHEMA),
                            ("Metrics", "Old"): list(BASE_SCHEMA), ("Logs", "Lifted"): list(LIFTED_SCHEMA)}
    assert {(db, t): json.dumps(m, separators=(",", ":")) for (db, t, _), m in kusto.mappings.items()} == {
        ("Logs", "App"): mapping_json(LOGS_SCHEMA), ("Metrics", "CpuUsage"): mapping_json(BASE_SCHEMA),
        ("Metrics", "Old"): mapping_json(BASE_SCHEMA), ("Logs", "Lifted"): mapping_json(LIFTED_SCHEMA)}
    got: dict[str, list[tuple[str, ...]]] = {}
    for ing in ingestions:
        rows = [tuple(r) for r in csv.reader(io.StringIO(ing.data.decode(), newline=""), strict=True)]
        assert ing.message["RawDataSize"] == len(ing.data)
        got.setdefault(ing.message["TableName"], []).extend(rows)
    # SeverityNumber: a number ADX's `int` parses, never an enum name (adx-mon's, which ADX made null);
    # adx-mon's native logs have none ("", null in ADX, as adx-mon left it).
    assert sorted(r[5] for r in got["App"]) == sorted(["9", "18", "0", "42", "13", "24", "", "", "13"])
    assert log_view(got["App"]) == expected_logs(RECORD_ROWS + NATIVE_ROWS + our_rows)
    assert kusto.tables[("Logs", "Lifted")] == list(LIFTED_SCHEMA)  # the header line's columns, Pod among them
    assert lifted_view(got["Lifted"]) == expected_lifted(LIFTED_ROWS)
    for table in ("CpuUsage", "Old"):
        assert metric_view(got[table]) == expected_metrics(), table


# -- end to end: adx-mon's collector sends a logs segment to a node's transfer front door ------------

def test_an_adxmon_logs_segment_posted_to_the_transfer_door_lands_in_the_local_sink(tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    from tests.adxmon.collector import Collector
    from tests.adxmon.test_transfer_http import FLOW, query, running, wait_for
    from tests.harness import NodeProcess

    otlp = seg.segment(seg.otlp_logs_block(RECORDS[:4], RESOURCE, now_ns=NOW),
                       seg.otlp_logs_block(RECORDS[4:], RESOURCE, compression="snappy", now_ns=NOW))
    native = seg.segment(*(seg.block(seg.native_logs_csv([lg], header=False, now_ns=NOW)) for lg in NATIVE))
    columns = ", ".join(f"toString({'toUnixTimestamp64Nano(' + c + ')' if t == 'datetime' else c}) AS {c}"
                        for c, t in LOGS_SCHEMA)
    with running(NodeProcess(tmp_path / "data", *FLOW)) as node:
        with Collector(node.transfer_url) as c:
            for data in (otlp, native):
                r = c.write(seg.logs_filename("Logs", "App", _ids.next()), data)
                assert r.status == 202, r
        wait_for(lambda: len(query(node, "SELECT 1 FROM Logs.App")) == len(RECORDS) + len(NATIVE),
                 what="the adx-mon log rows in Logs.App")
        got = query(node, f"SELECT {columns} FROM Logs.App")
    rows = [tuple(str(r[c]) for c, _ in LOGS_SCHEMA) for r in got]
    assert log_view(rows) == expected_logs(RECORD_ROWS + NATIVE_ROWS)
    quarantine = tmp_path / "data" / "quarantine"
    assert not quarantine.exists() or list(quarantine.iterdir()) == []
