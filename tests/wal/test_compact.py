"""A closed segment of small blocks is rewritten as large ones (segment.compact): the same rows, in
order, a fraction of the bytes; the disk usage counts what is on disk; a failure keeps the file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from node.wal import format as fmt
from node.wal import segment as wal_segment
from node.wal.repository import Repository, WalConfig
from node.wal.segment import COMPACT_BLOCK_BYTES, FsyncPolicy, iter_blocks, iter_rows
from node.wal.table import SegmentInfo
from tests.wal.helpers import rows_for, wal_stats, write_block

SCHEMA = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))
HEADER = b"Timestamp:datetime,SeriesId:long,Labels:dynamic,Value:real\n"


def _repo(path: Path, **kw: object) -> Repository:
    repo = Repository(WalConfig(path, **kw))  # type: ignore[arg-type]
    repo.start()
    return repo


def _on_disk(repo: Repository) -> int:
    return sum(i.path.stat().st_size for i in repo.closed_segments())


def test_small_blocks_become_one_block_with_the_same_rows_in_order(tmp_path: Path) -> None:
    repo = _repo(tmp_path, fsync=FsyncPolicy.ON_ROTATE)
    written = [rows_for(i, n=1 + i % 3) for i in range(500)]
    for v in written:
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, v.count(b"\n"), SCHEMA)
    before = repo.disk_usage()
    [info] = repo.rotate_all()
    assert info.blocks == 1 and info.shrunk > 0
    assert info.rows == sum(v.count(b"\n") for v in written)
    assert info.size == info.path.stat().st_size
    assert before - info.shrunk == repo.disk_usage() == _on_disk(repo)
    [block] = list(iter_blocks(info.path))
    assert (block.kind, block.count) == (fmt.KIND_METRIC, info.rows)
    assert block.value == HEADER + b"".join(written)  # one schema line, every row in write order
    assert info.size * 5 < info.size + info.shrunk  # five times smaller at least
    assert list(info.path.parent.glob("*.tmp")) == [] and list((tmp_path / "active").glob("*")) == []
    repo.remove(repo.closed_segments())
    assert repo.disk_usage() == 0 and wal_stats(repo).disk_usage == 0  # nothing counted twice or left over


def test_large_blocks_are_left_as_written(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    rng = random.Random(1)
    written = [bytes(rng.getrandbits(8) for _ in range(20_000)).hex().encode() + b"\n" for _ in range(3)]
    for v in written:
        write_block(repo, "Db", "T", fmt.KIND_LOG, v, 1)
    active = next((tmp_path / "active").glob("*.wal"))
    raw = active.read_bytes()
    [info] = repo.rotate_all()
    assert (info.blocks, info.shrunk) == (3, 0)
    assert info.path.read_bytes() == raw


def test_rows_past_the_block_size_make_several_blocks(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    line = b"x" * 999 + b"\n"
    writes = 3 * COMPACT_BLOCK_BYTES // 10_000
    for _ in range(writes):
        write_block(repo, "Db", "T", fmt.KIND_LOG, line * 10, 10)
    [info] = repo.rotate_all()
    blocks = list(iter_blocks(info.path))
    assert len(blocks) == info.blocks == 3
    assert all(len(b.value) <= COMPACT_BLOCK_BYTES + 10_000 for b in blocks)
    assert b"".join(iter_rows(info.path)) == line * 10 * writes


def test_a_failed_rewrite_keeps_the_segment_whole(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    written = [rows_for(i) for i in range(50)]
    for v in written:
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 3)
    active = next((tmp_path / "active").glob("*.wal"))
    raw = active.read_bytes()
    os.mkdir(active.with_name(active.name + ".tmp"))  # the new file cannot be created
    closed: list[SegmentInfo] = repo.rotate_all()
    [info] = closed
    assert (info.blocks, info.shrunk) == (50, 0)
    assert info.path.read_bytes() == raw
    assert repo.disk_usage() == _on_disk(repo)


def test_blocks_with_different_schema_lines_are_not_merged(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(0), 3, SCHEMA)
    active = next((tmp_path / "active").glob("*.wal"))
    # a second block whose header line differs (a segment written by hand, or a future writer)
    header, payload = fmt.encode_block(fmt.KIND_METRIC, 3, rows_for(1), b"Timestamp:datetime,Other:real\n")
    with open(active, "ab") as f:
        f.write(header + payload)
    raw = active.read_bytes()
    repo._wals[next(iter(repo._wals))]._active.size = len(raw)  # type: ignore[union-attr]
    repo._wals[next(iter(repo._wals))]._active.blocks = 2  # type: ignore[union-attr]
    [info] = repo.rotate_all()
    assert info.path.read_bytes() == raw and info.shrunk == 0


def test_a_restart_after_compaction_finds_the_same_rows(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    written = [rows_for(i) for i in range(100)]
    for v in written:
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 3, SCHEMA)
    [info] = repo.rotate_all()
    repo.stop()
    again = _repo(tmp_path)
    [found] = again.closed_segments()
    assert (found.size, found.blocks, found.rows) == (info.size, info.blocks, info.rows)
    assert b"".join(iter_rows(found.path)) == b"".join(written)
    assert again.disk_usage() == info.size


@pytest.mark.parametrize(("limit", "value"), [("COMPACT_MAX", 4096), ("COMPACT_MAX_BLOCKS", 199)])
def test_a_segment_past_the_compaction_size_is_left_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               limit: str, value: int) -> None:
    monkeypatch.setattr(wal_segment, limit, value)  # the rewrite runs with the table's lock held
    repo = _repo(tmp_path)
    for i in range(200):
        write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(i), 3)
    active = next((tmp_path / "active").glob("*.wal"))
    raw = active.read_bytes()
    assert len(raw) > 4096
    [info] = repo.rotate_all()
    assert (info.blocks, info.shrunk) == (200, 0) and info.path.read_bytes() == raw


def test_stopping_closes_every_segment_as_written(tmp_path: Path) -> None:
    """A node that stops closes all its segments at once, within its grace: no rewrite then."""
    repo = _repo(tmp_path)
    for i in range(20):
        write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(i), 3)
    [info] = repo.stop()
    assert (info.blocks, info.shrunk) == (20, 0)
    assert info.size == info.path.stat().st_size
