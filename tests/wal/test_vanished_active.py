"""A segment deleted outside the node while it is written (a person freeing space on a full disk,
`rm -rf` of the WAL directory): given up, logged and counted, never waited for; the table goes on
in a new segment and a stop closes the rest cleanly (node/wal/table.py).

Real files in a temporary directory, deleted as a person would delete them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import grpc
import pytest

from node.errors import VanishedSegmentError, status_of
from node.wal import format as fmt
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import iter_rows
from node.wal.table import SegmentInfo
from tests.wal.helpers import rows_for, write_block


def repository(tmp_path: Path, **config: object) -> tuple[Repository, list[SegmentInfo]]:
    gone: list[SegmentInfo] = []
    repo = Repository(WalConfig(tmp_path / "wal", max_segment_age=3600, **config),  # type: ignore[arg-type]
                      on_vanished=gone.append)
    repo.start()
    return repo, gone


def stored(repo: Repository) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for s in repo.closed_segments():
        out.setdefault(s.name.table, []).extend(b"".join(iter_rows(s.path)).splitlines())
    return out


def active_file(repo: Repository, table: str) -> Path:
    (path,) = [p for p in repo.active_directory.iterdir() if p.name.startswith(f"Db_{table}_")]
    return path


def test_an_open_segment_deleted_outside_the_node_is_given_up_at_the_next_tick(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its descriptor still open, writes into it would succeed and be lost at its close: the
    once-a-second look (`rotate_expired`) finds its file has no name left and gives it up."""
    repo, gone = repository(tmp_path)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(1, 3), 3)
    write_block(repo, "Db", "U", fmt.KIND_METRIC, rows_for(2, 2), 2)
    active_file(repo, "T").unlink()
    with caplog.at_level(logging.ERROR, "node.wal"):
        assert repo.rotate_expired() == []
    assert [(g.name.table, g.rows) for g in gone] == [("T", 3)]
    assert "deleted by something other than this node" in caplog.text and "the 3 rows" in caplog.text
    assert repo.disk_usage() == active_file(repo, "U").stat().st_size  # T's bytes no longer counted
    write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(3, 4), 4)  # a new segment
    repo.stop()
    assert stored(repo) == {"T": rows_for(3, 4).splitlines(), "U": rows_for(2, 2).splitlines()}
    assert len(gone) == 1


def test_a_write_to_an_evicted_segment_whose_file_is_gone_is_refused_as_unavailable_and_its_retry_lands(
        tmp_path: Path) -> None:
    """Its descriptor closed by the bound on open files, the write must reopen it and finds it
    gone: refused with UNAVAILABLE (503), which senders retry, nothing of the request kept; the
    retry goes to a new segment."""
    repo, gone = repository(tmp_path, max_open_segments=2)
    for t in range(5):
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 1), 1)
    active_file(repo, "T0").unlink()  # T0's descriptor was the first closed
    request = [Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(10 + t, 2), 2) for t in range(3)]
    with pytest.raises(VanishedSegmentError) as refused:
        repo.write_many(request)
    status = status_of(refused.value)
    assert (status.grpc_code, status.http_status) == (grpc.StatusCode.UNAVAILABLE, 503)
    assert [g.name.table for g in gone] == []  # given up at the next tick, not in the write
    repo.write_many(request)
    repo.stop()
    assert [(g.name.table, g.rows) for g in gone] == [("T0", 1)]
    want = {f"T{t}": rows_for(t, 1).splitlines() for t in range(1, 5)}
    for t in range(3):
        want.setdefault(f"T{t}", []).extend(rows_for(10 + t, 2).splitlines())
    assert stored(repo) == want


def test_the_wal_directory_deleted_under_writes_is_made_again_and_a_stop_closes_cleanly(tmp_path: Path) -> None:
    repo, gone = repository(tmp_path)
    for t in range(4):
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 1), 1)
    shutil.rmtree(repo.directory)
    repo.rotate_expired()
    assert sorted(g.name.table for g in gone) == ["T0", "T1", "T2", "T3"]
    assert repo.disk_usage() == 0
    for t in range(5):  # the four tables again, and one new
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, rows_for(20 + t, 2), 2)
    assert repo.stop()  # no error: every segment closed
    assert stored(repo) == {f"T{t}": rows_for(20 + t, 2).splitlines() for t in range(5)}


def test_a_stop_gives_up_the_segments_deleted_since_the_last_tick_and_closes_the_others(tmp_path: Path) -> None:
    """The stop used to end with FileNotFoundError at the first of them, the others left open."""
    repo, gone = repository(tmp_path)
    for t in range(3):
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 1), 1)
    active_file(repo, "T1").unlink()
    closed = repo.stop()
    assert sorted(s.name.table for s in closed) == ["T0", "T2"]
    assert [g.name.table for g in gone] == ["T1"]
    assert stored(repo) == {"T0": rows_for(0, 1).splitlines(), "T2": rows_for(2, 1).splitlines()}


def test_a_segment_taken_out_whose_file_is_then_deleted_never_blocks_the_tables_later_segments(
        tmp_path: Path) -> None:
    """A full segment is taken out of service and published after; deleted in between, its
    publication used to fail at every try, and every later segment of its table waited behind it."""
    repo, gone = repository(tmp_path, max_segment_size=1)  # every write fills its segment
    table = repo._wal("Db", "T", None)
    with table.lock:
        table.ensure_active_held(lambda delta: None)
        table.append_held(*fmt.encode_block(fmt.KIND_METRIC, 1, rows_for(1, 1)), 1, new_segment=lambda delta: None)
        assert table.take_out_if_full_held()
    next(repo.active_directory.iterdir()).unlink()
    write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(2, 1), 1)  # published after the one taken out
    assert stored(repo) == {"T": rows_for(2, 1).splitlines()}
    assert [g.rows for g in gone] == [1]


def test_a_journal_deleted_outside_the_node_is_split_from_memory(tmp_path: Path) -> None:
    """Its rows are held in memory until their round: the round writes them into their segments
    and commits without the file (it used to fail on the commit's unlink at every round)."""
    repo, gone = repository(tmp_path, journal_tables=2)
    request = [Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 2), 2) for t in range(3)]
    repo.write_many(request)
    (journal_file,) = repo.active_directory.glob("*.journal")
    journal_file.unlink()
    assert repo.split_journal() == 1
    repo.stop()
    assert stored(repo) == {f"T{t}": rows_for(t, 2).splitlines() for t in range(3)}
    assert gone == []


def test_a_journal_write_after_the_wal_directory_was_deleted_makes_it_again(tmp_path: Path) -> None:
    repo, _ = repository(tmp_path, journal_tables=2)
    shutil.rmtree(repo.directory)
    repo.write_many([Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 1), 1) for t in range(3)])
    repo.stop()
    assert stored(repo) == {f"T{t}": rows_for(t, 1).splitlines() for t in range(3)}
