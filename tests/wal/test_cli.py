"""`ingestor wal dump|repair|ls` through the real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.wal import format as fmt
from node.wal import repository
from node.wal.repository import Block, Repository, WalConfig
from tests.wal.helpers import make_segment, rows_for, write_block

SCHEMA = (("Timestamp", "datetime"), ("Value", "real"))


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, timeout=60)


def test_dump_prints_rows_and_strips_headers(tmp_path: Path) -> None:
    repo = Repository(WalConfig(tmp_path))
    repo.start()
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"2026-01-01T00:00:00Z,1\n", 1, SCHEMA)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"2026-01-01T00:00:01Z,2\n", 1, SCHEMA)
    [info] = repo.rotate_all()
    r = _run("wal", "dump", str(info.path))
    assert r.returncode == 0
    assert r.stdout == b"2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,2\n"
    r = _run("wal", "dump", "--with-headers", str(info.path))
    # the two one-row blocks were compacted into one as the segment closed: one header line
    assert info.blocks == 1
    assert r.stdout.count(b"Timestamp:datetime,Value:real\n") == 1


def test_dump_of_corrupt_segment_says_where_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "Db_T_0000000000000001.wal"
    ends = make_segment(path, [rows_for(0), rows_for(1)])
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00\x09\x01\x02")
    r = _run("wal", "dump", str(path))
    assert r.returncode == 1
    assert r.stdout == rows_for(0) + rows_for(1)
    assert f"segment ends at offset {ends[1]}: torn block header".encode() in r.stderr


def test_repair_then_ls(tmp_path: Path) -> None:
    path = tmp_path / "Db_T_0000000000000001.wal"
    ends = make_segment(path, [rows_for(0), rows_for(1)])
    path.write_bytes(path.read_bytes() + b"garbage!")
    r = _run("wal", "repair", str(path))
    assert r.returncode == 0 and f"truncated 8 bytes at offset {ends[1]}".encode() in r.stdout
    assert path.stat().st_size == ends[1]
    r = _run("wal", "ls", str(tmp_path))
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["DATABASE", "TABLE", "SCHEMA", "SEGMENT", "BYTES", "AGE", "BLOCKS", "ROWS", "STATE"]
    cols = lines[1].split()
    assert cols[:5] == ["Db", "T", "-", "0000000000000001", str(ends[1])]
    assert cols[6:] == ["2", "6", "ok"]


def test_ls_lists_the_active_segments_too(tmp_path: Path) -> None:
    """The rows a node holds but has not closed yet are in `active/`: `wal ls` shows them, marked."""
    repo = Repository(WalConfig(tmp_path))
    repo.start()
    write_block(repo, "Db", "Closed", fmt.KIND_METRIC, b"2026-01-01T00:00:00Z,1\n", 1, SCHEMA)
    repo.rotate_all()
    write_block(repo, "Db", "Open", fmt.KIND_METRIC, b"2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,2\n", 2, SCHEMA)
    r = _run("wal", "ls", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {cols[1]: cols for cols in (line.split() for line in r.stdout.decode().splitlines()[1:])}
    assert rows["Closed"][-3:] == ["1", "1", "ok"]
    assert rows["Open"][-3:] == ["1", "2", "active"]


def test_ls_lists_the_journal_with_its_requests_tables_and_rows(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows acknowledged in the WAL's journal (a request over 100 tables or more) are in no segment
    until their round: `wal ls` shows the journal too, with its requests, tables and rows."""
    monkeypatch.setattr(repository, "JOURNAL_ROUND_SECONDS", 1e6)  # no round before the listing
    repo = Repository(WalConfig(tmp_path))
    repo.start()
    for k in range(2):
        repo.write_many([Block("Db", f"T{t}", fmt.KIND_METRIC, b"2026-01-01T00:00:00Z,1\n" * (1 + k), 1 + k, SCHEMA)
                         for t in range(120)])
    r = _run("wal", "ls", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2, lines  # the header, the journal: no segment yet
    cols = lines[1].split()
    assert cols[:3] == ["*", "(120", "tables)"] and cols[-3:] == ["2", "360", "journal"], cols
    repo.stop()
    r = _run("wal", "ls", str(tmp_path))
    assert "journal" not in r.stdout.decode() and len(r.stdout.decode().splitlines()) == 121
