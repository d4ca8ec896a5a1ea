"""The bytes on disk are the documented format, read by an independent decoder and by ours."""

from __future__ import annotations

import zlib
from pathlib import Path

import cramjam

from node.wal import format as fmt
from node.wal.names import parse_filename
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_blocks, iter_rows
from node.wal.table import SegmentInfo
from tests.wal import independent_decoder
from tests.wal.helpers import rows_for, write_block

SCHEMA = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))


def test_segment_is_read_by_an_independent_decoder(tmp_path: Path) -> None:
    repo = Repository(WalConfig(tmp_path))
    repo.start()
    values = [rows_for(i, n=i + 1) for i in range(5)]
    for v in values:
        write_block(repo, "Metrics", "CpuUsage", fmt.KIND_METRIC, v, v.count(b"\n"), SCHEMA)
    [info] = repo.rotate_all()
    blocks = independent_decoder.read_segment(info.path.read_bytes())
    header = b"Timestamp:datetime,SeriesId:long,Labels:dynamic,Value:real\n"
    # the five small blocks were compacted into one as the segment closed (segment.compact)
    assert blocks == [(1, sum(v.count(b"\n") for v in values), header + b"".join(values))]
    name = parse_filename(info.path.name)
    assert (name.database, name.table) == ("Metrics", "CpuUsage")
    assert name.schema is not None
    assert b"".join(iter_rows(info.path)) == b"".join(values)


def test_header_is_optional_on_read(tmp_path: Path) -> None:
    # An older writer: payload without the AA AA sample header.
    value = b"a,1\nb,2\n"
    payload = bytes(cramjam.snappy.compress_raw(value))
    import struct
    import zlib
    path = tmp_path / "Db_T_0000000000000001.wal"
    path.write_bytes(fmt.MAGIC + struct.pack(">II", len(payload), zlib.crc32(payload)) + payload)
    [block] = list(iter_blocks(path))
    assert block.value == value
    assert block.kind == fmt.KIND_UNKNOWN
    assert block.count == 2


def test_schema_line_is_stripped_only_when_it_looks_like_one() -> None:
    header, rest = fmt.strip_schema_line(b"Timestamp:datetime,Value:real\n2026-01-01T00:00:00Z,1\n")
    assert header == b"Timestamp:datetime,Value:real\n"
    assert rest == b"2026-01-01T00:00:00Z,1\n"
    assert fmt.strip_schema_line(b"2026-01-01T00:00:00Z,1\n") == (None, b"2026-01-01T00:00:00Z,1\n")
    assert fmt.strip_schema_line(b"0af3,00ff,x\n") == (None, b"0af3,00ff,x\n")


def test_blocks_that_declare_no_count_are_counted_by_their_records(tmp_path: Path) -> None:
    """adx-mon's metrics writer declares count 0 in every block: `wal ls`, the status page and the
    import of a transferred segment count its CSV records instead (a quoted line break is not one)."""
    from node.wal.importer import SegmentImport
    from node.wal.segment import scan
    from tests.adxmon import segments as adxmon

    samples = [adxmon.Sample({"__name__": "cpu", "host": f"h{i}"}, 1_795_492_800_000 + i, i * 0.5) for i in range(7)]
    quoted = b'2026-11-24T04:00:00Z,1,"{""a"":""x\ny""}",1\n'  # one record over two lines
    data = adxmon.segment(adxmon.block(adxmon.metrics_csv(samples)), adxmon.block(quoted))
    name = adxmon.metrics_filename("Metrics", "Cpu")
    path = tmp_path / name
    path.write_bytes(data)
    assert scan(path).rows == 8
    published: list[SegmentInfo] = []
    (tmp_path / "in").mkdir()
    imp = SegmentImport(tmp_path / "in", parse_filename(name), len(data), lambda: None, published.append)
    imp.feed(data)
    imp.commit(zlib.crc32(data))
    assert imp.rows == 8 and published[0].rows == 8
