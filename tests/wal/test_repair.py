"""Named corruption cases, each repaired to the exact end of the last good block."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows, repair, scan
from tests.wal.helpers import make_segment, rows_for

NAME = "Db_Tbl_0000000000000001.wal"
BLOCKS = [rows_for(i) for i in range(4)]


def _torn_header(data: bytearray, ends: list[int]) -> None:
    header, _ = fmt.encode_block(1, 1, b"x\n")
    data += header[:5]


def _torn_payload(data: bytearray, ends: list[int]) -> None:
    header, payload = fmt.encode_block(1, 1, rows_for(9))
    data += header + payload[: len(payload) // 2]


def _bad_crc(data: bytearray, ends: list[int]) -> None:
    data[ends[3] - 1] ^= 0xFF  # last payload byte of the fourth block


def _bad_length(data: bytearray, ends: list[int]) -> None:
    struct.pack_into(">I", data, ends[2], 0xFFFFFFF0)


def _garbage(data: bytearray, ends: list[int]) -> None:
    data += b"\x13\x37garbage that is not a block at all" * 7


def _zero_tail(data: bytearray, ends: list[int]) -> None:
    data += bytes(4096)


def _undecodable(data: bytearray, ends: list[int]) -> None:
    payload = b"\xff\xff\xff\xff\x0f this is not snappy"
    data += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


# (case, mutation, index of the last good block: -1 means none)
CASES: list[tuple[str, Callable[[bytearray, list[int]], None], int]] = [
    ("torn_header", _torn_header, 3),
    ("torn_payload", _torn_payload, 3),
    ("bad_crc", _bad_crc, 2),
    ("bad_length", _bad_length, 2),
    ("garbage_appended", _garbage, 3),
    ("zero_filled_tail", _zero_tail, 3),
    ("undecodable_payload", _undecodable, 3),
]


@pytest.mark.parametrize(("case", "mutate", "last_good"), CASES, ids=[c[0] for c in CASES])
def test_named_corruption_repairs_to_last_good_block(
    tmp_path: Path, case: str, mutate: Callable[[bytearray, list[int]], None], last_good: int
) -> None:
    path = tmp_path / NAME
    ends = make_segment(path, BLOCKS)
    data = bytearray(path.read_bytes())
    mutate(data, ends)
    path.write_bytes(bytes(data))

    result = scan(path)
    assert result.error is not None, case
    assert result.error.offset == ends[last_good]
    assert result.error.path == path
    repair(result.error)
    assert path.stat().st_size == ends[last_good]
    assert scan(path).error is None
    assert b"".join(iter_rows(path)) == b"".join(BLOCKS[: last_good + 1])


@pytest.mark.parametrize(("case", "mutate", "last_good"), CASES, ids=[c[0] for c in CASES])
def test_repository_start_repairs_and_indexes(
    tmp_path: Path, case: str, mutate: Callable[[bytearray, list[int]], None], last_good: int
) -> None:
    path = tmp_path / NAME
    ends = make_segment(path, BLOCKS)
    data = bytearray(path.read_bytes())
    mutate(data, ends)
    path.write_bytes(bytes(data))
    repaired: list[int] = []
    repo = Repository(WalConfig(tmp_path), on_repair=repaired.append)
    report = repo.start()
    assert report.repaired == 1
    assert repaired == [len(data) - ends[last_good]]
    [info] = repo.closed_segments()
    assert info.size == ends[last_good] and info.blocks == last_good + 1
    assert repo.disk_usage() == ends[last_good]


def test_truncated_magic_is_deleted_at_start(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"ADXW")
    report = Repository(WalConfig(tmp_path)).start()
    assert report.deleted_empty == 1 and not path.exists()


def test_header_only_segment_and_tmp_files_are_deleted_at_start(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(fmt.MAGIC)
    (tmp_path / "Db_Tbl_0000000000000002.wal.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_bytes(b"left alone")
    repo = Repository(WalConfig(tmp_path))
    report = repo.start()
    assert (report.deleted_empty, report.deleted_tmp, report.segments) == (1, 1, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active", "notes.txt"]


def test_mid_file_corruption_never_skips_ahead(tmp_path: Path) -> None:
    path = tmp_path / NAME
    ends = make_segment(path, BLOCKS)
    data = bytearray(path.read_bytes())
    data[ends[0] + 10] ^= 0x55  # inside block 1: blocks 2 and 3 are intact but not trusted
    path.write_bytes(bytes(data))
    result = scan(path)
    assert result.error is not None and result.error.offset == ends[0]
    repair(result.error)
    assert b"".join(iter_rows(path)) == BLOCKS[0]


@settings(max_examples=150, deadline=None)
@given(n_blocks=st.integers(1, 6), cut=st.floats(0, 1))
def test_any_truncation_repairs_to_a_prefix_of_rows(tmp_path_factory: pytest.TempPathFactory,
                                                   n_blocks: int, cut: float) -> None:
    path = tmp_path_factory.mktemp("t") / NAME
    blocks = [rows_for(i, n=i % 4 + 1) for i in range(n_blocks)]
    ends = make_segment(path, blocks)
    full = path.read_bytes()
    keep = int(len(full) * cut)
    path.write_bytes(full[:keep])
    result = scan(path)
    if keep < len(fmt.MAGIC):
        assert result.error is not None and result.good_end == 0
        return
    if result.error is not None:
        repair(result.error)
    got = b"".join(iter_rows(path))
    whole = sum(1 for e in ends if e <= keep)
    assert got == b"".join(blocks[:whole])
    assert path.stat().st_size == ([len(fmt.MAGIC), *ends][whole])
