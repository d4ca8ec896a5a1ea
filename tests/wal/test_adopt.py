"""Adopting the segments adx-mon left directly in --storage-dir (node/wal/adopt.py): which file
is what, what is done with each, through `Repository.start`, and what a start after a crash in the
middle sees.

The segments are built here from shared/design/wal-format.md (framing, CRC, sample header) with
the test-only S2 writer (tests/wal/s2_writer.py, repeat elements included, as adx-mon's
`s2.EncodeBetter` writes them), not with the node's encoder."""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from pathlib import Path

import pytest

from node.storage import StorageLayout
from node.wal import adopt
from node.wal.adopt import Verdict, decide, destination, listing, quarantine_name
from node.wal.names import SegmentName, parse_filename
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from tests.wal.s2_writer import encode

MAGIC = b"ADXWAL\x00\x00"
SCHEMA_LINE = b"Timestamp:datetime,SeriesId:long,Labels:dynamic,Value:real\n"
FLAKE_EPOCH_MS = 1388534400000
ADX_LOG = "node.wal.adopt"


def flake(ms: int, host: int = 7, seq: int = 0) -> str:
    """go-flake's id as adx-mon names a segment: `strconv.FormatUint(id, 16)`."""
    return format(((ms - FLAKE_EPOCH_MS) << 23) | (host << 13) | seq, "x")


ID1, ID2, ID3, ID4 = (flake(1_767_225_600_000 + i) for i in range(4))  # 2026-01-01


def rows(i: int, n: int = 4) -> bytes:
    return b"".join(f'2026-01-01T00:00:{j:02d}Z,{i * 100 + j},"{{""k"":""v{i}""}}",{j}.5\n'.encode() for j in range(n))


def adx_block(value: bytes, count: int = 0) -> bytes:
    """`len u32 | crc u32 | S2(AA AA 01 00 count u32 value)`: adx-mon's metrics path writes type 0."""
    payload = encode(b"\xaa\xaa\x01\x00" + struct.pack(">I", count) + SCHEMA_LINE + value, repeats=True).block
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def adx_segment(path: Path, values: list[bytes]) -> list[int]:
    """Write an adx-mon segment of one block per value; return each block's end offset."""
    data = bytearray(MAGIC)
    ends = []
    for v in values:
        data += adx_block(v, v.count(b"\n"))
        ends.append(len(data))
    path.write_bytes(bytes(data))
    return ends


def wal_rows(path: Path) -> bytes:
    return b"".join(iter_rows(path))


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file()}


# -- decisions (pure) --------------------------------------------------------------------------

OWN = StorageLayout(Path("/data")).own_entries


@pytest.mark.parametrize(("name", "head", "regular", "verdict"), [
    ("transfers.ledger", b"", True, Verdict.OURS),
    ("transfers.ledger.lock", b"", True, Verdict.OURS),
    ("cluster.json.tmp", b"", True, Verdict.OURS),
    ("wal", b"", False, Verdict.OURS),
    ("notes.txt", b"", True, Verdict.NOT_SEGMENT),
    (f"Metrics_Cpu_abc_{ID1}.wal.tmp", MAGIC, True, Verdict.NOT_SEGMENT),  # adx-mon's temp file before 2023-11
    (f"Metrics_Cpu_{ID1}.wal", b"SQLite f", True, Verdict.NOT_SEGMENT),
    (f"Metrics_Cpu_{ID1}.wal", b"ADXWAM\0\0", True, Verdict.NOT_SEGMENT),
    (f"Metrics_Cpu_{ID1}.wal", MAGIC, False, Verdict.NOT_SEGMENT),  # a link or a fifo: not followed, not read
    (f"Metrics_Cpu_{ID1}.wal", MAGIC, True, Verdict.SEGMENT),
    (f"Metrics_Cpu_abc_{ID1}.wal", MAGIC, True, Verdict.SEGMENT),
    (f"Metrics_Cpu_{ID1}.wal", b"ADX", True, Verdict.SEGMENT),  # torn magic: recovery decides (deletes)
    (f"Metrics_Cpu_{ID1}.wal", b"", True, Verdict.SEGMENT),
    (f"Metrics_Cpu.Temp_{ID1}.wal", MAGIC, True, Verdict.BAD_NAME),
    (f"Metrics_Cpu_{ID1[1:]}.wal", MAGIC, True, Verdict.BAD_NAME),  # a 15-digit id (a clock before 2018)
    (f"Metrics_Cpu_{ID1.upper()}.wal", MAGIC, True, Verdict.BAD_NAME),
    ("x.wal", b"", True, Verdict.BAD_NAME),
])
def test_decide(name: str, head: bytes, regular: bool, verdict: Verdict) -> None:
    d = decide(name, head, regular=regular, own=OWN)
    assert d.verdict is verdict, d
    assert (d.segment is not None) == (verdict is Verdict.SEGMENT)
    if d.segment is not None:
        assert d.segment == parse_filename(name)


def test_own_entries_are_the_layouts_names_directly_in_the_root() -> None:
    layout = StorageLayout(Path("/data"))
    assert {"wal", "quarantine", "deliveries", "transfers.ledger", "local", "metrics", "leaving",
            "cluster.json"} <= layout.own_entries
    assert "blocked-databases" not in layout.own_entries and "active" not in layout.own_entries  # under wal/
    assert StorageLayout.of_wal(Path("/data/wal")) == layout
    assert StorageLayout.of_wal(Path("/data/segments")) is None


def test_destination_keeps_the_name_unless_it_is_taken() -> None:
    name = SegmentName("Metrics", "Cpu", "abc", ID1)
    ids = iter([ID2, ID3])
    assert destination(name, lambda n: False, lambda: next(ids)) == name
    taken = {name.filename, SegmentName("Metrics", "Cpu", "abc", ID2).filename}
    got = destination(name, taken.__contains__, lambda: next(ids))
    assert got == SegmentName("Metrics", "Cpu", "abc", ID3)


def test_quarantine_name_never_replaces_a_file() -> None:
    assert quarantine_name("a.wal", lambda n: False) == "a.wal"
    assert quarantine_name("a.wal", {"a.wal", "a.wal.1"}.__contains__) == "a.wal.2"


def test_listing_is_bounded() -> None:
    assert listing(["a", "b"]) == "a, b"
    many = [f"f{i}" for i in range(25)]
    assert listing(many) == ", ".join(many[:10]) + " and 15 more"


# -- on a volume -------------------------------------------------------------------------------

def volume(root: Path) -> dict[str, bytes]:
    """A volume as adx-mon leaves it, and this node's own files; return the rows each adoptable
    segment holds in its good blocks, by name."""
    root.mkdir(parents=True, exist_ok=True)
    want = {}
    adx_segment(root / f"Metrics_Cpu_abc_{ID1}.wal", [rows(1), rows(2)])
    want[f"Metrics_Cpu_abc_{ID1}.wal"] = rows(1) + rows(2)
    ends = adx_segment(root / f"Metrics_Cpu_abc_{ID2}.wal", [rows(3), rows(4), rows(5)])
    with open(root / f"Metrics_Cpu_abc_{ID2}.wal", "r+b") as f:  # the active segment of a killed adx-mon
        f.truncate(ends[-1] - 7)
    want[f"Metrics_Cpu_abc_{ID2}.wal"] = rows(3) + rows(4)
    ends = adx_segment(root / f"Logs_App_{ID3}.wal", [rows(6), rows(7), rows(8)])
    data = bytearray((root / f"Logs_App_{ID3}.wal").read_bytes())
    data[ends[0] + 12] ^= 0xFF  # the second block's payload: nothing from it on is trusted
    (root / f"Logs_App_{ID3}.wal").write_bytes(bytes(data))
    want[f"Logs_App_{ID3}.wal"] = rows(6)
    (root / f"Metrics_Mem_{ID4}.wal").write_bytes(MAGIC)  # created, never written
    (root / f"Metrics_Disk_{ID4}.wal").write_bytes(b"ADXW")  # killed while writing its magic
    adx_segment(root / f"Metrics_Cpu.Temp_{ID1}.wal", [rows(9)])
    (root / f"Metrics_Cpu_abc_{ID4}.wal.tmp").write_bytes(MAGIC + adx_block(rows(10)))
    (root / f"Old_Format_{ID4}.wal").write_bytes(b"\x00\x00\x00\x10not a segment at all")
    (root / "notes.txt").write_text("the operator's\n")
    (root / "lost+found").mkdir()
    (root / "transfers.ledger").write_text("")
    (root / "cluster.json").write_text("{}")
    return want


LEFT_ALONE = {f"Metrics_Cpu_abc_{ID4}.wal.tmp", f"Old_Format_{ID4}.wal", "notes.txt"}


def test_adopt_a_volume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    want = volume(root)
    before = {n: (root / n).read_bytes() for n in LEFT_ALONE}
    wal = root / "wal"
    wal.mkdir()
    cut: list[int] = []
    with caplog.at_level(logging.INFO, logger=ADX_LOG):
        done = adopt.adopt(wal, lambda: pytest.fail("no name is taken"), cut.append)

    assert {i.path.name for i in done.segments} == set(want) == files(wal)
    for info in done.segments:
        assert info.path == wal / info.name.filename and info.name == parse_filename(info.path.name)
        assert wal_rows(info.path) == want[info.path.name]
        assert b"".join(iter_rows(info.path, with_headers=True)).count(SCHEMA_LINE) == info.blocks
        assert info.size == info.path.stat().st_size
        assert info.rows == want[info.path.name].count(b"\n")
    assert done.repaired == 2 and len(cut) == 2 and done.truncated_bytes == sum(cut) > 7
    assert done.deleted_empty == 2
    assert done.quarantined == [f"Metrics_Cpu.Temp_{ID1}.wal"]
    assert sorted(done.left_alone) == sorted(LEFT_ALONE)
    assert files(root) == LEFT_ALONE | {"transfers.ledger", "cluster.json"}
    assert {n: (root / n).read_bytes() for n in LEFT_ALONE} == before
    assert (root / "lost+found").is_dir()
    q = root / "quarantine"
    assert files(q) == {f"Metrics_Cpu.Temp_{ID1}.wal", f"Metrics_Cpu.Temp_{ID1}.wal.reason.txt"}
    assert wal_rows(q / f"Metrics_Cpu.Temp_{ID1}.wal") == rows(9)  # moved whole

    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == ADX_LOG]
    nbytes = sum(i.size for i in done.segments)
    assert (logging.INFO, f"adopted 3 segments ({nbytes} bytes, 2 repaired) that adx-mon left in {root}") in lines
    warnings = [m for level, m in lines if level == logging.WARNING]
    assert len(warnings) == 1 and f"Metrics_Cpu.Temp_{ID1}.wal" in warnings[0] and str(q) in warnings[0]
    alone = [m for _, m in lines if m.startswith("left alone")]
    assert len(alone) == 1 and all(n in alone[0] for n in LEFT_ALONE) and "transfers.ledger" not in alone[0]


def test_rows_count_from_the_blocks_rows_and_s2_blocks_verify(tmp_path: Path) -> None:
    """A block with S2 repeat elements is a good block, not a corrupt tail."""
    value = b"".join(b'2026-01-01T00:00:00Z,1,"{""a"":""b""}",0.5\n' for _ in range(50))
    assert encode(SCHEMA_LINE + value, repeats=True).uses_repeat
    root = tmp_path / "data"
    root.mkdir()
    adx_segment(root / f"Metrics_Up_{ID1}.wal", [value])
    (root / "wal").mkdir()
    done = adopt.adopt(root / "wal", lambda: ID2)
    assert done.repaired == 0 and [i.rows for i in done.segments] == [50]
    assert wal_rows(root / "wal" / f"Metrics_Up_{ID1}.wal") == value


def test_a_taken_name_gets_a_new_id_and_both_are_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    (root / "wal").mkdir(parents=True)
    adx_segment(root / f"Metrics_Cpu_{ID1}.wal", [rows(1)])
    adx_segment(root / "wal" / f"Metrics_Cpu_{ID1}.wal", [rows(2)])
    with caplog.at_level(logging.INFO, logger=ADX_LOG):
        done = adopt.adopt(root / "wal", lambda: ID3)
    assert [i.path.name for i in done.segments] == [f"Metrics_Cpu_{ID3}.wal"]
    assert wal_rows(root / "wal" / f"Metrics_Cpu_{ID3}.wal") == rows(1)
    assert wal_rows(root / "wal" / f"Metrics_Cpu_{ID1}.wal") == rows(2)
    assert any(f"adopted as Metrics_Cpu_{ID3}.wal" in r.getMessage() for r in caplog.records)


def test_a_quarantined_name_never_replaces_one_there(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "wal").mkdir(parents=True)
    (root / "quarantine").mkdir()
    (root / "quarantine" / "Bad-Name_x.wal").write_bytes(b"earlier")
    adx_segment(root / "Bad-Name_x.wal", [rows(1)])
    done = adopt.adopt(root / "wal", lambda: ID1)
    assert done.quarantined == ["Bad-Name_x.wal"]
    assert (root / "quarantine" / "Bad-Name_x.wal").read_bytes() == b"earlier"
    assert wal_rows(root / "quarantine" / "Bad-Name_x.wal.1") == rows(1)


def test_a_wal_directory_outside_a_storage_layout_adopts_nothing(tmp_path: Path) -> None:
    adx_segment(tmp_path / f"Metrics_Cpu_{ID1}.wal", [rows(1)])
    repo = Repository(WalConfig(tmp_path / "segments"))
    assert repo.start().adopted == 0
    assert (tmp_path / f"Metrics_Cpu_{ID1}.wal").exists() and repo.closed_segments() == []


def test_a_file_that_cannot_be_moved_stays_and_the_rest_is_adopted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    (root / "wal").mkdir(parents=True)
    adx_segment(root / f"Metrics_Cpu_{ID1}.wal", [rows(1)])
    adx_segment(root / f"Metrics_Cpu_{ID2}.wal", [rows(2)])
    real = os.rename

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        if Path(src).name == f"Metrics_Cpu_{ID1}.wal":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with caplog.at_level(logging.INFO, logger=ADX_LOG):
        done = adopt.adopt(root / "wal", lambda: ID3)
    assert [i.path.name for i in done.segments] == [f"Metrics_Cpu_{ID2}.wal"]
    assert done.failed == [f"Metrics_Cpu_{ID1}.wal"] and (root / f"Metrics_Cpu_{ID1}.wal").exists()
    assert any(r.levelno == logging.ERROR and f"Metrics_Cpu_{ID1}.wal" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(os, "rename", real)
    assert [i.path.name for i in adopt.adopt(root / "wal", lambda: ID3).segments] == [f"Metrics_Cpu_{ID1}.wal"]


# -- through the repository's recovery --------------------------------------------------------

def test_recovery_indexes_adopted_segments_as_closed_and_a_second_start_adopts_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    want = volume(root)
    repaired: list[int] = []
    repo = Repository(WalConfig(StorageLayout(root).wal), on_repair=repaired.append)
    report = repo.start()
    assert report.adopted == 3 and report.segments == 3 and report.repaired == 2 and len(repaired) == 2
    assert report.deleted_empty == 2
    closed = repo.closed_segments()
    assert {i.path.name for i in closed} == set(want)
    assert {i.prefix for i in closed} == {"Metrics_Cpu_abc", "Logs_App"}
    on_disk = sum(p.stat().st_size for p in (root / "wal").glob("*.wal"))
    assert repo.disk_usage() == sum(i.size for i in closed) == on_disk
    assert repo.disk_usage("Logs") == (root / "wal" / f"Logs_App_{ID3}.wal").stat().st_size
    for info in closed:
        assert wal_rows(info.path) == want[info.path.name]
    repo.stop()

    again = Repository(WalConfig(StorageLayout(root).wal))
    report = again.start()
    assert report.adopted == 0 and report.repaired == 0 and report.segments == 3
    assert sorted(i.path.name for i in again.closed_segments()) == sorted(want)
    assert files(root / "quarantine") == {f"Metrics_Cpu.Temp_{ID1}.wal", f"Metrics_Cpu.Temp_{ID1}.wal.reason.txt"}


class Killed(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("dies_at", [1, 2, 3])
def test_a_crash_in_the_middle_neither_loses_nor_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           dies_at: int) -> None:
    """The process dies at its `dies_at`-th rename into wal/ (the segments before it are there, the
    torn ones already repaired in place). The next start sees each segment exactly once."""
    root = tmp_path / "data"
    want = volume(root)
    real = os.rename
    calls = [0]

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        if Path(dst).parent.name == "wal":
            calls[0] += 1
            if calls[0] == dies_at:
                raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Killed):
        Repository(WalConfig(root / "wal")).start()
    monkeypatch.setattr(os, "rename", real)
    moved = files(root / "wal")
    assert len(moved & set(want)) == dies_at - 1
    assert not moved & files(root)  # under one name, never both

    repo = Repository(WalConfig(root / "wal"))
    report = repo.start()
    names = [i.path.name for i in repo.closed_segments()]
    assert sorted(names) == sorted(want)  # each once
    assert report.adopted == len(want) - (dies_at - 1)
    assert {n: wal_rows(root / "wal" / n) for n in names} == want
    assert not any(n.endswith(".wal") and n in want for n in files(root))
