"""The adx-mon segment encoder (tests/adxmon/segments.py) checked against what it claims to be:
the node's reader (written apart) reads its files, its S2 blocks really use S2's extensions, a
merged body is one segment of every block, and its names are the ones adx-mon makes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cramjam
import pytest

from node.wal import format as fmt
from node.wal.names import parse_filename
from node.wal.names import schema_hash as node_schema_hash
from node.wal.segment import iter_blocks, iter_rows
from tests.adxmon import segments as seg

T0 = 1_790_000_000_123  # ms: 2026-09-21T...123Z


def _samples(n: int, metric: str = "cpu_usage") -> list[seg.Sample]:
    return [seg.Sample({"__name__": metric, "adxmon_database": "Metrics", "host": f"h{i % 3}", "pod": "p"},
                       T0 + i * 1000, i / 4) for i in range(n)]


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", ["s2", "snappy"])
def test_node_reads_every_row(tmp_path: Path, compression: str) -> None:
    blocks = [_samples(40), _samples(25, "mem")]
    data = seg.metrics_segment(blocks, compression=compression)
    path = _write(tmp_path, seg.metrics_filename("Metrics", "CpuUsage"), data)
    rows = list(iter_rows(path))
    assert rows == [seg.metrics_csv(b, header=False) for b in blocks]
    assert [b.kind for b in iter_blocks(path)] == [seg.UNKNOWN, seg.UNKNOWN]
    with_headers = list(iter_rows(path, with_headers=True))
    assert all(v.startswith(b"Timestamp:datetime,SeriesId:long,Labels:dynamic,Value:real\n") for v in with_headers)


def test_s2_blocks_use_repeats_that_snappy_refuses() -> None:
    value = seg.metrics_csv(_samples(200))
    payload = seg.compress(value, "s2")
    with pytest.raises(Exception):  # noqa: B017 - any refusal: a Snappy decoder does not know repeats
        cramjam.snappy.decompress_raw(payload)
    from node.wal.s2 import decode_block

    assert decode_block(payload) == value
    assert bytes(cramjam.snappy.decompress_raw(seg.compress(value, "snappy"))) == value


def test_block_layout() -> None:
    b = seg.block(b"a,b\n", compression="snappy", kind=seg.LOG, count=1)
    length, crc = struct.unpack(">II", b[:8])
    assert length == len(b) - 8 and crc == zlib.crc32(b[8:])
    assert bytes(cramjam.snappy.decompress_raw(b[8:])) == b"\xaa\xaa\x01\x03\x00\x00\x00\x01a,b\n"
    plain = seg.block(b"a,b\n", compression="snappy", sample_header=False)
    assert bytes(cramjam.snappy.decompress_raw(plain[8:])) == b"a,b\n"


def test_merge_is_magic_once_then_every_block(tmp_path: Path) -> None:
    a = seg.metrics_segment([_samples(3)])
    b = seg.metrics_segment([_samples(4), _samples(5)], compression="snappy")
    merged = seg.merge(a, b)
    assert merged.count(seg.MAGIC) == 1 and merged.startswith(seg.MAGIC)
    assert len(merged) == len(a) + len(b) - 8
    path = _write(tmp_path, seg.metrics_filename("Metrics", "CpuUsage"), merged)
    assert len(list(iter_blocks(path))) == 3
    assert [r.count(b"\n") for r in iter_rows(path)] == [3, 4, 5]
    raw = list(fmt.iter_raw_blocks(merged))
    assert len(raw) == 3


def test_names_are_adx_mon_names() -> None:
    sid = seg.flake_id(T0, host=5, seq=7)
    assert len(sid) == 16 and int(sid, 16) == ((T0 - seg.FLAKE_EPOCH_MS) << 23) | (5 << 13) | 7
    name = seg.metrics_filename("Metrics", "CpuUsage", sid)
    parsed = parse_filename(name)  # the node takes it: same layout, read apart
    assert (parsed.database, parsed.table, parsed.segment_id) == ("Metrics", "CpuUsage", sid)
    assert parsed.schema == seg.schema_hash() == node_schema_hash(seg.METRICS_SCHEMA)
    assert seg.filename("Logs", "App", None, sid) == f"Logs_App_{sid}.wal"
    ids = seg.FlakeIds(host=3)
    made = [ids.next() for _ in range(50)]
    assert made == sorted(made) and len(set(made)) == 50


def test_metrics_csv_is_adx_mon_text() -> None:
    s = seg.Sample({"__name__": "up", "adxmon_database": "Metrics", "job": 'a"b'}, 1_790_000_000_000, 1.0)
    text = seg.metrics_csv([s], header=False).decode()
    ts, rest = text.split(",", 1)
    assert ts == "2026-09-21T14:13:20Z"  # no fraction when the milliseconds are zero
    sid, labels_value = rest.split(",", 1)
    assert int(sid) == seg.series_id(s.labels) and -(1 << 63) <= int(sid) < 1 << 63
    assert labels_value == '"{""job"":""a\\""b""}",1.000000000\n'
